"""The training loop shared by every method: `fit(method, teacher, student, train, val, epochs=...)`.

One loop trains a student with any registered method (see `tas_lite.methods`): per-family optimiser
recipes, AMP and channels_last on CUDA, per-epoch history of every loss term, checkpoints at each
epoch end with exact resume (refused under another set-up), and a clear stop on a non-finite loss or
non-finite weights; models that do not fit the data are refused before any work. It reads in four parts:
`start` (set-up), `train_step` (one optimiser step, also what `bench` times), `train_epoch` and
`finish` (final evaluation); `save_checkpoint` and `load_checkpoint` (resume) sit between epochs.
The same loop runs as one process of a DDP run (`dist=`, see `tas_lite.distributed`): the method's
trainable parts in one DDP module, the sampler told each epoch, rank 0 alone validating and writing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models.convnext import ConvNeXt
from torch import nn
from torch.utils.data import Subset

from . import checkpoints, config, data, distributed, methods
from .models import input_size, model_name
from .results import Result
from .stages import family
from .util import progress_bar

PROBE_IMAGES = 128  # the fixed validation batch a method measures itself on after each epoch
PAPER_BATCH = 128  # the global batch the OFA authors' CIFAR learning rates are set for


class NonFiniteLoss(RuntimeError):
    """Raised when a loss term turns NaN/inf; the message names epoch, step and term."""


@dataclass
class Recipe:
    """Optimiser, schedule and (paper track) augmentation. `for_student` is the course's recipe, tuned on
    digits; `paper` is the OFA authors' CIFAR-100 recipe. Both pick by student family."""

    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    min_lr: float
    momentum: float = 0.9
    label_smoothing: float = 0.1
    clip_grad: float | None = None
    warmup_lr: float | None = None  # None: warm up from lr / warm-up steps; else linearly from this value
    augment: data.TimmAugment | None = None  # timm's transforms and mixup (paper track); None: the dataset's own

    @classmethod
    def for_student(cls, student: nn.Module, epochs: int) -> Recipe:
        """OFA's CIFAR recipe (authors' configs/cifar/*.yaml) by student kind, schedules scaled to `epochs`.

        BatchNorm CNNs (ResNet, MobileNetV2): SGD 0.05, cosine to 1e-3. ConvNeXt and token models
        (ViT, Swin, Mixer): AdamW, weight decay 0.05, clip 5; ConvNeXt is not an OFA student and
        diverged under SGD 0.05 in our runs. Warm-up scales the paper's 3 and 20 of 300 epochs,
        at least one step. AdamW uses 1e-3 (paper: 5e-4 at batch 128 for 300 epochs), picked on the
        validation accuracy of tiny_vit on digits after 10 epochs, seeds 0/1: batch 32 and 1e-3 gave
        73/79%, batch 32 and 2e-3 68/69%, batch 64 and 2e-3 43/44%, batch 32 and 5e-4 49%.
        """
        if family(student) == "cnn" and not isinstance(student, ConvNeXt):
            return cls("sgd", 0.05, 5e-4, warmup_epochs=epochs * 3 / 300, min_lr=1e-3)
        return cls("adamw", 1e-3, 0.05, warmup_epochs=epochs * 20 / 300, min_lr=1e-5, clip_grad=5.0)

    @classmethod
    def paper(cls, student: nn.Module, epochs: int, batch_size: int = PAPER_BATCH) -> Recipe:
        """The OFA authors' CIFAR-100 recipe (Hao840/OFAKD configs/cifar/cnn.yaml and vit_mlp.yaml over their
        train.py defaults), which the TAS paper trains with, schedules scaled to `epochs` (theirs: 300).

        BatchNorm CNNs: SGD (Nesterov) 0.05, momentum 0.9, weight decay 2e-3, 3 warm-up epochs from 1e-4,
        cosine to 1e-3, label smoothing 0.1, crop + flip (`data.PAPER_CNN`). ViT/Swin/MLP students (and
        ConvNeXt, not an OFA student, which diverged under SGD 0.05 in our runs): AdamW 5e-4, weight decay
        0.05, 20 warm-up epochs from 5e-7, cosine to 1e-5, clipping 5, RandAugment, colour jitter 0.4,
        erasing 0.25, mixup 0.8 / cutmix 1.0 with smoothing 0.1 in the soft targets (`data.PAPER_TOKEN`).
        Scaling rule: the learning rates (peak, warm-up start, floor) are theirs at a global batch of 128
        and scale linearly with the global batch, lr x batch_size / 128; the number of processes sharing
        that batch changes nothing.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        k = batch_size / PAPER_BATCH
        if family(student) == "cnn" and not isinstance(student, ConvNeXt):
            return cls("sgd", 0.05 * k, 2e-3, warmup_epochs=epochs * 3 / 300, min_lr=1e-3 * k, warmup_lr=1e-4 * k,
                       augment=data.PAPER_CNN)
        return cls("adamw", 5e-4 * k, 0.05, warmup_epochs=epochs * 20 / 300, min_lr=1e-5 * k, clip_grad=5.0,
                   warmup_lr=5e-7 * k, augment=data.PAPER_TOKEN)

    @classmethod
    def choose(cls, kind: str, student: nn.Module, epochs: int, batch_size: int) -> Recipe:
        """A profile's recipe by name: "course" (`for_student`) or "paper" (`paper`)."""
        if kind == "paper":
            return cls.paper(student, epochs, batch_size)
        if kind == "course":
            return cls.for_student(student, epochs)
        raise ValueError(f"unknown recipe {kind!r}; allowed: course, paper")

    def as_dict(self) -> dict[str, Any]:
        """Every field, except the paper-track ones a course recipe leaves unset (so fingerprints of course
        runs read as they did before those fields existed)."""
        return {k: v for k, v in asdict(self).items() if not (k in ("warmup_lr", "augment") and v is None)}

    @classmethod
    def fine_tune(cls, epochs: int) -> Recipe:
        """Fine-tuning an ImageNet-pretrained teacher: AdamW 1e-4, one warm-up epoch, cosine."""
        return cls("adamw", 1e-4, 0.05, warmup_epochs=min(1.0, epochs / 10), min_lr=1e-6, clip_grad=5.0)

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]  # biases and norms: no weight decay
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=True)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: sgd, adamw")

    def lr_at(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """Linear warm-up, then cosine decay to `min_lr`, evaluated per step."""
        total = max(1, steps_per_epoch * epochs)
        warm = max(1, int(self.warmup_epochs * steps_per_epoch))
        if step < warm and self.warmup_lr is not None:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / warm
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


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
    probe: torch.Tensor | None = None  # a fixed batch of validation images for `Method.epoch_metrics`
    last_good: str = "no checkpoint was written"
    best_state: dict[str, torch.Tensor] | None = None
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


def _validate(run: Run, result: Result, row: dict[str, float], val, epoch: int) -> None:
    """Validation accuracies (and the method's own measurements) into the epoch's row; remember the best
    epoch's student weights."""
    acc = _evaluate_on(run, val)
    row["val_acc"] = acc.pop("student")
    row.update({f"{name}_val_acc": value for name, value in acc.items()})
    if run.probe is not None:
        row.update(run.impl.epoch_metrics(run.probe))
    if not row["val_acc"] <= result.best_val_acc:  # also true for the first epoch (nan)
        result.best_val_acc, result.best_epoch = row["val_acc"], epoch + 1
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
        **rng, "history": result.history, "best_student": run.best_state, "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch, "elapsed": run.elapsed,
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
    result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
    run.elapsed = state["elapsed"]
    run.last_good = f"the last good checkpoint (epoch {state['epoch'] + 1}) is intact at {path}, its weights finite"
    return state["epoch"] + 1


def finish(run: Run, result: Result, test=None) -> Result:
    """Final numbers: last-epoch validation, test accuracy of the final and of the best-validation
    student, and of every extra predictor. Leaves no stale gradients behind."""
    run.impl.eval()
    run.optimizer.zero_grad(set_to_none=True)  # a trained model hands over no stale gradients
    result.wall_s = run.elapsed
    result.final_val_acc = result.history[-1]["val_acc"]
    result.images_per_s = sum(r["images_per_s"] for r in result.history) / len(result.history)
    if test is None:
        return result
    acc = _evaluate_on(run, test)
    result.config["test_images"] = len(test.dataset) if hasattr(test, "dataset") else None
    result.final_test_acc = acc.pop("student")
    result.extra_test_acc.update(acc)
    if run.best_state is not None:
        student = run.impl.student
        final_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        student.load_state_dict(run.best_state)
        result.best_val_test_acc = evaluate(student, test, run.device, run.amp_dtype, run.channels_last)
        student.load_state_dict(final_state)
    return result


def _method(method: str | methods.Method, teacher: nn.Module | None, student: nn.Module | None,
            img_size: int, kwargs: dict[str, Any]) -> methods.Method:
    """The Method to train: `method` itself when it is one, else built by name for teacher and student."""
    if isinstance(method, methods.Method):
        if (teacher is not None and teacher is not method.teacher) or (student is not None and student is not method.student):
            raise ValueError("a prebuilt method trains its own teacher and student; pass them to methods.build, "
                             "not again to fit (or pass the very same objects)")
        return method
    teacher_classes, student_classes = getattr(teacher, "num_classes", None), getattr(student, "num_classes", None)
    if teacher is not None and teacher_classes != student_classes:
        raise ValueError(f"teacher predicts {teacher_classes} classes but the student {student_classes}; "
                         f"both must be built with the dataset's num_classes")
    return methods.build(method, teacher, student, img_size=img_size, **kwargs)


def _first_batch(val) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation loader's first batch (its image size is the run's); an empty loader is a clear error."""
    for batch in val:
        return batch
    raise ValueError("the validation loader is empty (val_fraction=0?); fit needs validation data to follow "
                     "progress and pick the best epoch: use data.loaders(..., val_fraction=0.1)")


def _check_fits_data(method, teacher: nn.Module | None, student: nn.Module | None, batch, train) -> None:
    """Before any work: each model takes the data's image size, and the student has an output for every
    class the data hold (more are allowed; `_method` holds the teacher to the student's count); else a
    ValueError saying what to build instead."""
    if isinstance(method, methods.Method):
        teacher, student = method.teacher, method.student
    x, y = batch
    dataset = getattr(train, "dataset", None)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    size, classes = int(x.shape[-1]), max(int(y.max()) + 1, len(getattr(dataset, "classes", None) or ()))
    for role, model in (("teacher", teacher), ("student", student)):
        embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
        if getattr(embed, "strict_img_size", False) and input_size(model) != size:
            raise ValueError(f"the {role} {model_name(model)} was built for {input_size(model)} px images but the "
                             f"data are {size} px; build it with img_size={size} (models.create(..., img_size="
                             f"{size})) or load the data at {input_size(model)} px")
    outputs = getattr(student, "num_classes", None)
    if outputs is not None and outputs < classes:
        raise ValueError(f"the student {model_name(student)} predicts {outputs} classes but the data hold "
                         f"{classes}; build it with num_classes={classes} (data.num_classes(dataset) gives it)")


def _setup(impl: methods.Method, result: Result, train, val, batch) -> dict[str, Any]:
    """What defines a run's numbers, as plain values (a checkpoint keeps it; resume compares it): method,
    models, seed, epochs, step cap, recipe, batch size, the data (sizes and a hash of the first validation
    images) and, for a cached teacher, its weights' sha256. Not the device: a run may move."""
    x, y = batch
    seen = hashlib.sha256(x[:8].detach().cpu().contiguous().numpy().tobytes() + y[:8].cpu().numpy().tobytes())
    setup = {"method": result.method, "teacher": result.teacher, "student": result.student, "seed": result.seed,
             "epochs": result.epochs, **{k: result.config[k] for k in ("max_steps", "recipe", "method_kwargs",
                                                                        "img_size", "num_classes")},
             "batch_size": getattr(train, "batch_size", None), "train_batches": len(train),
             "val_examples": len(getattr(val, "dataset", val)), "val_images": seen.hexdigest()[:16],
             "teacher_weights": getattr(impl.teacher, "tas_lite_info", {}).get("sha256")}
    return json.loads(json.dumps(setup, sort_keys=True, default=str))


def fit(method: str | methods.Method, teacher: nn.Module | None = None, student: nn.Module | None = None,
        train=None, val=None, *, epochs: int, test=None, recipe: Recipe | None = None, seed: int = 0,
        device: str = "auto", amp: bool | None = None, channels_last: bool | None = None, compile: bool = False,
        progress: bool = True, checkpoint_dir: str | Path | None = None, resume: bool = False,
        max_steps: int | None = None, method_kwargs: dict[str, Any] | None = None,
        dist: distributed.Context = distributed.SINGLE, sync_bn: bool = False) -> Result:
    """Train a student with `method` (a name in `tas_lite.methods.METHODS`, or a Method you built with
    `methods.build(name, teacher, student)`: after `fit` it holds the trained extras, e.g. TAS's assistant).

    The teacher is put in eval mode and only ever runs without gradients. `max_steps` caps the steps per
    epoch (smoke runs). With `checkpoint_dir`, the full training state is saved at every epoch end;
    `resume=True` picks up after the last complete epoch and ends with the same weights as an
    uninterrupted run (CPU, same thread count). `dist` (from `distributed.init`): this process's place in
    a DDP run, `train` its shard (`data.loaders(shard=...)`); rank 0 alone validates, logs and writes, and
    returns the full Result. `sync_bn` turns the student's BatchNorm into SyncBatchNorm under DDP (CUDA).
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive int or None (whole epochs), got {max_steps!r}")
    if train is None or val is None:
        raise ValueError("fit needs train= and val= loaders (tas_lite.data.loaders gives both)")
    if not isinstance(method, methods.Method) and student is None:
        raise ValueError(f"fit({method!r}, ...) needs a student model (and a teacher, except for 'baseline')")
    if sync_bn and isinstance(method, methods.Method):
        raise ValueError("sync_bn converts the student before the method is built: pass the method by name")
    config.seed_everything(seed)
    batch = _first_batch(val)
    img_size = int(batch[0].shape[-1])
    _check_fits_data(method, teacher, student, batch, train)
    recipe = recipe or Recipe.for_student(student if student is not None else method.student, epochs)
    if sync_bn:
        distributed.convert_sync_batchnorm(student, config.device(device), dist)
    impl = _method(method, teacher, student, img_size, {"label_smoothing": recipe.label_smoothing,
                                                         **(method_kwargs or {})})
    steps = min(len(train), max_steps) if max_steps else len(train)
    if steps == 0:
        raise ValueError("the training loader yields no batches (dataset smaller than the batch size?)")
    run = start(impl, recipe, steps_per_epoch=steps, epochs=epochs, device=device, amp=amp,
                channels_last=channels_last, compile=compile, dist=dist)
    if dist.active:  # weights are rank 0's now (DDP broadcast them); randomness differs per process
        config.seed_everything(seed + 100_003 * dist.rank)
    name = impl.spec
    result = Result(name, model_name(impl.teacher), model_name(impl.student), seed, epochs, config={
        "recipe": asdict(recipe), "device": str(run.device), "amp": str(run.amp_dtype), "img_size": img_size,
        "channels_last": run.channels_last, "max_steps": max_steps, "num_classes": impl.student.num_classes,
        "val_images": len(val.dataset) if hasattr(val, "dataset") else None,
        "method_kwargs": method_kwargs or {}, **({"processes": dist.world_size} if dist.active else {})})
    run.meta = {"method": name, "setup": _setup(impl, result, train, val, batch)}
    run.probe = next(iter(val))[0][:PROBE_IMAGES].to(run.device) if dist.is_main else None
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    first = _resume_point(run, result, train, ckpt) if resume and ckpt is not None else 0
    _train_epochs(run, result, train, val, range(first, epochs), ckpt, progress=progress and dist.is_main)
    return finish(run, result, test) if dist.is_main else result


def _resume_point(run: Run, result: Result, train, ckpt: Path) -> int:
    """The first epoch to train: the one after the checkpoint's when there is one, 0 otherwise. Every process
    of a distributed run must see the same file (a filesystem all nodes share)."""
    found = distributed.gather_objects(run.dist, ckpt.is_file())
    if len(set(found)) > 1:
        raise ValueError(f"only some processes see the checkpoint {ckpt} (by rank: {found}); put --out on a "
                         f"filesystem every node shares")
    return load_checkpoint(run, result, train, ckpt) if found[0] else 0


def _train_epochs(run: Run, result: Result, train, val, epochs: range, ckpt: Path | None, *, progress: bool) -> None:
    """Train, validate (rank 0), record and checkpoint each epoch in turn."""
    for epoch in epochs:
        started = time.perf_counter()
        row = train_epoch(run, train, epoch, progress=progress)
        check_finite_weights(run, epoch)
        if run.dist.is_main:
            _validate(run, result, row, val, epoch)
        distributed.barrier(run.dist)
        run.elapsed += time.perf_counter() - started
        row["wall_s"] = run.elapsed
        result.history.append(row)
        if ckpt is not None:
            save_checkpoint(run, result, train, ckpt, epoch)
