"""`fit(method, train, val, epochs=...)`: train a built method, the one training loop every method shares.

`methods.build` makes the method (names and profiles are resolved above, in `experiments` and
`teachers`); `fit` checks that teacher and student fit the data, then runs `tas_lite.loop`'s parts: the
optimiser recipe (`tas_lite.recipes`), AMP and channels_last on CUDA, per-epoch history of every loss
term, checkpoints at each epoch end with exact resume, and a clear stop (`loop.NonFiniteLoss`) on a
non-finite loss or weights. It returns the typed record of the run (`results.Result`). The same loop
runs as one process of a DDP run (`dist=`, see `tas_lite.distributed`): the method's trainable parts in
one DDP module, the sampler told each epoch, rank 0 alone scoring and writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from . import config, data, distributed, methods
from .loop import (
    PROBE_IMAGES,
    NonFiniteLoss,
    Run,
    check_finite_weights,
    finish,
    load_checkpoint,
    save_checkpoint,
    score,
    start,
    train_epoch,
)
from .models import input_size, model_name
from .recipes import Recipe
from .results import BEST_ON_TEST, BEST_ON_VALIDATION, SELECTIONS, Result, Setup

__all__ = ["NonFiniteLoss", "Options", "fit"]  # NonFiniteLoss: what fit raises when training blows up


@dataclass(frozen=True)
class Options:
    """How `fit` trains, besides the method and the data. `selection` is the epoch a run reports (one of
    `results.SELECTIONS`: the last, the best on validation, or the best on test as the paper reports);
    `max_steps` caps the steps per epoch (smoke runs); `dist` is this process's place in a DDP run."""

    epochs: int
    recipe: Recipe | None = None  # None: `Recipe.for_student(student, epochs)`, the course's recipe
    seed: int = 0
    selection: str = BEST_ON_VALIDATION
    max_steps: int | None = None
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    progress: bool = True
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    dist: distributed.Context = distributed.SINGLE

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None (whole epochs), got {self.max_steps!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; allowed: {', '.join(map(repr, SELECTIONS))}")

    @classmethod
    def of(cls, options: Options | None, changes: dict[str, Any]) -> Options:
        """`options` (or the defaults) with `changes` applied; an unknown name is an error listing the fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ValueError(f"unknown fit option(s) {unknown}; options: {', '.join(names)}")
        if options is None:
            if "epochs" not in changes:
                raise ValueError("fit needs epochs= (or options=distill.Options(epochs=...))")
            return cls(**changes)
        return dataclasses.replace(options, **changes)


def _scored(val, test, selection: str) -> tuple[Any, str]:
    """(the loader every epoch is scored on, its split's name): validation, or the test set when the test
    set picks the epoch (the paper's way); a missing loader is a clear error."""
    if selection == BEST_ON_TEST:
        if test is None or val is not None:
            raise ValueError("selection 'best on test' scores every epoch on the test set: pass test= and no val=")
        return test, "test"
    if val is None:
        raise ValueError("fit needs a val= loader to follow progress and pick the best epoch (data.loaders gives "
                         "one); without a validation split, choose selection 'best on test (the paper's way)'")
    return val, "val"


def _first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored loader's first batch (its image size is the run's); an empty loader is a clear error."""
    for batch in loader:
        return batch
    raise ValueError("the validation loader is empty (val_fraction=0?); fit needs validation data to follow "
                     "progress and pick the best epoch: use data.loaders(..., val_fraction=0.1)")


def _check_fits_data(method: methods.Method, batch, train) -> None:
    """Before any work: each model takes the data's image size, and the student has an output for every
    class the data hold (more are allowed); else a ValueError saying what to build instead."""
    x, y = batch
    dataset = getattr(train, "dataset", None)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    size, classes = int(x.shape[-1]), max(int(y.max()) + 1, len(getattr(dataset, "classes", None) or ()))
    for role, model in (("teacher", method.teacher), ("student", method.student)):
        embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
        if getattr(embed, "strict_img_size", False) and input_size(model) != size:
            raise ValueError(f"the {role} {model_name(model)} was built for {input_size(model)} px images but the "
                             f"data are {size} px; build it with img_size={size} (models.create(..., img_size="
                             f"{size})) or load the data at {input_size(model)} px")
    outputs = getattr(method.student, "num_classes", None)
    if outputs is not None and outputs < classes:
        raise ValueError(f"the student {model_name(method.student)} predicts {outputs} classes but the data hold "
                         f"{classes}; build it with num_classes={classes} (data.num_classes(dataset) gives it)")


def _images(loader) -> int | None:
    """How many images a loader holds (its dataset's length), None without a loader."""
    return len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else None


def _setup(method: methods.Method, train, val, test, recipe: Recipe, opts: Options, batch) -> Setup:
    """What this run trains, from the objects it was given (the profile is for the caller to add)."""
    per_process = getattr(train, "batch_size", None)
    plain = lambda value: json.loads(json.dumps(value, default=str))  # noqa: E731  (tuples as lists, as JSON keeps them)
    return Setup(method=method.spec, method_arguments=plain(method.arguments), teacher=model_name(method.teacher),
                 student=model_name(method.student), dataset=data.dataset_name(train),
                 img_size=int(batch[0].shape[-1]), num_classes=method.student.num_classes,
                 train_images=_images(train), val_images=_images(val), test_images=_images(test),
                 batch_size=per_process * opts.dist.world_size if per_process else None, epochs=opts.epochs,
                 max_steps=opts.max_steps, recipe=plain(recipe.as_dict()), seed=opts.seed)


def _resume_key(setup: Setup, method: methods.Method, train, batch) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (as plain values): the set-up, the number of training
    batches, a hash of the first scored images and, for a cached teacher, its weights' sha256. Not the
    device: a run may move."""
    x, y = batch
    seen = hashlib.sha256(x[:8].detach().cpu().contiguous().numpy().tobytes() + y[:8].cpu().numpy().tobytes())
    key = {**dataclasses.asdict(setup), "train_batches": len(train), "scored_images": seen.hexdigest()[:16],
           "teacher_weights": getattr(method.teacher, "tas_lite_info", {}).get("sha256")}
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def fit(method: methods.Method, train, val=None, *, test=None, options: Options | None = None,
        **changes: Any) -> Result:
    """Train `method` (built by `methods.build(name, teacher, student)`; afterwards it holds its trained
    extras, e.g. TAS's assistant) on `train`, scoring every epoch on `val`; return the run's `Result`.

    How it trains is `options` (an `Options`), or keyword changes to it (`fit(m, train, val, epochs=3)`).
    The teacher is put in eval mode and only ever runs without gradients. `test` is scored once at the
    end (and every epoch, instead of `val`, when the test set picks the epoch). With `checkpoint_dir`, the
    full training state is saved at every epoch end; `resume=True` picks up after the last complete epoch
    and ends with the same weights as an uninterrupted run (CPU, same thread count). Training's randomness
    (augmentation, dropout) starts from `seed` here; each process of a DDP run (`dist`) then draws its own.
    """
    if not isinstance(method, methods.Method):
        raise ValueError(f"fit trains a built method, got {method!r}; build one with methods.build(name, teacher, "
                         f"student)")
    opts = Options.of(options, changes)
    if train is None:
        raise ValueError("fit needs a train= loader (tas_lite.data.loaders gives one)")
    scored, split = _scored(val, test, opts.selection)
    config.seed_everything(opts.seed)
    batch = _first_batch(scored)
    _check_fits_data(method, batch, train)
    recipe = opts.recipe or Recipe.for_student(method.student, opts.epochs)
    if method.label_smoothing != recipe.label_smoothing:
        raise ValueError(f"the method was built with label_smoothing={method.label_smoothing} but the recipe "
                         f"smooths by {recipe.label_smoothing}; build it with methods.build(..., label_smoothing="
                         f"{recipe.label_smoothing})")
    steps = min(len(train), opts.max_steps) if opts.max_steps else len(train)
    if steps == 0:
        raise ValueError("the training loader yields no batches (dataset smaller than the batch size?)")
    run = start(method, recipe, steps_per_epoch=steps, epochs=opts.epochs, device=opts.device, amp=opts.amp,
                channels_last=opts.channels_last, compile=opts.compile, dist=opts.dist)
    if opts.dist.active:  # weights are rank 0's now (DDP broadcast them); randomness differs per process
        config.seed_everything(distributed.rank_seed(opts.seed, opts.dist.rank))
    result = Result(_setup(method, train, val, test, recipe, opts, batch), selection=opts.selection,
                    teacher_info=_teacher_info(method.teacher), environment={
                        "device": str(run.device), "amp": str(run.amp_dtype), "channels_last": run.channels_last,
                        **({"processes": opts.dist.world_size} if opts.dist.active else {})})
    run.scored, run.meta = split, {"method": method.spec, "setup": _resume_key(result.setup, method, train, batch)}
    run.probe = next(iter(scored))[0][:PROBE_IMAGES].to(run.device) if opts.dist.is_main else None
    ckpt = Path(opts.checkpoint_dir) / "last.pt" if opts.checkpoint_dir else None
    first = _resume_point(run, result, train, ckpt) if opts.resume and ckpt is not None else 0
    _train_epochs(run, result, train, scored, range(first, opts.epochs), ckpt,
                  progress=opts.progress and opts.dist.is_main)
    return finish(run, result, test) if opts.dist.is_main else result


def _teacher_info(teacher: nn.Module | None) -> dict[str, Any]:
    """A cached teacher's test accuracy, training time and weights' sha256 (from its sidecar); {} otherwise."""
    info = getattr(teacher, "tas_lite_info", None) or {}
    return {k: info.get(k) for k in ("test_acc", "train_seconds", "sha256")} if teacher is not None else {}


def _resume_point(run: Run, result: Result, train, ckpt: Path) -> int:
    """The first epoch to train: the one after the checkpoint's when there is one, 0 otherwise. Every process
    of a distributed run must see the same file (a filesystem all nodes share)."""
    found = distributed.gather_objects(run.dist, ckpt.is_file())
    if len(set(found)) > 1:
        raise ValueError(f"only some processes see the checkpoint {ckpt} (by rank: {found}); put --out on a "
                         f"filesystem every node shares")
    return load_checkpoint(run, result, train, ckpt) if found[0] else 0


def _train_epochs(run: Run, result: Result, train, scored, epochs: range, ckpt: Path | None, *,
                  progress: bool) -> None:
    """Train, score (rank 0), record and checkpoint each epoch in turn."""
    for epoch in epochs:
        started = time.perf_counter()
        row = train_epoch(run, train, epoch, progress=progress)
        check_finite_weights(run, epoch)
        if run.dist.is_main:
            score(run, row, scored, epoch)
        distributed.barrier(run.dist)
        run.elapsed += time.perf_counter() - started
        row["wall_s"] = run.elapsed
        result.history.append(row)
        if ckpt is not None:
            save_checkpoint(run, result, train, ckpt, epoch)
