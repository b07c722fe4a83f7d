"""What the course's verdicts rest on: ERF squares clipped to the image, attention distance per image and
head with its spread, the locality verdict with its 'no locality learned' outcome, per-unit smoothness."""

import pytest
import torch

from tas_lite import models, probes


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_erf_square_beyond_the_image_is_clipped_to_it():
    """An 8x8 map of a 32 px image has no middle unit: its centre unit sits at pixel 17.5, so the square
    that reaches pixel 0 is 36 px wide and overhangs the far edge."""
    erf = probes.ERF(map=torch.ones(32, 32), sides={0.5: 12.0, 0.99: 36.0}, centre=(17.5, 17.5), grid=(8, 8), stage=1)
    assert erf.box(0.99) == (-0.5, -0.5, 31.5, 31.5) and erf.extent(0.99) == 32 and erf.covers_image(0.99)
    assert erf.box(0.5) == (11.5, 11.5, 23.5, 23.5) and erf.extent(0.5) == 12 and not erf.covers_image(0.5)


def test_real_erfs_never_extend_past_the_image(images):
    torch.manual_seed(0)
    vit = models.create("tiny_vit", num_classes=10).eval()
    for stage in (1, 4):
        erf = probes.effective_receptive_field(vit, images, stage, (0.5, 0.99, 1.0))
        assert erf.sides[1.0] > 32 and erf.extent(1.0) == 32 and erf.covers_image(1.0)
        assert all(erf.extent(q) <= 32 for q in (0.5, 0.99))


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_swin"])
def test_per_image_distances_average_to_the_mean_distance(images, name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=10).eval()
    per_image = probes.attention_distance_per_image(model, images)
    mean = probes.mean_attention_distance(model, images)
    assert len(per_image) == len(mean)
    for p, m in zip(per_image, mean):
        assert p.shape == (len(images), len(m))
        assert torch.allclose(p.mean(0), m, atol=1e-5)


def test_locality_verdict_needs_a_gap_larger_than_the_spread():
    gen = torch.Generator().manual_seed(0)
    uniform = 16.5
    near_uniform = uniform - 0.2 + 0.3 * torch.randn(16, 4, generator=gen)  # 0.2 px closer, spread 0.3 px
    result = probes.locality(near_uniform, uniform)
    assert result.verdict == "no locality learned" and result.gap == pytest.approx(0.2, abs=0.1)
    local = torch.full((16, 4), 6.0) + 0.3 * torch.randn(16, 4, generator=gen)
    result = probes.locality(local, uniform)
    assert result.verdict == "local" and result.local_heads == 4 and result.heads == 4
    one_head = torch.cat([torch.full((16, 1), 6.0), torch.full((16, 3), 16.5)], 1) + 0.3 * torch.randn(16, 4, generator=gen)
    result = probes.locality(one_head, uniform)  # the layer's mean gap is within its spread over heads
    assert result.verdict == "some heads local" and result.local_heads == 1
    assert probes.locality(uniform + 3 + 0.3 * torch.randn(16, 4, generator=gen), uniform).verdict == "wider than uniform"
    # consistent but tiny: a 0.2 px gap with a 0.01 px spread is still below the 5% floor (0.825 px)
    tiny = uniform - 0.2 + 0.01 * torch.randn(16, 4, generator=gen)
    result = probes.locality(tiny, uniform)
    assert result.tolerance == pytest.approx(0.825) and result.verdict == "no locality learned"
    assert result.local_heads == 0
    with pytest.raises(ValueError, match="images >= 2"):
        probes.locality(torch.ones(1, 4), uniform)


def test_neighbour_correlations_per_unit_average_to_the_summary():
    w = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(1))
    per_unit = probes.neighbour_correlations(w)
    assert per_unit.shape == (16,) and per_unit.mean().item() == pytest.approx(probes.neighbour_correlation(w))
