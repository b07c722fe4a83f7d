import pytest
import torch

from tas_lite import config


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


def test_resolve_fills_only_none():
    cfg = config.resolve("smoke", epochs=None, batch_size=7)
    assert cfg.epochs == config.PROFILES["smoke"]["epochs"] and cfg.batch_size == 7
    with pytest.raises(ValueError, match="unknown knob"):
        config.resolve("smoke", epoch=3)
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        config.resolve("laptop")


def test_profiles_share_one_set_of_knobs():
    keys = {name: set(table) for name, table in config.PROFILES.items()}
    assert keys["smoke"] == keys["cpu"] == keys["gpu"]
