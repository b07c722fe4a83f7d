"""OFA's branch heads: small classifiers attached after a student stage, built as the OFA authors'
code builds them (Hao840/OFAKD, distillers/ofa.py), so parameter counts match theirs.

CNN students: one depthwise-separable block (`SepConv`) per halving down to the last stage's grid,
channels doubling, the last to max(student, teacher) feature width; after stage 4 a 1x1 conv to that
width; then average pooling and a linear classifier. Token students: patch merging down to a 7x7 grid
(none for grids of 13 or fewer), then max(4 - stage, 1) transformer blocks of the student's feature
width with 4 heads, then the class token (if the student has one) or the mean token, then a linear
classifier.
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


class SepConv(nn.Sequential):
    """Depthwise-separable conv pair, stride 2: halves the grid and maps c_in to c_out channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(),
            nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU())


class ConvBranch(nn.Sequential):
    """Branch for a CNN student's stage: (B, C, H, W) -> logits."""

    def __init__(self, c_in: int, halvings: int, width: int, num_classes: int):
        if halvings == 0:
            body = [nn.Conv2d(c_in, width, 1)]
        else:
            body, c = [], c_in
            for i in range(halvings):
                body.append(SepConv(c, width if i == halvings - 1 else c * 2))
                c *= 2
        super().__init__(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerging(nn.Module):
    """Swin-style 2x2 patch merging on (B, H*W, C) tokens: LayerNorm(4C), then a linear map to `out_dim`."""

    def __init__(self, dim: int, out_dim: int, grid: int, act: bool):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.act(self.reduction(self.norm(x.view(b, -1, 4 * c))))


class TokenBranch(nn.Module):
    """Branch for a token student's stage: (B, prefix + H*W, C) tokens -> logits. The prefix (class)
    tokens bypass the merging and are read after the blocks, as in the authors' code."""

    def __init__(self, dim: int, grid: int, prefix: int, width: int, depth: int, num_classes: int):
        super().__init__()
        merges = max(int(math.log2(grid / 7)), 0) if grid >= 7 else 0
        layers, d = [], dim
        for i in range(merges):
            layers.append(PatchMerging(d, width, grid // 2**i, act=i != merges - 1))
            d = width
        self.merge = nn.Sequential(*layers)
        self.proj = nn.Identity() if d == width else nn.Linear(d, width)  # ours: widths that differ without merging
        self.blocks = nn.Sequential(*[Block(width, num_heads=4 if width % 4 == 0 else 1) for _ in range(depth)])
        self.prefix = prefix
        self.fc = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        prefix, patches = tokens[:, :self.prefix], tokens[:, self.prefix:]
        x = self.blocks(torch.cat([prefix, self.proj(self.merge(patches))], dim=1))
        return self.fc(x[:, 0] if self.prefix else x.mean(1))


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation of their branches: Kaiming for convs, truncated normal (0.02) for linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
