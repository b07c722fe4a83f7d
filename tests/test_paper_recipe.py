"""The gpu track's recipe: the OFA authors' CIFAR-100 configs per student family, timm's augmentation and
mixup on a fabricated CIFAR-100, every method correct under soft (mixup) targets, and the --paper protocol.
The cpu profile's course recipe stays exactly as it was."""

import json
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from tas_lite import config, data, distill, experiments, methods, models, profiles, results
from tas_lite.recipes import Recipe
from tas_lite.results import BEST_ON_TEST, BEST_ON_VALIDATION, Result


def _cifar100(root, n_train=8, n_test=4):
    """A CIFAR-100 folder in the official python layout, random pixels."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        (base / name).write_bytes(pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                                "fine_labels": rng.integers(0, 100, n).tolist()}))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))


def test_paper_recipe_is_the_authors_per_student_family():
    cnn = Recipe.paper(models.create("tiny_resnet", num_classes=100), 300)
    assert (cnn.optimizer, cnn.lr, cnn.momentum, cnn.weight_decay, cnn.warmup_epochs, cnn.warmup_lr, cnn.min_lr,
            cnn.label_smoothing, cnn.clip_grad) == ("sgd", 0.05, 0.9, 2e-3, 3, 1e-4, 1e-3, 0.1, None)
    assert cnn.augment == data.PAPER_CNN and not cnn.augment.mixes and cnn.augment.color_jitter == 0
    vit = Recipe.paper(models.create("tiny_vit", num_classes=100), 300)
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.warmup_epochs, vit.warmup_lr, vit.min_lr, vit.clip_grad,
            vit.label_smoothing) == ("adamw", 5e-4, 0.05, 20, 5e-7, 1e-5, 5.0, 0.1)
    a = vit.augment
    assert (a.color_jitter, a.auto_augment, a.re_prob, a.mixup, a.cutmix) == (0.4, "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0)
    assert Recipe.paper(models.create("tiny_mixer", num_classes=100), 300).augment == data.PAPER_TOKEN
    scaled = Recipe.paper(models.create("tiny_vit", num_classes=100), 30, batch_size=512)
    assert scaled.lr == pytest.approx(2e-3) and scaled.min_lr == pytest.approx(4e-5) and scaled.warmup_epochs == 2
    # warm-up starts at warmup_lr and reaches lr after the warm-up epochs, then cosine to min_lr
    lrs = [vit.lr_at(step, 10, 300) for step in (0, 100, 200, 2999, 3000)]
    assert lrs[0] == pytest.approx(5e-7) and lrs[2] == pytest.approx(5e-4) and lrs[4] == pytest.approx(1e-5)
    assert lrs[0] < lrs[1] < lrs[2] and lrs[3] > lrs[4]


def test_course_recipe_and_its_fingerprint_are_unchanged():
    """The course recipe keeps its values, and a fingerprint with no paper-track keys, on Fashion-MNIST (the
    cpu profile) and on digits (where the shipped results were made)."""
    vit, resnet = models.create("tiny_vit", num_classes=10), models.create("tiny_resnet", num_classes=10)
    assert Recipe.choose("course", vit, 40, 32) == Recipe.for_student(vit, 40)
    assert Recipe.for_student(resnet, 40).as_dict() == {
        "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "warmup_epochs": 0.4, "min_lr": 1e-3, "momentum": 0.9,
        "label_smoothing": 0.1, "clip_grad": None}
    assert Recipe.for_student(vit, 40).lr_at(0, 10, 40) == pytest.approx(1e-3 / 26)
    cpu, gpu = profiles.resolve("cpu"), profiles.resolve("gpu")
    assert (cpu.recipe, cpu.paper, gpu.recipe, gpu.paper) == ("course", False, "paper", False)
    for settings, augmentation in ((cpu, "CropFlipBatch("), (profiles.resolve("cpu", dataset="digits"),
                                                               "RandomAffineBatch(")):
        spec = experiments.expected_fingerprint("kd", "tiny_convnext", "tiny_vit", settings)
        assert "paper" not in spec and set(spec["recipe"]) == {"optimizer", "lr", "weight_decay", "warmup_epochs",
                                                               "min_lr", "momentum", "label_smoothing", "clip_grad"}
        assert spec["augmentation"].startswith(augmentation) and spec["dataset"] == settings.dataset


def test_timm_pipeline_on_a_fabricated_cifar100(tmp_path):
    _cifar100(tmp_path)
    train, val, test = data.loaders("cifar100", root=tmp_path, batch_size=4, img_size=32, val_fraction=0.25,
                                    policy=data.PAPER_TOKEN, num_workers=0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 100)  # mixup/cutmix: soft targets
    assert torch.allclose(y.sum(1), torch.ones(4)) and y.min() >= 0.1 / 100 - 1e-7  # smoothing inside the targets
    train_tf, eval_tf = repr(train.dataset.dataset.transform), repr(test.dataset.transform)
    assert all(k in train_tf for k in ("RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "RandomErasing"))
    assert "ColorJitter" not in train_tf  # timm skips the configured jitter while RandAugment is on, as for the authors
    assert "CenterCrop" in eval_tf and "RandAugment" not in eval_tf and "CenterCrop" in repr(val.dataset.dataset.transform)
    assert next(iter(test))[0].shape == (4, 3, 32, 32)
    cnn_train, _, _ = data.loaders("cifar100", root=tmp_path, batch_size=4, img_size=32, val_fraction=0.25,
                                   policy=data.PAPER_CNN, num_workers=0)
    _, labels = next(iter(cnn_train))
    assert labels.shape == (4,) and labels.dtype == torch.long  # CNN students: no mixup, integer labels
    assert "RandAugment" not in repr(cnn_train.dataset.dataset.transform)
    assert "mixup=0.8" in data.describe_augmentation("cifar100", 224, data.PAPER_TOKEN)


def _pair():
    config.seed_everything(0)
    return models.create("tiny_convnext", num_classes=10).eval(), models.create("tiny_vit", num_classes=10)


@pytest.mark.parametrize("method", ["kd", "ofa", "tas", "dkd", "baseline"])
def test_methods_are_correct_under_soft_targets(method):
    """One-hot soft targets give exactly what the integer labels give (no smoothing), and mixup's targets
    give finite losses whose label term is timm's SoftTargetCrossEntropy, with finite gradients."""
    teacher, student = _pair()
    impl = methods.build(method, teacher if method != "baseline" else None, student, label_smoothing=0.0)
    impl.train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    hard, soft = impl(x, y), impl(x, F.one_hot(y, 10).float())
    assert hard.terms.keys() == soft.terms.keys()
    for name in hard.terms:
        assert torch.allclose(hard.terms[name], soft.terms[name], atol=1e-6), name
    mixed_x, mixed_y = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)(x.clone(), y)
    out = impl(mixed_x, mixed_y)
    assert torch.isfinite(out.loss)
    ce = out.terms["ce_s" if method == "tas" else "ce"]
    assert torch.allclose(ce, SoftTargetCrossEntropy()(out.logits, mixed_y), atol=1e-6)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in impl.trainable_parameters() if p.grad is not None)


def _validation_named(value, path=""):
    """Every (path, value) in a JSON document whose key names the validation split ("val_acc",
    "final_val_acc", "assistant_val_acc", "val_images", ...)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if re.search(r"(^|_)val(_|$)", key):
                yield f"{path}{key}", item
            yield from _validation_named(item, f"{path}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _validation_named(item, f"{path}{i}.")


def test_paper_protocol_trains_on_everything_and_reports_the_best_test_epoch(tmp_path, monkeypatch):
    """--paper: all training images train, the test set scores every epoch and picks the reported one, and
    the record says so: its history names the split it scored (test_acc, assistant_test_acc), the selection
    is the paper's way, and no field named for validation holds anything."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    _cifar100(config.datasets_dir(), n_train=10, n_test=4)
    seen = {}
    real_fit = distill.fit

    def spy(method, train, val=None, **kwargs):
        seen.update(train=len(train.dataset), val=val, test=kwargs["test"])
        return real_fit(method, train, val, **kwargs)

    monkeypatch.setattr(distill, "fit", spy)
    common = dict(student="tiny_vit", img_size=32, epochs=2, max_steps=1, batch_size=4, device="cpu", amp=False,
                  pretrained=False, teacher_epochs=1, teacher_max_steps=1, teacher_batch_size=4)
    paper = profiles.resolve("gpu", paper=True, **common)
    result = experiments.train("tas", "tiny_convnext", "tiny_vit", paper, out_dir=tmp_path, progress=False)
    assert seen["train"] == 10 and seen["val"] is None and seen["test"] is not None  # all training images
    assert result.selection == BEST_ON_TEST and result.fingerprint["paper"]
    assert result.selected_test_acc == max(row["test_acc"] for row in result.history)
    assert result.history[result.selected_epoch - 1]["test_acc"] == result.selected_test_acc
    assert all("test_acc" in row and "assistant_test_acc" in row for row in result.history)
    assert result.final_val_acc is None and result.setup.val_images is None and result.setup.test_images == 4
    assert "the way the paper reports" in experiments.summary(result)
    path = tmp_path / results.file_name("tiny_convnext", "tiny_vit", "tas", 0)
    loaded = Result.load(path)  # (that the whole record round-trips is tests/test_results.py's business)
    assert (loaded.history, loaded.selection, loaded.selected_epoch, loaded.selected_test_acc, loaded.final_test_acc,
            loaded.final_val_acc, loaded.setup.val_images) == (result.history, BEST_ON_TEST, result.selected_epoch,
                                                               result.selected_test_acc, result.final_test_acc, None, None)
    named = dict(_validation_named(json.loads(path.read_text())))
    assert named and all(value is None for value in named.values()), named  # the only val-named fields: empty

    result = experiments.train("baseline", None, "tiny_vit", profiles.resolve("gpu", **common), progress=False)
    assert seen["train"] == 9 and seen["val"] is not None and seen["test"] is not None
    assert result.selection == BEST_ON_VALIDATION and result.final_val_acc == result.history[-1]["val_acc"]
    assert all("test_acc" not in row for row in result.history)
    assert result.setup.val_images == 1 and "paper" not in result.fingerprint
    assert "best on validation" in experiments.summary(result) and result.setup.recipe["optimizer"] == "adamw"
