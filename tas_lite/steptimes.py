"""Step times measured side by side: every method's full training step (teacher forward, method forward,
backward, clipping, optimiser step, as `loop.train_step` takes it) on the same batch, interleaved in rotated
order and summarised by the median, so a busy machine slows every method alike. Also the paper's pairs at
224 px, where a TAS step's time goes (and the floor no implementation can go below), each method's added
parameters, and what a second DDP process costs per step. `bench` puts them together with their targets.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp

from . import config, distributed, loop, methods, models
from .recipes import Recipe
from .util import say

RATIOS = (("tas", "ofa"), ("tas", "kd"), ("ofa", "kd"))
# The paper's pairs at its input size: the CNN student (ViT-S -> ResNet18) and the ViT student (ConvNeXt-T ->
# DeiT-T). Targets on the first: TAS at most 1.2x KD and no slower than the authors' default OFA.
PAPER_PAIRS = ({"label": "ViT-S -> ResNet18", "teacher": "vit_small_patch16_224", "student": "resnet18"},
               {"label": "ConvNeXt-T -> DeiT-T", "teacher": "convnext_tiny", "student": "deit_tiny_patch16_224"})
PAPER_SETUP = {"img_size": 224, "num_classes": 100, "batch_size": 16}
PAPER_METHODS = ("kd", "ofa", "tas")
PAPER_TARGETS = {"ViT-S -> ResNet18": {"tas/kd": 1.2, "tas/ofa": 1.0}}


def _training_step(method: str, teacher: torch.nn.Module, student: torch.nn.Module, img_size: int,
                   dev: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One step exactly as `distill.fit` takes it: the same `loop.train_step` (recipe, AMP on CUDA,
    GradScaler, learning-rate schedule, clipping)."""
    recipe = Recipe.for_student(student, epochs=1)
    impl = methods.build(method, None if method == "baseline" else teacher, student, img_size=img_size,
                         label_smoothing=recipe.label_smoothing)
    run = loop.start(impl, recipe, steps_per_epoch=1, epochs=1, device=str(dev))
    return lambda x, y: loop.train_step(run, x, y, 0)


def step_times(method_names: Sequence[str], teacher: str, student: str, *, img_size: int, batch_size: int,
               num_classes: int = 10, device: str = "cpu", repeats: int = 15, warmup: int = 3,
               seed: int = 0, cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per training step of each method: every repeat times each method once, the order rotated
    by one each repeat; untrained models on one fixed random batch (speed does not depend on weights).
    `cpu`, when given, receives each step's process CPU seconds too: on a machine other jobs share, CPU
    time counts the work a step does while wall time also counts the waiting for a core."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    dev = config.device(device)
    config.seed_everything(seed)
    channels_last = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    t_model = models.create(teacher, num_classes=num_classes, img_size=img_size).to(dev, memory_format=channels_last)
    t_model.eval().requires_grad_(False)
    steps = {m: _training_step(m, t_model, models.create(student, num_classes=num_classes, img_size=img_size)
                               .to(dev, memory_format=channels_last), img_size, dev) for m in method_names}
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev).contiguous(memory_format=channels_last)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    for _ in range(warmup):
        for step in steps.values():
            step(x, y)
    times: dict[str, list[float]] = {m: [] for m in method_names}
    order = list(method_names)
    for r in range(repeats):
        for m in order[r % len(order):] + order[:r % len(order)]:
            _sync(dev)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[m](x, y)
            _sync(dev)
            times[m].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(m, []).append(time.process_time() - start_cpu)
    return times


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _ratios(median: dict[str, float]) -> dict[str, float]:
    return {f"{a}/{b}": round(median[a] / median[b], 3) for a, b in RATIOS if a in median and b in median}


def summarise(times: dict[str, list[float]], batch_size: int,
              cpu: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Median step time, images/s and the step-time ratios of whichever of tas, ofa and kd were timed;
    with `cpu`, the median CPU seconds per step and their ratios as well."""
    median = {m: statistics.median(ts) for m, ts in times.items()}
    out = {"step_time_s": {m: round(v, 5) for m, v in median.items()},
           "step_time_iqr_s": {m: round(_iqr(ts), 5) for m, ts in times.items()},
           "images_per_s": {m: round(batch_size / v, 1) for m, v in median.items()},
           "step_time_ratio": _ratios(median)}
    if cpu:
        cpu_median = {m: statistics.median(ts) for m, ts in cpu.items()}
        out.update(cpu_time_s={m: round(v, 5) for m, v in cpu_median.items()}, cpu_time_ratio=_ratios(cpu_median))
    return out


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def added_parameters(teacher: str, student: str, *, img_size: int, num_classes: int,
                     method_names: Sequence[str] = ("kd", "ofa:s123", "ofa", "tas")) -> dict[str, Any]:
    """Parameters each method adds to the student (branches, L2G, projectors), and ours against the
    authors': `ofa:s123` (branches after stages 1-3) over `ofa` (their default, stages 1-4)."""
    t_model = models.create(teacher, num_classes=num_classes, img_size=img_size)
    s_model = models.create(student, num_classes=num_classes, img_size=img_size)
    counts = {m: models.count_parameters(methods.build(m, t_model, s_model, img_size=img_size)) for m in method_names}
    ratios = {f"{a}/{b}": round(counts[a] / counts[b], 3) for a, b in (("ofa:s123", "ofa"), ("tas", "ofa"))
              if a in counts and b in counts}
    return {"added": counts, "student": models.count_parameters(s_model), "ratio": ratios}


def tas_split(teacher: str, student: str, *, img_size: int, batch_size: int, num_classes: int,
              device: str = "cpu", repeats: int = 5) -> dict[str, float]:
    """Where a TAS step's time goes, median milliseconds of each part timed alone: the whole step (the
    three outputs, the loss, backward), the teacher's forward, the student's forward and backward, and the
    assistant from the stage-3 activation (forward and backward), L2G alone included."""
    dev = config.device(device)
    config.seed_everything(0)
    t_model = models.create(teacher, num_classes=num_classes, img_size=img_size).to(dev).eval()
    tas = methods.build("tas", t_model, models.create(student, num_classes=num_classes, img_size=img_size).to(dev),
                        img_size=img_size).to(dev)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    s3 = tas.s_view.features(x)[2] if tas.assistant.front_owner == "student" else tas.t_view.features(x)[2]
    s3 = s3.detach().requires_grad_(True)

    def whole():
        outputs, _, _ = tas.outputs(x)
        tas.criterion(outputs, y)[0].backward()

    def teacher_forward():
        with torch.no_grad():
            tas.t_view.features(x)

    def student_step():
        tas.s_view.head(tas.s_view.features(x)[-1]).sum().backward()

    def assistant_step():
        logits, pooled = tas.assistant.forward_from_stage3(s3)
        (logits.sum() + pooled.sum()).backward()

    def l2g_step():
        tas.assistant.l2g(tas.assistant._front.nchw(s3)).sum().backward()

    parts = {"step": whole, "teacher forward": teacher_forward, "student forward+backward": student_step,
             "assistant from stage 3": assistant_step, "of which L2G": l2g_step}
    out = {}
    for name, fn in parts.items():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            _sync(dev)
            start = time.perf_counter()
            fn()
            _sync(dev)
            times.append(time.perf_counter() - start)
        out[name] = round(1000 * statistics.median(times), 3)
    return out


def tas_floor(step_time_s: dict[str, float], split_ms: dict[str, float]) -> dict[str, float]:
    """The lowest TAS/KD and TAS/OFA the method allows: a TAS step runs all of KD's step (teacher forward,
    student step) and the assistant from stage 3 besides (L2G, and the frozen stage 4 forward and backward
    to L2G's input), so it cannot take less than KD's step plus that part, timed alone."""
    least = step_time_s["kd"] + split_ms["assistant from stage 3"] / 1000
    return {"tas/kd": round(least / step_time_s["kd"], 3), "tas/ofa": round(least / step_time_s["ofa"], 3)}


def paper_pairs(device: str = "cpu", *, repeats: int = 15, warmup: int = 3, batch_size: int | None = None,
                progress: bool = True) -> list[dict[str, Any]]:
    """Step times of KD, OFA (the authors' default) and TAS on the paper's pairs at 224 px (batch 16 unless
    `batch_size`), their ratios against `PAPER_TARGETS`, and each method's added parameters."""
    batch = batch_size or PAPER_SETUP["batch_size"]
    rows = []
    for pair in PAPER_PAIRS:
        say(progress, f"step times: {pair['label']} ({pair['teacher']} -> {pair['student']}), 224 px, batch {batch}, "
                      f"{repeats} interleaved repeats on {device}")
        cpu: dict[str, list[float]] = {}
        times = step_times(PAPER_METHODS, pair["teacher"], pair["student"], img_size=PAPER_SETUP["img_size"],
                           batch_size=batch, num_classes=PAPER_SETUP["num_classes"], device=device, repeats=repeats,
                           warmup=warmup, cpu=cpu if device == "cpu" else None)
        row = {**pair, "img_size": PAPER_SETUP["img_size"], "batch_size": batch, **summarise(times, batch, cpu),
               "parameters": added_parameters(pair["teacher"], pair["student"], img_size=PAPER_SETUP["img_size"],
                                              num_classes=PAPER_SETUP["num_classes"])}
        row["tas_split_ms"] = tas_split(pair["teacher"], pair["student"], img_size=PAPER_SETUP["img_size"],
                                        batch_size=batch, num_classes=PAPER_SETUP["num_classes"], device=device)
        row["tas_floor"] = tas_floor(row["step_time_s"], row["tas_split_ms"])
        targets = PAPER_TARGETS.get(pair["label"], {})
        row["targets"] = targets
        row["meets_targets"] = {k: row["step_time_ratio"][k] <= v for k, v in targets.items()}
        rows.append(row)
    return rows


def _ddp_worker(rank: int, world: int, port: int, spec: dict[str, Any], results) -> None:
    """One process of `ddp_overhead`: `spec["repeats"]` timed training steps after warm-up, one thread, on
    its own fixed batch; rank 0 puts the step times on `results`. world 1: no process group, no DDP."""
    torch.set_num_threads(1)
    ctx = distributed.Context(rank, world, rank)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ctx = distributed.init(ctx, torch.device("cpu"), "gloo")
    try:
        config.seed_everything(0)
        t_model = models.create(spec["teacher"], num_classes=10, img_size=spec["img_size"]).eval().requires_grad_(False)
        student = models.create(spec["student"], num_classes=10, img_size=spec["img_size"])
        recipe = Recipe.for_student(student, epochs=1)
        impl = methods.build(spec["method"], t_model, student, img_size=spec["img_size"],
                             label_smoothing=recipe.label_smoothing)
        run = loop.start(impl, recipe, steps_per_epoch=1, epochs=1, device="cpu", dist=ctx)
        config.seed_everything(rank)
        x = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"])
        y = torch.randint(0, 10, (spec["batch_size"],))
        times = []
        for i in range(spec["warmup"] + spec["repeats"]):
            distributed.barrier(ctx)  # every process starts the step together: the wait is the overhead
            start = time.perf_counter()
            loop.train_step(run, x, y, 0)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - start)
        if rank == 0:
            results.put(times)
    finally:
        distributed.shutdown()


def ddp_overhead(teacher: str, student: str, *, img_size: int, batch_size: int, method: str = "tas",
                 repeats: int = 15, warmup: int = 3, progress: bool = True) -> dict[str, Any]:
    """Per-step time of one DDP training step on 2 processes (gloo, CPU, one thread each) against one
    process, both at `batch_size` per process (what adding a process costs: gradient all-reduce, the
    gathered InfoNCE negatives, the finite-loss check), each in freshly spawned processes."""
    say(progress, f"DDP overhead: {method} {teacher} -> {student}, {img_size} px, batch {batch_size} per process, "
                  f"1 vs 2 processes (gloo, 1 thread each), {repeats} steps")
    spec = {"teacher": teacher, "student": student, "img_size": img_size, "batch_size": batch_size,
            "method": method, "repeats": repeats, "warmup": warmup}
    medians = {}
    context = mp.get_context("spawn")
    for world in (1, 2):
        results = context.SimpleQueue()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(_ddp_worker, args=(world, port, spec, results), nprocs=world, start_method="spawn")
        medians[world] = statistics.median(results.get())
    return {**spec, "step_time_s": {"1 process": round(medians[1], 5), "2 processes": round(medians[2], 5)},
            "overhead": round(medians[2] / medians[1] - 1, 3), "overhead_ms": round(1000 * (medians[2] - medians[1]), 2)}


def family_pairs(models: Sequence[str], *, img_size: int, batch_size: int, device: str = "cpu", repeats: int = 15,
                 warmup: int = 3, progress: bool = True) -> list[dict[str, Any]]:
    """For every teacher -> student pair of `models` (same-family pairs included): KD's, OFA's and TAS's step
    times side by side, and TAS/KD, OFA/KD, TAS/OFA; what each method's gain in a family matrix costs."""
    rows = []
    for teacher in models:
        for student in models:
            say(progress, f"step times: {teacher} -> {student}, {img_size} px, batch {batch_size}")
            times = step_times(PAPER_METHODS, teacher, student, img_size=img_size, batch_size=batch_size,
                               device=device, repeats=repeats, warmup=warmup)
            rows.append({"teacher": teacher, "student": student, **summarise(times, batch_size)})
    return rows
