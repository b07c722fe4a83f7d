import pytest
import torch

from tas_lite import config, models

TIMM_224 = {"resnet18": "cnn", "mobilenetv2_100": "cnn", "convnext_tiny": "cnn", "deit_tiny_patch16_224": "vit",
            "swin_tiny_patch4_window7_224": "swin", "mixer_b16_224": "mlp", "resmlp_12_224": "mlp"}


@pytest.mark.parametrize("name", list(models.TINY))
def test_tiny_stage_view_reproduces_forward(name):
    model = models.create(name, num_classes=10).eval()
    view = models.stages(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = view.features(x)
        assert torch.equal(view.head(feats[-1]), model(x))
    assert len(feats) == 4 and len(view.stages) == 4
    assert models.family(model) == models.tiny_family(name) == view.family
    assert models.count_parameters(model) < 1_500_000
    shapes = view.shapes(32)
    assert [tuple(view.nchw(f).shape[1:]) for f in feats] == shapes
    assert view.pool(feats[-1]).shape == (2, shapes[-1][0] if view.family != "cnn" else view.pool(feats[-1]).shape[1])


@pytest.mark.parametrize("name, fam", TIMM_224.items())
def test_timm_stage_view_reproduces_forward_at_224(name, fam):
    torch.manual_seed(0)
    model = models.create(name, num_classes=100, img_size=224).eval()
    view = models.stages(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(view(x), model(x))
    assert models.family(model) == fam
    grids = [s[1] for s in view.shapes(224)]
    if fam in ("cnn", "swin"):
        assert grids[2] == 14 and grids[3] == 7  # stage 3 at stride 16, stage 4 at stride 32
    else:
        assert grids == [14, 14, 14, 14]


def test_isotropic_split_is_the_papers_for_12_blocks():
    from tas_lite.stages import isotropic_split

    assert isotropic_split(12) == [(0, 2), (2, 4), (4, 10), (10, 12)]
    assert isotropic_split(24) == [(0, 4), (4, 8), (8, 20), (20, 24)]
    assert isotropic_split(6) == [(0, 1), (1, 2), (2, 5), (5, 6)]
    assert all(b > a for a, b in isotropic_split(4))
    with pytest.raises(ValueError, match="at least 4 blocks"):
        isotropic_split(3)


def test_view_shares_modules_with_the_model():
    model = models.create("tiny_mixer", num_classes=10)  # 12 blocks: the paper's split
    view = models.stages(model)
    assert view.stages[2][0] is model.blocks[4] and view.stages[3][-1] is model.blocks[11]
    assert [len(s) for s in view.stages] == [2, 2, 6, 2]


def test_same_seed_same_weights():
    def weights(seed):
        config.seed_everything(seed)
        return models.create("tiny_convnext", num_classes=10).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "tiny_transformer", "num_classes": 10}, "tiny models: tiny_resnet"),
    ({"name": "tiny_vit", "num_classes": 1}, "num_classes must be an int >= 2"),
    ({"name": "tiny_vit", "num_classes": 10, "img_size": 30}, "divisible by 4"),
    ({"name": "tiny_swin", "num_classes": 10, "img_size": 40}, "divisible by 16"),
    ({"name": "vit_small_patch16_224", "num_classes": 10, "img_size": 200}, "cannot be built at img_size=200"),
    ({"name": "tiny_resnet", "num_classes": 10, "pretrained": True}, "no pretrained weights"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.create(**kwargs)


def test_unknown_family_names_what_is_supported():
    with pytest.raises(ValueError, match="supported: timm ResNet"):
        models.family(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="allowed: tiny_resnet"):
        models.tiny_family("resnet18")


def test_pretrained_loads_through_timm_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    source = models.create("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    loaded = models.create("resnet18", num_classes=10, pretrained_file=tmp_path / "resnet18.safetensors")
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert loaded.fc.out_features == 10  # classifier re-initialised for the new class count


def test_trained_caches_and_reloads_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path))
    first = models.trained("tiny_resnet", epochs=1, progress=False)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert any(f.endswith(".safetensors") for f in files) and any(f.endswith(".json") for f in files)
    assert first.tas_lite_info["test_acc"] > 10 and not first.training

    from tas_lite import distill

    monkeypatch.setattr(distill, "fit", lambda *a, **k: pytest.fail("trained() retrained despite the cache"))
    again = models.trained("tiny_resnet", epochs=1, progress=False)
    a, b = first.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.tas_lite_info["test_acc"] == first.tas_lite_info["test_acc"]


def test_trained_weights_depend_on_the_seed_only(tmp_path, monkeypatch):
    """Two caches, different random draws before each call: the same seed must train the same model."""
    states = []
    for home, draws in (("a", 1), ("b", 1000)):
        monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / home))
        torch.randn(draws)  # whatever ran earlier in the session consumed the global RNG
        states.append(models.trained("tiny_mixer", profile="smoke", epochs=1, progress=False).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
