import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tas_lite import data, sources


def test_digits_is_embedded_normalised_rgb():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert data.load("digits", "test", img_size=64)[0][0].shape == (3, 64, 64)


def test_digits_test_split_is_fixed_and_disjoint():
    train_idx, test_idx = data.digits_split(1797)
    assert len(set(train_idx.tolist()) & set(test_idx.tolist())) == 0
    assert len(train_idx) + len(test_idx) == 1797
    assert torch.equal(data.digits_split(1797)[1], test_idx)


def test_val_split_seeded_and_disjoint():
    a_train, a_val = data.split_indices(100, 0.2, seed=1)
    b_train, b_val = data.split_indices(100, 0.2, seed=1)
    c_train, c_val = data.split_indices(100, 0.2, seed=2)
    assert a_val == b_val and a_val != c_val
    assert not set(a_train) & set(a_val) and sorted(a_train + a_val) == list(range(100))
    assert len(a_val) == 20


def test_loaders_carve_val_without_augmentation():
    train, val, test = data.loaders("digits", batch_size=32, val_fraction=0.1, seed=0)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
    assert train.drop_last and len(val.dataset) == round(0.1 * 1438)
    assert val.dataset.dataset.batch_transform is None and val.collate_fn is not train.collate_fn
    assert train.dataset.dataset.batch_transform is not None  # training batches are augmented as collated
    v1 = torch.cat([b[0] for b in val])
    v2 = torch.cat([b[0] for b in data.loaders("digits", batch_size=32, seed=0)[1]])
    assert torch.equal(v1, v2)


def test_synthetic_is_seeded():
    a = data.load("synthetic", num_samples=16, seed=3)
    b = data.load("synthetic", num_samples=16, seed=3)
    c = data.load("synthetic", num_samples=16, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name, kwargs, match", [
    ("mnist", {}, "allowed: digits, fashion_mnist, cifar10"),
    ("digits", {"split": "val"}, "allowed: train, test"),
    ("digits", {"img_size": 4}, "img_size"),
    ("imagefolder:", {}, "needs a path"),
])
def test_bad_dataset_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(name, **kwargs)


def _write_cifar10_archive(root, monkeypatch, n_per_batch=4):
    """A small archive in CIFAR-10's layout, registered under its own md5 (loading checks the md5)."""
    rng = np.random.default_rng(0)
    folder = "cifar-10-batches-py"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, obj):
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                       "labels": rng.integers(0, 10, n_per_batch).tolist()})
        add("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    (root / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    url, archive, _, folder = sources.CIFAR_ARCHIVES["cifar10"]
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, "cifar10", (url, archive, hashlib.md5(buf.getvalue()).hexdigest(), folder))


def test_cifar10_reads_a_fabricated_archive(tmp_path, monkeypatch):
    _write_cifar10_archive(tmp_path, monkeypatch)
    train = data.load("cifar10", "train", root=tmp_path)
    test = data.load("cifar10", "test", root=tmp_path, img_size=64)
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "class3"
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert test[0][0].shape == (3, 64, 64)
    assert data.load("cifar10", "train", root=tmp_path, img_size=64)[0][0].shape == (3, 64, 64)


def test_cifar100_layout(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        (base / name).write_bytes(pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                                "fine_labels": rng.integers(0, 100, n).tolist()}))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    assert len(data.load("cifar100", "train", root=tmp_path)) == 6
    assert len(data.load("cifar100", "test", root=tmp_path)) == 3


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(ValueError, match=r"download=True.*digits"):
        data.load("cifar100", root=tmp_path)


def test_cifar_batches_refuse_arbitrary_objects(tmp_path, monkeypatch):
    _write_cifar10_archive(tmp_path, monkeypatch)
    data.load("cifar10", root=tmp_path)  # extracts

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load("cifar10", "test", root=tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(folder / f"{i}.png")
    ds = data.load(f"imagefolder:{tmp_path}", "test", img_size=32)
    assert len(ds) == 4 and ds[0][0].shape == (3, 32, 32) and ds.classes == ["cat", "dog"]
    with pytest.raises(ValueError, match="does not exist"):
        data.load(f"imagefolder:{tmp_path / 'nope'}")


def test_batch_affine_is_identity_at_zero_and_seeded():
    images = data.load("digits", "train", augment=False).images[:8]
    assert torch.equal(data.RandomAffineBatch(0.0, 0.0, 0.0, fill=-1.0)(images), images)
    augment = data.digits_augment(32)
    torch.manual_seed(1)
    a = augment(images)
    torch.manual_seed(1)
    assert torch.equal(a, augment(images)) and not torch.equal(a, images)
    assert a.min() >= -1.0 - 1e-6 and a.max() <= images.max() + 1e-6  # background stays -1, no overshoot
    shifted = data.RandomAffineBatch(0.0, 2.0, 0.0, fill=-1.0)
    torch.manual_seed(2)
    moved = shifted(images)
    assert not torch.equal(moved, images) and torch.allclose(moved.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=0.2)


def test_train_images_draws_an_even_seeded_share_of_every_class_from_the_training_part():
    full_train, val, _ = data.loaders("digits", batch_size=32, seed=1)
    train, val_small, _ = data.loaders("digits", batch_size=32, seed=1, train_images=105)
    chosen = train.dataset.indices
    labels = data.dataset_labels(train.dataset.dataset)
    counts = [sum(labels[i] == c for i in chosen) for c in range(10)]
    assert counts == [11] * 5 + [10] * 5 and len(chosen) == 105
    assert set(chosen) <= set(full_train.dataset.indices)             # drawn from the training part only
    assert val_small.dataset.indices == val.dataset.indices             # validation is not shrunk
    assert chosen == data.loaders("digits", batch_size=32, seed=1, train_images=105)[0].dataset.indices
    assert chosen != data.loaders("digits", batch_size=32, seed=2, train_images=105)[0].dataset.indices


@pytest.mark.parametrize("n, match", [(5, "from 10 .one per class. to"), (5000, "to 1294"), (2.5, "an int")])
def test_train_images_outside_what_the_split_holds_is_an_error(n, match):
    with pytest.raises(ValueError, match=match):
        data.loaders("digits", batch_size=32, seed=0, train_images=n)


def test_train_images_needs_datasets_that_list_their_labels():
    with pytest.raises(ValueError, match="does not list its labels"):
        data.dataset_labels(torch.utils.data.TensorDataset(torch.zeros(4, 3)))
