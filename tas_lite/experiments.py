"""Experiments: one configuration end to end (`run`), and resumable sweeps over many (`sweep`).

Both take a resolved `profiles.Settings`; nothing here reads a profile by name. A sweep runs every
configuration whose results JSON is missing in its folder (so an interrupted sweep resumes where it
stopped), then aggregates the folder into a table (`tas_lite.tables`).
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from . import config, data, distill, methods, models, profiles, tables, teachers
from .profiles import Settings
from .results import Result, machine
from .util import check_writable, progress_bar, say

# Bump when training changes in a way the fingerprint below cannot see (a loss formula, the loop itself):
# results made before then are reported stale.
TRAINING_VERSION = 1


def result_name(teacher: str | None, student: str, method: str, seed: int) -> str:
    """File name of one run's results JSON: what sweeps look for to skip finished configurations.
    A variant's colon becomes "-" ("tas:no_nce" -> "tas-no_nce"), which every file system accepts."""
    return f"{teacher or 'none'}__{student}__{method.replace(':', '-')}__seed{seed}.json"


def fingerprint(method: str, teacher: str | None, student: str, settings: Settings) -> dict[str, Any]:
    """Everything a run's numbers depend on besides its seed, as plain values: data, augmentation,
    schedule, the student's size and optimiser recipe, every method argument (defaults included), the
    teacher's cache recipe. Two runs with equal fingerprints ran the same recipe; a shipped result whose
    fingerprint differs from the current code's is stale."""
    name, _ = methods.parse(method)
    model = models.create(student, num_classes=data.num_classes(settings.dataset), img_size=settings.img_size)
    spec = {"training_version": TRAINING_VERSION, "dataset": settings.dataset, "img_size": settings.img_size,
              "augmentation": data.describe_augmentation(settings.dataset, settings.img_size),
              "batch_size": settings.batch_size, "epochs": settings.epochs, "max_steps": settings.max_steps,
              "student": student, "student_parameters": models.count_parameters(model),
              "recipe": asdict(distill.Recipe.for_student(model, settings.epochs)),
              "method": method, "method_arguments": methods.arguments(method)}
    if name != "baseline":
        spec["teacher"] = {"name": teacher, "epochs": settings.teacher_epochs, "batch_size": settings.teacher_batch_size,
                           "max_steps": settings.teacher_max_steps, "pretrained": settings.pretrained,
                           "recipe_version": teachers.RECIPE_VERSION}
    return json.loads(json.dumps(spec))  # tuples as lists, exactly as a results JSON stores them


def run(method: str, teacher: str | None, student: str, settings: Settings, *, seed: int = 0,
        out_dir: str | Path | None = None, progress: bool = True, method_kwargs: dict[str, Any] | None = None,
        command: str | None = None) -> Result:
    """One configuration: seeded loaders, the cached teacher, a fresh student, `distill.fit`, results JSON.

    The teacher is always trained with seed 0 (one fixed teacher per pair); `seed` varies the student,
    the data order and the validation split. The result carries its fingerprint (`fingerprint`) and
    provenance: `command` (what to type to make it again), commit, date, torch, threads, CPU. Names, seed and `out_dir`'s
    writability are checked before anything trains.
    """
    configurations([teacher] if teacher else [], [student], [method], [seed])
    if out_dir is not None:
        check_writable(out_dir, "choose another out_dir (--out), or fix its permissions")
    train, val, test = data.loaders(settings.dataset, batch_size=settings.batch_size, img_size=settings.img_size,
                                    seed=seed)
    t_model = None if method == "baseline" else teachers.from_settings(teacher, settings, progress=progress)
    config.seed_everything(seed)
    s_model = models.create(student, num_classes=data.num_classes(settings.dataset), img_size=settings.img_size)
    result = distill.fit(method, t_model, s_model, train, val, test=test, epochs=settings.epochs, seed=seed,
                         device=settings.device, amp=settings.amp, progress=progress, max_steps=settings.max_steps,
                         method_kwargs=method_kwargs)
    result.teacher = teacher
    result.config.update(profile=settings.profile, dataset=settings.dataset, batch_size=settings.batch_size,
                         teacher_test_acc=(t_model.tas_lite_info.get("test_acc") if t_model is not None else None),
                         teacher_train_seconds=(t_model.tas_lite_info.get("train_seconds") if t_model is not None else None),
                         fingerprint=fingerprint(method, teacher, student, settings), provenance={
                             **machine(), "command": command or f"experiments.run({method!r}, {teacher!r}, "
                                                                f"{student!r}, profile {settings.profile!r}, seed={seed})"})
    if out_dir is not None:
        result.save(Path(out_dir) / result_name(teacher, student, method, seed))
    return result


def default_dir(settings: Settings) -> Path:
    """`outputs/sweep/<profile>`: one folder per profile, so smoke results never mix with cpu ones."""
    return config.outputs_dir() / "sweep" / settings.profile


@dataclass(frozen=True)
class Configuration:
    """One training run of a sweep; baselines have no teacher (run once per student and seed)."""

    method: str
    teacher: str | None
    student: str
    seed: int

    @property
    def filename(self) -> str:
        return result_name(self.teacher, self.student, self.method, self.seed)


def configurations(teacher_names: Sequence[str], student_names: Sequence[str], method_names: Sequence[str],
                   seeds: Sequence[int]) -> list[Configuration]:
    """Every (teacher, student, method, seed), baselines once per student; names checked up front."""
    method_names = methods.check(method_names)
    bad_seeds = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
    if bad_seeds or not seeds:
        raise ValueError(f"seeds must be non-negative ints (at least one), got {list(seeds)}")
    for name in [*teacher_names, *student_names]:
        if name not in models.TINY and not timm.is_model(name):
            raise ValueError(f"unknown model {name!r}; tiny models: {', '.join(models.TINY)}, or any timm name")
    if not teacher_names and any(m != "baseline" for m in method_names):
        raise ValueError("distillation methods need at least one teacher")
    runs = [Configuration("baseline", None, s, seed) for s in student_names for seed in seeds
            if "baseline" in method_names]
    runs += [Configuration(m, t, s, seed) for t in teacher_names for s in student_names for m in method_names
             if m != "baseline" for seed in seeds]
    return runs


def sweep(settings: Settings, teacher_names: Sequence[str] | None = None, student_names: Sequence[str] | None = None,
          method_names: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *,
          out_dir: str | Path | None = None, progress: bool = True, metric: str = "final_test_acc",
          workers: int = 1, command: str | None = None) -> tables.SweepTable:
    """Run every configuration whose results JSON is missing in `out_dir`, then aggregate the folder.

    Lists left at None take the settings' teacher, student, methods and seeds; methods may be variants
    ("tas:no_nce"). `workers` > 1 trains that many configurations at once, in separate processes that
    share the CPU threads (small models use threads poorly, so on few cores one-thread workers finish
    more runs per hour). A results JSON in the folder made with another recipe (its fingerprint
    differs) is an error listing the differences, never silently reused.
    """
    runs = configurations(teacher_names or [settings.teacher], student_names or [settings.student],
                          method_names or settings.methods, settings.seeds if seeds is None else seeds)
    tables.check_metric(metric)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    out = check_writable(out_dir if out_dir is not None else default_dir(settings),
                         "choose another out_dir (--out), or fix its permissions")
    todo = [r for r in runs if not _finished(out / r.filename, r, settings)]
    say(progress, f"sweep ({settings.profile}, {settings.epochs} epochs): {len(runs)} configurations, "
                  f"{len(runs) - len(todo)} already done, {len(todo)} to run -> {out}")
    for name in sorted({r.teacher for r in todo if r.teacher}):  # each teacher trained once, before any worker
        teachers.from_settings(name, settings, progress=progress)
    for r, result in _execute(todo, settings, out, workers, progress, command):
        say(progress, f"  {r.method:8s} {r.teacher or '-'} -> {r.student} seed {r.seed}: "
                      f"{result.final_test_acc:.2f}% test in {result.wall_s:.0f} s")
    table = tables.aggregate(out, metric=metric)
    paths = table.save(out)
    say(progress, f"table: {paths['md']}")
    return table


def _run_one(r: Configuration, settings: Settings, out: Path, threads: int | None, command: str | None) -> Result:
    """One configuration of a sweep (in a worker process when `threads` is set)."""
    if threads:
        torch.set_num_threads(threads)
    return run(r.method, r.teacher, r.student, settings, seed=r.seed, out_dir=out, progress=False, command=command)


def _execute(todo: list[Configuration], settings: Settings, out: Path, workers: int, progress: bool,
             command: str | None):
    """(configuration, result) for each run, in this process or in `workers` spawned processes."""
    if workers == 1 or len(todo) < 2:
        for r in progress_bar(todo, enabled=progress, desc="sweep"):
            yield r, _run_one(r, settings, out, None, command)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [(r, pool.submit(_run_one, r, settings, out, threads, command)) for r in todo]
        for r, future in progress_bar(futures, enabled=progress, desc="sweep"):
            yield r, future.result()


def _finished(path: Path, r: Configuration, settings: Settings) -> bool:
    """True if `path` holds this configuration made with today's recipe; a run of another recipe is an
    error naming what differs, never silently reused."""
    if not path.is_file():
        return False
    done = Result.load(path)
    have = done.config.get("fingerprint", {})
    want = fingerprint(r.method, r.teacher, r.student, settings)
    differences = describe_differences(have, want)
    if differences:
        raise ValueError(f"{path} holds a run of another recipe ({differences}); sweep into another out_dir, "
                         f"or delete it to train it again")
    return True


def describe_differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    """"epochs: 10 -> 40; recipe.lr: ..." for every key whose value differs (nested dicts flattened)."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(have), flat(want)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "(none)") != b.get(k, "(none)"))
    return "; ".join(f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in keys)


def stale(folder: str | Path) -> list[str]:
    """One line per results JSON in `folder` whose recipe is not the current code's for its profile
    (fingerprint differences listed, and the command that makes it again); [] when all are current."""
    lines = []
    for path in sorted(Path(folder).glob("*__*__*__seed*.json")):
        r = Result.load(path)
        settings = profiles.resolve(r.config.get("profile", "cpu"))
        differences = describe_differences(r.config.get("fingerprint", {}),
                                           fingerprint(r.method, r.teacher, r.student, settings))
        if differences:
            command = r.config.get("provenance", {}).get("command", "python -m tas_lite sweep ...")
            lines.append(f"stale: {path.name} ({differences}); make it again with: {command}")
    return lines


def scratch_dir(prefix: str = "tas_lite_sweep_") -> Path:
    """A fresh temporary folder (for a throwaway demo sweep) that is deleted when this Python process, a
    notebook kernel included, exits; nothing piles up in the temp folder run after run."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
