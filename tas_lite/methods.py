"""Distillation methods, one small class each, registered by name with `@register` in `METHODS`.

A method is an nn.Module that holds only its *new* modules (projectors, branches, L2G); teacher and
student are plain references. `forward(x, y)` returns a `Step` (total loss, every term, student
logits), which the shared loop in `tas_lite.distill` optimises. `build("tas:no_nce", teacher, student)`
is the one way a method is made from its name (names and variants: `tas_lite.catalog`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import assistant, catalog, cka, heads, losses
from .models import input_size
from .stages import StageView, stages, unique_parameters


@dataclass
class Step:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


METHODS: dict[str, type[Method]] = {}  # name -> class, in `catalog.NAMES` order once every class is registered


def register(name: str):
    """Class decorator: file a Method subclass under `name` (one of `catalog.NAMES`) and tell the class its name."""
    def add(cls: type[Method]) -> type[Method]:
        if name not in catalog.NAMES:
            raise ValueError(f"method name {name!r} is not in catalog.NAMES ({', '.join(catalog.NAMES)}); add it there")
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


@register("baseline")
class Method(nn.Module):
    """Labels only (the baseline). Subclasses add a teacher signal and register under their own name."""

    needs_teacher = False
    name: ClassVar[str]

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
        self.epoch_progress = 0.0
        if "name" not in type(self).__dict__:
            raise ValueError(f"{type(self).__name__} is not a registered method; decorate it with "
                             f"@methods.register('<name>') (registered: {', '.join(METHODS)})")
        self.spec = type(self).name  # `build` adds the variants it was built with
        self.arguments: dict[str, Any] = {}  # every keyword argument it trains with (`build` fills it in)

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Label cross-entropy: integer labels with the recipe's smoothing, or mixup's soft targets."""
        return losses.cross_entropy(logits, y, self.label_smoothing)

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

    def on_step(self, step: int, steps_per_epoch: int) -> None:
        """Told the global step before each training step, for schedules (warm-ups); stateless, so a
        resumed run schedules exactly as an uninterrupted one."""
        self.epoch_progress = step / max(1, steps_per_epoch)

    def ramp(self, warmup_epochs: float) -> float:
        """A warm-up weight now: 0 -> 1 linearly over the first `warmup_epochs` epochs (1 without warm-up)."""
        return min(1.0, self.epoch_progress / warmup_epochs) if warmup_epochs > 0 else 1.0

    def epoch_metrics(self, probe: torch.Tensor) -> dict[str, float]:
        """Measurements to log after each epoch on a fixed probe batch (e.g. TAS's feature similarities)."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        self.student.train(mode)
        return self


@register('kd')
class KD(Method):
    """CE + Hinton KD on logits, weight 1. T = 1 as the OFA authors' code runs its KD baseline (their
    train.py default); `kd:t4` is the T = 4 common in the KD literature."""

    needs_teacher = True

    def __init__(self, teacher, student, *, temperature: float = 1.0, weight: float = 1.0, **kw):
        super().__init__(teacher, student, **kw)
        self.temperature, self.weight = temperature, weight

    def forward(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        ce, kd = self.ce(s, y), losses.kd(s, t, self.temperature)
        return Step(ce + self.weight * kd, {"ce": ce.detach(), "kd": kd.detach()}, s.detach())


@register('dkd')
class DKD(Method):
    """CE + decoupled KD (alpha 1, beta 8, T 4), its weight ramped up linearly over the first
    `warmup_epochs` (the DKD paper warms up over 20 of 240 CIFAR epochs). `dkd:ofa` is the OFA authors'
    train.py default (alpha 1, beta 2, T 1, no warm-up). Soft (mixup) targets: the argmax is the target
    class, as in the OFA authors' DKD."""

    needs_teacher = True

    def __init__(self, teacher, student, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: float = 1.0, **kw):
        super().__init__(teacher, student, **kw)
        self.alpha, self.beta, self.temperature, self.warmup_epochs = alpha, beta, temperature, warmup_epochs

    def forward(self, x, y):
        t = self.teacher_logits(x)
        s = self.student(x)
        ce = self.ce(s, y)
        dkd = losses.dkd(s, t, losses.hard_labels(y), self.alpha, self.beta, self.temperature)
        return Step(ce + self.ramp(self.warmup_epochs) * dkd, {"ce": ce.detach(), "dkd": dkd.detach()}, s.detach())


@register('dist')
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


@register('fitnet')
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


def _tokens(view: StageView, s: torch.Tensor) -> torch.Tensor:
    """A stage output as (B, prefix + N, C) tokens, whatever the layout."""
    return view.nchw(s).flatten(2).transpose(1, 2) if view.layout != "tokens" else s


@register('ofa')
class OFA(Method):
    """CE + OFA loss on the final logits and on logits from a branch after each of `branch_stages`.

    Defaults are the authors' (Hao840/OFAKD train.py): branches after stages 1-4 plus the final logits
    (five OFA terms), gamma (`ofa_eps`) 1, T 1, weight 1; branches as in their code (`tas_lite.heads`).
    `ofa:s123` is our lighter variant: branches after stages 1-3 only.
    """

    needs_teacher = True

    def __init__(self, teacher, student, *, gamma: float = 1.0, temperature: float = 1.0, weight: float = 1.0,
                 branch_stages: tuple[int, ...] = (1, 2, 3, 4), **kw):
        super().__init__(teacher, student, **kw)
        if not branch_stages or set(branch_stages) - {1, 2, 3, 4}:
            raise ValueError(f"branch_stages must be a non-empty subset of 1, 2, 3, 4, got {branch_stages}")
        self.gamma, self.temperature, self.weight = gamma, temperature, weight
        self.branch_stages = tuple(branch_stages)
        self.branches = nn.ModuleList(self._branch(stage) for stage in self.branch_stages)
        heads.init_weights(self.branches)

    def _branch(self, stage: int) -> nn.Module:
        shapes = self.s_view.shapes(self.img_size)
        (c, grid, _), last_grid = shapes[stage - 1], shapes[-1][1]
        num_classes = self.student.num_classes
        if self.s_view.family == "cnn":
            width = max(self.s_view.pooled_dim(self.img_size), self.t_view.pooled_dim(self.img_size))
            return heads.ConvBranch(c, int(math.log2(grid // last_grid)), width, num_classes)
        return heads.TokenBranch(c, grid, self.s_view.num_prefix_tokens, self.s_view.pooled_dim(self.img_size),
                                 max(4 - stage, 1), num_classes)

    def forward(self, x, y):
        t = self.teacher_logits(x)
        feats = self.s_view.features(x)
        s = self.s_view.head(feats[-1])
        terms = {"ce": self.ce(s, y), "ofa_logits": losses.ofa(s, t, y, self.gamma, self.temperature)}
        for stage, branch in zip(self.branch_stages, self.branches):
            view = self.s_view.nchw if self.s_view.family == "cnn" else (lambda f: _tokens(self.s_view, f))
            z = branch(view(feats[stage - 1]))
            terms[f"ofa{stage}"] = losses.ofa(z, t, y, self.gamma, self.temperature)
        branch_sum = sum(v for k, v in terms.items() if k not in ("ce", "ofa_logits"))
        total = terms["ce"] + terms["ofa_logits"] + self.weight * branch_sum
        return Step(total, {k: v.detach() for k, v in terms.items()}, s.detach())


@register('tas')
class TAS(Method):
    """The hybrid assistant and the three-pair TAS loss (see `tas_lite.losses.TASLoss`).

    One step runs the teacher (no grad) and the student once; the assistant starts from the stage-3
    activation the CNN side already computed, so only L2G and one stage 4 run again. Open in the paper,
    chosen here (and switchable): `negatives` of InfoNCE ("masked": same-class images left out, or "all"
    in-batch, the paper's reading: `tas:paper`), `warmup_epochs` over which the assistant -> student
    terms ramp up from 0 while the assistant is still untrained, and `l2g_attention` (False: L2G is a
    patch embedding only, the `tas:no_l2g_attn` ablation).

    The defaults were chosen on validation accuracy (digits, tiny_convnext -> tiny_vit, 40 epochs, mean of
    the last 5 epochs, seeds 0-2): masked negatives 99.72% (99.72 / 99.44 / 100.0), all negatives 99.31%
    (100.0 / 98.61 / 99.31); a 5-epoch warm-up did not help (100.0 / 97.22 with all negatives).
    """

    needs_teacher = True

    def __init__(self, teacher, student, *, freeze_teacher: bool = True, attn_dim: int | None = None,
                 l2g_attention: bool = True, proj_dim: int = 128, gamma: float = 1.0, ofa_temperature: float = 1.0,
                 nce_temperature: float = 0.07, weights: dict[str, float] | None = None,
                 detach_supervisor: bool = True, negatives: str = "masked", warmup_epochs: float = 0.0, **kw):
        super().__init__(teacher, student, **kw)
        hybrid = assistant.build(teacher, student, img_size=self.img_size, freeze_teacher=freeze_teacher,
                                 attn_dim=attn_dim, l2g_attention=l2g_attention)
        object.__setattr__(self, "assistant", hybrid)  # shares the models' modules: a plain reference
        self.l2g = hybrid.l2g  # the only new modules: registered here, saved with the method
        self.register_parameter("prefix", hybrid.prefix)
        self.warmup_epochs = warmup_epochs
        dims = {name: view.pooled_dim(self.img_size) for name, view in
                (("teacher", self.t_view), ("student", self.s_view), ("assistant", hybrid._back))}
        self.criterion = losses.TASLoss(dims, proj_dim=proj_dim, gamma=gamma, ofa_temperature=ofa_temperature,
                                        nce_temperature=nce_temperature, label_smoothing=self.label_smoothing,
                                        weights=weights, detach_supervisor=detach_supervisor, negatives=negatives)

    def outputs(self, x: torch.Tensor) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list, list]:
        """(logits, pooled feature) of teacher, student and assistant, and the teacher's and student's stages."""
        with torch.no_grad():
            t_feats = self.t_view.features(x)
            t_out = (self.t_view.head(t_feats[-1]), self.t_view.pool(t_feats[-1]))
        s_feats = self.s_view.features(x)
        s_out = (self.s_view.head(s_feats[-1]), self.s_view.pool(s_feats[-1]))
        s3 = s_feats[2] if self.assistant.front_owner == "student" else t_feats[2]
        return {"teacher": t_out, "student": s_out, "assistant": self.assistant.forward_from_stage3(s3)}, t_feats, s_feats

    def forward(self, x, y):
        outputs, _, _ = self.outputs(x)
        total, terms = self.criterion(outputs, y, ramp=self.ramp(self.warmup_epochs))
        return Step(total, {k: v.detach() for k, v in terms.items()}, outputs["student"][0].detach())

    @torch.no_grad()
    def epoch_metrics(self, probe: torch.Tensor) -> dict[str, float]:
        """The bridge, measured: unbiased CKA between the pooled features f of teacher (t), assistant (a)
        and student (s), and between the teacher's and student's stages 1-4, on a fixed probe batch."""
        was = self.training
        self.eval()
        try:
            outputs, t_feats, s_feats = self.outputs(probe)
        finally:
            self.train(was)
        f = {k: v[1] for k, v in outputs.items()}
        row = {"cka/t~a": cka.unbiased(f["teacher"], f["assistant"]),
               "cka/a~s": cka.unbiased(f["assistant"], f["student"]),
               "cka/t~s": cka.unbiased(f["teacher"], f["student"])}
        for i, (a, b) in enumerate(zip(t_feats, s_feats), start=1):
            row[f"cka/t~s/stage{i}"] = cka.unbiased(self.t_view.nchw(a), self.s_view.nchw(b))
        return row

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


def arguments(spec: str) -> dict[str, Any]:
    """Every keyword argument a method spec trains with: the class defaults, then its variants' changes
    (what a result's fingerprint records, so a changed default makes old results stale)."""
    name, variant_kwargs = catalog.parse(spec)
    defaults = {}
    for cls in METHODS[name].__mro__:
        if cls is nn.Module or not issubclass(cls, Method):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in ("img_size", "label_smoothing"):
                defaults.setdefault(p.name, p.default)
    return catalog.merge(defaults, variant_kwargs)


def build(spec: str, teacher: nn.Module | None, student: nn.Module, *, img_size: int | None = None,
          **kwargs) -> Method:
    """Instantiate a method ("kd", or a variant such as "tas:no_nce") for this teacher and student;
    unknown names and arguments are ValueErrors. `img_size=None`: the size the student was built for.
    The method remembers its spec and every argument it trains with (`method.arguments`)."""
    name, variant_kwargs = catalog.parse(spec)
    teacher_classes, student_classes = getattr(teacher, "num_classes", None), getattr(student, "num_classes", None)
    if teacher is not None and teacher_classes != student_classes:
        raise ValueError(f"the teacher predicts {teacher_classes} classes but the student {student_classes}; "
                         f"build both with the dataset's num_classes (data.num_classes(name) gives it)")
    size = img_size or input_size(student) or (input_size(teacher) if teacher is not None else None)
    if size is None:
        raise ValueError("cannot tell the input size of these models; pass img_size=")
    merged = catalog.merge(variant_kwargs, kwargs)
    try:
        method = METHODS[name](teacher, student, img_size=size, **merged)
    except TypeError as err:
        raise ValueError(f"bad arguments for method {name!r}: {err}") from err
    method.spec = spec
    method.arguments = catalog.merge(arguments(spec), {k: v for k, v in kwargs.items() if k != "label_smoothing"})
    return method
