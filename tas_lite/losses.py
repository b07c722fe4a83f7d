"""Distillation losses: KD, OFA, InfoNCE, DKD, DIST, and TAS's three-pair objective.

Every loss computes in float32 log-space (log_softmax, never log(softmax)), so logits of magnitude
1e3 and half-precision inputs give finite values and gradients. Reductions are batch means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from . import distributed

MASK = -1e9  # a finite "minus infinity" for masking logits in float32


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"expected student and teacher logits of the same (batch, classes) shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    return student.float(), teacher.float()


def _target_mask(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """One-hot (B, C) of the target class: from integer labels, or from a (B, C) soft target (mixup,
    label smoothing) through its argmax, as the OFA authors' code does; a soft target itself as the mask
    would turn class weights negative for gamma > 1."""
    if target.ndim == 1:
        if target.shape[0] != logits.shape[0]:
            raise ValueError(f"target has {target.shape[0]} labels for a batch of {logits.shape[0]}")
        if target.min() < 0 or target.max() >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{int(target.min())}, {int(target.max())}]")
        return F.one_hot(target, logits.shape[1]).float()
    if target.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    return F.one_hot(target.argmax(1), logits.shape[1]).float()


def _positive(name: str, value: float) -> None:
    if not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Label cross-entropy in float32: integer labels (B,) with `label_smoothing`, or soft targets (B, C)
    from mixup/cutmix through timm's SoftTargetCrossEntropy, as the OFA authors' train.py does; soft
    targets already carry their smoothing (timm's Mixup applies it), so none is added."""
    if target.ndim == 2:
        if target.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        return SoftTargetCrossEntropy()(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Integer labels (B,) from labels or soft targets (B, C): the argmax, as the OFA authors' code takes it."""
    return target if target.ndim == 1 else target.argmax(1)


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(z_t/T) || softmax(z_s/T)) * T^2, averaged over the batch."""
    _positive("temperature", temperature)
    s, t = _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def ofa(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0,
        temperature: float = 1.0) -> torch.Tensor:
    """OFA loss as the authors' code computes it: mean_b -sum_c [(p_t + m)^gamma - m]_c log p_s,c.

    The target class is weighted (1 + p_t)^gamma - 1, others p_t^gamma; gamma = 1 is cross-entropy
    against the teacher's soft labels. gamma > 1 strengthens the target class when the teacher is
    confident. `target` holds labels (B,) or probabilities (B, C).
    """
    _positive("gamma", gamma)
    _positive("temperature", temperature)
    s, t = _check_logits(student_logits, teacher_logits)
    mask = _target_mask(target, s)
    weight = (F.softmax(t / temperature, dim=1) + mask).pow(gamma) - mask
    return -(weight * F.log_softmax(s / temperature, dim=1)).sum(1).mean()


NEGATIVES = ("all", "masked")


def info_nce(student_feat: torch.Tensor, teacher_feat: torch.Tensor, temperature: float | torch.Tensor = 0.07,
             *, labels: torch.Tensor | None = None, negatives: str = "all") -> torch.Tensor:
    """InfoNCE with in-batch negatives: each student feature must pick its own teacher feature.

    Features are L2-normalised; logits are cosine similarities / temperature; cross-entropy over the
    batch with the diagonal as positives. `negatives="all"` counts every other image as a negative (the
    paper's reading); `"masked"` (needs `labels`) leaves out images of the anchor's own class, which
    otherwise are pushed apart although they should be alike: with C balanced classes an anchor has about
    (B - 1) / C of them, ~3 at batch 32 on 10 classes.
    """
    if student_feat.ndim != 2 or student_feat.shape != teacher_feat.shape:
        raise ValueError(f"info_nce needs (batch, dim) features of equal shape, got {tuple(student_feat.shape)} "
                         f"and {tuple(teacher_feat.shape)}; project them to a common width first (FeatureProjector)")
    if student_feat.shape[0] < 2:
        raise ValueError("info_nce needs at least 2 examples in the batch (the others are the negatives)")
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}; allowed: {', '.join(NEGATIVES)}")
    if not torch.is_tensor(temperature):
        _positive("temperature", temperature)
    if negatives == "masked" and (labels is None or labels.shape != (len(student_feat),)):
        raise ValueError("negatives='masked' needs the batch's integer labels (B,): labels=")
    s = F.normalize(student_feat.float(), dim=1)
    t = F.normalize(teacher_feat.float(), dim=1)
    # Under DDP the negatives are the global batch (every process's features, gradients flowing back to
    # their owners), so N processes compute the loss one process computes on the same global batch.
    rank, _ = distributed.world()
    keys = distributed.all_gather(t)
    positive = torch.arange(len(s), device=s.device) + rank * len(s)
    logits = s @ keys.T / temperature
    if negatives == "masked":
        same = labels[:, None] == distributed.all_gather(labels)[None, :]
        logits = logits.masked_fill(same & (positive[:, None] != torch.arange(len(keys), device=s.device)), MASK)
    return F.cross_entropy(logits, positive)


def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
        beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD: alpha * TCKD (target vs rest, binary KL) + beta * NCKD (KL among non-targets), x T^2."""
    _positive("temperature", temperature)
    s, t = _check_logits(student_logits, teacher_logits)
    if target.ndim != 1:
        raise ValueError("dkd needs integer labels (B,), not soft targets")
    gt = _target_mask(target, s).bool()
    log_s, log_t = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
    # binary (target, non-target) distributions, in log space
    log_s_bin = torch.stack([log_s[gt], log_s.masked_fill(gt, MASK).logsumexp(1)], 1)
    log_t_bin = torch.stack([log_t[gt], log_t.masked_fill(gt, MASK).logsumexp(1)], 1)
    tckd = F.kl_div(log_s_bin, log_t_bin, log_target=True, reduction="batchmean")
    # distribution among the non-target classes only
    log_s_nt = F.log_softmax((s / temperature).masked_fill(gt, MASK), 1)
    log_t_nt = F.log_softmax((t / temperature).masked_fill(gt, MASK), 1)
    nckd = (log_t_nt.exp() * (log_t_nt - log_s_nt)).masked_fill(gt, 0.0).sum(1).mean()
    return (alpha * tckd + beta * nckd) * temperature**2


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - Pearson correlation along the last dim, averaged over the leading dim."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return (1 - corr).mean()


def dist(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
         temperature: float = 1.0) -> torch.Tensor:
    """DIST: match Pearson correlations of class probabilities within each sample (inter-class,
    weight beta) and within each class across the batch (intra-class, weight gamma), x T^2."""
    _positive("temperature", temperature)
    s, t = _check_logits(student_logits, teacher_logits)
    p_s, p_t = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    inter = _pearson_distance(p_s, p_t)
    intra = _pearson_distance(p_s.T, p_t.T)
    return (beta * inter + gamma * intra) * temperature**2


class FeatureProjector(nn.Module):
    """Linear heads mapping each model's pooled feature to a common width, plus a learnable
    InfoNCE temperature (stored as its log; kept in [0.01, 1]). Initial 0.07 is our choice (open)."""

    def __init__(self, in_dims: Mapping[str, int], out_dim: int = 128, temperature: float = 0.07,
                 learn_temperature: bool = True):
        super().__init__()
        _positive("temperature", temperature)
        if out_dim < 1 or not in_dims:
            raise ValueError(f"need out_dim >= 1 and at least one input, got {out_dim} and {dict(in_dims)}")
        self.heads = nn.ModuleDict({name: nn.Linear(dim, out_dim) for name, dim in in_dims.items()})
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.clamp(min=math.log(0.01), max=0.0).exp()

    def forward(self, name: str, feat: torch.Tensor) -> torch.Tensor:
        if name not in self.heads:
            raise ValueError(f"no projector for {name!r}; have {list(self.heads)}")
        return self.heads[name](feat.float())


TAS_PAIRS = (("teacher", "student"), ("teacher", "assistant"), ("assistant", "student"))
SHORT = {"teacher": "t", "student": "s", "assistant": "a"}
TAS_TERMS = ("ce_s", "ce_a", "nce_ts", "ofa_ts", "nce_ta", "ofa_ta", "nce_as", "ofa_as")


class TASLoss(nn.Module):
    """L = L(K_t, K_s) + L(K_t, K_a) + L(K_a, K_s) + CE(student) + CE(assistant).

    Each pair term L(K_x, K_y) = InfoNCE on projected pooled features + OFA on logits, with x
    supervising y. Open choices, made here and switchable: the supervising side is detached
    (`detach_supervisor`), both sides' projectors learn, label cross-entropy (weight 1, label
    smoothing as the recipe) is added for student and assistant as in OFA's code, and InfoNCE's
    negatives (`negatives`, see `info_nce`). Term names: ce_s, ce_a, nce_ts, ofa_ts, nce_ta, ofa_ta,
    nce_as, ofa_as; `weights` scales any. `forward(..., ramp=r)` scales the assistant -> student terms
    by r in [0, 1] (a warm-up while the assistant is still untrained).
    """

    def __init__(self, dims: Mapping[str, int], *, proj_dim: int = 128, gamma: float = 1.0,
                 ofa_temperature: float = 1.0, nce_temperature: float = 0.07, label_smoothing: float = 0.0,
                 weights: Mapping[str, float] | None = None, detach_supervisor: bool = True, negatives: str = "all"):
        super().__init__()
        missing = {"teacher", "student", "assistant"} - set(dims)
        if missing:
            raise ValueError(f"TASLoss needs pooled feature widths for teacher, student and assistant; missing {missing}")
        if negatives not in NEGATIVES:
            raise ValueError(f"unknown negatives {negatives!r}; allowed: {', '.join(NEGATIVES)}")
        self.projector = FeatureProjector(dims, proj_dim, nce_temperature)
        self.gamma, self.ofa_temperature, self.negatives = gamma, ofa_temperature, negatives
        self.label_smoothing, self.detach_supervisor = label_smoothing, detach_supervisor
        unknown = set(weights or {}) - set(TAS_TERMS)
        if unknown:
            raise ValueError(f"unknown TAS loss term(s) {sorted(unknown)}; terms are {list(TAS_TERMS)}")
        self.weights = {name: 1.0 for name in TAS_TERMS} | dict(weights or {})

    def forward(self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], target: torch.Tensor,
                ramp: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`outputs[name] = (logits, pooled_feature)` for teacher, student, assistant."""
        terms = {"ce_s": cross_entropy(outputs["student"][0], target, self.label_smoothing),
                 "ce_a": cross_entropy(outputs["assistant"][0], target, self.label_smoothing)}
        labels = hard_labels(target)
        for sup, rec in TAS_PAIRS:
            (z_x, f_x), (z_y, f_y) = outputs[sup], outputs[rec]
            if self.detach_supervisor:
                z_x, f_x = z_x.detach(), f_x.detach()
            key = f"{SHORT[sup]}{SHORT[rec]}"
            terms[f"nce_{key}"] = info_nce(self.projector(rec, f_y), self.projector(sup, f_x),
                                           self.projector.temperature, labels=labels, negatives=self.negatives)
            terms[f"ofa_{key}"] = ofa(z_y, z_x, target, self.gamma, self.ofa_temperature)
        scale = {"nce_as": ramp, "ofa_as": ramp}
        total = sum(self.weights[name] * scale.get(name, 1.0) * value for name, value in terms.items())
        return total, terms


def ofa_class_weights(p_teacher: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OFA's weight on log p_s for a class the teacher gives probability p: (as target, as non-target)."""
    return (1 + p_teacher).pow(gamma) - 1, p_teacher.pow(gamma)


def logit_gradient_split(loss_fn, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         target: torch.Tensor) -> dict[str, float]:
    """Mean gradient of `loss_fn(s, t, y)` w.r.t. the student's target logit, and mean |gradient| on
    the non-target logits: where each loss pushes."""
    s = student_logits.detach().float().requires_grad_()
    loss_fn(s, teacher_logits.detach(), target).backward()
    mask = F.one_hot(target, s.shape[1]).bool()
    return {"target logit": s.grad[mask].mean().item(), "non-target logits (mean |grad|)": s.grad[~mask].abs().mean().item()}


def expected_same_class_negatives(batch_size, num_classes):
    """Expected number of in-batch InfoNCE negatives that share the anchor's class: (B - 1) / C.

    Each of the other B - 1 examples of a batch is a negative of the anchor; when labels are drawn
    independently and uniformly over C classes (balanced data, shuffled batches), each one shares the
    anchor's class with probability 1 / C. Those negatives are pushed away although they should be
    alike: 10 classes (digits, Fashion-MNIST), batch 32 -> 3.1 per anchor; CIFAR-100, batch 128 -> 1.27.
    Scalars give a float; sequences and arrays broadcast and give a numpy array.
    """
    b = torch.as_tensor(batch_size, dtype=torch.float64)
    c = torch.as_tensor(num_classes, dtype=torch.float64)
    if (b < 1).any() or (b != b.floor()).any():
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if (c < 1).any() or (c != c.floor()).any():
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    expected = (b - 1) / c
    return expected.item() if expected.dim() == 0 else expected.numpy()
