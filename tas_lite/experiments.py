"""Experiments: one configuration end to end (`train`), and resumable sweeps over many (`sweep`).

Both take a resolved `profiles.Settings`; nothing here reads a profile by name. A sweep runs every
configuration whose results JSON is missing in its folder (so an interrupted sweep resumes where it
stopped), then aggregates the folder into a table (`tas_lite.tables`).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import multiprocessing
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from . import (
    catalog,
    config,
    data,
    distill,
    distributed,
    methods,
    models,
    profiles,
    results,
    tables,
    teachers,
)
from .profiles import Settings
from .recipes import Recipe
from .results import BEST_ON_TEST, BEST_ON_VALIDATION, Result, machine
from .util import check_writable, progress_bar, say

# Bump when training changes in a way the fingerprint below cannot see (a loss formula, the loop itself):
# results made before then are reported stale.
TRAINING_VERSION = 1


def fingerprint(method: str, teacher: str | None, settings: Settings, student: nn.Module, recipe: Recipe,
                method_arguments: dict[str, Any]) -> dict[str, Any]:
    """Everything a run's numbers depend on besides its seed, as plain values, from the objects the run
    built: data, augmentation, schedule, the student's size and optimiser recipe, every method argument
    (defaults included), the teacher's cache recipe. Two runs with equal fingerprints ran the same recipe;
    a shipped result whose fingerprint differs from the current code's is stale. The number of processes
    is not in it: N processes train as one does on the same global batch."""
    name, _ = catalog.parse(method)
    spec = {"training_version": TRAINING_VERSION, "dataset": settings.dataset, "img_size": settings.img_size,
            "augmentation": data.describe_augmentation(settings.dataset, settings.img_size, recipe.augment),
            "batch_size": settings.batch_size, "epochs": settings.epochs, "max_steps": settings.max_steps,
            "student": models.model_name(student), "student_parameters": models.count_parameters(student),
            "recipe": recipe.as_dict(), "method": method, "method_arguments": method_arguments,
            **({"paper": True} if settings.paper else {}),
            **({"train_images": settings.train_images} if settings.train_images is not None else {})}
    if name != "baseline":
        spec["teacher"] = {"name": teacher, "epochs": settings.teacher_epochs, "batch_size": settings.teacher_batch_size,
                           "max_steps": settings.teacher_max_steps, "pretrained": settings.pretrained,
                           "recipe_version": teachers.RECIPE_VERSION}
    return json.loads(json.dumps(spec))  # tuples as lists, exactly as a results JSON stores them


def expected_fingerprint(method: str, teacher: str | None, student: str, settings: Settings) -> dict[str, Any]:
    """The fingerprint today's code would give `train(method, teacher, student, settings)` (the student and
    its recipe built as `train` builds them, untrained)."""
    model = models.create(student, num_classes=data.num_classes(settings.dataset), img_size=settings.img_size)
    recipe = Recipe.choose(settings.recipe, model, settings.epochs, settings.batch_size)
    return fingerprint(method, teacher, settings, model, recipe, methods.arguments(method))


def train(method: str, teacher: str | None, student: str, settings: Settings, *, seed: int = 0,
          out_dir: str | Path | None = None, progress: bool = True, method_kwargs: dict[str, Any] | None = None,
          command: str | None = None, dist: distributed.Context = distributed.SINGLE,
          checkpoint_dir: str | Path | None = None, resume: bool = False, sync_bn: bool = False) -> Result:
    """One configuration: seeded loaders, the cached teacher, a fresh student, `distill.fit`, results JSON.

    The teacher is always trained with seed 0 (one fixed teacher per pair); `seed` varies the student,
    the data order and the validation split (and, with `settings.train_images`, which labelled images the
    student gets; the teacher always trains on the whole split). A baseline loads no teacher and records
    none. The student and the method's new modules are each initialised from `seed` itself, so nothing
    loaded in between moves them. The result carries its fingerprint and provenance: `command` (what to
    type to make it again), commit, date, torch, threads, CPU. With `settings.paper`, there is no
    validation split and the test set picks the reported epoch, as the paper does. `dist`: this process's
    place in a DDP run (`distributed.init`); `settings.batch_size` is the global batch, rank 0 prepares the
    teacher first and alone writes the results JSON. Names, seed and `out_dir` are checked before anything
    trains.
    """
    configurations([teacher] if teacher else [], [student], [method], [seed])
    if out_dir is not None:
        check_writable(out_dir, "choose another out_dir (--out), or fix its permissions")
    teacher = teacher if catalog.parse(method)[0] != "baseline" else None
    config.seed_everything(seed)
    s_model = models.create(student, num_classes=data.num_classes(settings.dataset), img_size=settings.img_size)
    recipe = Recipe.choose(settings.recipe, s_model, settings.epochs, settings.batch_size)
    per_process = distributed.check_batch(settings.batch_size, dist.world_size,
                                          even=recipe.augment is not None and recipe.augment.mixes)
    with distributed.main_first(dist):  # the data first: a bad train_images fails before a teacher trains
        train_data, val_data, test_data = data.loaders(
            settings.dataset, batch_size=per_process, img_size=settings.img_size, seed=seed, download=True,
            val_fraction=0.0 if settings.paper else 0.1, policy=recipe.augment, train_images=settings.train_images,
            shard=(dist.rank, dist.world_size) if dist.active else None)
        t_model = teachers.from_settings(teacher, settings, progress=progress and dist.is_main) if teacher else None
    device = str(distributed.device_for(settings.device, dist)) if dist.active else settings.device
    if dist.active and t_model is not None:  # one teacher, even where processes read different caches
        distributed.broadcast_module(dist, t_model.to(device))
    if sync_bn:
        distributed.convert_sync_batchnorm(s_model, config.device(device), dist)
    config.seed_everything(seed)
    impl = methods.build(method, t_model, s_model, img_size=settings.img_size, label_smoothing=recipe.label_smoothing,
                         **(method_kwargs or {}))
    options = distill.Options(epochs=settings.epochs, recipe=recipe, seed=seed, max_steps=settings.max_steps,
                              selection=BEST_ON_TEST if settings.paper else BEST_ON_VALIDATION, device=device,
                              amp=settings.amp, progress=progress and dist.is_main, checkpoint_dir=checkpoint_dir,
                              resume=resume, dist=dist)
    result = distill.fit(impl, train_data, None if settings.paper else val_data, test=test_data, options=options)
    if not dist.is_main:
        return result
    result.setup = dataclasses.replace(result.setup, profile=settings.profile)
    result.fingerprint = fingerprint(method, teacher, settings, s_model, recipe, impl.arguments)
    result.provenance = {**machine(), "command": command or f"experiments.train({method!r}, {teacher!r}, "
                                                           f"{student!r}, profile {settings.profile!r}, seed={seed})"}
    if out_dir is not None:
        result.save(Path(out_dir) / results.file_name(teacher, student, method, seed))
    return result


def summary(result: Result) -> str:
    """The run's numbers in words: final accuracy, and the reported epoch as its selection chose it."""
    head = (f"{result.method} {result.teacher or '-'} -> {result.student}, seed {result.seed}, {result.epochs} epochs: "
            f"final test accuracy {result.final_test_acc:.2f}%")
    if result.selection == BEST_ON_TEST:
        return (f"{head}; best test epoch {result.selected_test_acc:.2f}% (epoch {result.selected_epoch}), the way "
                f"the paper reports (chosen on the test set itself)")
    if result.selection == BEST_ON_VALIDATION:
        best = result.history[result.selected_epoch - 1]["val_acc"]
        return (f"{head}; best on validation {best:.2f}% (epoch {result.selected_epoch}), whose test accuracy is "
                f"{result.selected_test_acc:.2f}%")
    return head


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
        return results.file_name(self.teacher, self.student, self.method, self.seed)


def configurations(teacher_names: Sequence[str], student_names: Sequence[str], method_names: Sequence[str],
                   seeds: Sequence[int]) -> list[Configuration]:
    """Every (teacher, student, method, seed), baselines once per student; names checked up front."""
    method_names = catalog.check(method_names)
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
          workers: int = 1, command: str | None = None, shard: tuple[int, int] | None = None,
          devices: Sequence[str] | None = None) -> tables.SweepTable | None:
    """Run every configuration whose results JSON is missing in `out_dir`, then aggregate the folder.

    Lists left at None take the settings' teacher, student, methods and seeds; methods may be variants
    ("tas:no_nce"). `workers` > 1 trains that many configurations at once, in separate processes that
    share the CPU threads (small models use threads poorly, so on few cores one-thread workers finish
    more runs per hour). `devices` (["cuda:0", "cuda:1"]) trains one configuration per device at once,
    each in its own process. `shard=(i, n)` takes only share i of n of the configurations (machines or
    SLURM array tasks sharing one results folder); the table is saved once every configuration of the
    whole sweep has its JSON, by whichever share finishes last (None is returned until then, or the
    table of what is done so far). A results JSON in the folder made with another recipe (its
    fingerprint differs) is an error listing the differences, never silently reused.
    """
    runs = configurations(teacher_names or [settings.teacher], student_names or [settings.student],
                          method_names or settings.methods, settings.seeds if seeds is None else seeds)
    tables.check_metric(metric)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if devices is not None:
        devices = distributed.parse_devices(devices)
        if workers not in (1, len(devices)):
            raise ValueError(f"--devices trains one configuration per device ({len(devices)} at once); "
                             f"drop --workers {workers}")
        workers = len(devices)
    mine = distributed.shard(runs, *shard) if shard is not None else runs
    out = check_writable(out_dir if out_dir is not None else default_dir(settings),
                         "choose another out_dir (--out), or fix its permissions")
    todo = [r for r in mine if not _finished(out / r.filename, r, settings)]
    share = f", share {shard[0]}/{shard[1]}: {len(mine)} of them here" if shard is not None else ""
    say(progress, f"sweep ({settings.profile}, {settings.epochs} epochs): {len(runs)} configurations{share}, "
                  f"{len(mine) - len(todo)} already done, {len(todo)} to run -> {out}")
    if settings.train_images is not None:  # a count the split cannot give fails here, before any teacher trains
        for seed in sorted({r.seed for r in todo}):
            data.loaders(settings.dataset, batch_size=settings.batch_size, img_size=settings.img_size, seed=seed,
                         train_images=settings.train_images)
    first = settings.replace(device=devices[0]) if devices else settings
    for name in sorted({r.teacher for r in todo if r.teacher}):  # each teacher trained once, before any worker
        teachers.from_settings(name, first, progress=progress)
    for r, result in _execute(todo, settings, out, workers, progress, command, devices):
        say(progress, f"  {r.method:8s} {r.teacher or '-'} -> {r.student} seed {r.seed}: "
                      f"{result.final_test_acc:.2f}% test in {result.wall_s:.0f} s")
    return _table(runs, out, metric, progress)


def _table(runs: list[Configuration], out: Path, metric: str, progress: bool) -> tables.SweepTable | None:
    """The folder's table, saved when every configuration of the sweep has its JSON (else only returned)."""
    missing = sum(not (out / r.filename).is_file() for r in runs)
    if missing == len(runs):
        return None
    table = tables.aggregate(out, metric=metric)
    if missing:
        say(progress, f"{missing} of {len(runs)} configurations still to run (other shares); the table is "
                      f"saved when they are done (or run the sweep again without --shard)")
        return table
    paths = table.save(out)
    say(progress, f"table: {paths['md']}")
    return table


_WORKER_DEVICE: str | None = None  # the device a sweep worker process claimed (see `_claim_device`)


def _claim_device(devices) -> None:
    """Worker-process initialiser: take one device off the queue, for good."""
    global _WORKER_DEVICE
    _WORKER_DEVICE = devices.get()


def _run_one(r: Configuration, settings: Settings, out: Path, threads: int | None, command: str | None) -> Result:
    """One configuration of a sweep (in a worker process when `threads` is set)."""
    if threads:
        torch.set_num_threads(threads)
    if _WORKER_DEVICE is not None:
        settings = settings.replace(device=_WORKER_DEVICE)
    return train(r.method, r.teacher, r.student, settings, seed=r.seed, out_dir=out, progress=False, command=command)


def _execute(todo: list[Configuration], settings: Settings, out: Path, workers: int, progress: bool,
             command: str | None, devices: list[str] | None = None):
    """(configuration, result) for each run, in this process or in `workers` spawned processes (with
    `devices`: one per device, each worker holding its device for good)."""
    if workers == 1 or len(todo) < 2:
        here = settings.replace(device=devices[0]) if devices else settings
        for r in progress_bar(todo, enabled=progress, desc="sweep"):
            yield r, _run_one(r, here, out, None, command)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    claims = context.Queue()
    for device in devices or []:
        claims.put(device)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_claim_device if devices else None,
                               initargs=(claims,) if devices else ())
    with pool:
        futures = [(r, pool.submit(_run_one, r, settings, out, threads, command)) for r in todo]
        for r, future in progress_bar(futures, enabled=progress, desc="sweep"):
            yield r, future.result()


def _finished(path: Path, r: Configuration, settings: Settings) -> bool:
    """True if `path` holds this configuration made with today's recipe; a run of another recipe is an
    error naming what differs, never silently reused."""
    if not path.is_file():
        return False
    done = Result.load(path)
    have = done.fingerprint
    want = expected_fingerprint(r.method, r.teacher, r.student, settings)
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


def command_settings(command: str, profile: str) -> Settings:
    """The settings a recorded `python -m tas_lite sweep ...` (or `train ...`) command resolves to with
    today's code: its profile, with the recipe knobs the command sets itself (`--dataset`, `--epochs`,
    `--train-images`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dataset")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-images", type=int)
    try:
        words = shlex.split(command)
    except ValueError:  # not a shell command (e.g. "experiments.train(...)"): no flags to read
        words = command.split()
    known, _ = parser.parse_known_args(words)
    return profiles.resolve(profile, dataset=known.dataset, epochs=known.epochs, train_images=known.train_images)


def stale(folder: str | Path) -> list[str]:
    """One line per results JSON in `folder` whose recipe is not what its recorded command would train with
    today's code (fingerprint differences listed, and the command that makes it again); [] when all are
    current. A changed profile default is stale unless the command set that knob itself."""
    lines = []
    for r, path in zip(results.load_folder(folder), sorted(Path(folder).glob(results.PATTERN))):
        command = r.provenance.get("command", "")
        settings = command_settings(command, r.setup.profile or "cpu")
        differences = describe_differences(r.fingerprint, expected_fingerprint(r.method, r.teacher, r.student,
                                                                               settings))
        if differences:
            lines.append(f"stale: {path.name} ({differences}); make it again with: "
                         f"{command or 'python -m tas_lite sweep ...'}")
    return lines


def scratch_dir(prefix: str = "tas_lite_sweep_") -> Path:
    """A fresh temporary folder (for a throwaway demo sweep) that is deleted when this Python process, a
    notebook kernel included, exits; nothing piles up in the temp folder run after run."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
