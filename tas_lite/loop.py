"""The moving parts of one training run, which `distill.fit` puts together and `bench` times alone.

`start` (set-up: devices, the optimiser, DDP), `train_step` (one optimiser step), `train_epoch`, `score`
(accuracies on the scored split after an epoch, the best epoch's weights kept) and `finish` (the final
numbers); between epochs, the non-finite checks and the full training state (`save_checkpoint`,
`load_checkpoint`: exact resume, refused under another set-up). A run that blows up stops with a
`NonFiniteLoss` naming the epoch, the step and the term.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoints, config, distributed, methods
from .recipes import Recipe
from .results import BEST_ON_TEST, BEST_ON_VALIDATION, LAST, Result
from .util import progress_bar

PROBE_IMAGES = 128  # the fixed batch of scored images a method measures itself on after each epoch
# After each epoch the extra predictors (TAS's assistant) are scored on the first this many scored images, not all:
# an assistant runs the teacher's stages, which would cost as much as the student's whole validation pass again.
# At the end they are scored on the whole test set.
EXTRA_IMAGES = 1024


class NonFiniteLoss(RuntimeError):
    """Raised when a loss term turns NaN/inf; the message names epoch, step and term."""


@torch.no_grad()
def evaluate(forward, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, max_images: int | None = None) -> float:
    """Top-1 accuracy (%) of `forward(x) -> logits` over a loader (over its first `max_images` images when given)."""
    correct = total = 0
    for x, y in loader:
        if max_images is not None and total >= max_images:
            break
        if max_images is not None:
            x, y = x[:max_images - total], y[:max_images - total]
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


def _evaluate_on(run: Run, loader, extra_images: int | None = None) -> dict[str, float]:
    """Accuracy of the student and of every extra predictor (e.g. TAS's assistant) on a loader; the extras on
    its first `extra_images` images only, when given."""
    run.impl.eval()
    acc = {"student": evaluate(run.impl.student, loader, run.device, run.amp_dtype, run.channels_last)}
    for name, forward in run.impl.extra_models().items():
        acc[name] = evaluate(forward, loader, run.device, run.amp_dtype, run.channels_last, extra_images)
    return acc


def score(run: Run, row: dict[str, float], loader, epoch: int) -> None:
    """Accuracies on the scored split (named by it: `val_acc`, or `test_acc`) and the method's own
    measurements into the epoch's row; remember the best epoch's student weights."""
    acc = _evaluate_on(run, loader, EXTRA_IMAGES)
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
