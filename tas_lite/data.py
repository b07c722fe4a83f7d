"""Datasets and loaders: embedded digits, Fashion-MNIST, CIFAR-10/100, seeded synthetic images, ImageFolder.

`load(name, split)` returns a torch Dataset of (image, label) pairs, images normalised CHW float32.
`loaders(name, batch_size=...)` returns seeded (train, val, test) DataLoaders, val carved from train.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from . import config, distributed, sources
from .sources import CIFAR

NAMES = ("digits", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder:<path>")
BASES = ("digits", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder")
IN_MEMORY = ("digits", "fashion_mnist", "synthetic")  # images held as tensors, augmented per batch
SPLITS = ("train", "test")

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the digits test split is fixed, whatever the run's seed
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))



def num_classes(name: str) -> int:
    """Number of classes of a named dataset (synthetic: its default, 10)."""
    base = _check_name(name)
    if base == "imagefolder":
        return len(load(name, "train").classes)
    return {"digits": 10, "fashion_mnist": sources.FASHION_CLASSES, "cifar10": 10, "cifar100": 100, "synthetic": 10}[base]


def fingerprint(name: str) -> str | None:
    """What a cache key needs to notice changed data: for `imagefolder:<path>`, a hash of every file's
    path (class names included), size and modification time under the folder; None for the built-in
    datasets, which never change."""
    if _check_name(name) != "imagefolder":
        return None
    root = Path(name.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise ValueError(f"imagefolder path {str(root)!r} does not exist")
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file in sorted(files):
            stat = (Path(folder) / file).stat()
            digest.update(f"{Path(folder, file).relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string; allowed: {', '.join(NAMES)}")
    base = name.split(":", 1)[0]
    if base not in BASES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(NAMES)}")
    if base == "imagefolder" and not name[len("imagefolder:"):]:
        raise ValueError("imagefolder needs a path: 'imagefolder:/path/to/images'")
    return base


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)} (val is carved from train by loaders())")


def _check_img_size(img_size: int) -> None:
    if not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f"img_size must be an int >= 8, got {img_size!r}")


class RandomAffineBatch:
    """A random rotation (+-`degrees`), shift (+-`shift` px) and zoom (1 +- `zoom`) per image, applied to
    a whole (B, C, H, W) batch in one `grid_sample` (per-image transforms cost as much as a training step
    on 2 cores); uncovered pixels get `fill`. Draws from torch's global RNG, so a seed repeats it."""

    def __init__(self, degrees: float, shift: float, zoom: float, fill: float = 0.0):
        self.degrees, self.shift, self.zoom, self.fill = degrees, shift, zoom, fill

    def __repr__(self) -> str:
        return (f"RandomAffineBatch(degrees={self.degrees}, shift={self.shift}, zoom={self.zoom}, "
                f"fill={self.fill})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        angle = (2 * torch.rand(b) - 1) * math.radians(self.degrees)
        zoom = 1 + (2 * torch.rand(b) - 1) * self.zoom
        shift = (2 * torch.rand(b, 2) - 1) * self.shift / torch.tensor([w / 2, h / 2])  # normalised coordinates
        cos, sin = angle.cos() / zoom, angle.sin() / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x - self.fill, grid, align_corners=False, padding_mode="zeros") + self.fill


class CropFlipBatch:
    """A random shift of up to +-`shift` px each way (a crop of the image padded with `fill`) and, with
    `flip`, a horizontal flip with probability 1/2, per image, for a whole (B, C, H, W) batch at once.
    Draws from torch's global RNG, so a seed repeats it."""

    def __init__(self, shift: int, flip: bool = True, fill: float = 0.0):
        self.shift, self.flip, self.fill = int(shift), flip, fill

    def __repr__(self) -> str:
        return f"CropFlipBatch(shift={self.shift}, flip={self.flip}, fill={self.fill})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.shift:
            s = self.shift
            padded = F.pad(x, (s, s, s, s), value=self.fill)
            rows = torch.arange(h)[None, :] + torch.randint(0, 2 * s + 1, (b, 1))
            cols = torch.arange(w)[None, :] + torch.randint(0, 2 * s + 1, (b, 1))
            x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                       rows[:, None, :, None], cols[:, None, None, :]]
        if self.flip:
            x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], x.flip(-1), x)
        return x


class TensorImages(Dataset):
    """In-memory images (N, C, H, W) with labels; `batch_transform` augments whole training batches
    (`loaders` applies it as it collates them). `classes`: their names (default: the labels present)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_transform=None, classes=None):
        self.images, self.labels, self.batch_transform = images, labels, batch_transform
        self.classes = list(classes) if classes is not None else sorted(int(c) for c in labels.unique())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


class GreyImages(TensorImages):
    """Grey uint8 images (N, H, W) kept as they are on disk and made model inputs when read
    (`grey_to_input`): the training set stays at a quarter of the memory float RGB copies would take."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int, **kwargs):
        super().__init__(images, labels, **kwargs)
        self.img_size = img_size

    def __getitem__(self, index: int):
        return grey_to_input(self.images[index], self.img_size), int(self.labels[index])


def grey_to_input(image: torch.Tensor, img_size: int) -> torch.Tensor:
    """A grey uint8 (H, W) image as a (3, img_size, img_size) input in [-1, 1]: padded with background
    (black, -1) up to 8 px larger, resized (bilinear) otherwise, the grey copied to three channels."""
    x = image.float().div_(127.5).sub_(1.0)[None]
    grow = img_size - x.shape[-1]
    if 0 <= grow <= 8:
        x = F.pad(x, (grow // 2, grow - grow // 2, grow // 2, grow - grow // 2), value=-1.0)
    else:
        x = F.interpolate(x[None], size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.expand(3, -1, -1)


def digits_augment(img_size: int) -> RandomAffineBatch:
    """Digits' training augmentation: rotation +-10 deg, shift +-2 px at 32 px, zoom 0.9-1.1, background -1.
    Chosen on the tiny ViT's validation accuracy (40 epochs, seeds 0-1, mean of the last 5 epochs: 98.6%
    with it, 97.9% with +-2 px shifts only)."""
    return RandomAffineBatch(degrees=10.0, shift=img_size / 16, zoom=0.1, fill=-1.0)


def fashion_augment(img_size: int) -> CropFlipBatch:
    """Fashion-MNIST's training augmentation: shifts of up to +-2 px at 32 px and horizontal flips, on a
    black background (clothing is left-right symmetric and centred; rotations, as digits use, do not
    suit it). Chosen on validation: `results/README.md` gives the evidence."""
    return CropFlipBatch(shift=max(1, img_size // 16), flip=True, fill=-1.0)


def _fashion(split: str, img_size: int, train_aug: bool, root, download: bool) -> GreyImages:
    """Fashion-MNIST (`sources.fashion_mnist`: cache, Debian's package or a download, every file checked)."""
    images, labels, classes = sources.fashion_mnist(split, root, download)
    return GreyImages(images, labels, img_size, classes=classes,
                      batch_transform=fashion_augment(img_size) if train_aug else None)


AUGMENTS = {"digits": digits_augment, "fashion_mnist": fashion_augment}  # in-memory sets' batch augmentation


class AugmentingCollate:
    """Stack (image, label) pairs into a batch, then augment the whole batch at once."""

    def __init__(self, batch_transform):
        self.batch_transform = batch_transform

    def __call__(self, batch):
        images, labels = torch.utils.data.default_collate(batch)
        return self.batch_transform(images), labels


def digits_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (train, test) index split of the digits set, independent of any run's seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(round(DIGITS_TEST_FRACTION * n))
    return order[n_test:].sort().values, order[:n_test].sort().values


def _digits(split: str, img_size: int, train_aug: bool) -> TensorImages:
    """scikit-learn's 8x8 digits, upsampled bilinearly to img_size, grey copied to RGB, normalised."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_index, test_index = digits_split(len(labels))
    index = test_index if split == "test" else train_index
    images = F.interpolate(images[index], size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return TensorImages(images, labels[index], batch_transform=digits_augment(img_size) if train_aug else None)


def _synthetic(split: str, img_size: int, num_samples: int, classes: int, seed: int) -> TensorImages:
    """Learnable random images: one smooth random prototype per class plus noise; seeded per split."""
    protos = torch.randn(classes, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    protos = F.interpolate(protos, size=(img_size, img_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "test" else 2))
    labels = torch.randint(0, classes, (num_samples,), generator=gen)
    images = protos[labels] + 0.8 * torch.randn(num_samples, 3, img_size, img_size, generator=gen)
    return TensorImages(images, labels)


def image_transform(train: bool, img_size: int, stats, native_size: int | None = None) -> object:
    """torchvision transform. Training: crop + flip when images already have `img_size` (CIFAR at
    32 px), RandomResizedCrop otherwise (the paper's 224 px track). Evaluation: resize + centre crop."""
    mean, std = stats
    if train and native_size == img_size:
        geometry = [T.RandomCrop(img_size, padding=img_size // 8), T.RandomHorizontalFlip()]
    elif train:
        geometry = [T.RandomResizedCrop(img_size, antialias=True), T.RandomHorizontalFlip()]
    elif native_size == img_size:
        geometry = []
    else:
        geometry = [T.Resize(img_size, antialias=True), T.CenterCrop(img_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


@dataclass(frozen=True)
class TimmAugment:
    """The paper track's image pipeline, built by timm exactly as the OFA authors' train.py asks timm for
    it (Hao840/OFAKD, configs/cifar/*.yaml over train.py's defaults): RandomResizedCrop (scale 0.08-1,
    random interpolation) + flip, colour jitter, RandAugment, random erasing (per-pixel noise), then
    mixup/cutmix on whole batches with label smoothing in the soft targets. Evaluation: resize to
    img_size / crop_pct, centre crop. `CNN` and `TOKEN` are the authors' two CIFAR configs."""

    color_jitter: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.1  # goes into mixup's soft targets; without mixup the loss applies it
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    train_interpolation: str = "random"
    eval_interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def mixes(self) -> bool:
        """True when training batches carry soft (mixup/cutmix) targets."""
        return self.mixup > 0 or self.cutmix > 0

    def transform(self, train: bool, img_size: int, stats) -> object:
        """timm's `create_transform` for training or evaluation images (PIL in, normalised tensor out)."""
        mean, std = stats
        if not train:
            return create_transform(img_size, is_training=False, interpolation=self.eval_interpolation,
                                    crop_pct=self.crop_pct, mean=mean, std=std)
        return create_transform(img_size, is_training=True, scale=self.scale, hflip=self.hflip,
                                color_jitter=self.color_jitter, auto_augment=self.auto_augment,
                                interpolation=self.train_interpolation, re_prob=self.re_prob, re_mode="pixel",
                                re_count=1, mean=mean, std=std)

    def mixup_fn(self, num_classes: int) -> Mixup | None:
        """timm's Mixup for batches (None without mixup/cutmix): the authors' prob 1, switch 0.5, per batch."""
        if not self.mixes:
            return None
        return Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=1.0, switch_prob=0.5, mode="batch",
                     label_smoothing=self.label_smoothing, num_classes=num_classes)


# The OFA authors' CIFAR-100 configs (configs/cifar/cnn.yaml, vit_mlp.yaml): CNN students get crop + flip
# only (color_jitter 0); ViT/MLP students add jitter 0.4, RandAugment, erasing 0.25, mixup 0.8, cutmix 1.0.
PAPER_CNN = TimmAugment()
PAPER_TOKEN = TimmAugment(color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
                          eval_interpolation="bicubic")


class MixupCollate:
    """Collate (image, label) pairs into a batch (with `collate`, default torch's), then mix it with
    timm's Mixup: labels become soft targets (B, C)."""

    def __init__(self, mixup: Mixup, collate=None):
        self.mixup, self.collate = mixup, collate or torch.utils.data.default_collate

    def __call__(self, batch):
        images, labels = self.collate(batch)
        return self.mixup(images, labels)


def _imagefolder(path: str, split: str, img_size: int, train_aug: bool, policy: TimmAugment | None = None) -> Dataset:
    """torchvision's ImageFolder over `path/split` (or a flat `path` for train); an empty class folder, or
    none at all, is a ValueError naming the folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"imagefolder path {str(root)!r} does not exist")
    if (root / split).is_dir():
        root = root / split
    elif split != "train" or (root / "test").is_dir():
        raise ValueError(f"imagefolder {path!r} has no {split!r} subfolder; use a train/ and test/ layout of "
                         f"class subfolders, or load split='train' from a flat folder of class subfolders")
    transform = policy.transform(train_aug, img_size, IMAGENET_STATS) if policy else \
        image_transform(train_aug, img_size, IMAGENET_STATS)
    try:
        return ImageFolder(str(root), transform=transform)
    except FileNotFoundError as err:  # no class folder, or one without a single image
        raise ValueError(f"imagefolder {str(root)!r} cannot be read as one class per subfolder: {err} Give "
                         f"each class a subfolder with at least one image, and remove empty ones.") from err


def load(name: str, split: str = "train", *, root: str | Path | None = None, img_size: int = 32,
         download: bool = False, augment: bool | None = None, num_samples: int = 512,
         synthetic_classes: int = 10, seed: int = 0, policy: TimmAugment | None = None) -> Dataset:
    """A dataset by name: "digits", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder:<path>".

    Training splits are augmented unless `augment=False`; `num_samples`, `synthetic_classes` and
    `seed` only apply to "synthetic". `policy` (a `TimmAugment`) builds the images' transforms with timm
    instead of `image_transform` (CIFAR and image folders; in-memory sets keep theirs). `root=None` looks
    in the cache (and, for Fashion-MNIST, in Debian's package); `root=DIR` only in DIR (torchvision's
    layout); `download=True` fetches what is missing. Missing CIFAR files raise a ValueError saying where
    we looked; a missing Fashion-MNIST a `util.MissingDataset` saying how to get it.
    """
    base = _check_name(name)
    _check_split(split)
    _check_img_size(img_size)
    train_aug = (split == "train") if augment is None else bool(augment)
    if base == "digits":
        dataset = _digits(split, img_size, train_aug)
    elif base == "fashion_mnist":
        dataset = _fashion(split, img_size, train_aug, root, download)
    elif base == "synthetic":
        if synthetic_classes < 2 or num_samples < 1:
            raise ValueError(f"synthetic needs synthetic_classes >= 2 and num_samples >= 1, got "
                             f"{synthetic_classes} and {num_samples}")
        dataset = _synthetic(split, img_size, num_samples, synthetic_classes, seed)
    elif base == "imagefolder":
        dataset = _imagefolder(name.split(":", 1)[1], split, img_size, train_aug, policy)
    else:
        folder = Path(root) if root is not None else config.datasets_dir()
        transform = policy.transform(train_aug, img_size, CIFAR_STATS[base]) if policy else \
            image_transform(train_aug, img_size, CIFAR_STATS[base], 32)
        dataset = CIFAR(base, folder, split == "train", transform, download)
    dataset.name = name  # what a run's record names its data by (`dataset_name`)
    return dataset


def dataset_name(loader) -> str | None:
    """The name `load` gave the data behind a loader (through any Subset), None for data from elsewhere."""
    dataset = getattr(loader, "dataset", None)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "name", None)


def describe_augmentation(name: str, img_size: int, policy: TimmAugment | None = None) -> str:
    """What a dataset's training split does to its images, as text (for a run's fingerprint)."""
    base = _check_name(name)
    if policy is not None and base not in IN_MEMORY:
        stats = CIFAR_STATS.get(base, IMAGENET_STATS)
        return f"{policy!r}; {policy.transform(True, img_size, stats)!r}"
    if policy is not None:  # in-memory images keep their own transforms; only mixup applies
        return f"{describe_augmentation(name, img_size)}; {policy!r} (mixup/cutmix only)"
    if base in IN_MEMORY:
        return repr(AUGMENTS[base](img_size) if base in AUGMENTS else None)
    stats = CIFAR_STATS.get(_check_name(name), IMAGENET_STATS)
    return repr(image_transform(True, img_size, stats, 32 if name in CIFAR_STATS else None))


def default_num_workers(in_memory: bool) -> int:
    """0 for in-memory data and on macOS/Windows (spawned workers are slow to start in notebooks)."""
    if in_memory or platform.system() != "Linux":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, disjoint (train, val) index lists covering range(n)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(val_fraction * n))
    return sorted(order[n_val:]), sorted(order[:n_val])


def dataset_labels(dataset: Dataset) -> list[int]:
    """Every example's label, without loading an image (in-memory images, CIFAR, ImageFolder)."""
    for attribute in ("labels", "targets"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return [int(label) for label in labels]
    raise ValueError(f"{type(dataset).__name__} does not list its labels (no .labels or .targets); "
                     f"train_images needs them to draw the same number of images from every class")


def balanced_subset(indices: list[int], labels: list[int], n: int, seed: int) -> list[int]:
    """A seeded subset of `indices` with n // classes images of every class (the first n % classes
    classes take one more): a smaller labelled set, as even across classes as the data allows."""
    by_class: dict[int, list[int]] = {}
    for i in indices:
        by_class.setdefault(labels[i], []).append(i)
    classes = sorted(by_class)
    if not isinstance(n, int) or isinstance(n, bool) or not len(classes) <= n <= len(indices):
        raise ValueError(f"train_images must be an int from {len(classes)} (one per class) to {len(indices)} "
                         f"(the whole training split), got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for rank, c in enumerate(classes):
        want = n // len(classes) + (rank < n % len(classes))
        pool = by_class[c]
        if want > len(pool):
            raise ValueError(f"train_images={n} needs {want} images of class {c}, the training split has {len(pool)}")
        order = torch.randperm(len(pool), generator=generator)[:want].tolist()
        chosen += [pool[j] for j in order]
    return sorted(chosen)


def loaders(name: str, *, batch_size: int, img_size: int = 32, val_fraction: float = 0.1, seed: int = 0,
            root: str | Path | None = None, download: bool = False, num_workers: int | None = None,
            pin_memory: bool | None = None, eval_batch_size: int | None = None, policy: TimmAugment | None = None,
            shard: tuple[int, int] | None = None, train_images: int | None = None, **load_kwargs):
    """(train, val, test) DataLoaders. Val is a seeded slice of the training split, without augmentation
    (`val_fraction=0`: none, the whole training split trains).

    Training shuffles with a generator seeded by `seed` and drops the last incomplete batch. `policy` (a
    `TimmAugment`): timm's transforms, and mixup/cutmix on training batches (soft targets). `shard=(rank,
    world)`: this process's part of a distributed run; `batch_size` is then its own share of the global
    batch, and the global batches are those one process would take from the same shuffled order
    (torch's DistributedSampler, seeded by `seed`; call `train.sampler.set_epoch(epoch)` every epoch).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    kwargs = dict(root=root, img_size=img_size, download=download, **load_kwargs)
    if _check_name(name) == "synthetic":
        kwargs.setdefault("seed", seed)
    train_full = load(name, "train", policy=policy, **kwargs)
    train_plain = load(name, "train", augment=False, policy=policy, **kwargs)
    test = load(name, "test", policy=policy, **kwargs)
    train_idx, val_idx = split_indices(len(train_full), val_fraction, seed)
    if train_images is not None:
        train_idx = balanced_subset(train_idx, dataset_labels(train_full), train_images, seed)
    in_memory = isinstance(train_full, TensorImages)
    workers = default_num_workers(in_memory) if num_workers is None else num_workers
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    eval_bs = eval_batch_size or max(batch_size, 256)
    train_set = Subset(train_full, train_idx)
    augment = getattr(train_full, "batch_transform", None)
    collate = AugmentingCollate(augment) if augment else None
    mixup = policy.mixup_fn(load_kwargs.get("synthetic_classes", 10) if _check_name(name) == "synthetic"
                            else num_classes(name)) if policy else None
    collate = MixupCollate(mixup, collate) if mixup else collate
    if shard is not None:
        train_loader = _sharded(train_set, batch_size, seed, shard, collate, common)
    else:
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                  drop_last=len(train_set) >= batch_size, generator=torch.Generator().manual_seed(seed),
                                  collate_fn=collate, **common)
    val_loader = DataLoader(Subset(train_plain, val_idx), batch_size=eval_bs, shuffle=False, **common)
    test_loader = DataLoader(test, batch_size=eval_bs, shuffle=False, **common)
    return train_loader, val_loader, test_loader


def _sharded(train_set: Dataset, batch_size: int, seed: int, shard: tuple[int, int], collate, common) -> DataLoader:
    """Process `rank`'s loader of a distributed run: every world-th example of one seeded permutation per
    epoch (whole global batches only), worker seeds distinct per process."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard (rank, world) must have 0 <= rank < world, got {shard}")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(distributed.rank_seed(seed, rank)), **common)


def sample_images(name: str, n: int, *, img_size: int = 32, split: str = "train", seed: int = 0,
                  **load_kwargs) -> torch.Tensor:
    """(n, C, H, W): a fixed, seeded sample of un-augmented images (fewer if the split is smaller), for
    probing and comparing representations. Digits' test split holds only 359 images, hence "train"."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    images = load(name, split, img_size=img_size, augment=False, **load_kwargs)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return torch.stack([images[i][0] for i in order])
