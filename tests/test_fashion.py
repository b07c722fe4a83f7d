"""Fashion-MNIST as `tas_lite.sources` reads it: from the cache, from Debian's package files (decompressed into
the cache) or from torchvision's download, in that order, every file checked (gzip CRC, size, IDX header,
sha256, class balance) and named when it is wrong; nowhere to get it is one sentence saying how.

A small release is fabricated here (20 training and 10 test images, every class alike) and
`sources.FASHION_SPEC` is pointed at it; one test reads the real set where this machine has it."""

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import FashionMNIST

from tas_lite import config, data, sources
from tas_lite.__main__ import main
from tas_lite.util import CorruptFile, MissingDataset

COUNTS = {"train": 20, "test": 10}
PREFIX = {"train": "train", "test": "t10k"}
OFFLINE = RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://fashion-mnist.example/, got:\n"
                       "<urlopen error [Errno 101] Network is unreachable>")


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">iiii", 2051, len(images), 28, 28) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def fabricate(monkeypatch, train_labels=None) -> dict[str, bytes]:
    """A small release: file name -> decompressed bytes, registered in `sources.FASHION_SPEC` by their sha256."""
    rng = np.random.default_rng(0)
    files, spec = {}, {}
    for split, n in COUNTS.items():
        labels = rng.permutation(np.arange(n) % 10) if train_labels is None or split == "test" else train_labels
        images = rng.integers(0, 256, (n, 28, 28))
        names = (f"{PREFIX[split]}-images-idx3-ubyte", f"{PREFIX[split]}-labels-idx1-ubyte")
        files[names[0]], files[names[1]] = idx_images(images), idx_labels(np.asarray(labels))
        spec[split] = (n, *((name, hashlib.sha256(files[name]).hexdigest()[:16]) for name in names))
    monkeypatch.setattr(sources, "FASHION_SPEC", spec)
    monkeypatch.setattr(sources, "_CHECKED", set())  # files checked by earlier tests are not trusted here
    return files


@pytest.fixture
def release(monkeypatch):
    return fabricate(monkeypatch)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TAS_LITE_HOME; Debian's package and the network answer only where a test says so."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "debian_fashion_folder", lambda: None)
    monkeypatch.setattr(FashionMNIST, "download", lambda self: pytest.fail("nothing may be downloaded here"))
    return tmp_path / "home"


def write(folder: Path, files: dict[str, bytes], *, gz: bool = False) -> Path:
    """The files into `folder`, decompressed or gzipped as Debian ships them (no name, no time stamp)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload, mtime=0))
        else:
            (folder / name).write_bytes(payload)
    return folder


def cache_raw() -> Path:
    return config.datasets_dir() / "FashionMNIST" / "raw"


def test_a_release_in_a_root_folder_loads_as_padded_normalised_rgb(tmp_path, release):
    write(tmp_path / "FashionMNIST" / "raw", release)
    train, test = data.load("fashion_mnist", "train", root=tmp_path), data.load("fashion_mnist", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 10) and train.classes == test.classes == FashionMNIST.classes
    images = np.frombuffer(release["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(20, 28, 28)
    labels = np.frombuffer(release["train-labels-idx1-ubyte"], np.uint8, offset=8)
    for i in (0, 7):
        x, y = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[i]
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert torch.allclose(x[0, 2:30, 2:30], torch.from_numpy(images[i] / 127.5 - 1.0).float(), atol=1e-6)
        assert (x[:, :2] == -1).all() and (x[:, :, -2:] == -1).all()  # padded with black background
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # grey in three channels
    assert train.batch_transform is not None and test.batch_transform is None  # only training batches augment
    assert data.dataset_name(data.loaders("fashion_mnist", root=tmp_path, batch_size=4)[0]) == "fashion_mnist"


def test_gzipped_files_in_a_root_folder_are_decompressed_there(tmp_path, release):
    raw = write(tmp_path / "FashionMNIST" / "raw", release, gz=True)
    assert len(data.load("fashion_mnist", "test", root=tmp_path)) == 10
    assert all((raw / name).read_bytes() == payload for name, payload in release.items())


def test_the_cache_is_read_first(home, release, monkeypatch):
    write(cache_raw(), release)
    monkeypatch.setattr(sources, "debian_fashion_folder", lambda: pytest.fail("the cache holds it: not consulted"))
    assert len(data.load("fashion_mnist", "train")) == 20
    assert sources.fashion_mnist_raw() == cache_raw()


def test_debians_files_are_decompressed_into_the_cache(home, release, tmp_path, monkeypatch):
    debian = write(tmp_path / "usr_share_datasets", release, gz=True)
    monkeypatch.setattr(sources, "debian_fashion_folder", lambda: debian)
    assert len(data.load("fashion_mnist", "test")) == 10
    assert all((cache_raw() / name).read_bytes() == payload for name, payload in release.items())
    assert sorted(p.name for p in debian.iterdir()) == sorted(f"{n}.gz" for n in release)  # left as installed
    monkeypatch.setattr(sources, "debian_fashion_folder", lambda: pytest.fail("the cache holds it now"))
    assert len(data.load("fashion_mnist", "train")) == 20


def test_download_true_with_no_files_calls_torchvisions_download(home, release, monkeypatch):
    calls = []

    def download(self):  # what torchvision's download leaves behind: the files in <root>/FashionMNIST/raw
        calls.append(Path(self.raw_folder))
        write(Path(self.raw_folder), release, gz=True)
        write(Path(self.raw_folder), release)

    monkeypatch.setattr(FashionMNIST, "download", download)
    with pytest.raises(MissingDataset):
        data.load("fashion_mnist", "train")  # download=False: nothing is fetched
    assert calls == []
    assert len(data.load("fashion_mnist", "train", download=True)) == 20
    assert calls == [cache_raw()]
    assert len(data.load("fashion_mnist", "test", download=True)) == 10 and len(calls) == 1  # cached now


def one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message.rstrip(".")


def test_a_failed_download_says_how_to_get_the_set(home, release, monkeypatch):
    def offline(self):
        raise OFFLINE

    monkeypatch.setattr(FashionMNIST, "download", offline)
    with pytest.raises(MissingDataset, match=r"could not be downloaded \(<urlopen error .*unreachable>\)") as err:
        data.load("fashion_mnist", "train", download=True)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message
    assert one_sentence(message), message


def test_no_set_anywhere_is_one_sentence_naming_both_ways_to_get_it(home, release):
    with pytest.raises(MissingDataset) as err:
        data.load("fashion_mnist", "train")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "with a network" in message
    assert str(cache_raw()) in message and one_sentence(message), message
    assert isinstance(err.value, OSError)  # an environment problem, not bad input


def damaged(kind: str, release: dict[str, bytes], tmp_path: Path) -> tuple[Path, Path | None]:
    """(the damaged file, Debian's folder when the damage is in a .gz) for one kind of damage."""
    images = "train-images-idx3-ubyte"
    if kind in ("truncated gz", "flipped byte in gz"):
        debian = write(tmp_path / "debian", release, gz=True)
        path = debian / f"{images}.gz"
        payload = bytearray(path.read_bytes())
        if kind == "truncated gz":
            payload = payload[: len(payload) // 2]
        else:
            payload[len(payload) // 2] ^= 0xFF
        path.write_bytes(bytes(payload))
        return path, debian
    raw = write(cache_raw(), release)
    if kind == "wrong size":
        path = raw / images
        path.write_bytes(release[images] + b"\0")
    elif kind == "wrong header":
        path = raw / "t10k-labels-idx1-ubyte"
        path.write_bytes(struct.pack(">ii", 2051, 10) + release["t10k-labels-idx1-ubyte"][8:])  # same size
    else:  # altered: the same size and header, one pixel changed
        path = raw / images
        payload = bytearray(release[images])
        payload[100] ^= 0x01
        path.write_bytes(bytes(payload))
    return path, None


@pytest.mark.parametrize("kind, says", [
    ("truncated gz", r"cannot be decompressed .*truncated or damaged; reinstall the package"),
    ("flipped byte in gz", r"cannot be decompressed .*truncated or damaged; reinstall the package"),
    ("wrong size", r"has 15,697 bytes, Fashion-MNIST's images file has 15,696"),
    ("wrong header", r"has the IDX header \[2051, 10\], Fashion-MNIST's labels file has \[2049, 10\]"),
    ("altered", r"is not Zalando's Fashion-MNIST images file \(its sha256 starts [0-9a-f]{16}, the release's"),
])
def test_a_damaged_file_is_a_corrupt_file_naming_it(home, release, tmp_path, monkeypatch, kind, says):
    path, debian = damaged(kind, release, tmp_path)
    if debian is not None:
        monkeypatch.setattr(sources, "debian_fashion_folder", lambda: debian)
    with pytest.raises(CorruptFile, match=re.escape(str(path)) + " " + says):
        data.load("fashion_mnist", "train")


def test_unbalanced_classes_are_a_corrupt_file_naming_it(home, monkeypatch):
    """A labels file that passes every other check (its sha256 is the release's here) but holds the classes
    unevenly is not Fashion-MNIST."""
    labels = np.array([0, 0, 0] + list(range(1, 10)) + list(range(2, 10)))  # class 0 thrice, class 1 once
    release = fabricate(monkeypatch, train_labels=labels)
    raw = write(cache_raw(), release)
    with pytest.raises(CorruptFile, match=re.escape(str(raw / "train-labels-idx1-ubyte")) +
                       r" holds \[3, 1, 2, 2, 2, 2, 2, 2, 2, 2\] images per class, Fashion-MNIST's train split 2 of each"):
        data.load("fashion_mnist", "test")


def test_the_command_line_stops_on_a_missing_set_with_exit_3_before_any_training(home, release, monkeypatch, capsys,
                                                                                  tmp_path):
    from tas_lite import distill, teachers

    def offline(self):
        raise OFFLINE

    monkeypatch.setattr(FashionMNIST, "download", offline)
    monkeypatch.setattr(teachers, "from_settings", lambda *a, **k: pytest.fail("no teacher may train"))
    monkeypatch.setattr(distill, "fit", lambda *a, **k: pytest.fail("nothing may train"))
    assert main(["train", "--profile", "cpu", "--method", "kd", "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Fashion-MNIST") and "apt-get install" in err, err
    assert not list((tmp_path / "out").glob("*.json"))


def test_the_real_set_is_zalandos_release():
    """Read where this machine has it: the cache, or Debian's package (decompressed into the cache)."""
    cached = (config.datasets_dir() / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    if not cached and sources.debian_fashion_folder() is None:
        pytest.skip(f"Fashion-MNIST is neither in the cache ({config.datasets_dir()}) nor installed from Debian's "
                    f"package {sources.DEBIAN_PACKAGE} (and this test does not download it)")
    raw = sources.fashion_mnist_raw()
    sizes = {name: (raw / name).stat().st_size for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    assert list(sizes.values()) == [47_040_016, 60_008, 7_840_016, 10_008]
    for split, (n, per_class) in {"train": (60_000, 6_000), "test": (10_000, 1_000)}.items():
        images, labels, classes = sources.fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8 and len(classes) == 10
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
