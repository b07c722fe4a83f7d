"""L2G and the hybrid assistant: CNN stages 1-3 -> L2G -> the other model's stage 4 and head.

    p_a(x) = fc_m . S_m^4 . L2G . S_c^3 . S_c^2 . S_c^1 (x)        (TAS, arXiv 2410.12342, section 3)

The assistant owns no copy of anything: its stem, front stages, back stage and head are the teacher's
and student's own modules, and it registers exactly those (so `count_parameters(assistant)` is what it
runs). Its only new parameters are L2G's (a patch embedding and one attention block) and, for a ViT
receiver, its class token, which is what makes it "negligible" in size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import cka
from .stages import FAMILIES, StageView, count_parameters, family, stages, unique_parameters
from .util import eval_mode

OWNERS = ("teacher", "student")


class WindowedSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual, over a (B, H, W, C) grid.

    `window=None` attends globally (the paper's MSA); an int attends within non-overlapping
    windows, as a Swin stage does. `attn_dim` is the width of queries/keys/values: below `dim`
    it keeps the block small (4 * dim * attn_dim parameters instead of 4 * dim^2).
    """

    def __init__(self, dim: int, heads: int, attn_dim: int, window: int | None = None):
        super().__init__()
        if attn_dim % heads:
            raise ValueError(f"attn_dim {attn_dim} must be divisible by heads {heads}")
        self.heads, self.window = heads, window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * attn_dim)
        self.proj = nn.Linear(attn_dim, dim)

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, h, w, c = grid.shape
        x = self.norm(grid)
        win = min(self.window or max(h, w), h, w)
        if h % win or w % win:
            raise ValueError(f"window {win} does not tile a {h}x{w} grid")
        x = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        x = self._attend(x)
        x = x.view(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return grid + x


class L2G(nn.Module):
    """Local-to-global: patch-embed a CNN map (B, C, H, W) to the receiving stage's width and grid,
    then one attention block. Returns a (B, C_out, H_out, W_out) map.

    Patch embedding (open in the paper; our choice): a conv with kernel = stride = in_grid / out_grid
    when that is an integer (a ViT-style patchify), else bilinear resampling and a 1x1 conv; then a
    LayerNorm. `attention=False` gives a plain adapter (CNN -> CNN pairs).
    """

    def __init__(self, in_channels: int, in_grid: int, out_dim: int, out_grid: int, heads: int | None = None, *,
                 window: int | None = None, attn_dim: int | None = None, attention: bool = True):
        super().__init__()
        if min(in_channels, in_grid, out_dim, out_grid) < 1:
            raise ValueError(f"L2G sizes must be positive, got in=({in_channels}, {in_grid}), out=({out_dim}, {out_grid})")
        self.in_grid, self.out_grid = in_grid, out_grid
        ratio = in_grid // out_grid if in_grid % out_grid == 0 else 0
        self.patchify = ratio > 0
        kernel = ratio if self.patchify else 1
        self.embed = nn.Conv2d(in_channels, out_dim, kernel_size=kernel, stride=kernel)
        self.norm = nn.LayerNorm(out_dim)
        self.attn = None
        if attention:
            attn_dim = attn_dim or min(out_dim, in_channels)
            heads = heads or max(1, attn_dim // 32)
            attn_dim = max(heads, attn_dim // heads * heads)
            self.attn = WindowedSelfAttention(out_dim, heads, attn_dim, window)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if m.shape[-1] != self.in_grid or m.shape[-2] != self.in_grid:
            raise ValueError(f"L2G expects a {self.in_grid}x{self.in_grid} map, got {tuple(m.shape[-2:])}")
        if not self.patchify:
            m = F.interpolate(m, size=(self.out_grid, self.out_grid), mode="bilinear", align_corners=False,
                              antialias=self.out_grid < self.in_grid)
        grid = self.norm(self.embed(m).permute(0, 2, 3, 1))
        if self.attn is not None:
            grid = self.attn(grid)
        return grid.permute(0, 3, 1, 2)


@dataclass
class PartSummary:
    """One row of the assistant's composition: which module, from whom, how big, whether it learns."""

    name: str
    source: str  # "student", "teacher" or "new"
    parameters: int
    trainable: bool


def frozen_call(module: nn.Module, *args, **kwargs):
    """Run `module` with its weights detached: gradients flow through it to its input, never into its
    weights (and no weight gradient is even computed). The caller's module is left as it was."""
    weights = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, weights, args, kwargs)


class HybridAssistant(nn.Module):
    """stem + stages 1-3 of the front owner -> L2G -> stage 4 + head of the back owner.

    `front_owner`/`back_owner` say whose modules they are ("student" or "teacher"). Parts owned by a
    frozen owner (`frozen`, by default the teacher) keep their weights: they run in eval mode, with
    detached weights, so nothing is written into the caller's model, not even `requires_grad`.
    """

    def __init__(self, front: StageView, back: StageView, front_owner: str, back_owner: str, l2g: L2G,
                 prefix: nn.Parameter | None, frozen: tuple[str, ...] = ("teacher",)):
        super().__init__()
        self.front_owner, self.back_owner, self.frozen = front_owner, back_owner, tuple(frozen)
        self._front, self._back = front, back  # plain references, for layouts
        self.stem = front.stem
        self.front_stages = nn.ModuleList(front.stages[:3])
        self.l2g = l2g
        self.prefix = prefix
        self.back_stage = back.stages[3]
        self.head = back.head_part

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled feature) from an image batch."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.front_owner not in self.frozen):
            h = self.stem(x)
            for stage in self.front_stages:
                h = stage(h)
        return self.forward_from_stage3(h)

    def forward_from_stage3(self, s3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled feature) from the front owner's stage-3 output (native layout).

        Training passes the activation the owning model already computed, so shared stages run once.
        """
        tokens = self._back.from_nchw(self.l2g(self._front.nchw(s3)), prefix=self.prefix)
        run = frozen_call if self.back_owner in self.frozen else (lambda module, *a, **k: module(*a, **k))
        s4 = run(self.back_stage, tokens)
        return run(self.head, s4), run(self.head, s4, pre_logits=True).flatten(1)

    def new_parameters(self) -> list[nn.Parameter]:
        return list(self.l2g.parameters()) + ([self.prefix] if self.prefix is not None else [])

    def _owned(self) -> dict[str, list[nn.Module]]:
        return {self.front_owner: [self.stem, self.front_stages], self.back_owner: [self.back_stage, self.head]}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """New parameters, and the shared ones of owners that are not frozen, each once."""
        shared = [p for owner, mods in self._owned().items() if owner not in self.frozen
                  for m in mods for p in m.parameters()]
        return unique_parameters(self.new_parameters() + shared)

    def parameter_groups(self) -> dict[str, int]:
        """Exact accounting: {"new", "shared, trained", "shared, frozen"}; the three sum to the module's count."""
        new = {id(p) for p in self.new_parameters()}
        trained = {id(p) for p in self.trainable_parameters()} - new
        groups = {"new": 0, "shared, trained": 0, "shared, frozen": 0}
        for p in unique_parameters(self.parameters()):
            key = "new" if id(p) in new else "shared, trained" if id(p) in trained else "shared, frozen"
            groups[key] += p.numel()
        return groups

    def parts(self) -> list[PartSummary]:
        """Composition table: every part, its source, parameter count and whether it trains."""
        front, back = self._front.part_sizes(), self._back.part_sizes()
        f_train, b_train = self.front_owner not in self.frozen, self.back_owner not in self.frozen
        rows = [PartSummary("stem", self.front_owner, front["stem"], f_train)]
        rows += [PartSummary(f"stage {i + 1}", self.front_owner, front[f"stage{i + 1}"], f_train) for i in range(3)]
        rows.append(PartSummary("L2G", "new", sum(p.numel() for p in self.new_parameters()), True))
        rows.append(PartSummary("stage 4", self.back_owner, back["stage4"], b_train))
        rows.append(PartSummary("head", self.back_owner, back["head"], b_train))
        return rows

    def train(self, mode: bool = True) -> HybridAssistant:
        """Frozen parts stay in eval mode whatever `mode` says."""
        super().train(mode)
        for owner, mods in self._owned().items():
            if owner in self.frozen:
                for m in mods:
                    m.eval()
        return self


def _receiver_window(back: StageView) -> int | None:
    """Swin's stage-4 input is attended in windows of its own window size; others globally."""
    if back.family != "swin":
        return None
    first_block = back.stages[3].blocks[0]
    return int(first_block.window_size[0])


def _prefix_init(back: StageView) -> nn.Parameter | None:
    """ViT receivers need their prefix (class) tokens: start from the receiver's own cls + pos embedding."""
    m = back.model
    if back.num_prefix_tokens == 0:
        return None
    tokens = [t for t in (getattr(m, "cls_token", None), getattr(m, "reg_token", None)) if t is not None]
    prefix = torch.cat(tokens, dim=1).detach().clone()
    if getattr(m, "pos_embed", None) is not None and not getattr(m, "no_embed_class", False):
        prefix = prefix + m.pos_embed[:, : back.num_prefix_tokens].detach()
    return nn.Parameter(prefix)


def roles(teacher_family: str, student_family: str) -> tuple[str, str]:
    """(front owner, back owner). CNN always comes first; otherwise student front, teacher back.

    CNN student + token teacher: student front, teacher back; CNN teacher + token student: teacher
    front, student back (paper). Homogeneous pairs and token-token pairs (open in the paper, our
    choice): student front, teacher back, as the paper does for homogeneous pairs.
    """
    if teacher_family == "cnn" and student_family != "cnn":
        return "teacher", "student"
    return "student", "teacher"


def build(teacher: nn.Module, student: nn.Module, *, img_size: int = 32, freeze_teacher: bool = True,
          heads: int | None = None, attn_dim: int | None = None, l2g_attention: bool = True) -> HybridAssistant:
    """The hybrid assistant for an ordered (teacher, student) pair of any families.

    Nothing of the two models is changed. `freeze_teacher` (open in the paper; default True) keeps
    the teacher's shared parts fixed inside the assistant (they run with detached weights), so only
    L2G is new and trainable besides the student's own parts. `attn_dim` defaults to the narrower of
    the two widths L2G joins (keeps it under ~10% of a student's size; `attn_dim=out_dim` is the
    literal full-width MSA of 4 d^2 parameters). `l2g_attention=False` drops L2G's attention block.
    """
    t_classes, s_classes = getattr(teacher, "num_classes", None), getattr(student, "num_classes", None)
    if t_classes != s_classes:
        raise ValueError(f"cannot join a teacher with {t_classes} classes and a student with {s_classes}")
    views = {"teacher": stages(teacher), "student": stages(student)}
    front_owner, back_owner = roles(family(teacher), family(student))
    front, back = views[front_owner], views[back_owner]
    try:
        front_shapes, back_shapes = front.shapes(img_size), back.shapes(img_size)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ValueError(f"teacher and student must both run at img_size={img_size}: {err}") from err
    (c_in, h_in, w_in), (c_out, h_out, w_out) = front_shapes[2], back_shapes[2]  # stage 4 reads stage 3's output
    if h_in != w_in or h_out != w_out:
        raise ValueError(f"L2G joins square grids only, got {h_in}x{w_in} -> {h_out}x{w_out}")
    attention = l2g_attention and not (front.family == "cnn" and back.family == "cnn")
    l2g = L2G(c_in, h_in, c_out, h_out, heads, window=_receiver_window(back), attn_dim=attn_dim, attention=attention)
    param = next(student.parameters())
    frozen = ("teacher",) if freeze_teacher else ()
    hybrid = HybridAssistant(front, back, front_owner, back_owner, l2g.to(param.device), _prefix_init(back), frozen)
    return hybrid.to(param.device)


def budget(assistant: HybridAssistant, student: nn.Module) -> float:
    """New assistant parameters as a fraction of the student's."""
    return sum(p.numel() for p in assistant.new_parameters()) / count_parameters(student)


@torch.no_grad()
def trace(assistant: HybridAssistant, x: torch.Tensor) -> list[dict[str, object]]:
    """Every step of the assistant's forward on `x`: part, owner and output shape, for teaching."""
    rows = [{"step": "input image", "from": "", "shape": tuple(x.shape)}]
    h = assistant.stem(x)
    rows.append({"step": "stem", "from": assistant.front_owner, "shape": tuple(h.shape)})
    for i, stage in enumerate(assistant.front_stages):
        h = stage(h)
        rows.append({"step": f"stage {i + 1}", "from": assistant.front_owner, "shape": tuple(h.shape)})
    m = assistant.l2g(assistant._front.nchw(h))
    rows.append({"step": "L2G (patch embed + attention)", "from": "new", "shape": tuple(m.shape)})
    tokens = assistant._back.from_nchw(m, prefix=assistant.prefix)
    rows.append({"step": f"as {assistant._back.layout} for stage 4", "from": "", "shape": tuple(tokens.shape)})
    s4 = assistant.back_stage(tokens)
    rows.append({"step": "stage 4", "from": assistant.back_owner, "shape": tuple(s4.shape)})
    rows.append({"step": "pooled feature f", "from": assistant.back_owner,
                 "shape": tuple(assistant.head(s4, pre_logits=True).shape)})
    rows.append({"step": "logits p", "from": assistant.back_owner, "shape": tuple(assistant.head(s4).shape)})
    return rows


def role_table() -> dict[str, dict[str, str]]:
    """For every (teacher family, student family): which model lends stages 1-3 and which stage 4 + head."""
    table = {}
    for t in FAMILIES:
        table[t] = {}
        for s in FAMILIES:
            front, back = roles(t, s)
            table[t][s] = f"{front} {t if front == 'teacher' else s} -> {back} {t if back == 'teacher' else s}"
    return table


@torch.no_grad()
def pooled_features(teacher: nn.Module, student: nn.Module, assistant: HybridAssistant,
                    images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pooled final features f of teacher, assistant and student on `images` (eval mode)."""
    with eval_mode(teacher, student, assistant):
        t_view, s_view = stages(teacher), stages(student)
        return {"teacher": t_view.pool(t_view.features(images)[-1]), "assistant": assistant(images)[1],
                "student": s_view.pool(s_view.features(images)[-1])}


def feature_similarity(teacher: nn.Module, student: nn.Module, assistant: HybridAssistant,
                       images: torch.Tensor) -> dict[str, float]:
    """Unbiased linear CKA between the pooled features f of teacher, student and assistant on `images`."""
    f = pooled_features(teacher, student, assistant, images)
    return {"assistant ~ teacher": cka.unbiased(f["assistant"], f["teacher"]),
            "assistant ~ student": cka.unbiased(f["assistant"], f["student"]),
            "teacher ~ student": cka.unbiased(f["teacher"], f["student"])}
