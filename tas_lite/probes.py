"""Module-function probes: what a convolution, an attention block and a token-mixing MLP look at.

- `mean_attention_distance`: how far, in pixels, each attention head looks (Dosovitskiy et al. 2021).
- `effective_receptive_field`: which input pixels move the centre unit of a stage (Luo et al. 2016).
- `theoretical_receptive_field`: the most a conv stack could see.
- `token_mixing_weights`: an MLP-Mixer's fixed token-mixing weights, one image per hidden unit.
Token models are probed through their NCHW view, so every family is measured the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .stages import family, stages
from .util import eval_mode

ERF_FRACTIONS = (0.2, 0.5, 0.99)


def block_stages(model: nn.Module) -> list[int]:
    """The stage (1-4) of every block of the four-stage view, in depth order."""
    view = stages(model)
    members = [{id(m) for m in stage.modules()} for stage in view.stages]
    return [next(i + 1 for i, ids in enumerate(members) if id(block) in ids) for block in view.blocks]


# ---- attention ---------------------------------------------------------------------------------------


@dataclass
class AttentionLayer:
    """One attention module with what is needed to place its tokens: pixels per token, prefix tokens."""

    module: nn.Module
    pixels_per_token: int
    num_prefix_tokens: int
    stage: int  # 1-based stage of the four-stage view


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention modules of a timm ViT/DeiT or Swin, in depth order."""
    fam = family(model)
    if fam == "vit":
        return [AttentionLayer(b.attn, model.patch_embed.patch_size[0], model.num_prefix_tokens, s)
                for b, s in zip(model.blocks, block_stages(model))]
    if fam == "swin":  # every Swin stage halves the grid, so a token covers twice the pixels
        patch = model.patch_embed.patch_size[0]
        return [AttentionLayer(b.attn, patch * 2**i, 0, i + 1)
                for i, layer in enumerate(model.layers) for b in layer.blocks]
    raise ValueError(f"attention probes need a ViT/DeiT or Swin model; this is a {fam!r} model without attention")


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch off timm's fused attention (which never materialises the attention matrix); restore after."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, value in saved:
            m.fused_attn = value


def _grid_distances(side: int, pixels_per_token: float, device: torch.device) -> torch.Tensor:
    """(side^2, side^2) Euclidean distances in pixels between token centres of a square grid."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], 1).to(device, torch.float32)
    return torch.cdist(coords, coords) * pixels_per_token


@torch.no_grad()
def _each_attention(model: nn.Module, images: torch.Tensor,
                    reduce: Callable[[AttentionLayer, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Run the model once; hand every layer's post-softmax attention (prefix dropped, rows renormalised,
    shape (batch or windows, heads, N, N)) to `reduce` as it is computed."""
    layers = attention_layers(model)
    out: list[torch.Tensor] = []

    def hook_for(layer: AttentionLayer):
        def hook(module, inputs, output):
            p = layer.num_prefix_tokens
            attn = inputs[0][..., p:, p:].float()
            out.append(reduce(layer, attn / attn.sum(-1, keepdim=True)))
        return hook

    handles = [layer.module.attn_drop.register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        with unfused_attention(model), eval_mode(model):
            model(images.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    if len(out) != len(layers):
        raise ValueError(f"expected {len(layers)} attention maps, hooks saw {len(out)}")
    return out


def uniform_attention_distance(side: int, pixels_per_token: float) -> float:
    """Mean attention distance of uniform attention over a side x side grid: the "looks everywhere" reference."""
    return _grid_distances(side, pixels_per_token, torch.device("cpu")).mean().item()


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the post-softmax attention without prefix (CLS) tokens, rows renormalised to sum to 1.

    ViT: (images, heads, N, N) over the whole grid; Swin: (images x windows, heads, N, N) per window.
    """
    return _each_attention(model, images, lambda layer, attn: attn.cpu())


def mean_attention_distance(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, a (heads,) tensor: attention-weighted pixel distance between query and key patch
    centres, averaged over queries and images. Swin distances are measured inside each window.
    (For a ViT every layer has the same number of heads: `torch.stack` gives a (layers, heads) table.)
    """
    def reduce(layer: AttentionLayer, attn: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(attn.shape[-1])
        if side * side != attn.shape[-1]:
            raise ValueError(f"cannot place {attn.shape[-1]} tokens on a square grid")
        dist = _grid_distances(side, layer.pixels_per_token, attn.device)
        return (attn * dist).sum(-1).mean((0, 2)).cpu()

    return _each_attention(model, images, reduce)


def attention_distance_per_image(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, an (images, heads) tensor: `mean_attention_distance` before averaging over images,
    so its spread over images and heads can be measured. Swin: averaged over each image's windows."""
    n = len(images)

    def reduce(layer: AttentionLayer, attn: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(attn.shape[-1])
        if side * side != attn.shape[-1]:
            raise ValueError(f"cannot place {attn.shape[-1]} tokens on a square grid")
        per_query = (attn * _grid_distances(side, layer.pixels_per_token, attn.device)).sum(-1)
        return per_query.mean(-1).reshape(n, -1, attn.shape[1]).mean(1).cpu()

    return _each_attention(model, images, reduce)


@dataclass
class Locality:
    """How local one attention layer is, against uniform attention over the same grid (all in px).

    `gap` = uniform - mean distance (positive: more local than uniform); `spread` = standard deviation of
    the per-image, per-head distances. A difference counts only beyond `tolerance` = the larger of the
    spread and `min_effect` (a floor: near-uniform attention varies so little between images that a
    consistent but tiny difference would otherwise count). `local_heads`: heads whose own gap exceeds the
    larger of their spread over images and `min_effect`. Verdict: "local" when gap > tolerance, "wider
    than uniform" when -gap > tolerance, otherwise "some heads local" when a head is, else
    "no locality learned".
    """

    mean: float
    spread: float
    gap: float
    uniform: float
    min_effect: float
    local_heads: int
    heads: int

    @property
    def tolerance(self) -> float:
        return max(self.spread, self.min_effect)

    @property
    def verdict(self) -> str:
        if self.gap > self.tolerance:
            return "local"
        if -self.gap > self.tolerance:
            return "wider than uniform"
        return "some heads local" if self.local_heads else "no locality learned"


def locality(per_image: torch.Tensor, uniform: float, min_fraction: float = 0.05) -> Locality:
    """The `Locality` of one layer from its (images, heads) attention distances (`attention_distance_per_image`);
    differences under `min_fraction` of the uniform distance never count (5%: 0.8 px for 16.5 px)."""
    d = torch.as_tensor(per_image, dtype=torch.float64)
    if d.dim() != 2 or d.shape[0] < 2:
        raise ValueError(f"per_image must be (images >= 2, heads), got shape {tuple(d.shape)}")
    floor = min_fraction * uniform
    head_gap, head_spread = uniform - d.mean(0), d.std(0).clamp_min(floor)
    return Locality(mean=d.mean().item(), spread=d.std().item(), gap=uniform - d.mean().item(), uniform=uniform,
                    min_effect=floor, local_heads=int((head_gap > head_spread).sum()), heads=d.shape[1])


def query_attention(model: nn.Module, images: torch.Tensor, layer: int, head: int,
                    query: tuple[int, int] | None = None) -> torch.Tensor:
    """(side, side) attention of one query patch (default: the centre) for one ViT layer and head,
    averaged over images: where that patch looks."""
    if family(model) != "vit":
        raise ValueError("query_attention places queries on the whole token grid: it needs a ViT/DeiT model")
    n_layers = len(model.blocks)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in 0..{n_layers - 1}, got {layer}")
    heads = model.blocks[layer].attn.num_heads
    if not 0 <= head < heads:
        raise ValueError(f"head must be in 0..{heads - 1}, got {head}")
    attn = attention_maps(model, images)[layer][:, head].mean(0)
    side = math.isqrt(attn.shape[-1])
    qy, qx = query if query is not None else (side // 2, side // 2)
    return attn[qy * side + qx].reshape(side, side)


# ---- receptive fields ----------------------------------------------------------------------------------


@dataclass
class ERF:
    """Effective receptive field of one feature map's centre unit.

    `map` is |d centre / d input| summed over input channels and averaged over images, scaled to max 1;
    `sides[q]` is the side in pixels of the smallest square, centred on the unit, holding fraction q of
    the gradient mass. A feature map with an even side has no middle unit, so the centre unit sits half
    a unit off the image's middle: a square reaching the far edge overhangs the near one, and its side
    can exceed the image (36 px on a 32 px image). `box(q)` is that square clipped to the image,
    `extent(q)` its larger side (at most the image), `covers_image(q)` whether it is the whole image.
    """

    map: torch.Tensor
    sides: dict[float, float]
    centre: tuple[float, float]  # (y, x) in input pixels
    grid: tuple[int, int]        # the feature map's (H, W)
    stage: int | None

    def box(self, q: float) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) pixel edges of the q-mass square, clipped to the image."""
        h, w = self.map.shape
        half = self.sides[q] / 2
        cy, cx = self.centre
        return max(cy - half, -0.5), max(cx - half, -0.5), min(cy + half, h - 0.5), min(cx + half, w - 0.5)

    def extent(self, q: float) -> float:
        """Larger side (px) of the q-mass square within the image: never more than the image."""
        top, left, bottom, right = self.box(q)
        return max(bottom - top, right - left)

    def covers_image(self, q: float) -> bool:
        """True when the q-mass square, clipped to the image, is the whole image."""
        h, w = self.map.shape
        return self.box(q) == (-0.5, -0.5, h - 0.5, w - 0.5)


def _square_sides(mass: torch.Tensor, centre: tuple[float, float],
                  fractions: Iterable[float]) -> dict[float, float]:
    """Smallest centred square (side in pixels) holding each fraction of `mass` (H, W)."""
    h, w = mass.shape
    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    side = 2 * torch.maximum((ys - centre[0]).abs(), (xs - centre[1]).abs()) + 1
    order = side.flatten().argsort()
    side_sorted = side.flatten()[order]
    cum = mass.flatten().double()[order].cumsum(0)
    cum = cum / cum[-1]
    out = {}
    for q in fractions:
        idx = int(torch.searchsorted(cum, torch.tensor(q - 1e-12, dtype=torch.float64)))
        out[q] = float(side_sorted[min(idx, len(side_sorted) - 1)])
    return out


def effective_receptive_field(model: nn.Module, images: torch.Tensor, stage: int | None,
                              fractions: Iterable[float] = ERF_FRACTIONS) -> ERF:
    """ERF of the centre unit of stage `stage` (1-4) of a tas_lite-supported model, in eval mode.

    `stage=None` takes the output of `model` itself, which must be a (B, C, H, W) map (any conv stack).
    Token models (ViT, Swin, Mixer) are read through their NCHW view, prefix tokens dropped.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().to(next(model.parameters()).device).clone().requires_grad_(True)
    with eval_mode(model):
        if stage is None:
            fmap = model(x)
            if fmap.dim() != 4:
                raise ValueError(f"stage=None needs a model whose output is (B, C, H, W), got {tuple(fmap.shape)}")
        else:
            if stage not in (1, 2, 3, 4):
                raise ValueError(f"stage must be 1, 2, 3, 4 (or None for the model's own output), got {stage!r}")
            view = stages(model)
            h = view.stem(x)
            for block in view.stages[:stage]:
                h = block(h)
            fmap = view.nchw(h)
        cy, cx = fmap.shape[2] // 2, fmap.shape[3] // 2
        (grad,) = torch.autograd.grad(fmap[:, :, cy, cx].sum(), x)
    mass = grad.abs().sum(1).mean(0).detach().cpu()
    if not mass.sum() > 0:
        raise ValueError("the centre unit's gradient is zero everywhere: it does not depend on the input "
                         "(dead ReLU or zero-initialised branch?)")
    sy, sx = images.shape[2] / fmap.shape[2], images.shape[3] / fmap.shape[3]
    centre = ((cy + 0.5) * sy - 0.5, (cx + 0.5) * sx - 0.5)
    return ERF(mass / mass.max(), _square_sides(mass, centre, fractions), centre,
               (fmap.shape[2], fmap.shape[3]), stage)


_ELEMENTWISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout, nn.GroupNorm,
                nn.Tanh, nn.Sigmoid)


def _kernel_stride(layer) -> list[tuple[int, int, int]]:
    """(kernel, stride, dilation) steps of one layer; containers are walked in order."""
    if isinstance(layer, tuple):
        k, s, *d = layer
        return [(int(k), int(s), int(d[0]) if d else 1)]
    if isinstance(layer, nn.Sequential):
        return [step for sub in layer for step in _kernel_stride(sub)]
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        pair = lambda v: v if isinstance(v, tuple) else (v, v)
        k, s = pair(layer.kernel_size), pair(layer.stride)
        d = pair(getattr(layer, "dilation", 1))
        if k[0] != k[1] or s[0] != s[1] or d[0] != d[1]:
            raise ValueError(f"{layer} is not square; the theoretical RF here assumes square kernels")
        return [(k[0], s[0], d[0])]
    if isinstance(layer, _ELEMENTWISE):
        return []
    raise ValueError(f"cannot tell the receptive field of {type(layer).__name__}; pass nn.Sequential of "
                     f"Conv2d/MaxPool2d/AvgPool2d (+ elementwise layers) or (kernel, stride[, dilation]) tuples")


def theoretical_receptive_field(layers: nn.Module | Iterable) -> int:
    """Side in pixels of what one output unit of a plain (chain) conv stack can see:
    1 + sum (k_i - 1) d_i prod_{j<i} s_j. Residual shortcuts do not widen it; parallel paths are not handled."""
    steps = _kernel_stride(layers) if isinstance(layers, nn.Module) else [
        step for layer in layers for step in _kernel_stride(layer)]
    rf, jump = 1, 1
    for k, s, d in steps:
        rf += (k - 1) * d * jump
        jump *= s
    return rf


def conv_stack(depth: int, channels: int = 16, kernel: int = 3, seed: int = 0) -> nn.Sequential:
    """A plain stack of `depth` same-padded conv + ReLU layers (random init): the textbook ERF subject."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's random stream
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(3 if i == 0 else channels, channels, kernel, padding=kernel // 2), nn.ReLU()]
        return nn.Sequential(*layers)


# ---- token mixing -----------------------------------------------------------------------------------


def token_mixing_weights(model: nn.Module, block: int) -> torch.Tensor:
    """(units, side, side): an MLP-Mixer block's first token-mixing layer, one grid image per hidden unit
    (ResMLP: its single token-mixing linear layer, one image per output token). Fixed after training:
    the same mixing for every image, unlike attention."""
    if family(model) != "mlp":
        raise ValueError(f"token-mixing weights belong to MLP-Mixer/ResMLP models, not {family(model)!r}")
    if not 0 <= block < len(model.blocks):
        raise ValueError(f"block must be in 0..{len(model.blocks) - 1}, got {block}")
    b = model.blocks[block]
    weight = b.mlp_tokens.fc1.weight if hasattr(b, "mlp_tokens") else b.linear_tokens.weight
    side = math.isqrt(weight.shape[1])
    return weight.detach().cpu().reshape(weight.shape[0], side, side)


def neighbour_correlations(weights: torch.Tensor) -> torch.Tensor:
    """(units,) correlation between side-by-side entries of each weight image (units, H, W), centred on its
    own mean: about 0 for random weights, clearly positive for smooth, local (blob-like) patterns."""
    if weights.dim() != 3 or min(weights.shape[1:]) < 2:
        raise ValueError(f"weights must be (units, H, W) with H, W >= 2, got {tuple(weights.shape)}")
    w = weights.double() - weights.double().mean((1, 2), keepdim=True)
    pairs = torch.cat([(w[:, 1:, :] * w[:, :-1, :]).flatten(1), (w[:, :, 1:] * w[:, :, :-1]).flatten(1)], 1)
    variance = (w * w).mean((1, 2))
    return pairs.mean(1) / variance


def neighbour_correlation(weights: torch.Tensor) -> float:
    """Mean of `neighbour_correlations` over units."""
    return neighbour_correlations(weights).mean().item()
