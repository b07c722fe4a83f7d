"""The uniform four-stage view of a model: stem -> 4 stages -> head, whatever the family.

CNNs are cut at their four resolutions; Swin at its four layers; isotropic ViT/Mixer/ResMLP models at
the paper's block split (after blocks 1, 3, 9, 11 of 12, i.e. groups [0-1], [2-3], [4-9], [10-11]),
scaled proportionally for other depths. The view holds the model's own modules (no copies), so
composing stem, stages and head is exactly `model(x)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

FAMILIES = ("cnn", "vit", "swin", "mlp")
PAPER_SPLIT_12 = (2, 4, 10, 12)  # stage ends (exclusive) for 12 blocks


def _timm_classes() -> dict[str, tuple[type, ...]]:
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.mlp_mixer import MlpMixer
    from timm.models.resnet import ResNet
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    return {"cnn": (ResNet, EfficientNet, ConvNeXt), "vit": (VisionTransformer,),
            "swin": (SwinTransformer,), "mlp": (MlpMixer,)}


SUPPORTED = "timm ResNet, MobileNetV2/EfficientNet, ConvNeXt, VisionTransformer/DeiT, SwinTransformer, MlpMixer/ResMLP"


def family(model: nn.Module) -> str:
    """"cnn" | "vit" | "swin" | "mlp" for the model classes tas_lite knows; ValueError otherwise."""
    for name, classes in _timm_classes().items():
        if isinstance(model, classes):
            return name
    raise ValueError(f"no family known for {type(model).__name__}; supported: {SUPPORTED}")


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


@dataclass
class StageView:
    """Stem, four stages and head of one model, sharing its modules.

    Stage outputs keep the model's native layout (`layout`): "nchw" for CNNs, "nhwc" for Swin,
    "tokens" (B, prefix + N, D) for ViT and Mixer. `nchw(s)` turns any of them into a (B, C, H, W) map.
    """

    model: nn.Module
    family: str
    layout: str
    stem: Callable[[torch.Tensor], torch.Tensor]
    stages: list[nn.Module]
    final: Callable[[torch.Tensor], torch.Tensor]  # final norm / conv head applied to stage 4
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
        return self.model.forward_head(self.final(s4))

    def pool(self, s4: torch.Tensor) -> torch.Tensor:
        """The pooled pre-logit feature (B, D) the head's classifier reads: the paper's f."""
        return self.model.forward_head(self.final(s4), pre_logits=True).flatten(1)

    def forward_from(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Run stages index..3 (0-based) on h, the input of stage `index`; returns the stage-4 output."""
        for stage in self.stages[index:]:
            h = stage(h)
        return h

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
        """Parameter counts of stem, stage1..stage4 and head (final norm + classifier)."""
        if isinstance(self.stem, nn.Module):
            stem = sum(p.numel() for p in self.stem.parameters())
        else:  # ViT: patch embedding, pre-norm, prefix tokens and position embedding
            m = self.model
            stem = sum(p.numel() for mod in (m.patch_embed, m.norm_pre) for p in mod.parameters())
            stem += sum(t.numel() for t in (m.cls_token, m.reg_token, m.pos_embed) if t is not None)
        sizes = {"stem": stem, **{f"stage{i + 1}": sum(p.numel() for p in s.parameters())
                                  for i, s in enumerate(self.stages)}}
        sizes["head"] = sum(p.numel() for p in self.model.parameters()) - sum(sizes.values())
        return sizes

    @torch.no_grad()
    def shapes(self, img_size: int, in_chans: int = 3) -> list[tuple[int, int, int]]:
        """(C, H, W) of each stage's NCHW view for one image of `img_size` (runs in eval mode)."""
        was_training = self.model.training
        self.model.eval()
        try:
            param = next(self.model.parameters())
            x = torch.zeros(1, in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
            return [tuple(self.nchw(s).shape[1:]) for s in self.features(x)]
        finally:
            self.model.train(was_training)


def _resnet(m) -> StageView:
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    return StageView(m, "cnn", "nchw", stem, stages, nn.Identity(),
                     blocks=[b for s in stages for b in s])


def _efficientnet(m) -> StageView:
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
    return StageView(m, "cnn", "nchw", stem, stages, nn.Sequential(m.conv_head, m.bn2),
                     blocks=[b for s in stages for g in s for b in g])


def _convnext(m) -> StageView:
    return StageView(m, "cnn", "nchw", m.stem, list(m.stages), m.norm_pre,
                     blocks=[b for s in m.stages for b in s.blocks])


def _vit(m) -> StageView:
    def stem(x):
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    stages = [m.blocks[a:b] for a, b in isotropic_split(len(m.blocks))]
    return StageView(m, "vit", "tokens", stem, stages, m.norm, num_prefix_tokens=m.num_prefix_tokens,
                     blocks=list(m.blocks))


def _swin(m) -> StageView:
    if len(m.layers) != 4:
        raise ValueError(f"Swin with {len(m.layers)} layers; the stage view needs 4")
    return StageView(m, "swin", "nhwc", m.patch_embed, list(m.layers), m.norm,
                     blocks=[b for s in m.layers for b in s.blocks])


def _mixer(m) -> StageView:
    stages = [m.blocks[a:b] for a, b in isotropic_split(len(m.blocks))]
    return StageView(m, "mlp", "tokens", m.stem, stages, m.norm, blocks=list(m.blocks))


def stages(model: nn.Module) -> StageView:
    """The four-stage view of a supported timm model (see `SUPPORTED`)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    fam = family(model)
    if fam == "cnn":
        if isinstance(model, ResNet):
            return _resnet(model)
        if isinstance(model, EfficientNet):
            return _efficientnet(model)
        if isinstance(model, ConvNeXt):
            return _convnext(model)
    return {"vit": _vit, "swin": _swin, "mlp": _mixer}[fam](model)
