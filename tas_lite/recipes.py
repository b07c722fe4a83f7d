"""Optimiser recipes: learning rate, schedule, weight decay, clipping and (paper track) augmentation.

`Recipe.for_student` is the course's recipe, `Recipe.paper` the OFA authors' CIFAR-100 recipe that the TAS
paper trains with, `Recipe.fine_tune` the recipe of a pretrained teacher; `Recipe.choose` picks by name
("course" or "paper", as a profile's `recipe` knob names it). Each picks by the student's family.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from timm.models.convnext import ConvNeXt
from torch import nn

from . import data
from .stages import family

PAPER_BATCH = 128  # the global batch the OFA authors' CIFAR learning rates are set for
NAMES = ("course", "paper")


@dataclass
class Recipe:
    """Optimiser, schedule and (paper track) augmentation. `for_student` is the course's recipe (the OFA
    authors' optimisers, its AdamW learning rate tuned on digits); `paper` is the OFA authors' CIFAR-100
    recipe. Both pick by student family."""

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
        """The course's recipe: the optimisers of the OFA authors' CIFAR configs (configs/cifar/*.yaml) by
        student kind, without their augmentation, schedules scaled to `epochs`, one learning rate our own.

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
        raise ValueError(f"unknown recipe {kind!r}; allowed: {', '.join(NAMES)}")

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
