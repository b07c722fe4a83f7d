import pytest
import torch

from tas_lite import config, profiles


def test_home_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "cache"))
    assert config.home() == tmp_path / "cache"
    assert config.checkpoints_dir().parent == tmp_path / "cache"


def test_device_auto_and_errors():
    assert config.device("cpu") == torch.device("cpu")
    assert config.device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, mps"):
        config.device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            config.device("cuda")


def test_seed_everything_repeats_draws():
    config.seed_everything(3)
    a = torch.rand(4)
    config.seed_everything(3)
    assert torch.equal(a, torch.rand(4))
    with pytest.raises(ValueError):
        config.seed_everything(-1)


def test_resolve_fills_only_none_and_freezes():
    s = profiles.resolve("smoke", epochs=None, batch_size=7, methods=["kd", "tas"])
    assert s.epochs == profiles.PROFILES["smoke"]["epochs"] and s.batch_size == 7 and s.profile == "smoke"
    assert s.methods == ("kd", "tas") and isinstance(s.assistant_pairs[0], tuple)
    with pytest.raises(AttributeError):
        s.epochs = 3  # frozen: a resolved profile never changes under a caller
    assert s.replace(epochs=5).epochs == 5 and s.replace(epochs=None).epochs == s.epochs
    with pytest.raises(ValueError, match="unknown knob"):
        profiles.resolve("smoke", epoch=3)
    with pytest.raises(ValueError, match="unknown knob"):
        s.replace(epoch=3)
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        profiles.resolve("laptop")


def test_profiles_share_one_set_of_knobs():
    keys = {name: set(table) for name, table in profiles.PROFILES.items()}
    assert keys["smoke"] == keys["cpu"] == keys["gpu"] == set(profiles.KNOBS)


def test_every_teacher_knob_can_be_overridden():
    s = profiles.resolve("cpu", teacher_epochs=3, teacher_batch_size=16, teacher_max_steps=5)
    assert (s.teacher_epochs, s.teacher_batch_size, s.teacher_max_steps) == (3, 16, 5)
    assert not hasattr(profiles, "DEFAULT"), "profile values are read when called, never frozen at import"


def test_cpu_profile_is_fashion_mnist_and_keeps_its_digits_recipe():
    cpu = profiles.resolve("cpu")
    assert cpu.dataset == "fashion_mnist" and cpu.train_images == profiles.PROFILES["cpu"]["train_images"]
    digits = profiles.resolve("cpu", dataset="digits")
    assert digits.dataset == "digits"
    for knob, value in profiles.DATASET_VALUES["cpu"]["digits"].items():
        assert getattr(digits, knob) == value, knob
    assert digits.train_images is None and digits.teacher_epochs != cpu.teacher_epochs
    assert profiles.resolve("cpu", dataset="digits", epochs=3).epochs == 3  # an explicit override still wins
    assert profiles.resolve("smoke").dataset == "digits"
