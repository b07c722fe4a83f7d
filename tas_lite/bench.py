"""The project's speed claims, measured side by side in one run (`python -m tas_lite bench`).

Step-time ratios come from `steptimes` (every method's full training step on the same batch, interleaved,
the median); the all-pairs CKA against a per-pair loop, and each notebook's time, from here. Absolute
times depend on the machine (stamped in the JSON); the ratios are the claims: TAS <= 1.3x OFA and <= 1.6x
KD per step on the cpu pair, and on the paper's ViT-S -> ResNet18 at 224 px TAS <= 1.2x KD and <= 1.0x the
authors' default OFA (`--paper-pair`).
`--ddp` measures what a second DDP process costs per step (no target).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import cka, config, methods, profiles, runner, steptimes
from .results import machine as base_machine
from .util import atomic_write, say

TARGETS = {"tas/ofa": 1.3, "tas/kd": 1.6}  # TAS's step-time budget against OFA and KD on the cpu pair


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: platform, CPUs, versions, device, threads and the load average."""
    info = base_machine()
    info.update(device=str(device), torch_threads=torch.get_num_threads(),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    return info


def bench(device: str = "cpu", *, method_names: Sequence[str] | None = None,
          settings: profiles.Settings | None = None, repeats: int = 15,
          warmup: int = 3, batch_size: int | None = None, paper_pair: bool | None = None,
          cka_kwargs: dict[str, Any] | None = None, notebooks: bool = True,
          notebooks_dir: str | Path | None = None, threads: int | None = None, out: str | Path | None = None,
          progress: bool = True, ddp: bool = False, matrix: bool = False) -> dict:
    """Measure every speed claim in one run; write JSON to `out` when given and return the same dict.

    The cpu pair is the settings' teacher -> student at their image size and batch size. `paper_pair`
    (default: on CUDA) adds the paper's pairs at 224 px, batch 16 (`paper_pairs`). `ddp` adds the per-step
    cost of DDP on 2 processes (gloo, CPU) against one (`ddp_overhead`). `matrix` times KD, OFA and TAS for
    every pair of the profile's three families' models (`family_pairs`). `notebooks` times each notebook
    in the smoke profile through the runner (a failure is recorded, not raised). `threads` sets torch's
    intra-op threads; on a busy machine 1 thread can be many times faster per step than oversubscribed cores.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads}")
        torch.set_num_threads(threads)
    dev = config.device(device)
    cfg = settings or profiles.resolve("cpu")  # read when called, as every profile value
    method_names = list(method_names or methods.METHODS)
    batch = batch_size or cfg.batch_size
    report: dict[str, Any] = {"machine": machine(dev), "targets": TARGETS}
    say(progress, f"step times: {cfg.teacher} -> {cfg.student}, {cfg.img_size} px, batch {batch}, "
                   f"{len(method_names)} methods x {repeats} interleaved repeats on {dev}")
    times = steptimes.step_times(method_names, cfg.teacher, cfg.student, img_size=cfg.img_size, batch_size=batch, device=str(dev),
                       repeats=repeats, warmup=warmup)
    report["pair"] = {"teacher": cfg.teacher, "student": cfg.student, "img_size": cfg.img_size, "batch_size": batch,
                      "repeats": repeats, "warmup": warmup}
    report.update(steptimes.summarise(times, batch))
    report["meets_targets"] = {k: report["step_time_ratio"][k] <= v for k, v in TARGETS.items()
                               if k in report["step_time_ratio"]}
    wants_paper = paper_pair if paper_pair is not None else dev.type == "cuda"
    report["paper_pairs"] = steptimes.paper_pairs(str(dev), repeats=repeats, warmup=warmup, progress=progress) \
        if wants_paper else None
    report["matrix"] = steptimes.family_pairs([cfg.cnn, cfg.vit, cfg.mlp], img_size=cfg.img_size, batch_size=batch,
                                              device=str(dev), repeats=repeats, warmup=warmup,
                                              progress=progress) if matrix else None
    report["ddp"] = steptimes.ddp_overhead(cfg.teacher, cfg.student, img_size=cfg.img_size, batch_size=batch, repeats=repeats,
                                 warmup=warmup, progress=progress) if ddp else None
    cka_args = {"layers": 12, "examples": 2048, "batch_size": 256, "dim": 512,
                **(cka_kwargs or {})}
    say(progress, f"CKA: all-pairs MinibatchCKA vs per-pair loop, {cka_args}")
    report["cka"] = bench_cka(device=str(dev), **cka_args)
    report["cka_speedup"] = report["cka"]["speedup"]
    report["notebook_smoke_s"] = _notebook_times(notebooks_dir, progress) if notebooks else None
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(report, indent=2, default=str))
    return report


def _bench_batch(gen: torch.Generator, layers: int, n: int, dim: int) -> tuple[list, list]:
    """Two related float32 feature lists with a large offset: layer i mixes a shared signal and noise."""
    base = torch.randn(n, dim, generator=gen)
    a = [base + (i / layers) * torch.randn(n, dim, generator=gen) + 100.0 for i in range(layers)]
    b = [base.roll(i, 1) + 0.5 * torch.randn(n, dim, generator=gen) for i in range(layers)]
    return a, b


def _pair_loop(a: list, b: list, sums: torch.Tensor, cached: bool) -> None:
    """One batch the per-pair way: a Python loop over (i, j), adding HSIC_1 (ab, aa, bb) into sums (3, A, B)."""
    ga, gb = (cka.gram_stack(a), cka.gram_stack(b)) if cached else (None, None)
    for i in range(len(a)):
        for j in range(len(b)):
            K = ga[i: i + 1] if cached else cka.gram_stack([a[i]])
            L = gb[j: j + 1] if cached else cka.gram_stack([b[j]])
            for k, h in enumerate(cka.hsic1(K, L)):
                sums[k, i, j] += h.sum().item()


def bench_cka(layers: int = 12, examples: int = 2048, batch_size: int = 256, dim: int = 512,
              device: str = "cpu", seed: int = 0) -> dict:
    """All-pairs MinibatchCKA vs a per-pair Python loop on the same seeded float32 features.

    The loop is what one writes without stacking: for every batch and every (i, j) pair, Gram matrices
    of X_i and Y_j, then the three HSIC_1 sums. A second loop reuses each layer's Gram within a batch,
    to show what the single all-pairs product adds beyond caching. Returns seconds, speedups, the
    largest difference to the all-pairs CKA matrix, and the memory the accumulator keeps.
    """
    if examples % batch_size or batch_size < 4:
        raise ValueError(f"examples ({examples}) must be a multiple of batch_size ({batch_size}) >= 4")
    dev = config.device(device)

    def batches():
        gen = torch.Generator().manual_seed(seed)
        for _ in range(examples // batch_size):
            a, b = _bench_batch(gen, layers, batch_size, dim)
            yield [t.to(dev) for t in a], [t.to(dev) for t in b]

    def timed(step) -> float:
        total = 0.0
        for a, b in batches():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(a, b)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            total += time.perf_counter() - start
        return total

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    acc = cka.MinibatchCKA(layers, layers)
    all_pairs_s = timed(acc.update)
    fast = acc.compute()
    peak_cuda = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    result = {"layers": layers, "examples": examples, "batch_size": batch_size, "dim": dim, "device": str(dev),
              "all_pairs_s": round(all_pairs_s, 4)}
    diffs = []
    for name, cached in (("loop", False), ("loop_cached_grams", True)):
        sums = torch.zeros(3, layers, layers, dtype=torch.float64)
        seconds = timed(lambda a, b, sums=sums, cached=cached: _pair_loop(a, b, sums, cached))
        diffs.append((fast - sums[0] / torch.sqrt(sums[1] * sums[2])).abs().max().item())
        result[f"{name}_s"] = round(seconds, 4)
        result[f"speedup_vs_{name}"] = round(seconds / all_pairs_s, 2)
    result["speedup"] = result["speedup_vs_loop"]
    result["max_abs_diff"] = max(diffs)
    result["accumulator_bytes"] = sum(t.numel() * t.element_size() for t in (acc.hsic_ab, acc.hsic_aa, acc.hsic_bb))
    result["batch_gram_bytes"] = 2 * layers * batch_size**2 * 8  # one batch's two Gram stacks, freed after it
    result["peak_cuda_bytes"] = peak_cuda
    result["memory_note"] = ("the accumulator keeps (layers x layers) sums only; per-batch Gram stacks scale "
                             "with batch_size^2, never with the number of examples")
    return result


def _notebook_times(notebooks_dir: str | Path | None, progress: bool) -> dict[str, Any]:
    """Wall time of each notebook in the smoke profile, each run on its own through the runner (so one
    failure does not hide the others' times), in a scratch output folder."""
    say(progress, "notebooks, smoke profile:")
    times = {}
    with tempfile.TemporaryDirectory(prefix="tas_lite_bench_") as scratch:
        for path in runner.discover(notebooks_dir):
            try:
                report = runner.run("smoke", notebooks_dir=path.parent, only=[path.stem], out_dir=scratch,
                                    progress=False)
            except runner.NotebookFailed as err:
                report = err.report
            (nb,) = report.notebooks
            times[nb.name] = {"status": nb.status, "wall_s": round(nb.wall_s, 2), "error": nb.error}
            say(progress, f"  {nb.name}: {nb.status} in {nb.wall_s:.1f} s" + (f" ({nb.error})" if nb.error else ""))
    return times


def _pair_lines(label: str, pair: dict, numbers: dict, targets: dict) -> list[str]:
    lines = [f"\n{label}: {pair['teacher']} -> {pair['student']}, {pair['img_size']} px, batch {pair['batch_size']}",
             f"  {'method':10s} {'step (ms)':>10s} {'IQR (ms)':>9s} {'images/s':>9s}"]
    for method, seconds in numbers["step_time_s"].items():
        lines.append(f"  {method:10s} {1000 * seconds:10.1f} {1000 * numbers['step_time_iqr_s'][method]:9.1f} "
                     f"{numbers['images_per_s'][method]:9.1f}")
    for key, value in numbers["step_time_ratio"].items():
        target = targets.get(key)
        verdict = "" if target is None else f"  (target <= {target}: {'met' if value <= target else 'NOT met'})"
        lines.append(f"  step-time ratio {key}: {value:.2f}{verdict}")
    for key, value in numbers.get("cpu_time_ratio", {}).items():
        lines.append(f"  CPU-time ratio {key}: {value:.2f} (the work per step, whatever else shares the cores)")
    if "tas_split_ms" in numbers:
        lines.append("  where a TAS step goes (each part timed alone): "
                     + ", ".join(f"{k} {v:.0f} ms" for k, v in numbers["tas_split_ms"].items()))
    if "tas_floor" in numbers:
        lines.append("  the method's floor (KD's step + the assistant from stage 3): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in numbers["tas_floor"].items())
                     + "; no implementation of TAS can go below it")
    if "parameters" in numbers:
        p = numbers["parameters"]
        lines.append("  added parameters: " + ", ".join(f"{m} {n / 1e6:.2f}M" for m, n in p["added"].items())
                     + f" (student {p['student'] / 1e6:.2f}M); " + ", ".join(f"{k} {v:.2f}" for k, v in p["ratio"].items()))
    return lines


def _matrix_lines(rows: list[dict]) -> list[str]:
    """One line per family pair: each method's step time (ms) and the ratios against KD and OFA."""
    if not rows:
        return []
    cells = [(f"{r['teacher']} -> {r['student']}", "  ".join(f"{m.upper()} {1000 * r['step_time_s'][m]:6.1f}"
                                                             for m in ("kd", "ofa", "tas")),
              "  ".join(f"{k.upper()} {v:.2f}" for k, v in r["step_time_ratio"].items())) for r in rows]
    return ["\nfamily pairs (step time in ms; ratios):"] + [f"  {pair:32s} {times}   {ratios}" for pair, times, ratios in cells]


def format_table(report: dict) -> str:
    """The bench as readable text: per-method step time and images/s, ratios against targets, the paper's
    pairs, DDP's per-step overhead, CKA, notebooks."""
    m = report["machine"]
    lines = [f"tas_lite bench on {m['device_name']} ({m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
             f"{m['torch_threads']} threads, load {m.get('load_average_1min')} -> {m.get('load_average_1min_end')})"]
    lines += _pair_lines("cpu pair", report["pair"], report, TARGETS)
    for pair in report.get("paper_pairs") or []:
        lines += _pair_lines(f"paper pair {pair['label']}", pair, pair, pair["targets"])
    if report.get("ddp"):
        d = report["ddp"]
        lines.append(f"\nDDP, {d['method']} {d['teacher']} -> {d['student']}, batch {d['batch_size']} per process "
                     f"(gloo, 1 thread each): {1000 * d['step_time_s']['1 process']:.1f} ms per step on 1 process, "
                     f"{1000 * d['step_time_s']['2 processes']:.1f} ms on 2: overhead {100 * d['overhead']:+.0f}% "
                     f"({d['overhead_ms']:+.1f} ms)")
    lines += _matrix_lines(report.get("matrix") or [])
    cka = report["cka"]
    lines.append(f"\nCKA {cka['layers']}x{cka['layers']} layers, {cka['examples']} examples: all-pairs "
                 f"{cka['all_pairs_s']:.2f} s, per-pair loop {cka['loop_s']:.2f} s -> speedup {report['cka_speedup']:.1f}x; "
                 f"largest difference {cka['max_abs_diff']:.1e}; accumulator {cka['accumulator_bytes'] / 1024:.1f} KiB "
                 f"whatever the number of examples")
    if report.get("notebook_smoke_s"):
        lines.append("\nnotebooks (smoke profile):")
        lines += [f"  {name:32s} {v['status']:8s} {v['wall_s']:7.1f} s" for name, v in report["notebook_smoke_s"].items()]
    return "\n".join(lines)
