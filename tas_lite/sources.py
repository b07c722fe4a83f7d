"""Where datasets come from, checked as they are read: CIFAR's python batches and Fashion-MNIST's IDX files.

CIFAR-10/100 come as torchvision's archives (md5-checked, unpacked atomically, pickles limited to numpy
arrays). Fashion-MNIST (Zalando) comes, in this order, from the cache (`<datasets>/FashionMNIST/raw/`,
torchvision's layout), from the files Debian's package `dataset-fashion-mnist` installs (decompressed
into the cache), or from torchvision's download. Whatever the source, every file is checked before it is
read: gzip's own CRC, the IDX header, the size, the sha256 of Zalando's release and the class balance.
Nothing here normalises or augments images; `tas_lite.data` does that.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import check_integrity, download_url

from . import config
from .util import CorruptFile, MissingDataset, atomic_path, check_writable

CIFAR_ARCHIVES = {  # torchvision's official sources
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


class _Refused(pickle.UnpicklingError):
    """A CIFAR batch file asked to build something other than numpy arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the numpy pieces they contain, never arbitrary objects."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path) -> dict:
    """One CIFAR batch (a pickle of numpy arrays); a damaged or foreign file is named in the error."""
    fix = f"delete {path.parent} and load again (download=True fetches the archive if it is gone)"
    try:
        with open(path, "rb") as handle:
            batch = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    except _Refused as err:
        raise _Refused(f"{err} ({path}); {fix}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CorruptFile(f"{path} is truncated or damaged ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(batch, dict):
        raise CorruptFile(f"{path} holds {type(batch).__name__}, not a CIFAR batch; {fix}")
    return batch


def _download(url: str, root: Path, archive: str, md5: str) -> None:
    """Fetch a CIFAR archive (torchvision checks its md5); no network is one sentence saying what to do."""
    check_writable(root, "pass root= a writable folder, or set TAS_LITE_HOME to one")
    try:
        download_url(url, str(root), filename=archive, md5=md5)
    except OSError as err:  # urllib's URLError included
        reason = getattr(err, "reason", None) or err
        raise ConnectionError(f"could not download {url} ({reason}); without a network, download it by hand "
                              f"(a browser, curl) to {root / archive} and load again") from err
    except RuntimeError as err:  # torchvision: the downloaded file's md5 is wrong
        raise CorruptFile(f"the download of {url} to {root / archive} is damaged (md5 mismatch); delete it and "
                          f"try again") from err


def _extract(tar: Path, root: Path, folder: str) -> None:
    """Unpack the archive into a scratch folder beside the target, then rename: never half a dataset."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        with tarfile.open(tar, "r:gz") as handle:
            handle.extractall(scratch, filter="data")
        if not (scratch / folder).is_dir():
            raise CorruptFile(f"{tar} holds no {folder}/ folder, so it is not the CIFAR archive; delete it and "
                              f"load again with download=True")
        os.replace(scratch / folder, root / folder)
    except (tarfile.TarError, EOFError) as err:
        raise CorruptFile(f"{tar} cannot be unpacked ({err}); delete it and load again with download=True") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cifar_folder(name: str, root: Path, download: bool) -> Path:
    """The extracted batches folder under `root`; extracted from the archive after torchvision's md5 check
    (a truncated archive is reported, and fetched again with `download=True`)."""
    url, archive, md5, folder = CIFAR_ARCHIVES[name]
    base, tar = root / folder, root / archive
    if base.is_dir():
        return base
    if download and not check_integrity(str(tar), md5):
        _download(url, root, archive, md5)
    if tar.is_file():
        if not check_integrity(str(tar), md5):
            raise CorruptFile(f"{tar} is damaged: its md5 is not the official archive's (an interrupted download?); "
                              f"delete it, or load again with download=True to fetch it anew")
        _extract(tar, root, folder)
    if not base.is_dir():
        raise ValueError(
            f"{name} not found: looked for {base} (or the archive {tar}). "
            f"Pass download=True to fetch it (about 170 MB), set root= to where it lives, "
            f"or use the embedded dataset 'digits', which needs no download.")
    return base


class CIFAR(Dataset):
    """CIFAR-10/100 from the official python-format batches (the layout torchvision downloads)."""

    def __init__(self, name: str, root: Path, train: bool, transform, download: bool = False):
        self.root, self.transform = Path(root), transform
        base = _cifar_folder(name, self.root, download)
        if name == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
        else:
            files = ["train"] if train else ["test"]
            label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
        missing = [f for f in files + [meta_file] if not (base / f).is_file()]
        if missing:
            raise CorruptFile(f"{name} at {base} is incomplete: missing {missing}. Delete the folder and "
                              f"load again (download=True fetches the archive if it is gone).")
        batches = [_read_batch(base / f) for f in files]
        self.data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        self.data = self.data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NHWC uint8
        self.targets = [int(t) for b in batches for t in b[label_key]]
        self.classes = list(_read_batch(base / meta_file)[names_key])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


# Zalando's Fashion-MNIST release, decompressed (Debian recompresses the .gz files, so only the decompressed
# bytes can be checked against the release): split -> (images, (image file, sha256 prefix), (label file,
# sha256 prefix)). Sizes follow from the counts: 16 + 784 n bytes of images, 8 + n bytes of labels.
FASHION_SPEC: dict[str, tuple[int, tuple[str, str], tuple[str, str]]] = {
    "train": (60_000, ("train-images-idx3-ubyte", "c59f468a2f672dc8"), ("train-labels-idx1-ubyte", "bad3541b69d91243")),
    "test": (10_000, ("t10k-images-idx3-ubyte", "5b4141f0afbad91e"), ("t10k-labels-idx1-ubyte", "0402a96d92fd2663")),
}
FASHION_SIDE = 28
FASHION_CLASSES = 10
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")  # where the package puts its files (`dpkg -L` says so)
FASHION_HOW = (f"install Debian's package (sudo apt-get install {DEBIAN_PACKAGE}), or load it once with "
               f"download=True on any machine with a network")


def debian_fashion_folder() -> Path | None:
    """The folder holding Debian's Fashion-MNIST .gz files, as `dpkg -L dataset-fashion-mnist` lists them
    (its usual folder where dpkg is absent); None when the package is not installed."""
    try:
        listing = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=30).stdout
        listed = [Path(line) for line in listing.splitlines() if line.endswith("train-images-idx3-ubyte.gz")]
    except (OSError, subprocess.SubprocessError):
        listed = []
    for folder in [p.parent for p in listed] + [DEBIAN_FOLDER]:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None


def _fashion_files() -> list[tuple[str, str, int, str]]:
    """(file name, kind, count, sha256 prefix) of every Fashion-MNIST file."""
    return [(name, kind, count, sha) for count, *files in FASHION_SPEC.values()
            for kind, (name, sha) in zip(("images", "labels"), files)]


def _expected_size(kind: str, count: int) -> int:
    return 16 + count * FASHION_SIDE * FASHION_SIDE if kind == "images" else 8 + count


def _check_idx(path: Path, kind: str, count: int, sha: str, fix: str) -> None:
    """Size, IDX header (magic, count, 28 x 28) and sha256 prefix of one decompressed file; else CorruptFile."""
    size, want = path.stat().st_size, _expected_size(kind, count)
    if size != want:
        raise CorruptFile(f"{path} has {size:,} bytes, Fashion-MNIST's {kind} file has {want:,} (truncated or "
                          f"altered); {fix}")
    with open(path, "rb") as handle:
        header = np.frombuffer(handle.read(16 if kind == "images" else 8), dtype=">i4").tolist()
    expected = [2051, count, FASHION_SIDE, FASHION_SIDE] if kind == "images" else [2049, count]
    if header != expected:
        raise CorruptFile(f"{path} has the IDX header {header}, Fashion-MNIST's {kind} file has {expected}; {fix}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(sha):
        raise CorruptFile(f"{path} is not Zalando's Fashion-MNIST {kind} file (its sha256 starts "
                          f"{digest.hexdigest()[:16]}, the release's {sha}): altered; {fix}")


def _gunzip(source: Path, target: Path, fix: str) -> None:
    """Decompress `source` into `target` atomically; gzip checks its own CRC and length at the end."""
    try:
        with gzip.open(source, "rb") as packed, atomic_path(target) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(packed, out, 1 << 20)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # a bad CRC or header; a truncated file
        raise CorruptFile(f"{source} cannot be decompressed ({type(err).__name__}: {err}): truncated or "
                          f"damaged; {fix}") from err


def _check_balance(raw: Path, fix: str) -> None:
    """Every class holds the same number of images in each split (6,000 and 1,000 in the release)."""
    for split, (count, _, (labels, _)) in FASHION_SPEC.items():
        found = np.bincount(np.fromfile(raw / labels, dtype=np.uint8, offset=8), minlength=FASHION_CLASSES)
        if len(found) != FASHION_CLASSES or (found != count // FASHION_CLASSES).any():
            raise CorruptFile(f"{raw / labels} holds {found.tolist()} images per class, Fashion-MNIST's {split} "
                              f"split {count // FASHION_CLASSES} of each; {fix}")


_CHECKED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files checked in this process


def _verified(raw: Path, fix: str) -> bool:
    """True when `raw` holds the four decompressed files, each checked (once per process and version);
    False when one is missing; CorruptFile when one is there but wrong."""
    files = _fashion_files()
    if not all((raw / name).is_file() for name, *_ in files):
        return False
    for name, kind, count, sha in files:
        stat = (raw / name).stat()
        key = (str(raw / name), stat.st_size, stat.st_mtime_ns)
        if key not in _CHECKED:
            _check_idx(raw / name, kind, count, sha, fix)
            _CHECKED.add(key)
    _check_balance(raw, fix)
    return True


def _unpack_into(raw: Path, source: Path, fix: str) -> None:
    """Decompress the four `.gz` files of folder `source` into `raw`."""
    check_writable(raw, "set TAS_LITE_HOME to a writable folder (the datasets cache lives in it), or pass root=")
    for name, *_ in _fashion_files():
        _gunzip(source / f"{name}.gz", raw / name, fix)


def _download_fashion(base: Path) -> None:
    """torchvision's download into `base/FashionMNIST/raw` (it checks the md5 of each .gz)."""
    check_writable(base, "pass root= a writable folder, or set TAS_LITE_HOME to one")
    try:
        FashionMNIST(str(base), train=True, download=True)
    except (RuntimeError, OSError) as err:  # torchvision sums up failed mirrors in a RuntimeError
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise MissingDataset(f"Fashion-MNIST could not be downloaded ({reason}); {FASHION_HOW}") from err


def fashion_mnist_raw(root: str | Path | None = None, download: bool = False) -> Path:
    """The checked folder `<base>/FashionMNIST/raw` holding Fashion-MNIST's four decompressed IDX files.

    `root=None`: the cache (`config.datasets_dir()`), then Debian's package (decompressed into the cache),
    then a download when `download=True`. `root=DIR`: only `DIR/FashionMNIST/raw/` (its files, or their
    `.gz`), downloading there when asked. A damaged file is a CorruptFile naming it and how to get it
    again; no set anywhere is a MissingDataset saying how to get one.
    """
    base = Path(root).expanduser() if root is not None else config.datasets_dir()
    raw = base / "FashionMNIST" / "raw"
    fix = f"delete {raw} and load again ({FASHION_HOW})"
    if _verified(raw, fix):
        return raw
    if all((raw / f"{name}.gz").is_file() for name, *_ in _fashion_files()):
        _unpack_into(raw, raw, f"delete {raw} and load again ({FASHION_HOW})")
    elif root is None and (debian := debian_fashion_folder()) is not None:
        _unpack_into(raw, debian, f"reinstall the package (sudo apt-get install --reinstall {DEBIAN_PACKAGE})")
    elif download:
        _download_fashion(base)
    if _verified(raw, fix):
        return raw
    where = f"{raw}" + ("" if root is not None else f", nor from Debian's package ({DEBIAN_FOLDER})")
    raise MissingDataset(f"Fashion-MNIST is not on this machine (looked in {where}); {FASHION_HOW}")


def fashion_mnist(split: str, root: str | Path | None = None, download: bool = False) -> tuple[torch.Tensor,
                                                                                             torch.Tensor, tuple[str, ...]]:
    """(images uint8 (N, 28, 28), labels int64 (N,), class names) of one split, read by torchvision's
    FashionMNIST from the checked folder `fashion_mnist_raw` gives (kept in memory while the files stay)."""
    raw = fashion_mnist_raw(root, download)
    stamp = tuple((raw / name).stat().st_mtime_ns for name, *_ in _fashion_files())
    return _read_fashion(str(raw), split, stamp)


@lru_cache(maxsize=4)
def _read_fashion(raw: str, split: str, stamp: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    reader = FashionMNIST(str(Path(raw).parent.parent), train=split == "train", download=False)
    return reader.data, reader.targets.long(), tuple(reader.classes)
