"""Experiments: one configuration end to end (`run`), and resumable sweeps over many (`sweep`).

Both take a resolved `profiles.Settings`; nothing here reads a profile by name. A sweep runs every
configuration whose results JSON is missing in its folder (so an interrupted sweep resumes where it
stopped), then aggregates the folder into a table (`tas_lite.tables`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm

from . import config, data, distill, methods, models, tables, teachers
from .profiles import Settings
from .results import Result
from .util import check_writable, progress_bar, say


def result_name(teacher: str | None, student: str, method: str, seed: int) -> str:
    """File name of one run's results JSON: what sweeps look for to skip finished configurations."""
    return f"{teacher or 'none'}__{student}__{method}__seed{seed}.json"


def run(method: str, teacher: str | None, student: str, settings: Settings, *, seed: int = 0,
        out_dir: str | Path | None = None, progress: bool = True,
        method_kwargs: dict[str, Any] | None = None) -> Result:
    """One configuration: seeded loaders, the cached teacher, a fresh student, `distill.fit`, results JSON.

    The teacher is always trained with seed 0 (one fixed teacher per pair); `seed` varies the student,
    the data order and the validation split. Names, seed and `out_dir`'s writability are checked
    before anything trains.
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
                         teacher_test_acc=(t_model.tas_lite_info.get("test_acc") if t_model is not None else None))
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
          out_dir: str | Path | None = None, progress: bool = True,
          metric: str = "final_test_acc") -> tables.SweepTable:
    """Run every configuration whose results JSON is missing in `out_dir`, then aggregate the folder.

    Lists left at None take the settings' teacher, student, methods and seeds. Results made with another
    profile, epoch count, dataset or batch size in the folder are an error (they would silently mix in the
    table). After changing training code, sweep into a fresh folder: old results are not re-run.
    """
    runs = configurations(teacher_names or [settings.teacher], student_names or [settings.student],
                          method_names or settings.methods, settings.seeds if seeds is None else seeds)
    tables.check_metric(metric)
    out = check_writable(out_dir if out_dir is not None else default_dir(settings),
                         "choose another out_dir (--out), or fix its permissions")
    todo = [r for r in runs if not _finished(out / r.filename, settings)]
    say(progress, f"sweep ({settings.profile}, {settings.epochs} epochs): {len(runs)} configurations, "
                  f"{len(runs) - len(todo)} already done, {len(todo)} to run -> {out}")
    bar = progress_bar(todo, enabled=progress, desc="sweep")
    for r in bar:
        if progress:
            bar.set_description(f"{r.method} {r.teacher or '-'} -> {r.student} seed {r.seed}")
        result = run(r.method, r.teacher, r.student, settings, seed=r.seed, out_dir=out, progress=False)
        if progress:
            bar.write(f"  {r.method:8s} {r.teacher or '-'} -> {r.student} seed {r.seed}: "
                      f"{result.final_test_acc:.2f}% test in {result.wall_s:.0f} s")
    table = tables.aggregate(out, metric=metric)
    paths = table.save(out)
    say(progress, f"table: {paths['md']}")
    return table


def _finished(path: Path, settings: Settings) -> bool:
    """True if `path` holds a run of this setup; a run of another setup is an error, never silently reused."""
    if not path.is_file():
        return False
    done = Result.load(path)
    have = {"profile": done.config.get("profile"), "epochs": done.epochs, "dataset": done.config.get("dataset"),
            "batch_size": done.config.get("batch_size")}
    want = {"profile": settings.profile, "epochs": settings.epochs, "dataset": settings.dataset,
            "batch_size": settings.batch_size}
    if have != want:
        raise ValueError(f"{path} holds a run with {have}, but this sweep asks for {want}; "
                         f"use another out_dir or delete it")
    return True


def scratch_dir(prefix: str = "tas_lite_sweep_") -> Path:
    """A fresh temporary folder (for a throwaway demo sweep) that is deleted when this Python process, a
    notebook kernel included, exits; nothing piles up in the temp folder run after run."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
