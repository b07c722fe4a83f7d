"""The training loop shared by every method: `fit(method, train, val, epochs=...)` trains a built method.

One loop trains a student with any method `methods.build` made (names and profiles are resolved above
it): the optimiser recipe (`tas_lite.recipes`), AMP and channels_last on CUDA, per-epoch history of every
loss term, checkpoints at each epoch end with exact resume (refused under another set-up), and a clear
stop on a non-finite loss or non-finite weights; models that do not fit the data are refused before any
work. It returns the typed record of the run (`results.Result`). It reads in four parts:
`start` (set-up), `train_step` (one optimiser step, also what `bench` times), `train_epoch` and
`finish` (final evaluation); `save_checkpoint` and `load_checkpoint` (resume) sit between epochs.
The same loop runs as one process of a DDP run (`dist=`, see `tas_lite.distributed`): the method's
trainable parts in one DDP module, the sampler told each epoch, rank 0 alone validating and writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from . import checkpoints, config, data, distributed, methods
from .models import input_size, model_name
from .recipes import Recipe
from .results import BEST_ON_TEST, BEST_ON_VALIDATION, LAST, SELECTIONS, Result, Setup
from .util import progress_bar

PROBE_IMAGES = 128  # the fixed batch of scored images a method measures itself on after each epoch


class NonFiniteLoss(RuntimeError):
    """Raised when a loss term turns NaN/inf; the message names epoch, step and term."""


@torch.no_grad()
def evaluate(forward, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> float:
    """Top-1 accuracy (%) of `forward(x) -> logits` over a loader."""
    correct = total = 0
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(x)
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return 100.0 * correct / total


def _to_device(x, y, device, channels_last):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def amp_dtype(device: torch.device, amp: bool | None) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler): bf16 where supported, else fp16 with a scaler."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None, False
    if device.type != "cuda":
        raise ValueError("amp=True needs a CUDA device; use amp=False (or None) on cpu/mps")
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


@dataclass
class Run:
    """Everything one training run holds while it trains: the method, its optimiser and the schedule."""

    impl: methods.Method
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    steps_per_epoch: int
    epochs: int
    step_fn: Any
    probe: torch.Tensor | None = None  # a fixed batch of scored images for `Method.epoch_metrics`
    last_good: str = "no checkpoint was written"
    scored: str = "val"  # the split each epoch is scored on: "val", or "test" when the test set picks the epoch
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float = float("nan")
    best_epoch: int = -1  # 1-based
    elapsed: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    dist: distributed.Context = distributed.SINGLE  # several processes: step_fn is the method in DDP


def start(impl: methods.Method, recipe: Recipe, *, steps_per_epoch: int, epochs: int, device: str = "auto",
          amp: bool | None = None, channels_last: bool | None = None, compile: bool = False,
          dist: distributed.Context = distributed.SINGLE) -> Run:
    """Set-up: move teacher, student and the method's modules to the device, build the optimiser. With
    several processes (`dist`), everything that trains goes into one DDP module (`distributed.wrap`)."""
    dev = config.device(device)
    dtype, use_scaler = amp_dtype(dev, amp)
    channels_last = dev.type == "cuda" if channels_last is None else channels_last
    for model in (impl.teacher, impl.student):
        if model is not None:
            model.to(dev, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if impl.teacher is not None:
        impl.teacher.eval()
    impl.to(dev).train()
    params = impl.trainable_parameters()
    module = distributed.wrap(impl, params, dev) if dist.active else impl
    return Run(impl, recipe, recipe.build(params), torch.amp.GradScaler("cuda", enabled=use_scaler), params, dev,
               dtype, channels_last, steps_per_epoch, epochs, torch.compile(module) if compile else module, dist=dist)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, step: int) -> methods.Step:
    """One optimiser step at global step `step`: learning rate, forward under autocast, a finite-loss
    check, backward, clipping, update. `fit` and `bench` both take their steps here."""
    for group in run.optimizer.param_groups:
        group["lr"] = run.recipe.lr_at(step, run.steps_per_epoch, run.epochs)
    run.impl.on_step(step, run.steps_per_epoch)
    x, y = _to_device(x, y, run.device, run.channels_last)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        out = run.step_fn(x, y)
    if not _finite_everywhere(run, out.loss):
        bad = [name for name, value in out.terms.items() if not torch.isfinite(value).all()] or ["total"]
        epoch, within = divmod(step, run.steps_per_epoch)
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {within + 1}: term {bad[0]!r} "
                            f"= {float(out.terms.get(bad[0], out.loss)):.4g} (all non-finite terms: {bad}). "
                            f"Training stopped; {run.last_good}. Lower the learning rate or check the inputs.")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(out.loss).backward()
    if run.recipe.clip_grad:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, run.recipe.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return out


def _finite_everywhere(run: Run, loss: torch.Tensor) -> bool:
    """The loss is finite in every process (one process stopping alone would leave the others waiting)."""
    finite = torch.isfinite(loss.detach()).float()
    if run.dist.active:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite)


def train_epoch(run: Run, train, epoch: int, *, progress: bool) -> dict[str, float]:
    """One pass over `train` (at most `steps_per_epoch` batches): mean of every loss term, accuracy, speed.
    A distributed sampler is told the epoch first, so every epoch shuffles anew and alike in all processes."""
    started = time.perf_counter()
    if hasattr(getattr(train, "sampler", None), "set_epoch"):
        train.sampler.set_epoch(epoch)
    run.impl.train()
    sums: dict[str, float] = {}
    correct = seen = 0
    bar = progress_bar(train, enabled=progress, total=run.steps_per_epoch, desc=f"{run.meta['method']} "
                       f"{epoch + 1}/{run.epochs}")
    for step, (x, y) in enumerate(bar):
        if step >= run.steps_per_epoch:
            break
        out = train_step(run, x, y, epoch * run.steps_per_epoch + step)
        for name, value in out.terms.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        correct += (out.logits.argmax(1).cpu() == (y if y.ndim == 1 else y.argmax(1))).sum().item()
        seen += len(y)
        if progress:
            bar.set_postfix(loss=f"{out.loss.item():.3f}", acc=f"{100 * correct / seen:.1f}")
    seconds = time.perf_counter() - started
    return {"epoch": epoch + 1, **{f"loss/{k}": v / run.steps_per_epoch for k, v in sums.items()},
            "train_acc": 100.0 * correct / max(1, seen), "images_per_s": seen / seconds,
            "lr": run.optimizer.param_groups[0]["lr"]}


def _evaluate_on(run: Run, loader) -> dict[str, float]:
    """Accuracy of the student and of every extra predictor (e.g. TAS's assistant) on a loader."""
    run.impl.eval()
    acc = {"student": evaluate(run.impl.student, loader, run.device, run.amp_dtype, run.channels_last)}
    for name, forward in run.impl.extra_models().items():
        acc[name] = evaluate(forward, loader, run.device, run.amp_dtype, run.channels_last)
    return acc


def _score(run: Run, row: dict[str, float], loader, epoch: int) -> None:
    """Accuracies on the scored split (named by it: `val_acc`, or `test_acc`) and the method's own
    measurements into the epoch's row; remember the best epoch's student weights."""
    acc = _evaluate_on(run, loader)
    score = row[f"{run.scored}_acc"] = acc.pop("student")
    row.update({f"{name}_{run.scored}_acc": value for name, value in acc.items()})
    if run.probe is not None:
        row.update(run.impl.epoch_metrics(run.probe))
    if not score <= run.best_score:  # also true for the first epoch (nan)
        run.best_score, run.best_epoch = score, epoch + 1
        run.best_state = {k: v.detach().clone() for k, v in run.impl.student.state_dict().items()}


class NonFiniteWeights(NonFiniteLoss):
    """Raised when a weight turned NaN/inf although every loss was finite (a huge step can do that);
    a NonFiniteLoss too, so one `except` catches both ways training can blow up."""


def check_finite_weights(run: Run, epoch: int) -> None:
    """Stop after `epoch` if any weight of the student or of the method is NaN/inf, before anything is
    validated or saved: a checkpoint never holds non-finite weights, so `run.last_good` stays true."""
    states = {"student": run.impl.student.state_dict(), "method": run.impl.extra_state()}
    bad = [f"{owner}.{name}" for owner, state in states.items() for name, value in state.items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise NonFiniteWeights(f"non-finite weights after epoch {epoch + 1} although every loss was finite: "
                               f"{bad[:3]} ({len(bad)} tensors). Training stopped; {run.last_good}. Lower the "
                               f"learning rate or check the inputs.")


CHECKPOINT_KEYS = ("setup", "setup_hash", "epoch", "student", "extra", "optimizer", "scaler", "rng", "history", "best_student")


def save_checkpoint(run: Run, result: Result, train, path: Path, epoch: int) -> None:
    """The full training state after `epoch`, so `load_checkpoint` can continue bit-identically (on CPU),
    with the set-up that made it (`setup`) so a resume under another set-up is refused. With several
    processes every one must call it: each hands over its random state, rank 0 writes."""
    generator = getattr(train, "generator", None)
    rng = {"rng": checkpoints.rng_state(), "loader_rng": generator.get_state() if generator is not None else None}
    ranks = distributed.gather_objects(run.dist, rng)
    if not run.dist.is_main:
        return
    checkpoints.save_state({
        "setup": run.meta["setup"], "setup_hash": checkpoints.config_hash(run.meta["setup"]), "epoch": epoch,
        "student": run.impl.student.state_dict(),
        "extra": run.impl.extra_state(), "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        **rng, "history": result.history, "best_student": run.best_state, "best_score": run.best_score,
        "best_epoch": run.best_epoch, "elapsed": run.elapsed,
        **({"world_size": run.dist.world_size, "ranks": ranks} if run.dist.active else {})}, path)
    run.last_good = f"the last good checkpoint (epoch {epoch + 1}) is intact at {path}, its weights finite"


def _check_same_setup(state: dict[str, Any], want: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run under another set-up (recipe, data, batch size, step cap, seed...): the
    checkpoint's set-up hash must be this run's, else every difference is listed (mixing two set-ups
    would give a result neither describes)."""
    if state["setup_hash"] == checkpoints.config_hash(want):
        return
    saved = state["setup"]
    diff = [f"{key} {saved.get(key)!r} there, {want.get(key)!r} now" for key in sorted(set(saved) | set(want))
            if saved.get(key) != want.get(key)]
    raise ValueError(f"checkpoint {path} was written by another set-up ({'; '.join(diff)}); resume with the same "
                     f"settings, or delete it (or use another checkpoint_dir) to start afresh")


def load_checkpoint(run: Run, result: Result, train, path: Path) -> int:
    """Load what `save_checkpoint` wrote, after checking it was written by this very set-up; return the
    first epoch still to train. Every process of a distributed run loads the same file and takes back its
    own random state. A damaged file is a `util.CorruptFile` naming it."""
    # random states must stay on the CPU; weights are copied over
    state = checkpoints.load_state(path, "cpu", required=CHECKPOINT_KEYS,
                                   fix="delete it to start the run from scratch, or use another checkpoint_dir")
    _check_same_setup(state, run.meta["setup"], path)
    if state.get("world_size", 1) != run.dist.world_size:
        raise ValueError(f"checkpoint {path} was written by {state.get('world_size', 1)} process(es); resume it "
                         f"with as many (this run has {run.dist.world_size}), or delete it to start over")
    rng = state["ranks"][run.dist.rank] if run.dist.active else state
    run.impl.student.load_state_dict(state["student"])
    run.impl.load_extra_state(state["extra"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    checkpoints.set_rng_state(rng["rng"])
    if rng.get("loader_rng") is not None and getattr(train, "generator", None) is not None:
        train.generator.set_state(rng["loader_rng"])
    result.history, run.best_state = state["history"], state["best_student"]
    run.best_score, run.best_epoch = state["best_score"], state["best_epoch"]
    run.elapsed = state["elapsed"]
    run.last_good = f"the last good checkpoint (epoch {state['epoch'] + 1}) is intact at {path}, its weights finite"
    return state["epoch"] + 1


def finish(run: Run, result: Result, test=None) -> Result:
    """Final numbers: the last epoch's accuracies, the test accuracy of the epoch `result.selection` picks,
    and of every extra predictor. Leaves no stale gradients behind."""
    run.impl.eval()
    run.optimizer.zero_grad(set_to_none=True)  # a trained model hands over no stale gradients
    result.wall_s = run.elapsed
    result.images_per_s = sum(r["images_per_s"] for r in result.history) / len(result.history)
    last = result.history[-1]
    result.final_val_acc = last.get("val_acc")
    if result.selection == BEST_ON_TEST:
        result.selected_epoch, result.selected_test_acc = run.best_epoch, run.best_score
    if test is None:
        return result
    acc = _evaluate_on(run, test)
    result.final_test_acc = acc.pop("student")
    result.extra_test_acc.update(acc)
    if result.selection == LAST:
        result.selected_epoch, result.selected_test_acc = len(result.history), result.final_test_acc
    elif result.selection == BEST_ON_VALIDATION and run.best_state is not None:
        student = run.impl.student
        final_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        student.load_state_dict(run.best_state)
        result.selected_epoch = run.best_epoch
        result.selected_test_acc = evaluate(student, test, run.device, run.amp_dtype, run.channels_last)
        student.load_state_dict(final_state)
    return result


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
            _score(run, row, scored, epoch)
        distributed.barrier(run.dist)
        run.elapsed += time.perf_counter() - started
        row["wall_s"] = run.elapsed
        result.history.append(row)
        if ckpt is not None:
            save_checkpoint(run, result, train, ckpt, epoch)
