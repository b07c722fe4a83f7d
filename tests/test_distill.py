import dataclasses
import inspect
import json

import pytest
import torch

from tas_lite import catalog, config, data, distill, experiments, loop, methods, models, profiles, recipes
from tas_lite import results, teachers
from tas_lite.results import Result
from tas_lite.util import CorruptFile


def synthetic_loaders(n=64, batch=16, seed=0):
    return data.loaders("synthetic", batch_size=batch, num_samples=n, seed=seed, val_fraction=0.25)


def pair(teacher="tiny_resnet", student="tiny_mixer", seed=0):
    config.seed_everything(seed)
    return models.create(teacher, num_classes=10).eval(), models.create(student, num_classes=10)


def built(method, teacher, student, seed=0, **kwargs):
    """The method built as experiments.train builds it: seeded first, so its new modules start alike."""
    config.seed_everything(seed)
    return methods.build(method, teacher if method != "baseline" else None, student, **kwargs)


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_each_method_reduces_its_loss_on_a_repeated_batch(method):
    teacher, student = pair("tiny_resnet", "tiny_vit")
    impl = methods.build(method, teacher if method != "baseline" else None, student, img_size=32)
    x, y = next(iter(synthetic_loaders()[0]))
    opt = torch.optim.AdamW(impl.trainable_parameters(), lr=1e-3)
    impl.train()
    losses = []
    for _ in range(4):
        out = impl(x, y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses
    assert out.logits.shape == (16, 10) and all(torch.isfinite(v) for v in out.terms.values())


def test_tas_with_a_cnn_student_trains_two_steps_through_fit():
    teacher, student = pair("tiny_swin", "tiny_mobilenetv2")
    train, val, test = synthetic_loaders()
    result = distill.fit(built("tas", teacher, student), train, val, test=test, epochs=1, max_steps=2, progress=False)
    row = result.history[0]
    assert {"loss/nce_ts", "loss/ofa_as", "loss/ce_a", "assistant_val_acc"} <= set(row)
    assert "assistant" in result.extra_test_acc
    assert all(p.grad is None for p in student.parameters()), "a trained model keeps no stale gradients"


def test_teacher_stays_frozen_and_unchanged():
    teacher, student = pair("tiny_convnext", "tiny_vit")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    train, val, _ = synthetic_loaders()
    distill.fit(built("tas", teacher, student), train, val, epochs=1, max_steps=2, progress=False)
    assert not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["tas", "dkd"])
def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch, method):
    train, val, _ = synthetic_loaders()
    teacher, student = pair("tiny_convnext", "tiny_vit")
    distill.fit(built(method, teacher, student), train, val, epochs=2, max_steps=2, progress=False,
                checkpoint_dir=tmp_path / "full")
    expected = _weights(student)

    train, val, _ = synthetic_loaders()
    teacher, student = pair("tiny_convnext", "tiny_vit")
    calls = {"n": 0}
    real_progress = loop.progress_bar

    def interrupt_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_progress(*args, **kwargs)

    monkeypatch.setattr(loop, "progress_bar", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        distill.fit(built(method, teacher, student), train, val, epochs=2, max_steps=2, progress=False,
                    checkpoint_dir=tmp_path / "cut")
    monkeypatch.setattr(loop, "progress_bar", real_progress)

    train, val, _ = synthetic_loaders()  # a fresh process would rebuild everything
    teacher, _ = pair("tiny_convnext", "tiny_vit")  # the same fixed teacher
    _, student = pair("tiny_convnext", "tiny_vit", seed=123)  # a different student init: resume must overwrite it
    resumed = built(method, teacher, student, seed=123)  # its new modules too: resume must overwrite them
    result = distill.fit(resumed, train, val, epochs=2, max_steps=2, progress=False,
                         checkpoint_dir=tmp_path / "cut", resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]
    got = _weights(student)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_non_finite_loss_stops_with_epoch_step_and_term(tmp_path, monkeypatch):
    teacher, student = pair("tiny_resnet", "tiny_mixer")
    train, val, _ = synthetic_loaders()
    real_forward = student.forward
    seen = {"n": 0}

    def poisoned(x):
        seen["n"] += 1
        out = real_forward(x)
        return out * float("nan") if seen["n"] == 4 else out  # 2 train steps + 1 val pass, then NaN

    monkeypatch.setattr(student, "forward", poisoned)
    with pytest.raises(distill.NonFiniteLoss, match=r"epoch 2, step 1: term 'ce'.*epoch 1\) is intact"):
        distill.fit(built("kd", teacher, student), train, val, epochs=2, max_steps=2, progress=False,
                    checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_results_json_round_trips(tmp_path):
    teacher, student = pair()
    train, val, test = synthetic_loaders()
    result = distill.fit(built("kd", teacher, student), train, val, test=test, epochs=1, max_steps=1, progress=False)
    path = result.save(tmp_path / "r.json")
    assert Result.load(path) == result
    saved = json.loads(path.read_text())
    assert saved["setup"]["method"] == "kd" and saved["setup"]["method_arguments"] == {"temperature": 1.0, "weight": 1.0}
    assert (saved["setup"]["dataset"], saved["setup"]["train_images"], saved["setup"]["val_images"],
            saved["setup"]["test_images"]) == ("synthetic", len(train.dataset), len(val.dataset), len(test.dataset))
    assert saved["selection"] == results.BEST_ON_VALIDATION and saved["selected_epoch"] == 1
    path.write_text(json.dumps({"setup": saved["setup"], "bogus": 1}))
    with pytest.raises(CorruptFile, match=rf"{path} is not a complete tas_lite Result \(unknown fields \['bogus'\]"):
        Result.load(path)


def test_clear_errors_for_bad_calls(tmp_path):
    teacher, student = pair()
    with pytest.raises(ValueError, match=r"unknown method 'crd' in 'crd'; allowed: baseline, kd"):
        methods.build("crd", teacher, student)
    with pytest.raises(ValueError, match="teacher predicts 5 classes but the student 10"):
        methods.build("kd", models.create("tiny_resnet", num_classes=5), student)
    with pytest.raises(ValueError, match="needs a teacher"):
        methods.build("ofa", None, student)
    with pytest.raises(ValueError, match="does not exist"):
        teachers.prepare("tiny_resnet", checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="bad arguments for method 'kd'"):
        methods.build("kd", teacher, student, gamma=2)


def test_fit_takes_a_built_method_loaders_and_options_and_nothing_else():
    """fit trains: at most 8 parameters, a built method (a name is refused, saying how to build one), options
    by name (an unknown one is refused, listing them), and a recipe that smooths labels as the method does."""
    assert len(inspect.signature(distill.fit).parameters) <= 8
    teacher, student = pair("tiny_convnext", "tiny_vit")
    train, val, test = synthetic_loaders()
    with pytest.raises(ValueError, match=r"fit trains a built method, got 'kd'; build one with methods.build"):
        distill.fit("kd", train, val, epochs=1)
    kd = built("kd", teacher, student)
    with pytest.raises(ValueError, match=r"unknown fit option\(s\) \['method_kwargs', 'sync_bn'\]; options: epochs, "
                                         r"recipe, seed, selection"):
        distill.fit(kd, train, val, epochs=1, method_kwargs={"temperature": 4.0}, sync_bn=True)
    with pytest.raises(ValueError, match="fit needs epochs="):
        distill.fit(kd, train, val)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        distill.fit(kd, train, val, options=distill.Options(epochs=0))
    plain = recipes.Recipe.for_student(student, 1)
    unsmoothed = dataclasses.replace(plain, label_smoothing=0.0)
    with pytest.raises(ValueError, match=r"built with label_smoothing=0.1 but the recipe smooths by 0.0; build it "
                                         r"with methods.build\(..., label_smoothing=0.0\)"):
        distill.fit(kd, train, val, epochs=1, recipe=unsmoothed, progress=False)
    with pytest.raises(ValueError, match="unknown selection 'best'"):
        distill.fit(kd, train, val, epochs=1, selection="best")
    with pytest.raises(ValueError, match="pass test= and no val="):
        distill.fit(kd, train, val, test=test, epochs=1, selection=results.BEST_ON_TEST)
    with pytest.raises(ValueError, match="fit needs a val= loader"):
        distill.fit(kd, train, epochs=1)
    options = distill.Options(epochs=1, max_steps=1, progress=False)
    result = distill.fit(kd, train, val, test=test, options=options, seed=3)  # changes apply over the options
    assert (result.setup.seed, result.setup.max_steps, result.setup.epochs) == (3, 1, 1)
    assert options.seed == 0, "options are frozen: a change makes a copy"


def test_recipe_warms_up_then_decays_to_min_lr():
    recipe = recipes.Recipe("adamw", 1e-3, 0.05, warmup_epochs=1, min_lr=1e-5)
    lrs = [recipe.lr_at(step, 10, 5) for step in range(50)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and 1e-5 < lrs[-1] < 2e-5
    assert recipe.lr_at(50, 10, 5) == pytest.approx(1e-5)
    assert recipes.Recipe.for_student(models.create("tiny_resnet", num_classes=10), 10).optimizer == "sgd"
    assert recipes.Recipe.for_student(models.create("tiny_vit", num_classes=10), 10).optimizer == "adamw"


def test_gpu_profile_runs_end_to_end_offline_on_synthetic_data(tmp_path, monkeypatch):
    """The gpu profile's code path (timm paper pair, 'pretrained' switched off, synthetic data in place of
    CIFAR-100) at a small size; on a CUDA machine the same call with device='cuda' uses AMP."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    settings = profiles.resolve("gpu", dataset="synthetic", pretrained=False, epochs=1, max_steps=2, teacher_epochs=1,
                                teacher_max_steps=2, batch_size=8, teacher_batch_size=8, img_size=64,
                                device="cpu", amp=False)
    result = experiments.train("tas", "convnext_tiny", "deit_tiny_patch16_224", settings, out_dir=tmp_path,
                             progress=False)
    assert result.setup.profile == "gpu" and result.setup.img_size == 64 and result.setup.dataset == "synthetic"
    assert result.teacher == "convnext_tiny" and result.selection == results.BEST_ON_VALIDATION
    assert (tmp_path / results.file_name("convnext_tiny", "deit_tiny_patch16_224", "tas", 0)).is_file()
    assert "assistant" in result.extra_test_acc


def test_fit_takes_a_prebuilt_method_and_hands_back_the_trained_assistant():
    """The README's way: build the method, fit it, read the assistant off it; nothing passed twice."""
    teacher, student = pair("tiny_convnext", "tiny_vit")
    requires = [p.requires_grad for p in teacher.parameters()]
    tas = methods.build("tas", teacher, student)
    l2g_before = {k: v.clone() for k, v in tas.assistant.l2g.state_dict().items()}
    train, val, test = synthetic_loaders()
    result = distill.fit(tas, train=train, val=val, test=test, epochs=1, max_steps=2, progress=False)
    assert result.method == "tas" and "assistant" in result.extra_test_acc
    assert result.teacher == "tiny_convnext" and result.student == "tiny_vit"
    changed = [k for k, v in tas.assistant.l2g.state_dict().items() if not torch.equal(v, l2g_before[k])]
    assert changed, "the assistant's L2G trained along with the student"
    assert [p.requires_grad for p in teacher.parameters()] == requires, "fit must not freeze the caller's teacher"


def test_bench_times_the_same_train_step_as_fit(monkeypatch):
    """bench's step is loop.train_step, fit's: counting its calls catches a bench that re-implements the step."""
    from tas_lite import steptimes

    calls = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    steptimes.step_times(["kd"], "tiny_resnet", "tiny_vit", img_size=32, batch_size=4, repeats=2, warmup=1)
    assert len(calls) == 3


def test_ofa_defaults_are_the_authors_and_match_their_parameter_counts():
    """Branches after stages 1-4 plus the final logits; the added parameters equal those measured on the
    authors' code (Hao840/OFAKD) at 224 px, 100 classes: 1.19M for ViT-S -> ResNet18, 3.78M for
    ConvNeXt-T -> DeiT-T."""
    for (t, s), expected in {("vit_small_patch16_224", "resnet18"): 1.19,
                             ("convnext_tiny", "deit_tiny_patch16_224"): 3.78}.items():
        ofa = methods.build("ofa", models.create(t, num_classes=100), models.create(s, num_classes=100))
        assert ofa.branch_stages == (1, 2, 3, 4)
        assert round(models.count_parameters(ofa) / 1e6, 2) == expected
        if s.startswith("deit"):
            assert [len(b.blocks) for b in ofa.branches] == [3, 2, 1, 1]  # the authors' ViT branch depths
    teacher, student = pair("tiny_convnext", "tiny_vit")
    light = methods.build("ofa:s123", teacher, student)
    assert light.branch_stages == (1, 2, 3) and light.spec == "ofa:s123"
    out = light(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(out.terms) == {"ce", "ofa_logits", "ofa1", "ofa2", "ofa3"}


def test_kd_temperature_is_the_authors_and_t4_is_a_variant():
    teacher, student = pair()
    assert methods.build("kd", teacher, student).temperature == 1.0
    assert methods.build("kd:t4", teacher, student).temperature == 4.0


@pytest.mark.parametrize("spec, match", [
    ("tas:nonce", r"'tas' has no variant 'nonce'.*tas:no_nce"),
    ("tas:masked", r"'tas' has no variant 'masked'.*tas:paper"),
    ("kd:no_nce", r"'kd' has no variant 'no_nce'.*its variants: kd:t4"),
    ("baseline:no_nce", r"its variants: none"),
    ("crd", r"unknown method 'crd'.*allowed: baseline"),
    ("tas:", r"has no variant ''"),
])
def test_unknown_variants_are_rejected_with_the_allowed_list(spec, match):
    with pytest.raises(ValueError, match=match):
        catalog.check(["kd", spec])


def test_variants_change_what_they_say():
    teacher, student = pair("tiny_convnext", "tiny_vit")
    no_ta = methods.build("tas:no_ta", teacher, student)
    assert no_ta.criterion.weights["nce_ta"] == no_ta.criterion.weights["ofa_ta"] == 0.0
    assert no_ta.criterion.weights["nce_ts"] == 1.0
    both = methods.build("tas:no_nce+no_ofa", teacher, student)
    assert all(w == 0.0 for k, w in both.criterion.weights.items() if not k.startswith("ce"))
    assert methods.build("tas:no_l2g_attn", teacher, student).l2g.attn is None
    assert methods.build("tas", teacher, student).criterion.negatives == "masked"  # chosen on validation
    assert methods.build("tas:paper", teacher, student).criterion.negatives == "all"  # the paper's reading


def test_tas_warm_up_ramps_the_assistant_terms_over_epochs():
    teacher, student = pair("tiny_convnext", "tiny_vit")
    tas = methods.build("tas", teacher, student, warmup_epochs=2.0)
    ramps = []
    for step in (0, 10, 20, 40, 80):
        tas.on_step(step, steps_per_epoch=20)
        ramps.append(tas.ramp(tas.warmup_epochs))
    assert ramps == [0.0, 0.25, 0.5, 1.0, 1.0]
    plain = methods.build("tas", teacher, student)
    assert plain.ramp(plain.warmup_epochs) == 1.0


def test_registry_follows_the_catalog_and_refuses_unregistered_methods():
    assert list(methods.METHODS) == list(catalog.NAMES)
    assert all(cls.name == name for name, cls in methods.METHODS.items())

    class Mine(methods.KD):  # a subclass nobody registered: a clear error, not a StopIteration
        pass

    teacher, student = pair("tiny_convnext", "tiny_vit")
    with pytest.raises(ValueError, match=r"Mine is not a registered method; decorate it with @methods.register"):
        Mine(teacher, student, img_size=32)
    with pytest.raises(ValueError, match="not in catalog.NAMES"):
        methods.register("mine")(Mine)


def test_tas_history_carries_the_bridge_measurements():
    teacher, student = pair("tiny_convnext", "tiny_vit")
    train, val, _ = synthetic_loaders()
    result = distill.fit(built("tas", teacher, student), train, val, epochs=1, max_steps=1, progress=False)
    row = result.history[0]
    assert {"cka/t~a", "cka/a~s", "cka/t~s", "cka/t~s/stage1", "cka/t~s/stage4"} <= set(row)
    assert all(-1.0 <= row[k] <= 1.0 + 1e-9 for k in row if k.startswith("cka/"))
