"""Module-function probes: attention maps and distances, effective and theoretical receptive fields."""

import itertools
import math

import pytest
import torch
from torch import nn

from tas_lite import models, probes


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    return {name: models.create(name, num_classes=10).eval()
            for name in ("tiny_resnet", "tiny_vit", "tiny_swin", "tiny_mixer")}


# ---- attention --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,tokens", [("tiny_vit", 16), ("tiny_swin", 16)])
def test_attention_rows_sum_to_one_without_cls(zoo, images, name, tokens):
    maps = probes.attention_maps(zoo[name], images)
    assert len(maps) == len(probes.attention_layers(zoo[name]))
    assert maps[0].shape[-1] == maps[0].shape[-2] == tokens  # ViT: 16 patches, the CLS token dropped
    for attn in maps:
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
        assert (attn >= 0).all()


def test_fused_attention_is_restored(zoo, images):
    vit = zoo["tiny_vit"]
    vit.blocks[0].attn.fused_attn = True
    probes.mean_attention_distance(vit, images)
    assert vit.blocks[0].attn.fused_attn is True
    with pytest.raises(RuntimeError):  # an error inside the forward pass must restore it too
        probes.mean_attention_distance(vit, images[:, :1])
    assert vit.blocks[0].attn.fused_attn is True


def brute_force_mean_distance(side: int, pixels: float) -> float:
    """Mean distance between two uniformly chosen patches of a side x side grid (self pairs included)."""
    cells = list(itertools.product(range(side), repeat=2))
    return sum(math.dist(a, b) for a in cells for b in cells) / len(cells) ** 2 * pixels


def test_uniform_attention_gives_mean_pairwise_distance(images):
    vit = models.create("tiny_vit", num_classes=10).eval()
    for block in vit.blocks:  # q = k = 0: softmax is uniform over all 17 tokens, uniform over 16 without CLS
        nn.init.zeros_(block.attn.qkv.weight)
        nn.init.zeros_(block.attn.qkv.bias)
    dist = torch.stack(probes.mean_attention_distance(vit, images))
    assert dist.shape == (6, 3)
    assert torch.allclose(dist, torch.full((6, 3), brute_force_mean_distance(4, 8)), atol=1e-3)


def test_untrained_vit_attends_almost_uniformly(zoo, images):
    dist = torch.stack(probes.mean_attention_distance(zoo["tiny_vit"], images))
    uniform = probes.uniform_attention_distance(4, 8)  # a 4x4 grid of 8 px patches: 16.1 px
    assert dist.mean().item() == pytest.approx(uniform, abs=0.5)


def test_swin_distance_is_bounded_by_its_windows(zoo, images):
    swin = zoo["tiny_swin"]
    layers = probes.attention_layers(swin)
    for layer, dist in zip(layers, probes.mean_attention_distance(swin, images)):
        side = math.isqrt(layer.module.window_size[0] * layer.module.window_size[1])
        assert dist.max() <= math.hypot(side - 1, side - 1) * layer.pixels_per_token + 1e-4
    assert [layer.stage for layer in layers] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_query_attention_is_a_distribution(zoo, images):
    q = probes.query_attention(zoo["tiny_vit"], images, layer=5, head=2)
    assert q.shape == (4, 4) and q.sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="head"):
        probes.query_attention(zoo["tiny_vit"], images, layer=5, head=4)


def test_attention_probe_rejects_models_without_attention(zoo, images):
    for name in ("tiny_resnet", "tiny_mixer"):
        with pytest.raises(ValueError, match="without attention"):
            probes.mean_attention_distance(zoo[name], images)


# ---- receptive fields -------------------------------------------------------------------------------


def test_theoretical_receptive_field():
    assert probes.theoretical_receptive_field([(3, 1)] * 5) == 11
    stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(3, stride=2, padding=1))
    assert probes.theoretical_receptive_field(stem) == 11  # the ResNet stem: 7 + 2 * (3 - 1)
    assert probes.theoretical_receptive_field([stem, (3, 1)]) == 11 + 2 * 4
    assert probes.theoretical_receptive_field([(3, 1, 2)]) == 5  # dilation 2
    with pytest.raises(ValueError, match="Linear"):
        probes.theoretical_receptive_field(nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_erf_of_conv_stack_lies_within_its_theoretical_rf(images, depth):
    stack = probes.conv_stack(depth, channels=8)
    rf = probes.theoretical_receptive_field(stack)
    erf = probes.effective_receptive_field(stack, images, stage=None)
    half = rf // 2
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[16 - half: 16 + half + 1, 16 - half: 16 + half + 1] = True
    assert erf.centre == (16.0, 16.0) and erf.grid == (32, 32)
    assert erf.map[~inside].abs().max() == 0  # not a single pixel of gradient outside the theoretical RF
    assert erf.sides[0.2] <= erf.sides[0.5] <= erf.sides[0.99] <= rf


def test_erf_support_of_positive_conv_stack_is_exactly_the_theoretical_rf(images):
    stack = probes.conv_stack(3, channels=4)
    for module in stack:
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 0.1)
            nn.init.constant_(module.bias, 1.0)  # every ReLU stays open
    erf = probes.effective_receptive_field(stack, images.abs(), stage=None)
    rows, cols = (erf.map > 0).nonzero().unbind(1)
    assert rows.max() - rows.min() + 1 == probes.theoretical_receptive_field(stack) == 7
    assert cols.max() - cols.min() + 1 == 7
    assert erf.map.max() == 1.0 and erf.map[16, 16] == 1.0  # triangular profile peaks at the centre


def test_square_sides_on_a_known_mass():
    mass = torch.zeros(9, 9, dtype=torch.float64)
    mass[4, 4], mass[4, 6], mass[0, 0] = 0.5, 0.3, 0.2
    sides = probes._square_sides(mass, (4.0, 4.0), (0.2, 0.5, 0.8, 0.99))
    assert sides == {0.2: 1.0, 0.5: 1.0, 0.8: 5.0, 0.99: 9.0}


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_vit", "tiny_swin", "tiny_mixer"])
def test_erf_works_for_every_family(zoo, images, name):
    erfs = [probes.effective_receptive_field(zoo[name], images, stage) for stage in (1, 2, 3, 4)]
    for erf in erfs:
        assert erf.map.shape == (32, 32) and erf.map.max() == 1.0 and torch.isfinite(erf.map).all()
        assert set(erf.sides) == set(probes.ERF_FRACTIONS)
    assert zoo[name].training is False


def test_cnn_erf_grows_with_stage(zoo, images):
    sides = [probes.effective_receptive_field(zoo["tiny_resnet"], images, s).sides[0.5] for s in (1, 2, 3, 4)]
    assert sides == sorted(sides) and sides[-1] > sides[0]


def test_erf_rejects_bad_arguments(zoo, images):
    with pytest.raises(ValueError, match="stage must be"):
        probes.effective_receptive_field(zoo["tiny_resnet"], images, 5)
    with pytest.raises(ValueError, match="images must be"):
        probes.effective_receptive_field(zoo["tiny_resnet"], images[0], 1)
    dead = probes.conv_stack(2)
    for module in dead:
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
    with pytest.raises(ValueError, match="gradient is zero"):
        probes.effective_receptive_field(dead, images, None)


# ---- token mixing -----------------------------------------------------------------------------------


def test_token_mixing_weights(zoo):
    w = probes.token_mixing_weights(zoo["tiny_mixer"], 0)
    assert w.shape == (48, 8, 8)  # 48 hidden units, each a weight per patch of the 8x8 grid
    assert torch.equal(w[3].flatten(), zoo["tiny_mixer"].blocks[0].mlp_tokens.fc1.weight[3].detach())
    resmlp = models.create("tiny_resmlp", num_classes=10)
    assert probes.token_mixing_weights(resmlp, 11).shape == (64, 8, 8)
    with pytest.raises(ValueError, match="MLP-Mixer"):
        probes.token_mixing_weights(zoo["tiny_vit"], 0)
    with pytest.raises(ValueError, match="block"):
        probes.token_mixing_weights(zoo["tiny_mixer"], 12)


def test_neighbour_correlation_separates_noise_from_smooth_patterns():
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(32, 8, 8, generator=gen)
    ramp = torch.arange(8.0)[None, :, None].expand(32, 8, 8) + 0.1 * noise  # smooth along rows
    checker = (-1.0) ** (torch.arange(8)[:, None] + torch.arange(8)[None, :]).expand(32, 8, 8)
    assert abs(probes.neighbour_correlation(noise)) < 0.1
    assert probes.neighbour_correlation(ramp) > 0.3
    assert probes.neighbour_correlation(checker) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="units, H, W"):
        probes.neighbour_correlation(noise[0])
