"""CKA against an independent float64 Gram-matrix reference (numpy), and the properties CKA must have
(Kornblith et al. 2019; unbiased HSIC_1 of Song et al. 2012; minibatch CKA of Nguyen et al. 2021)."""

import copy
import warnings

import numpy as np
import pytest
import torch

from tas_lite import bench, cka, models

# ---- independent reference: numpy float64, textbook formulas ------------------------------------------


def ref_gram(X):
    """Linear Gram matrix of float64 features whose columns are centred first. Every CKA estimator here is
    invariant to a constant added to the features, so centring changes nothing mathematically, but it keeps
    the reference better conditioned than the code it checks (uncentred features with an offset of 100 lost
    ~3e-6 to cancellation in HSIC_1, depending on the BLAS kernel)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    X = X - X.mean(axis=0, keepdims=True)
    return X @ X.T


def ref_rbf_gram(X, threshold):
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    sq = np.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
    return np.exp(-sq / (2 * threshold**2 * np.median(sq)))


def ref_hsic0(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic1(K, L):
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ K @ L @ one)) / (n * (n - 3))


def ref_cka(K, L, hsic):
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def ref_linear(X, Y):
    return ref_cka(ref_gram(X), ref_gram(Y), ref_hsic0)


def ref_unbiased(X, Y):
    return ref_cka(ref_gram(X), ref_gram(Y), ref_hsic1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def xy(gen):
    """Related representations of 40 examples with different shapes (examples first)."""
    X = torch.randn(40, 3, 4, 4, generator=gen, dtype=torch.float64)
    Y = torch.tanh(X.reshape(40, -1)[:, :20] @ torch.randn(20, 15, generator=gen, dtype=torch.float64))
    Y = Y + 0.3 * torch.randn(40, 15, generator=gen, dtype=torch.float64)
    return X, Y


# ---- agreement with the reference -------------------------------------------------------------------


def test_linear_matches_reference(xy):
    X, Y = xy
    assert cka.linear(X, Y) == pytest.approx(ref_linear(X, Y), abs=1e-12)
    wide = torch.randn(40, 200, dtype=torch.float64)  # n < d: the Gram branch
    assert cka.linear(X, wide) == pytest.approx(ref_linear(X, wide), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_matches_reference(xy, threshold):
    X, Y = xy
    expected = ref_cka(ref_rbf_gram(X, threshold), ref_rbf_gram(Y, threshold), ref_hsic0)
    assert cka.rbf(X, Y, threshold) == pytest.approx(expected, abs=1e-10)


def test_rbf_median_is_numpys_not_torchs():
    d2 = torch.tensor([0.0, 1.0, 5.0, 7.0], dtype=torch.float64)
    assert cka._numpy_median(d2).item() == np.median(d2.numpy()) == 3.0  # torch.median would say 1.0


def test_unbiased_matches_reference(xy):
    X, Y = xy
    assert cka.unbiased(X, Y) == pytest.approx(ref_unbiased(X, Y), abs=1e-12)


def test_one_batch_minibatch_equals_full_unbiased(xy, gen):
    X, Y = xy
    Z = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    acc = cka.MinibatchCKA(2, 3)
    acc.update([X, Y], [Y, Z, X])
    got = acc.compute()
    for i, A in enumerate([X, Y]):
        for j, B in enumerate([Y, Z, X]):
            assert got[i, j].item() == pytest.approx(ref_unbiased(A, B), abs=1e-12)


def test_minibatch_sums_hsic_then_normalises_once(xy):
    X, Y = xy
    acc = cka.MinibatchCKA(1, 1)
    parts = [(0, 10), (10, 25), (25, 40)]
    for a, b in parts:
        acc.update([X[a:b]], [Y[a:b]])
    sums = [sum(ref_hsic1(ref_gram(P[a:b]), ref_gram(Q[a:b])) for a, b in parts) for P, Q in
            ((X, Y), (X, X), (Y, Y))]
    expected = sums[0] / np.sqrt(sums[1] * sums[2])
    mean_of_batches = np.mean([ref_unbiased(X[a:b], Y[a:b]) for a, b in parts])
    assert acc.compute()[0, 0].item() == pytest.approx(expected, abs=1e-12)
    assert abs(expected - mean_of_batches) > 1e-3  # the wrong recipe gives a different number
    assert acc.examples == 40 and acc.batches == 3


# ---- properties -------------------------------------------------------------------------------------


ESTIMATORS = {"linear": cka.linear, "rbf": cka.rbf, "unbiased": cka.unbiased}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_self_similarity_is_one_and_symmetric(xy, name):
    X, Y = xy
    f = ESTIMATORS[name]
    assert f(X, X) == pytest.approx(1.0, abs=1e-12)
    assert f(X, Y) == pytest.approx(f(Y, X), abs=1e-12)
    assert 0.05 < f(X, Y) < 0.99  # a non-trivial pair, so the invariance tests below mean something


@pytest.mark.parametrize("name", ESTIMATORS)
def test_invariances(xy, gen, name):
    X, Y = xy
    f = ESTIMATORS[name]
    base = f(X, Y)
    Xf = X.reshape(len(X), -1)
    Q, _ = torch.linalg.qr(torch.randn(Xf.shape[1], Xf.shape[1], generator=gen, dtype=torch.float64))
    perm = torch.randperm(len(X), generator=gen)
    assert f(Xf @ Q, Y) == pytest.approx(base, abs=1e-10)            # orthogonal map
    assert f(3.7 * X, Y) == pytest.approx(base, abs=1e-10)           # isotropic scaling
    assert f(X + 5.0, Y - 2.0) == pytest.approx(base, abs=1e-10)     # constant offset on features
    assert f(X[perm], Y[perm]) == pytest.approx(base, abs=1e-10)     # examples permuted jointly
    assert abs(f(X[perm], Y) - base) > 1e-3                          # ... but not separately


@pytest.mark.parametrize("name", ["linear", "unbiased"])
def test_not_invariant_to_general_invertible_map(gen, name):
    f = ESTIMATORS[name]
    X = torch.randn(100, 10, generator=gen, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    A = torch.diag(torch.logspace(0, 2, 10, dtype=torch.float64)) @ Q  # invertible, far from orthogonal
    assert torch.linalg.matrix_rank(A) == 10
    assert f(X, X @ A) == pytest.approx(ref_unbiased(X, X @ A) if name == "unbiased" else ref_linear(X, X @ A))
    assert f(X, X @ A) < 0.9


def test_independent_data_unbiased_near_zero_biased_not(gen):
    X = torch.randn(30, 2000, generator=gen, dtype=torch.float64)
    Y = torch.randn(30, 2000, generator=gen, dtype=torch.float64)
    assert abs(cka.unbiased(X, Y)) < 0.05
    assert cka.linear(X, Y) > 0.8  # the biased estimator's well-known inflation at n << d


def test_float32_with_large_offset_matches_float64(gen):
    X = (torch.randn(64, 300, generator=gen) + 100.0).float()
    Y = (0.5 * X + torch.randn(64, 300, generator=gen)).float()
    X64, Y64 = X.double().numpy(), Y.double().numpy()  # the very same values, in float64
    assert cka.unbiased(X, Y) == pytest.approx(ref_unbiased(X64, Y64), abs=1e-6)
    assert cka.linear(X, Y) == pytest.approx(ref_linear(X64, Y64), abs=1e-6)
    acc = cka.MinibatchCKA(1, 1)
    for a in range(0, 64, 16):
        acc.update([X[a:a + 16]], [Y[a:a + 16]])
    sums = [sum(ref_hsic1(ref_gram(P[a:a + 16]), ref_gram(Q[a:a + 16])) for a in range(0, 64, 16))
            for P, Q in ((X64, Y64), (X64, X64), (Y64, Y64))]
    assert acc.compute()[0, 0].item() == pytest.approx(sums[0] / np.sqrt(sums[1] * sums[2]), abs=1e-6)


# ---- degenerate input: an error or NaN with a warning, never a plausible number -------------------


def test_too_few_examples_for_unbiased():
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka.unbiased(torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 4 examples"):
        cka.MinibatchCKA(1, 1).update([torch.randn(3, 5)], [torch.randn(3, 5)])


def test_mismatched_example_counts():
    for f in ESTIMATORS.values():
        with pytest.raises(ValueError, match="same examples"):
            f(torch.randn(10, 5), torch.randn(11, 5))
    with pytest.raises(ValueError, match="same examples"):
        cka.MinibatchCKA(2, 1).update([torch.randn(10, 5), torch.randn(9, 5)], [torch.randn(10, 5)])
    with pytest.raises(ValueError, match="same examples"):
        cka.MinibatchCKA(1, 1).update([torch.randn(10, 5)], [torch.randn(8, 5)])


@pytest.mark.parametrize("name", ESTIMATORS)
def test_constant_layer_gives_nan_with_warning(name):
    X = torch.full((32, 6), 100.3, dtype=torch.float64)  # its float64 mean is off by 1e-14: naive
    Y = torch.randn(32, 6, dtype=torch.float64)          # centring leaves noise that looks like signal
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(ESTIMATORS[name](X, Y))


def test_minibatch_constant_layer_is_nan_only_in_its_row(gen):
    X, Y = torch.randn(32, 5, generator=gen), torch.randn(32, 5, generator=gen)
    acc = cka.MinibatchCKA(2, 1)
    acc.update([X, torch.full((32, 5), 100.3, dtype=torch.float64)], [Y])
    with pytest.warns(RuntimeWarning, match=r"A layers \[1\]"):
        out = acc.compute()
    assert np.isnan(out[1, 0].item()) and np.isfinite(out[0, 0].item())


def test_bad_arguments():
    with pytest.raises(ValueError, match="NaN or inf"):
        cka.linear(torch.tensor([[1.0], [float("nan")], [2.0]]), torch.randn(3, 1))
    with pytest.raises(ValueError, match="threshold"):
        cka.rbf(torch.randn(5, 2), torch.randn(5, 2), threshold=0)
    with pytest.raises(ValueError, match="call update"):
        cka.MinibatchCKA(1, 1).compute()
    with pytest.raises(ValueError, match="expected 2 layers"):
        cka.MinibatchCKA(2, 1).update([torch.randn(8, 3)], [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="list of"):
        cka.MinibatchCKA(1, 1).update(torch.randn(8, 3), [torch.randn(8, 3)])
    with pytest.raises(ValueError, match="square"):
        cka.uniformity(torch.ones(2, 3))


def test_uniformity_and_shallow_deep():
    m = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    assert cka.uniformity(m) == pytest.approx((0.5 + 0.2 + 0.4) * 2 / 6)
    assert cka.shallow_deep(m) == pytest.approx(0.2)
    assert cka.uniformity(torch.ones(4, 4)) == 1.0


def test_bench_all_pairs_equals_loop():
    out = bench.bench_cka(layers=3, examples=32, batch_size=16, dim=8)
    assert out["max_abs_diff"] < 1e-10
    assert out["accumulator_bytes"] == (9 + 3 + 3) * 8


# ---- cka_matrix on real models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return {name: models.create(name, num_classes=10).eval() for name in ("tiny_resnet", "tiny_vit")}


@pytest.fixture(scope="module")
def loader():
    x = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return [(x[i:i + 10], torch.zeros(10)) for i in range(0, 30, 10)]


def test_cka_matrix_within_model(tiny, loader):
    vit = tiny["tiny_vit"]
    m = cka.cka_matrix(vit, vit, loader, device="cpu")
    assert m.shape == (4, 4)
    assert torch.allclose(m.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(m, m.T, atol=1e-10)
    assert torch.allclose(cka.cka_matrix(vit, copy.deepcopy(vit), loader, device="cpu"), m, atol=1e-10)


def test_cka_matrix_uses_max_examples_and_stage_features(tiny, loader):
    cnn, vit = tiny["tiny_resnet"], tiny["tiny_vit"]
    got = cka.cka_matrix(cnn, vit, loader, max_examples=16, device="cpu")
    acc = cka.MinibatchCKA(4, 4)
    va, vb = models.stages(cnn), models.stages(vit)
    with torch.no_grad():
        for x in (loader[0][0], loader[1][0][:6]):  # 10 + 6 = 16 examples
            acc.update(va.features(x), [s[:, 1:] for s in vb.features(x)])  # ViT: CLS token dropped
    assert torch.allclose(got, acc.compute(), atol=1e-10)


def test_cka_matrix_blocks_agree_with_stages(tiny, loader):
    cnn, vit = tiny["tiny_resnet"], tiny["tiny_vit"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blocks = cka.cka_matrix(cnn, vit, loader, layers="blocks", device="cpu")
    assert blocks.shape == (8, 6) and cka.layer_labels(vit, "blocks")[-1] == "b6"
    stages_m = cka.cka_matrix(cnn, vit, loader, device="cpu")
    cnn_ends, vit_ends = [1, 3, 5, 7], [0, 1, 4, 5]  # last block of each stage (6 blocks: 1, 1, 3, 1)
    assert torch.allclose(blocks[cnn_ends][:, vit_ends], stages_m, atol=1e-10)


def test_cka_matrix_rejects_bad_arguments(tiny, loader):
    with pytest.raises(ValueError, match="layers"):
        cka.cka_matrix(tiny["tiny_vit"], tiny["tiny_vit"], loader, layers="heads")
    with pytest.raises(ValueError, match="max_examples"):
        cka.cka_matrix(tiny["tiny_vit"], tiny["tiny_vit"], loader, max_examples=2)
