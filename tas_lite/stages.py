"""The uniform four-stage view of a model: stem -> 4 stages -> head, whatever the family.

CNNs are cut at their four resolutions; Swin at its four layers; isotropic ViT/Mixer/ResMLP models at
the paper's block split (after blocks 1, 3, 9, 11 of 12, i.e. groups [0-1], [2-3], [4-9], [10-11]),
scaled proportionally for other depths. The view holds the model's own modules (no copies), so
composing stem, stages and head is exactly `model(x)`, and their parameters add up to the model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mlp_mixer import MlpMixer
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .util import eval_mode

FAMILIES = ("cnn", "vit", "swin", "mlp")
FAMILY_CLASSES: dict[str, tuple[type, ...]] = {"cnn": (ResNet, EfficientNet, ConvNeXt), "vit": (VisionTransformer,),
                                                "swin": (SwinTransformer,), "mlp": (MlpMixer,)}
SUPPORTED = "timm ResNet, MobileNetV2/EfficientNet, ConvNeXt, VisionTransformer/DeiT, SwinTransformer, MlpMixer/ResMLP"
PAPER_SPLIT_12 = (2, 4, 10, 12)  # stage ends (exclusive) for 12 blocks


def family(model: nn.Module) -> str:
    """"cnn" | "vit" | "swin" | "mlp" for the model classes tas_lite knows; ValueError otherwise."""
    for name, classes in FAMILY_CLASSES.items():
        if isinstance(model, classes):
            return name
    raise ValueError(f"no family known for {type(model).__name__}; supported: {SUPPORTED}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, each shared tensor counted once."""
    return sum(p.numel() for p in unique_parameters(module.parameters()) if p.requires_grad or not trainable_only)


def unique_parameters(params) -> list[nn.Parameter]:
    """Parameters in order, each object once (shared modules register the same tensor several times)."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def isotropic_split(depth: int) -> list[tuple[int, int]]:
    """Block ranges of the four stages for a `depth`-block isotropic model (paper split, scaled)."""
    if depth < 4:
        raise ValueError(f"an isotropic model needs at least 4 blocks to form 4 stages, got {depth}")
    ends = [max(1, round(depth * e / 12)) for e in PAPER_SPLIT_12]
    for i in range(1, 4):  # keep every stage non-empty
        ends[i] = max(ends[i], ends[i - 1] + 1)
    ends[3] = depth
    starts = [0] + ends[:3]
    return list(zip(starts, ends))


class Part(nn.Module):
    """Some of a model's own modules and parameters, registered (so they count and train) but run by
    `fn`, usually the model's own code. The stem and the head of every view are Parts."""

    def __init__(self, fn: Callable, modules: dict[str, nn.Module], params: dict[str, nn.Parameter] | None = None):
        super().__init__()
        object.__setattr__(self, "fn", fn)  # a plain reference: `modules` are what this part registers
        for name, module in modules.items():
            self.add_module(name, module)
        for name, param in (params or {}).items():
            self.register_parameter(name, param)

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


@dataclass
class StageView:
    """Stem, four stages and head of one model, sharing its modules.

    Stage outputs keep the model's native layout (`layout`): "nchw" for CNNs, "nhwc" for Swin,
    "tokens" (B, prefix + N, D) for ViT and Mixer. `nchw(s)` turns any of them into a (B, C, H, W) map.
    `head_part` holds the final norm and the classifier: what turns a stage-4 output into logits.
    """

    model: nn.Module
    family: str
    layout: str
    stem: Part
    stages: list[nn.Module]
    head_part: Part
    num_prefix_tokens: int = 0
    blocks: list[nn.Module] = field(default_factory=list)  # every block, in order, for block-level features

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[s1, s2, s3, s4] in native layout."""
        out, h = [], self.stem(x)
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def head(self, s4: torch.Tensor) -> torch.Tensor:
        """Logits from the stage-4 output."""
        return self.head_part(s4)

    def pool(self, s4: torch.Tensor) -> torch.Tensor:
        """The pooled pre-logit feature (B, D) the head's classifier reads: the paper's f."""
        return self.head_part(s4, pre_logits=True).flatten(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])

    def nchw(self, s: torch.Tensor) -> torch.Tensor:
        """A stage output as a (B, C, H, W) map (prefix tokens dropped; token grids assumed square)."""
        if self.layout == "nchw":
            return s
        if self.layout == "nhwc":
            return s.permute(0, 3, 1, 2)
        tokens = s[:, self.num_prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"cannot view {tokens.shape[1]} tokens as a square grid")
        return tokens.transpose(1, 2).reshape(s.shape[0], s.shape[2], side, side)

    def from_nchw(self, m: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of `nchw`: a (B, C, H, W) map in this model's layout; ViT needs its prefix tokens."""
        if self.layout == "nchw":
            return m
        if self.layout == "nhwc":
            return m.permute(0, 2, 3, 1)
        tokens = m.flatten(2).transpose(1, 2)
        if self.num_prefix_tokens:
            if prefix is None:
                raise ValueError(f"this model expects {self.num_prefix_tokens} prefix token(s); pass prefix=")
            tokens = torch.cat([prefix.expand(m.shape[0], -1, -1), tokens], dim=1)
        return tokens

    def part_sizes(self) -> dict[str, int]:
        """Parameter counts of stem, stage1..stage4 and head (final norm + classifier); they sum to the model's."""
        sizes = {"stem": count_parameters(self.stem)}
        sizes.update({f"stage{i + 1}": count_parameters(s) for i, s in enumerate(self.stages)})
        sizes["head"] = count_parameters(self.head_part)
        return sizes

    @torch.no_grad()
    def shapes(self, img_size: int, in_chans: int = 3) -> list[tuple[int, int, int]]:
        """(C, H, W) of each stage's NCHW view for one image of `img_size` (runs in eval mode)."""
        param = next(self.model.parameters())
        x = torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
        with eval_mode(self.model):
            return [tuple(self.nchw(s).shape[1:]) for s in self.features(x)]

    @torch.no_grad()
    def pooled_dim(self, img_size: int) -> int:
        """Width of the pooled feature f at `img_size`."""
        param = next(self.model.parameters())
        x = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
        with eval_mode(self.model):
            return int(self.pool(self.features(x)[-1]).shape[1])


def _children(m: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    return {name: getattr(m, name) for name in names if getattr(m, name, None) is not None}


def _head(m: nn.Module, final: nn.Module, used: set[str]) -> Part:
    """Final norm + every child the stem and stages do not use: what `forward_head` runs."""
    rest = {name: child for name, child in m.named_children() if name not in used}

    def run(s4: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return m.forward_head(final(s4), pre_logits=pre_logits)

    return Part(run, {"final": final, **rest})


def _resnet(m: ResNet) -> StageView:
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    used = {"conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"}
    return StageView(m, "cnn", "nchw", Part(stem, {"stem": stem}), stages, _head(m, nn.Identity(), used),
                     blocks=[b for s in stages for b in s])


def _efficientnet(m: EfficientNet) -> StageView:
    """MobileNetV2/EfficientNet: stage ends are the last four feature points of `feature_info`."""
    ends = [int(info["module"].split(".")[1]) for info in m.feature_info if info["module"].startswith("blocks.")]
    ends = sorted(set(ends))[-4:]
    if len(ends) < 4:
        raise ValueError(f"{type(m).__name__} has only {len(ends)} resolutions; need 4 for the stage view")
    starts = [0] + [e + 1 for e in ends[:3]]
    stages = [m.blocks[s: e + 1] for s, e in zip(starts, ends)]
    if ends[-1] != len(m.blocks) - 1:
        stages[-1] = m.blocks[starts[-1]:]
    stem = nn.Sequential(m.conv_stem, m.bn1)
    final = nn.Sequential(m.conv_head, m.bn2)
    head = _head(m, final, {"conv_stem", "bn1", "blocks", "conv_head", "bn2"})
    return StageView(m, "cnn", "nchw", Part(stem, {"stem": stem}), stages, head,
                     blocks=[b for s in stages for g in s for b in g])


def _convnext(m: ConvNeXt) -> StageView:
    return StageView(m, "cnn", "nchw", Part(m.stem, {"stem": m.stem}), list(m.stages),
                     _head(m, m.norm_pre, {"stem", "stages", "norm_pre"}),
                     blocks=[b for s in m.stages for b in s.blocks])


def _vit(m: VisionTransformer) -> StageView:
    def stem(x):
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    names = ["patch_embed", "pos_drop", "patch_drop", "norm_pre"]
    params = {name: getattr(m, name) for name in ("cls_token", "reg_token", "pos_embed")
              if isinstance(getattr(m, name, None), nn.Parameter)}
    stages = [m.blocks[a:b] for a, b in isotropic_split(len(m.blocks))]
    head = _head(m, m.norm, {*names, "blocks", "norm"})
    return StageView(m, "vit", "tokens", Part(stem, _children(m, names), params), stages, head,
                     num_prefix_tokens=m.num_prefix_tokens, blocks=list(m.blocks))


def _swin(m: SwinTransformer) -> StageView:
    if len(m.layers) != 4:
        raise ValueError(f"Swin with {len(m.layers)} layers; the stage view needs 4")
    return StageView(m, "swin", "nhwc", Part(m.patch_embed, {"patch_embed": m.patch_embed}), list(m.layers),
                     _head(m, m.norm, {"patch_embed", "layers", "norm"}),
                     blocks=[b for s in m.layers for b in s.blocks])


def _mixer(m: MlpMixer) -> StageView:
    stages = [m.blocks[a:b] for a, b in isotropic_split(len(m.blocks))]
    return StageView(m, "mlp", "tokens", Part(m.stem, {"stem": m.stem}), stages,
                     _head(m, m.norm, {"stem", "blocks", "norm"}), blocks=list(m.blocks))


_BUILDERS: list[tuple[type, Callable[..., StageView]]] = [
    (ResNet, _resnet), (EfficientNet, _efficientnet), (ConvNeXt, _convnext), (VisionTransformer, _vit),
    (SwinTransformer, _swin), (MlpMixer, _mixer)]


def stages(model: nn.Module) -> StageView:
    """The four-stage view of a supported timm model (see `SUPPORTED`)."""
    for cls, builder in _BUILDERS:
        if isinstance(model, cls):
            return builder(model)
    raise ValueError(f"no stage view for {type(model).__name__}; supported: {SUPPORTED}")
