"""The training loop shared by every method: `fit(method, teacher, student, train, val, epochs=...)`.

One loop trains a student with any registered method (see `tas_lite.methods`): per-family optimiser
recipes, AMP and channels_last on CUDA, per-epoch history of every loss term, checkpoints at each
epoch end with exact resume, and a clear stop on a non-finite loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoints, config
from .methods import METHODS, Method, build_method, method_name
from .results import Result
from .stages import family


class NonFiniteLoss(RuntimeError):
    """Raised when a loss term turns NaN/inf; the message names epoch, step and term."""


@dataclass
class Recipe:
    """Optimiser and schedule; `for_student` gives OFA's CIFAR recipe per student family."""

    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    min_lr: float
    momentum: float = 0.9
    label_smoothing: float = 0.1
    clip_grad: float | None = None

    @classmethod
    def for_student(cls, student: nn.Module, epochs: int) -> Recipe:
        """OFA's CIFAR recipe (METHOD.md 6) by student kind, schedules scaled to `epochs`.

        BatchNorm CNNs (ResNet, MobileNetV2): SGD 0.05, cosine to 1e-3. ConvNeXt and token models
        (ViT, Swin, Mixer): AdamW, weight decay 0.05, clip 5; ConvNeXt is not an OFA student and
        diverged under SGD 0.05 in our runs. Warm-up scales the paper's 3 and 20 of 300 epochs,
        at least one step. AdamW uses 1e-3 (paper: 5e-4 at batch 128 for 300 epochs), picked on the
        validation accuracy of tiny_vit on digits after 10 epochs, seeds 0/1: batch 32 and 1e-3 gave
        73/79%, batch 32 and 2e-3 68/69%, batch 64 and 2e-3 43/44%, batch 32 and 5e-4 49%.
        """
        from timm.models.convnext import ConvNeXt

        if family(student) == "cnn" and not isinstance(student, ConvNeXt):
            return cls("sgd", 0.05, 5e-4, warmup_epochs=epochs * 3 / 300, min_lr=1e-3)
        return cls("adamw", 1e-3, 0.05, warmup_epochs=epochs * 20 / 300, min_lr=1e-5, clip_grad=5.0)

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
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def model_name(model: nn.Module | None) -> str | None:
    """The name a model was created with (tas_lite or timm), for reports."""
    if model is None:
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return getattr(model, "tas_lite_name", None) or cfg.get("architecture") or type(model).__name__


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


def _amp_dtype(device: torch.device, amp: bool | None) -> tuple[torch.dtype | None, bool]:
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


def _check_pair(teacher: nn.Module | None, student: nn.Module) -> int:
    student_classes = getattr(student, "num_classes", None)
    if teacher is not None:
        teacher_classes = getattr(teacher, "num_classes", None)
        if teacher_classes != student_classes:
            raise ValueError(f"teacher predicts {teacher_classes} classes but the student {student_classes}; "
                             f"both must be built with the dataset's num_classes")
    return student_classes


def _finite_or_raise(total: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int, step: int,
                     last_good: str) -> None:
    if torch.isfinite(total):
        return
    bad = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["total"]
    raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1}, step {step + 1}: term {bad[0]!r} "
                        f"= {float(terms.get(bad[0], total)):.4g} (all non-finite terms: {bad}). "
                        f"Training stopped; {last_good}. Lower the learning rate or check the inputs.")


def fit(method: str | Method, teacher: nn.Module | None, student: nn.Module, train, val, *, epochs: int,
        test=None, recipe: Recipe | None = None, seed: int = 0, device: str = "auto", amp: bool | None = None,
        channels_last: bool | None = None, compile: bool = False, progress: bool = True,
        checkpoint_dir: str | Path | None = None, resume: bool = False, max_steps: int | None = None,
        method_kwargs: dict[str, Any] | None = None, img_size: int | None = None) -> Result:
    """Train `student` with `method` (a name in `tas_lite.methods.METHODS`), distilling from `teacher`.

    `method` may also be a Method you built yourself (`methods.build_method(...)`) for the same
    teacher and student: after `fit` it holds the trained extras, e.g. TAS's assistant. The teacher
    is frozen and kept in eval mode. `max_steps` caps the steps per epoch (smoke runs).
    With `checkpoint_dir`, the full training state is saved at every epoch end; `resume=True` picks
    up after the last complete epoch and ends with the same weights as an uninterrupted run (CPU).
    """
    prebuilt = method if isinstance(method, Method) else None
    if prebuilt is not None:
        method = method_name(prebuilt)
        if prebuilt.teacher is not teacher or prebuilt.student is not student:
            raise ValueError("a prebuilt method must be built for the same teacher and student objects passed to fit")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    dev = config.device(device)
    amp_dtype, use_scaler = _amp_dtype(dev, amp)
    channels_last = dev.type == "cuda" if channels_last is None else channels_last
    config.seed_everything(seed)
    if teacher is not None:  # frozen; a prebuilt method has already frozen what it does not train
        teacher.eval().to(dev)
        if prebuilt is None:
            teacher.requires_grad_(False)
    student.train().to(dev)
    if channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    img_size = img_size or int(next(iter(val))[0].shape[-1])
    num_classes = _check_pair(teacher, student)
    recipe = recipe or Recipe.for_student(student, epochs)
    impl = prebuilt or build_method(method, teacher, student, img_size=img_size,
                                    **{"label_smoothing": recipe.label_smoothing, **(method_kwargs or {})})
    impl.to(dev)
    params = impl.trainable_parameters()
    optimizer = recipe.build(params)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    step_fn = torch.compile(impl) if compile else impl
    steps_per_epoch = min(len(train), max_steps) if max_steps else len(train)
    if steps_per_epoch == 0:
        raise ValueError("the training loader yields no batches (dataset smaller than the batch size?)")

    result = Result(method, model_name(teacher), model_name(student), seed, epochs,
                    config={"recipe": asdict(recipe), "device": str(dev), "amp": str(amp_dtype),
                            "channels_last": channels_last, "max_steps": max_steps, "num_classes": num_classes,
                            "method_kwargs": method_kwargs or {}, "img_size": img_size})
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    best_state, start_epoch, elapsed = None, 0, 0.0
    if resume and ckpt is not None and ckpt.is_file():
        state = checkpoints.load_state(ckpt, dev)
        if state["run"] != _run_id(result):
            raise ValueError(f"checkpoint {ckpt} belongs to another run ({state['run']}); "
                             f"delete it or use another checkpoint_dir")
        student.load_state_dict(state["student"])
        impl.load_extra_state(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"])
        if state.get("loader_rng") is not None and getattr(train, "generator", None) is not None:
            train.generator.set_state(state["loader_rng"])
        result.history, best_state = state["history"], state["best_student"]
        result.best_val_acc, result.best_epoch = state["best_val_acc"], state["best_epoch"]
        start_epoch, elapsed = state["epoch"] + 1, state["elapsed"]

    eval_fn = lambda model_forward, loader: evaluate(model_forward, loader, dev, amp_dtype, channels_last)  # noqa: E731
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        impl.train()
        sums: dict[str, float] = {}
        correct = seen = 0
        bar = _progress(train, steps_per_epoch, f"{method} {epoch + 1}/{epochs}", progress)
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(epoch * steps_per_epoch + step, steps_per_epoch, epochs)
            x, y = _to_device(x, y, dev, channels_last)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = step_fn(x, y)
            last_good = (f"the last good checkpoint (epoch {epoch}) is intact at {ckpt}" if ckpt and epoch > 0
                         else "no checkpoint was written")
            _finite_or_raise(out.loss, out.terms, epoch, step, last_good)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            if recipe.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            for name, value in out.terms.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            correct += (out.logits.argmax(1) == y).sum().item()
            seen += y.numel()
            if progress:
                bar.set_postfix(loss=f"{out.loss.item():.3f}", acc=f"{100 * correct / seen:.1f}")
        train_s = time.perf_counter() - started
        impl.eval()
        row = {"epoch": epoch + 1, **{f"loss/{k}": v / steps_per_epoch for k, v in sums.items()},
               "train_acc": 100.0 * correct / max(1, seen), "val_acc": eval_fn(student, val),
               "images_per_s": seen / train_s, "lr": optimizer.param_groups[0]["lr"]}
        for name, forward in impl.extra_models().items():
            row[f"{name}_val_acc"] = eval_fn(forward, val)
        elapsed += time.perf_counter() - started
        row["wall_s"] = elapsed
        result.history.append(row)
        if not row["val_acc"] <= result.best_val_acc:  # also true for the first epoch (nan)
            result.best_val_acc, result.best_epoch = row["val_acc"], epoch + 1
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        if ckpt is not None:
            checkpoints.save_state({
                "run": _run_id(result), "epoch": epoch, "student": student.state_dict(),
                "extra": impl.extra_state(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": checkpoints.rng_state(), "history": result.history, "best_student": best_state,
                "loader_rng": train.generator.get_state() if getattr(train, "generator", None) is not None else None,
                "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch, "elapsed": elapsed}, ckpt)

    impl.eval()
    optimizer.zero_grad(set_to_none=True)  # a trained model hands over no stale gradients (and frees their memory)
    result.wall_s = elapsed
    result.final_val_acc = result.history[-1]["val_acc"]
    result.images_per_s = sum(r["images_per_s"] for r in result.history) / len(result.history)
    if test is not None:
        result.final_test_acc = eval_fn(student, test)
        for name, forward in impl.extra_models().items():
            result.extra_test_acc[name] = eval_fn(forward, test)
        if best_state is not None:
            final_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            student.load_state_dict(best_state)
            result.best_val_test_acc = eval_fn(student, test)
            student.load_state_dict(final_state)
    return result


def _run_id(result: Result) -> str:
    return f"{result.method}|{result.teacher}|{result.student}|seed={result.seed}|epochs={result.epochs}"


def _progress(loader, total: int, desc: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, total=total, desc=desc, leave=False)


def prepare_teacher(name: str, dataset: str = "digits", *, profile: str = "cpu", seed: int = 0,
                    img_size: int | None = None, epochs: int | None = None, checkpoint: str | Path | None = None,
                    pretrained: bool | None = None, device: str = "auto", progress: bool = True) -> nn.Module:
    """The teacher for a profile, trained once and cached.

    cpu/smoke: a tiny model trained from scratch (`models.trained`). gpu: timm's ImageNet weights
    fine-tuned on `dataset` (CIFAR-100 in the paper's recipe). `checkpoint` loads your own weights
    (safetensors) instead. `pretrained=False` trains a timm teacher from scratch (e.g. to check the
    gpu profile offline). The test accuracy is in `teacher.tas_lite_info["test_acc"]`.
    """
    from . import data, models

    cfg = config.resolve(profile, img_size=img_size, teacher_epochs=epochs, pretrained=pretrained)
    if checkpoint is not None:
        teacher = models.create(name, num_classes=data.num_classes(dataset), img_size=cfg.img_size)
        path = Path(checkpoint).with_suffix(".safetensors")
        if not path.is_file():
            raise ValueError(f"teacher checkpoint {path} does not exist; pass checkpoint=None to train and cache one")
        teacher.tas_lite_info = checkpoints.load_weights(teacher, path)
        return teacher.eval()
    return checkpoints.load_or_train(name, dataset, seed, epochs=cfg.teacher_epochs, img_size=cfg.img_size,
                                     profile=profile, progress=progress, device=device, retrain=False,
                                     pretrained=cfg.pretrained, batch_size=cfg.batch_size if cfg.pretrained else None)


def result_name(teacher: str | None, student: str, method: str, seed: int) -> str:
    """File name of one run's results JSON: what sweeps look for to skip finished configurations."""
    return f"{teacher or 'none'}__{student}__{method}__seed{seed}.json"


def run(method: str, teacher: str, student: str, *, profile: str = "cpu", dataset: str | None = None,
        seed: int = 0, epochs: int | None = None, batch_size: int | None = None, img_size: int | None = None,
        device: str | None = None, amp: bool | None = None, pretrained: bool | None = None,
        out_dir: str | Path | None = None, progress: bool = True,
        method_kwargs: dict[str, Any] | None = None) -> Result:
    """One configuration end to end: data, cached teacher, fresh student, `fit`, results JSON.

    Knobs left at None take the profile's values. The teacher is always trained with seed 0 (one
    fixed teacher per pair); `seed` varies the student, the data order and the validation split.
    """
    from . import data, models

    cfg = config.resolve(profile, dataset=dataset, epochs=epochs, batch_size=batch_size, img_size=img_size,
                         device=device, amp=amp)
    train, val, test = data.loaders(cfg.dataset, batch_size=cfg.batch_size, img_size=cfg.img_size, seed=seed)
    t_model = None
    if method != "baseline":
        t_model = prepare_teacher(teacher, cfg.dataset, profile=profile, img_size=cfg.img_size,
                                  pretrained=pretrained, device=cfg.device, progress=progress)
    config.seed_everything(seed)
    s_model = models.create(student, num_classes=data.num_classes(cfg.dataset), img_size=cfg.img_size)
    result = fit(method, t_model, s_model, train, val, test=test, epochs=cfg.epochs, seed=seed, device=cfg.device,
                 amp=cfg.amp, progress=progress, max_steps=cfg.max_steps, method_kwargs=method_kwargs,
                 img_size=cfg.img_size)
    result.teacher = teacher
    result.config.update(profile=profile, dataset=cfg.dataset, batch_size=cfg.batch_size,
                         teacher_test_acc=(t_model.tas_lite_info.get("test_acc") if t_model is not None else None))
    if out_dir is not None:
        result.save(Path(out_dir) / result_name(teacher, student, method, seed))
    return result
