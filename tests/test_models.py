import pytest
import timm
import torch

from tas_lite import config, models, profiles, teachers

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
    ({"name": "tiny_vit", "num_classes": 10, "img_size": 4}, "img_size must be an int >= 8"),
    ({"name": "tiny_vit", "num_classes": 10, "img_size": 36}, "divisible by 8"),
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
    """timm's own options pass through: ImageNet-style weights from a file with a new head, or exact weights."""
    from safetensors.torch import save_file

    source = models.create("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    loaded = models.create("resnet18", num_classes=10, pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet18.safetensors")))
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert loaded.fc.out_features == 10  # classifier re-initialised for the new class count
    exact = models.create("resnet18", num_classes=1000, checkpoint_path=str(tmp_path / "resnet18.safetensors"))
    assert torch.equal(exact.fc.weight, source.fc.weight)


def test_trained_caches_and_reloads_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path))
    first = teachers.trained("tiny_resnet", "digits", epochs=1, progress=False)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert any(f.endswith(".safetensors") for f in files) and any(f.endswith(".json") for f in files)
    assert first.tas_lite_info["test_acc"] > 10 and not first.training

    monkeypatch.setattr(teachers.distill, "fit", lambda *a, **k: pytest.fail("trained() retrained despite the cache"))
    again = teachers.trained("tiny_resnet", "digits", epochs=1, progress=False)
    a, b = first.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.tas_lite_info["test_acc"] == first.tas_lite_info["test_acc"]


def test_trained_weights_depend_on_the_seed_only(tmp_path, monkeypatch):
    """Two caches, different random draws before each call: the same seed must train the same model."""
    states = []
    for home, draws in (("a", 1), ("b", 1000)):
        monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / home))
        torch.randn(draws)  # whatever ran earlier in the session consumed the global RNG
        states.append(teachers.trained("tiny_mixer", "digits", epochs=1, max_steps=4, progress=False).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_trained_takes_the_cpu_profiles_teacher_recipe_when_called(tmp_path, monkeypatch):
    """Knobs left at None are the cpu profile's teacher recipe for the dataset, read at each call (never a
    default frozen at import); the dataset left at None is the cpu profile's."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path))
    specs = []

    def record(model, spec, seed, **kwargs):  # what _train hands back, without training
        specs.append(spec)
        return {"recipe": spec, "seed": seed, "test_acc": 0.0}

    monkeypatch.setattr(teachers, "_train", record)
    monkeypatch.setattr(teachers, "shipped_dir", lambda: tmp_path / "no_shipped_teachers")
    cpu = profiles.resolve("cpu")
    teachers.trained("tiny_resnet", progress=False)
    assert (specs[-1]["dataset"], specs[-1]["epochs"], specs[-1]["batch_size"]) == (
        cpu.dataset, cpu.teacher_epochs, cpu.teacher_batch_size)
    teachers.trained("tiny_resnet", "digits", progress=False)
    assert (specs[-1]["dataset"], specs[-1]["epochs"]) == ("digits", profiles.resolve("cpu", dataset="digits").teacher_epochs)
    monkeypatch.setitem(profiles.PROFILES["cpu"], "teacher_epochs", 3)
    teachers.trained("tiny_resnet", progress=False)
    assert specs[-1]["epochs"] == 3 and len(specs) == 3


@pytest.mark.parametrize("name", list(models.TINY))
def test_stage_view_parts_add_up_to_the_model(name):
    """Stem, four stages and head own every parameter exactly once: the accounting the assistant relies on."""
    model = models.create(name, num_classes=10)
    sizes = models.stages(model).part_sizes()
    assert sum(sizes.values()) == models.count_parameters(model) and min(sizes.values()) > 0


@pytest.mark.parametrize("name", list(TIMM_224))
def test_timm_stage_view_parts_add_up_to_the_model(name):
    model = models.create(name, num_classes=10)
    assert sum(models.stages(model).part_sizes().values()) == models.count_parameters(model)


INTERMEDIATES = {  # name -> (indices for forward_intermediates, the view's stages they equal)
    "tiny_resnet": [1, 2, 3, 4], "tiny_convnext": [0, 1, 2, 3], "tiny_swin": [0, 1, 2, 3],
    "tiny_vit": [0, 1, 4, 5], "tiny_mixer": [1, 3, 9, 11], "tiny_resmlp": [1, 3, 9, 11],
    "resnet18": [1, 2, 3, 4], "convnext_tiny": [0, 1, 2, 3], "deit_tiny_patch16_224": [1, 3, 9, 11],
}


@pytest.mark.parametrize("name", list(INTERMEDIATES))
def test_stage_view_agrees_with_timm_forward_intermediates(name):
    """Where timm has `forward_intermediates`, its feature maps at our stage ends are our stage outputs."""
    model = models.create(name, num_classes=10).eval()
    view = models.stages(model)
    size = models.input_size(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = [view.nchw(s) for s in view.features(x)]
        theirs = model.forward_intermediates(x, indices=INTERMEDIATES[name], intermediates_only=True)
    assert len(theirs) == 4
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), f"stage {i + 1} differs"


def test_tiny_models_are_in_timms_registry_without_clashes():
    """Registered by import: timm.create_model builds them; no name shadows one of timm's own models."""
    for name in models.TINY:
        assert timm.is_model(name) and timm.create_model(name, num_classes=3).num_classes == 3
        assert timm.models.model_entrypoint(name).__module__ == "tas_lite.models"  # ours, not one of timm's
    assert models.model_name(timm.create_model("tiny_vit")) == "tiny_vit"


def test_img_size_defaults_to_the_models_own():
    deit = models.create("deit_tiny_patch16_224", num_classes=100)
    assert deit.patch_embed.grid_size == (14, 14) and models.input_size(deit) == 224
    assert models.input_size(models.create("tiny_vit", num_classes=10)) == 32
    assert models.create("tiny_vit", num_classes=10, img_size=64).patch_embed.grid_size == (8, 8)
