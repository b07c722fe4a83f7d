"""Centered kernel alignment (CKA): how alike two representations are, for every pair of layers.

Rows are examples: each example's feature map is flattened to one row. `linear` and `rbf` are the
classic (biased) CKA of Kornblith et al. 2019; `unbiased` and `MinibatchCKA` use the unbiased HSIC_1
estimator (Song et al. 2012), summed over minibatches as in Nguyen et al. 2021. Everything is computed
in float64 after subtracting the batch's feature means, so float32 features with large offsets stay exact.
Degenerate input (constant layers, too few examples) gives a ValueError or NaN with a warning, never a
plausible-looking number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import config, data
from .stages import StageView, stages
from .util import eval_mode, progress_bar

LAYERS = ("stages", "blocks")


def _rows(X: torch.Tensor, what: str = "X") -> torch.Tensor:
    """(n, d) float64 rows with centred columns; exactly constant columns become exactly zero."""
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X)
    if X.dim() == 0:
        raise ValueError(f"{what} must have an examples dimension first, got a scalar")
    X = X.detach()
    if X.device.type == "mps":  # MPS has no float64
        X = X.cpu()
    X = X.reshape(X.shape[0], -1).to(torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or inf; CKA of non-finite features is undefined")
    constant = (X == X[:1]).all(0)
    X = X - X.mean(0, keepdim=True)
    return X.masked_fill(constant, 0.0)  # the mean's rounding would otherwise leave ~1e-17 noise


def _pair(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both representations as centred float64 rows, checked to hold the same >= 3 examples. Two examples
    are too few: centred, each representation is just x and -x, so biased CKA would be 1 whatever they hold."""
    X, Y = _rows(X, "X"), _rows(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples (rows): got {X.shape[0]} and {Y.shape[0]}")
    if X.shape[0] < 3:
        raise ValueError(f"need at least 3 examples, got {X.shape[0]}: with 2, centring leaves any two "
                         f"representations equal up to scale, so CKA would be exactly 1 whatever they hold")
    return X, Y


def _nan(reason: str) -> float:
    warnings.warn(f"CKA is undefined here ({reason}); returning NaN", RuntimeWarning, stacklevel=3)
    return math.nan


def _centre(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11'/n (the biased estimator's centring)."""
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


def _biased(K: torch.Tensor, L: torch.Tensor) -> float:
    K, L = _centre(K), _centre(L)
    return ((K * L).sum() / torch.sqrt((K * K).sum() * (L * L).sum())).item()


def linear(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA, ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) after centring columns; X (n, ...), Y (n, ...).
    Needs n >= 3 (a ValueError otherwise); a constant representation gives NaN with a warning."""
    X, Y = _pair(X, Y)
    if not X.any() or not Y.any():
        return _nan("a constant (zero-variance) representation")
    if X.shape[0] <= max(X.shape[1], Y.shape[1]):  # n x n Gram form is the cheaper one
        K, L = X @ X.T, Y @ Y.T
        return ((K * L).sum() / torch.sqrt((K * K).sum() * (L * L).sum())).item()
    xy, xx, yy = Y.T @ X, X.T @ X, Y.T @ Y
    return ((xy * xy).sum() / torch.sqrt((xx * xx).sum() * (yy * yy).sum())).item()


def _numpy_median(values: torch.Tensor) -> torch.Tensor:
    """The median as numpy takes it (mean of the two middle values); torch.median takes the lower one."""
    ordered = values.flatten().sort().values
    mid = ordered.numel() // 2
    return ordered[mid] if ordered.numel() % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rbf_gram(X: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """exp(-d^2 / (2 threshold^2 median(d^2))) over all example pairs of centred rows X (n, d)."""
    sq = (X * X).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * X @ X.T).clamp_min(0)
    return torch.exp(-d2 / (2 * threshold**2 * _numpy_median(d2)))


def rbf(X: torch.Tensor, Y: torch.Tensor, threshold: float = 1.0) -> float:
    """RBF-kernel CKA; the bandwidth is `threshold` times the median pairwise distance (median heuristic).
    Needs n >= 3, like `linear`."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    X, Y = _pair(X, Y)
    for Z in (X, Y):
        sq = (Z * Z).sum(1)
        if _numpy_median((sq[:, None] + sq[None, :] - 2 * Z @ Z.T).clamp_min(0)) <= 0:
            return _nan("median squared distance is 0: a constant representation or mostly duplicate examples")
    return _biased(rbf_gram(X, threshold), rbf_gram(Y, threshold))


def unbiased(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA from the unbiased HSIC_1 estimator (needs n >= 4): ~0 for independent data at any n."""
    acc = MinibatchCKA(1, 1)
    acc.update([X], [Y])
    return acc.compute()[0, 0].item()


def gram_stack(feats: Sequence[torch.Tensor], what: str = "feats") -> torch.Tensor:
    """(layers, n, n) float64 linear Gram matrices of centred features, diagonals zeroed (for HSIC_1)."""
    if isinstance(feats, torch.Tensor) or not len(feats):
        raise ValueError(f"{what} must be a non-empty list of (n, ...) tensors, one per layer")
    rows = _rows(feats[0], f"{what}[0]")
    n = rows.shape[0]
    out = torch.empty(len(feats), n, n, dtype=torch.float64, device=rows.device)
    for i, f in enumerate(feats):
        X = rows if i == 0 else _rows(f, f"{what}[{i}]")
        if X.shape[0] != n:
            raise ValueError(f"every layer must hold the same examples: {what}[0] has {n}, "
                             f"{what}[{i}] has {X.shape[0]}")
        torch.mm(X, X.T, out=out[i])
        out[i].fill_diagonal_(0.0)
    return out


def hsic1(ga: torch.Tensor, gb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC_1 for all pairs of two Gram stacks (A, n, n), (B, n, n): (A, B), (A,), (B,).

    HSIC_1 = [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3)), zero diagonals.
    tr(KL) for every pair is one (A, n^2) x (n^2, B) product; 1'KL1 a small (A, n) x (n, B) one.
    """
    n = ga.shape[-1]
    va, vb = ga.reshape(len(ga), -1), gb.reshape(len(gb), -1)
    ra, rb = ga.sum(-1), gb.sum(-1)
    sa, sb = ra.sum(-1), rb.sum(-1)
    c1, c2, c3 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2), 1.0 / (n * (n - 3))
    ab = (va @ vb.T + c1 * torch.outer(sa, sb) - c2 * (ra @ rb.T)) * c3
    aa = ((va * va).sum(1) + c1 * sa * sa - c2 * (ra * ra).sum(1)) * c3
    bb = ((vb * vb).sum(1) + c1 * sb * sb - c2 * (rb * rb).sum(1)) * c3
    return ab, aa, bb


class MinibatchCKA:
    """Unbiased linear CKA of every layer of A against every layer of B, accumulated over minibatches.

    Sums HSIC_1(K, L), HSIC_1(K, K) and HSIC_1(L, L) over batches and normalises once in `compute()`
    (averaging per-batch CKA values would be biased and depend on the batch size). Memory holds only
    the (n_a, n_b) sums, whatever the number of examples.
    """

    def __init__(self, n_a: int, n_b: int):
        for name, value in (("n_a", n_a), ("n_b", n_b)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} (number of layers) must be a positive int, got {value!r}")
        self.n_a, self.n_b = n_a, n_b
        self.hsic_ab = torch.zeros(n_a, n_b, dtype=torch.float64)
        self.hsic_aa = torch.zeros(n_a, dtype=torch.float64)
        self.hsic_bb = torch.zeros(n_b, dtype=torch.float64)
        self.examples = 0
        self.batches = 0

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> None:
        """Add one batch: `feats_a` holds n_a tensors (n, ...), `feats_b` n_b tensors, same n >= 4."""
        self.update_grams(gram_stack(feats_a, "feats_a"), gram_stack(feats_b, "feats_b"))

    def update_grams(self, grams_a: torch.Tensor, grams_b: torch.Tensor) -> None:
        """Add one batch given as Gram stacks from `gram_stack` (lets callers drop features early)."""
        if grams_a.shape[0] != self.n_a or grams_b.shape[0] != self.n_b:
            raise ValueError(f"expected {self.n_a} layers for A and {self.n_b} for B, got "
                             f"{grams_a.shape[0]} and {grams_b.shape[0]}")
        n = grams_a.shape[-1]
        if grams_b.shape[-1] != n:
            raise ValueError(f"A and B must hold the same examples: {n} vs {grams_b.shape[-1]} in this batch")
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 examples per batch, got {n}")
        ab, aa, bb = hsic1(grams_a, grams_b.to(grams_a.device))
        self.hsic_ab += ab.cpu()
        self.hsic_aa += aa.cpu()
        self.hsic_bb += bb.cpu()
        self.examples += n
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """(n_a, n_b) CKA; NaN (with a warning) for layers whose summed self-HSIC is not positive."""
        if not self.batches:
            raise ValueError("no batches accumulated yet; call update() first")
        bad_a = (self.hsic_aa <= 0).nonzero().flatten().tolist()
        bad_b = (self.hsic_bb <= 0).nonzero().flatten().tolist()
        if bad_a or bad_b:
            warnings.warn(f"CKA undefined for A layers {bad_a} and B layers {bad_b}: constant (zero-variance) "
                          f"features or too few examples; those rows/columns are NaN", RuntimeWarning,
                          stacklevel=2)
        denom = torch.sqrt(torch.outer(self.hsic_aa.clamp_min(0), self.hsic_bb.clamp_min(0)))
        out = self.hsic_ab / denom
        out[bad_a, :] = math.nan
        out[:, bad_b] = math.nan
        return out


def _spatial(view: StageView, out: torch.Tensor) -> torch.Tensor:
    """A stage or block output without prefix (CLS) tokens, so every family is compared on its spatial map."""
    return out[:, view.num_prefix_tokens:] if view.layout == "tokens" else out


def num_layers(model: nn.Module, layers: str = "stages") -> int:
    """How many layers `cka_matrix` compares for this model."""
    _check_layers(layers)
    return 4 if layers == "stages" else len(stages(model).blocks)


def layer_labels(model: nn.Module, layers: str = "stages") -> list[str]:
    """Tick labels for a CKA matrix axis: s1..s4 or b1..bN."""
    prefix = "s" if layers == "stages" else "b"
    return [f"{prefix}{i + 1}" for i in range(num_layers(model, layers))]


def _check_layers(layers: str) -> None:
    if layers not in LAYERS:
        raise ValueError(f"unknown layers={layers!r}; allowed: {', '.join(LAYERS)}")


def _grams(view: StageView, x: torch.Tensor, layers: str) -> torch.Tensor:
    """Gram stack of one model's stage or block outputs for a batch."""
    if layers == "stages":
        return gram_stack([_spatial(view, s) for s in view.features(x)])
    grams: list[torch.Tensor] = []

    def hook(module, inputs, output):  # turn the output into its Gram at once: later in-place ops can't touch it
        grams.append(gram_stack([_spatial(view, output)])[0])

    handles = [block.register_forward_hook(hook) for block in view.blocks]
    try:
        view.features(x)
    finally:
        for handle in handles:
            handle.remove()
    if len(grams) != len(view.blocks):
        raise ValueError(f"expected one output per block ({len(view.blocks)}), hooks saw {len(grams)}")
    return torch.stack(grams)


@torch.no_grad()
def cka_matrix(model_a: nn.Module, model_b: nn.Module, loader: Iterable, *, layers: str = "stages",
               max_examples: int | None = None, device: str | torch.device = "auto",
               progress: bool = False) -> torch.Tensor:
    """(layers_a, layers_b) minibatch unbiased CKA between the stage (or block) outputs of two models.

    `loader` yields image batches (or (images, labels)); batches are cut so exactly `max_examples`
    are used, and a last piece with fewer than 4 examples is skipped. Models run in eval mode on
    `device` (they are moved there) and get their training mode back. Pass the same model twice for
    a within-model matrix (it then runs once per batch).
    """
    _check_layers(layers)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 4):
        raise ValueError(f"max_examples must be an int >= 4 or None, got {max_examples!r}")
    dev = config.device(device)
    same = model_b is model_a
    models = [model_a] if same else [model_a, model_b]
    acc = MinibatchCKA(num_layers(model_a, layers), num_layers(model_b, layers))
    seen = {"batches": 0, "largest": 0}
    with eval_mode(*models):
        views = [stages(m.to(dev)) for m in models]
        for x in progress_bar(_batches(loader, max_examples, seen), enabled=progress, desc="CKA", unit="batch"):
            x = x.to(dev)
            ga = _grams(views[0], x, layers)
            acc.update_grams(ga, ga if same else _grams(views[1], x, layers))
    if not acc.batches:
        raise ValueError(_no_batch_message(seen))
    return acc.compute()


def _no_batch_message(seen: dict[str, int]) -> str:
    """Why cka_matrix had nothing to compute: an empty loader, or batches below the estimator's minimum."""
    if not seen["batches"]:
        return ("cka_matrix got an empty loader (it yielded no batch); pass one over at least 4 images, "
                "e.g. cka.examples_loader(dataset, examples, batch_size=...)")
    return (f"cka_matrix needs batches of at least 4 images (the unbiased estimator's minimum), but the "
            f"loader's {seen['batches']} batch(es) hold at most {seen['largest']}; use batch_size >= 4")


def _batches(loader: Iterable, max_examples: int | None, seen: dict[str, int]):
    """Image batches of at least 4, cut so that at most `max_examples` images are used in all; counts
    every batch the loader gives and the largest one in `seen` (for the error when none is usable)."""
    used = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        seen["batches"] += 1
        seen["largest"] = max(seen["largest"], len(x))
        remaining = math.inf if max_examples is None else max_examples - used
        if remaining < 4:
            return
        take = min(len(x), remaining)
        if take < 4:  # a short last batch: too few examples for HSIC_1
            continue
        used += take
        yield x[:take]


def examples_loader(dataset: str, examples: int, *, batch_size: int, img_size: int = 32, split: str = "train",
                    seed: int = 0, **load_kwargs) -> DataLoader:
    """A fixed, seeded set of `examples` un-augmented images of `dataset` (fewer if the split is smaller),
    in batches, for comparing representations (`data.sample_images`)."""
    if not isinstance(examples, int) or examples < 4:
        raise ValueError(f"examples must be an int >= 4, got {examples!r}")
    images = data.sample_images(dataset, examples, img_size=img_size, split=split, seed=seed, **load_kwargs)
    return DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=False)


def uniformity(matrix: torch.Tensor) -> float:
    """Mean off-diagonal CKA of a square layer x layer matrix: 1 = all layers alike, 0 = all unrelated."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"uniformity needs a square matrix with at least 2 layers, got shape {tuple(m.shape)}")
    off = ~torch.eye(len(m), dtype=torch.bool)
    return m[off].mean().item()


def shallow_deep(matrix: torch.Tensor) -> float:
    """Mean CKA between the first third and the last third of the layers (the paper's "shallow vs deep")."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 3:
        raise ValueError(f"shallow_deep needs a square matrix with at least 3 layers, got shape {tuple(m.shape)}")
    k = len(m) // 3
    return m[:k, -k:].mean().item()
