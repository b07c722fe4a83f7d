"""In-batch InfoNCE's same-class negatives: (B - 1) / C per anchor, checked against sampled batches."""

import numpy as np
import pytest
import torch

from tas_lite import losses


def test_the_two_datasets_of_the_course():
    assert losses.expected_same_class_negatives(32, 10) == pytest.approx(3.1)
    assert losses.expected_same_class_negatives(128, 100) == pytest.approx(1.27)
    assert losses.expected_same_class_negatives(1, 10) == 0.0


def test_matches_sampled_batches():
    """Draw labels uniformly; count, for every anchor, the other examples of its class."""
    g = torch.Generator().manual_seed(0)
    for batch, classes in ((32, 10), (128, 100), (8, 2)):
        labels = torch.randint(0, classes, (4000, batch), generator=g)
        same = (labels[:, :, None] == labels[:, None, :]).sum(-1) - 1  # minus the anchor itself
        measured = same.double().mean().item()
        expected = losses.expected_same_class_negatives(batch, classes)
        standard_error = same.double().mean(1).std().item() / 4000 ** 0.5
        assert abs(measured - expected) < 4 * standard_error + 1e-9, (batch, classes, measured, expected)


def test_broadcasts_over_arrays():
    grid = losses.expected_same_class_negatives(np.array([[8], [32], [128]]), [10, 100])
    assert isinstance(grid, np.ndarray) and grid.shape == (3, 2)
    assert np.allclose(grid, (np.array([[8], [32], [128]]) - 1) / np.array([10, 100]))


@pytest.mark.parametrize("batch, classes", [(0, 10), (2.5, 10), (32, 0), (32, [10, 0.5])])
def test_rejects_impossible_sizes(batch, classes):
    with pytest.raises(ValueError, match="whole number"):
        losses.expected_same_class_negatives(batch, classes)
