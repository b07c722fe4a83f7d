"""Distillation methods, one small class each, registered by name in `METHODS`.

A method is an nn.Module that holds only its *new* modules (projectors, branches, L2G); teacher and
student are plain references. `forward(x, y)` returns a `Step` (total loss, every term, student
logits), which the shared loop in `tas_lite.distill` optimises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from . import assistant, losses
from .models import input_size
from .stages import stages, unique_parameters


@dataclass
class Step:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


class Method(nn.Module):
    """Labels only (the baseline). Subclasses add a teacher signal."""

    needs_teacher = False

    def __init__(self, teacher: nn.Module | None, student: nn.Module, *, img_size: int,
                 label_smoothing: float = 0.1):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {type(self).__name__.lower()!r} needs a teacher; pass one (or use 'baseline')")
        object.__setattr__(self, "teacher", teacher)  # plain references: never saved with the method
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "s_view", stages(student))
        object.__setattr__(self, "t_view", stages(teacher) if teacher is not None else None)
        self.img_size, self.label_smoothing = img_size, label_smoothing

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Step:
        logits = self.student(x)
        ce = self.ce(logits, y)
        return Step(ce, {"ce": ce.detach()}, logits.detach())

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters and the method's new ones, each once."""
        return [p for p in unique_parameters([*self.student.parameters(), *self.parameters()]) if p.requires_grad]

    def extra_models(self) -> dict[str, Any]:
        """Other predictors worth tracking (name -> forward(x) -> logits), e.g. TAS's assistant."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.student.train(mode)
        return self


class KD(Method):
    """CE + Hinton KD on logits (T = 4, weight 1)."""

    needs_teacher = True

    def __init__(self, teacher, student, *, temperature: float = 4.0, weight: float = 1.0, **kw):
        super().__init__(teacher, student, **kw)
        self.temperature, self.weight = temperature, weight

    def forward(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        ce, kd = self.ce(s, y), losses.kd(s, t, self.temperature)
        return Step(ce + self.weight * kd, {"ce": ce.detach(), "kd": kd.detach()}, s.detach())


class DKD(Method):
    """CE + decoupled KD (alpha 1, beta 8, T 4), its weight warmed up over the first epochs' steps."""

    needs_teacher = True

    def __init__(self, teacher, student, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_steps: int = 100, **kw):
        super().__init__(teacher, student, **kw)
        self.alpha, self.beta, self.temperature, self.warmup_steps = alpha, beta, temperature, warmup_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        ce = self.ce(s, y)
        dkd = losses.dkd(s, t, y, self.alpha, self.beta, self.temperature)
        if self.training:
            self.steps += 1
        ramp = min(1.0, float(self.steps) / max(1, self.warmup_steps))
        return Step(ce + ramp * dkd, {"ce": ce.detach(), "dkd": dkd.detach()}, s.detach())


class DIST(Method):
    """CE + DIST (beta 1, gamma 1, T 1)."""

    needs_teacher = True

    def __init__(self, teacher, student, *, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, **kw):
        super().__init__(teacher, student, **kw)
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        ce, dist = self.ce(s, y), losses.dist(s, t, self.beta, self.gamma, self.temperature)
        return Step(ce + dist, {"ce": ce.detach(), "dist": dist.detach()}, s.detach())


class FitNet(Method):
    """CE + hint loss: MSE between the teacher's stage-3 map and a 1x1-conv projection of the
    student's, resized to the teacher's grid. Works across families through the NCHW view."""

    needs_teacher = True

    def __init__(self, teacher, student, *, stage: int = 3, weight: float = 1.0, **kw):
        super().__init__(teacher, student, **kw)
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"hint stage must be 1..4, got {stage}")
        (c_s, _, _), (c_t, h_t, w_t) = (v.shapes(self.img_size)[stage - 1] for v in (self.s_view, self.t_view))
        self.stage, self.weight, self.grid = stage, weight, (h_t, w_t)
        self.proj = nn.Conv2d(c_s, c_t, kernel_size=1)

    def forward(self, x, y):
        with torch.no_grad():
            hint = self.t_view.nchw(self.t_view.features(x)[self.stage - 1]).float()
        feats = self.s_view.features(x)
        s = self.s_view.head(feats[-1])
        guess = self.proj(self.s_view.nchw(feats[self.stage - 1]))
        if guess.shape[-2:] != hint.shape[-2:]:
            guess = F.interpolate(guess, size=self.grid, mode="bilinear", align_corners=False)
        ce, hint_loss = self.ce(s, y), F.mse_loss(guess.float(), hint)
        return Step(ce + self.weight * hint_loss, {"ce": ce.detach(), "hint": hint_loss.detach()}, s.detach())


class _ConvBranch(nn.Sequential):
    """OFA branch for CNN students: depthwise-separable stride-2 convs down to the last grid, pool, fc."""

    def __init__(self, c_in: int, halvings: int, c_out: int, num_classes: int):
        layers, c = [], c_in
        for i in range(halvings):
            nxt = c_out if i == halvings - 1 else min(c * 2, c_out)
            layers += [nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c),
                       nn.Conv2d(c, nxt, 1, bias=False), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            c = nxt
        if not halvings:
            layers += [nn.Conv2d(c, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_out, num_classes))


class _TokenBranch(nn.Module):
    """OFA branch for token students: patch merging to the last grid, one transformer block, pool, fc."""

    def __init__(self, c_in: int, halvings: int, c_out: int, num_classes: int):
        super().__init__()
        k = 2**halvings
        self.merge = nn.Conv2d(c_in, c_out, kernel_size=k, stride=k)
        self.block = Block(c_out, num_heads=max(1, c_out // 32))
        self.norm = nn.LayerNorm(c_out)
        self.fc = nn.Linear(c_out, num_classes)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        tokens = self.block(self.merge(m).flatten(2).transpose(1, 2))
        return self.fc(self.norm(tokens.mean(1)))


class OFA(Method):
    """CE + OFA loss on the final logits and on logits from small branches after stages 1-3.

    gamma (the code's `ofa_eps`) 1 and T 1 are the authors' code defaults (Hao840/OFAKD train.py)."""

    needs_teacher = True

    def __init__(self, teacher, student, *, gamma: float = 1.0, temperature: float = 1.0, weight: float = 1.0,
                 branch_stages: tuple[int, ...] = (1, 2, 3), **kw):
        super().__init__(teacher, student, **kw)
        self.gamma, self.temperature, self.weight = gamma, temperature, weight
        shapes = self.s_view.shapes(self.img_size)
        num_classes = student.num_classes
        kind = _ConvBranch if self.s_view.family == "cnn" else _TokenBranch
        c_last, g_last = shapes[-1][0], shapes[-1][1]
        self.branch_stages = tuple(branch_stages)
        self.branches = nn.ModuleList(
            kind(shapes[i - 1][0], int(math.log2(shapes[i - 1][1] // g_last)), c_last, num_classes)
            for i in self.branch_stages)

    def forward(self, x, y):
        t = self.teacher_logits(x)
        feats = self.s_view.features(x)
        s = self.s_view.head(feats[-1])
        terms = {"ce": self.ce(s, y), "ofa4": losses.ofa(s, t, y, self.gamma, self.temperature)}
        for stage, branch in zip(self.branch_stages, self.branches):
            z = branch(self.s_view.nchw(feats[stage - 1]))
            terms[f"ofa{stage}"] = losses.ofa(z, t, y, self.gamma, self.temperature)
        total = terms["ce"] + self.weight * sum(v for k, v in terms.items() if k != "ce")
        return Step(total, {k: v.detach() for k, v in terms.items()}, s.detach())


class TAS(Method):
    """The hybrid assistant and the three-pair TAS loss (see `tas_lite.losses.TASLoss`).

    One step runs the teacher (no grad) and the student once; the assistant starts from the stage-3
    activation the CNN side already computed, so only L2G and one stage 4 run again.
    """

    needs_teacher = True

    def __init__(self, teacher, student, *, freeze_teacher: bool = True, attn_dim: int | None = None,
                 proj_dim: int = 128, gamma: float = 1.0, ofa_temperature: float = 1.0, nce_temperature: float = 0.07,
                 weights: dict[str, float] | None = None, detach_supervisor: bool = True, **kw):
        super().__init__(teacher, student, **kw)
        hybrid = assistant.build(teacher, student, img_size=self.img_size, freeze_teacher=freeze_teacher,
                                 attn_dim=attn_dim)
        object.__setattr__(self, "assistant", hybrid)  # shares the models' modules: a plain reference
        self.l2g = hybrid.l2g  # the only new modules: registered here, saved with the method
        self.register_parameter("prefix", hybrid.prefix)
        dims = {name: view.pooled_dim(self.img_size) for name, view in
                (("teacher", self.t_view), ("student", self.s_view), ("assistant", hybrid._back))}
        self.criterion = losses.TASLoss(dims, proj_dim=proj_dim, gamma=gamma, ofa_temperature=ofa_temperature,
                                        nce_temperature=nce_temperature, label_smoothing=self.label_smoothing,
                                        weights=weights, detach_supervisor=detach_supervisor)

    def forward(self, x, y):
        with torch.no_grad():
            t_feats = self.t_view.features(x)
            t_out = (self.t_view.head(t_feats[-1]), self.t_view.pool(t_feats[-1]))
        s_feats = self.s_view.features(x)
        s_out = (self.s_view.head(s_feats[-1]), self.s_view.pool(s_feats[-1]))
        s3 = s_feats[2] if self.assistant.front_owner == "student" else t_feats[2]
        a_out = self.assistant.forward_from_stage3(s3)
        total, terms = self.criterion({"teacher": t_out, "student": s_out, "assistant": a_out}, y)
        return Step(total, {k: v.detach() for k, v in terms.items()}, s_out[0].detach())

    def trainable_parameters(self):
        return unique_parameters(super().trainable_parameters() + self.assistant.trainable_parameters())

    def extra_models(self):
        return {"assistant": lambda x: self.assistant(x)[0]}

    def extra_state(self):
        state = dict(self.state_dict())
        if not self.assistant.frozen:  # freeze_teacher=False trains the teacher's shared parts
            state.update({f"teacher::{k}": v for k, v in self.teacher.state_dict().items()})
        return state

    def load_extra_state(self, state):
        teacher = {k.split("::", 1)[1]: v for k, v in state.items() if k.startswith("teacher::")}
        if teacher:
            self.teacher.load_state_dict(teacher)
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("teacher::")})

    def train(self, mode: bool = True):
        super().train(mode)
        self.assistant.train(mode)
        return self


METHODS: dict[str, type[Method]] = {"baseline": Method, "kd": KD, "dkd": DKD, "dist": DIST, "fitnet": FitNet,
                                    "ofa": OFA, "tas": TAS}


def check(names) -> list[str]:
    """The method names as a list, or a ValueError naming every unknown one and what is allowed."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or names}; allowed: {', '.join(METHODS)}")
    return names


def build(name: str, teacher: nn.Module | None, student: nn.Module, *, img_size: int | None = None,
          **kwargs) -> Method:
    """Instantiate a registered method for this teacher and student; unknown names and arguments are
    ValueErrors. `img_size=None`: the size the student was built for (`models.input_size`)."""
    check(name)
    size = img_size or input_size(student) or (input_size(teacher) if teacher is not None else None)
    if size is None:
        raise ValueError("cannot tell the input size of these models; pass img_size=")
    try:
        return METHODS[name](teacher, student, img_size=size, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for method {name!r}: {err}") from err


def method_name(method: Method) -> str:
    """The registry name of a method instance."""
    for name, cls in METHODS.items():
        if type(method) is cls:
            return name
    raise ValueError(f"{type(method).__name__} is not a registered method; registered: {', '.join(METHODS)}")
