"""One configuration, one result: the same configuration (smoke profile, tiny_convnext -> tiny_vit, seed 0, one
thread) trains bitwise the same run through the command line's `train`, through `experiments.sweep` and
through the library by hand; a baseline records no teacher whatever teacher the command names; a progress
bar changes nothing that trains."""

import contextlib
import dataclasses
import io
import os
from pathlib import Path

import pytest
import torch

from tas_lite import config, data, distill, experiments, methods, models, profiles, results, teachers
from tas_lite.__main__ import main
from tas_lite.recipes import Recipe

TEACHER, STUDENT, SEED, EPOCHS = "tiny_convnext", "tiny_vit", 0, 2
METHODS = ("baseline", "kd")
TIMINGS = ("images_per_s", "wall_s")  # measured, not trained: they differ from run to run


def numbers(result: results.Result) -> dict:
    """Everything a run trained to: every history row but its timings, and every accuracy."""
    history = [{k: v for k, v in row.items() if k not in TIMINGS} for row in result.history]
    return {"history": history, "final_test_acc": result.final_test_acc, "final_val_acc": result.final_val_acc,
            "selected_epoch": result.selected_epoch, "selected_test_acc": result.selected_test_acc,
            "extra_test_acc": result.extra_test_acc}


def by_hand(method: str, settings: profiles.Settings, *, progress: bool = False) -> results.Result:
    """The library by hand, in `experiments.train`'s order, loading the teacher even for the baseline
    (which does not use it): seeded, the student, the data, the teacher, seeded again, the method, fit."""
    config.seed_everything(SEED)
    student = models.create(STUDENT, num_classes=data.num_classes(settings.dataset), img_size=settings.img_size)
    recipe = Recipe.choose(settings.recipe, student, settings.epochs, settings.batch_size)
    train, val, test = data.loaders(settings.dataset, batch_size=settings.batch_size, img_size=settings.img_size,
                                    seed=SEED)
    teacher = teachers.from_settings(TEACHER, settings, progress=False)
    config.seed_everything(SEED)
    impl = methods.build(method, teacher if method != "baseline" else None, student, img_size=settings.img_size,
                         label_smoothing=recipe.label_smoothing)
    return distill.fit(impl, train, val, test=test, epochs=settings.epochs, recipe=recipe, seed=SEED,
                       max_steps=settings.max_steps, device=settings.device, amp=settings.amp, progress=progress)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run once, at one thread, with a private model cache: {(entry point, method): Result or None}."""
    root = tmp_path_factory.mktemp("one_configuration")
    saved_home, saved_threads = os.environ.get("TAS_LITE_HOME"), torch.get_num_threads()
    os.environ["TAS_LITE_HOME"] = str(root / "home")
    torch.set_num_threads(1)
    settings = profiles.resolve("smoke", epochs=EPOCHS)
    out = {"train_dir": root / "train", "printed": {}, "codes": {}}
    try:
        for method in METHODS:
            argv = ["train", "--profile", "smoke", "--epochs", str(EPOCHS), "--teacher", TEACHER, "--student", STUDENT,
                    "--method", method, "--seed", str(SEED), "--out", str(root / "train")]
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                out["codes"][method] = (main(argv), stderr.getvalue())
            out["printed"][method] = stdout.getvalue()
        experiments.sweep(settings, [TEACHER], [STUDENT], list(METHODS), [SEED], out_dir=root / "sweep", workers=1,
                          progress=False)
        for method in METHODS:
            teacher = TEACHER if method != "baseline" else None
            name = results.file_name(teacher, STUDENT, method, SEED)
            out[("train", method)] = results.Result.load(root / "train" / name) \
                if (root / "train" / name).is_file() else None
            out[("sweep", method)] = results.Result.load(root / "sweep" / name)
            out[("hand", method)] = by_hand(method, settings)
        out[("hand with a progress bar", "kd")] = by_hand("kd", settings, progress=True)
    finally:
        torch.set_num_threads(saved_threads)
        if saved_home is None:
            os.environ.pop("TAS_LITE_HOME")
        else:
            os.environ["TAS_LITE_HOME"] = saved_home
    return out


@pytest.mark.parametrize("method", METHODS)
def test_sweep_and_the_library_by_hand_give_bitwise_the_same_run(runs, method):
    sweep, hand = runs[("sweep", method)], runs[("hand", method)]
    assert numbers(hand) == numbers(sweep), "the library by hand trained another run than sweep"
    assert hand.setup == dataclasses.replace(sweep.setup, profile=None)  # by hand: no profile was resolved
    assert len(sweep.history) == EPOCHS and all(row["loss/ce"] > 0 for row in sweep.history)


@pytest.mark.parametrize("method", METHODS)
def test_the_command_lines_train_gives_bitwise_the_sweeps_run(runs, method):
    assert runs["codes"][method][0] == 0, runs["codes"][method][1]
    train, sweep = runs[("train", method)], runs[("sweep", method)]
    assert train is not None, f"the command line's train wrote no results JSON for {method}"
    assert numbers(train) == numbers(sweep), "train and sweep trained different runs"
    assert train.fingerprint == sweep.fingerprint and train.setup == sweep.setup


def test_a_baseline_trained_with_a_named_teacher_records_no_teacher(runs):
    """`train --method baseline --teacher tiny_convnext`: the baseline uses no teacher, so it records none and
    is filed, and announced, as the sweep's baseline is."""
    assert runs["codes"]["baseline"][0] == 0, runs["codes"]["baseline"][1]
    baseline = runs[("train", "baseline")]
    assert baseline is not None and baseline.teacher is None and baseline.teacher_info == {}
    assert "teacher" not in baseline.fingerprint
    written = sorted(p.name for p in runs["train_dir"].glob(results.PATTERN))
    assert written == [results.file_name(None, STUDENT, "baseline", SEED), results.file_name(TEACHER, STUDENT, "kd", SEED)]
    saved = [line.split(" ", 1)[1] for line in runs["printed"]["baseline"].splitlines() if line.startswith("saved ")]
    assert saved and Path(saved[0]).is_file(), f"announced {saved}, wrote {written}"


def test_a_progress_bar_changes_nothing_that_trains(runs):
    assert numbers(runs[("hand with a progress bar", "kd")]) == numbers(runs[("hand", "kd")])
