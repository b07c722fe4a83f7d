"""The typed record of a run (`results.Result`, its `Setup`): read back as written, records of the earlier
flat form converted on load (paper-protocol ones renamed to the split they really scored), file names."""

import dataclasses
import fnmatch
import json

import pytest

from tas_lite import config, data, distill, methods, models, results
from tas_lite.recipes import Recipe
from tas_lite.results import BEST_ON_TEST, BEST_ON_VALIDATION, LAST, SELECTIONS, Result, Setup
from tas_lite.util import CorruptFile

RECIPE = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.05, "warmup_epochs": 2.0, "min_lr": 1e-05,
          "momentum": 0.9, "label_smoothing": 0.1, "clip_grad": 5.0}


def flat_record(method="kd", teacher="tiny_convnext", *, paper=False):
    """A record in the flat form of earlier versions (fields at the top, a free `config` dict), as the
    shipped digits results were written; `paper`: one of the paper protocol, whose `val_acc` was test accuracy."""
    history = [{"epoch": e, "loss/ce": 2.0 - e / 10, "train_acc": 10.0 * e, "images_per_s": 150.0, "lr": 1e-3,
                "val_acc": acc, "wall_s": 8.0 * e} for e, acc in ((1, 40.0), (2, 70.0), (3, 60.0))]
    record = {"method": method, "teacher": teacher, "student": "tiny_vit", "seed": 3, "epochs": 3,
              "history": history, "final_val_acc": 60.0, "final_test_acc": 58.5, "best_val_acc": 70.0,
              "best_epoch": 2, "best_val_test_acc": 69.5, "extra_test_acc": {}, "images_per_s": 150.0,
              "wall_s": 24.0,
              "config": {"recipe": RECIPE, "device": "cpu", "amp": "None", "img_size": 32, "channels_last": False,
                         "max_steps": None, "num_classes": 10, "method_kwargs": {}, "profile": "cpu",
                         "dataset": "digits", "batch_size": 32, "val_images": 144, "test_images": 359,
                         "teacher_test_acc": 99.2, "teacher_train_seconds": 315.5,
                         "fingerprint": {"training_version": 1, "dataset": "digits", "epochs": 3,
                                         "method": method, "method_arguments": {"temperature": 1.0, "weight": 1.0}},
                         "provenance": {"git_commit": "a56bc7c", "threads": 1,
                                        "command": "python -m tas_lite sweep --profile cpu"}}}
    if paper:  # the test set scored every epoch under the name val_acc; best_test_acc was the reported number
        record.update(best_test_acc=70.0, best_val_acc=70.0, best_val_test_acc=70.0, final_val_acc=60.0)
        record["config"].update(selection="best test epoch, how the paper reports", val_images=None)
    return record


def write(tmp_path, record, name="old.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


def test_a_flat_record_of_earlier_versions_loads_with_its_fields_in_place(tmp_path):
    r = Result.load(write(tmp_path, flat_record()))
    assert (r.method, r.teacher, r.student, r.seed, r.epochs) == ("kd", "tiny_convnext", "tiny_vit", 3, 3)
    assert r.setup == Setup(method="kd", method_arguments={"temperature": 1.0, "weight": 1.0}, teacher="tiny_convnext",
                            student="tiny_vit", dataset="digits", img_size=32, num_classes=10, train_images=None,
                            val_images=144, test_images=359, batch_size=32, epochs=3, max_steps=None, recipe=RECIPE,
                            seed=3, profile="cpu")
    assert r.selection == BEST_ON_VALIDATION and (r.selected_epoch, r.selected_test_acc) == (2, 69.5)
    assert (r.final_test_acc, r.final_val_acc, r.images_per_s, r.wall_s) == (58.5, 60.0, 150.0, 24.0)
    assert [row["val_acc"] for row in r.history] == [40.0, 70.0, 60.0]
    assert r.teacher_info == {"test_acc": 99.2, "train_seconds": 315.5}
    assert r.environment == {"device": "cpu", "amp": "None", "channels_last": False}
    assert r.fingerprint["method_arguments"] == {"temperature": 1.0, "weight": 1.0}
    assert r.provenance["command"] == "python -m tas_lite sweep --profile cpu"
    again = r.save(tmp_path / "new.json")  # saved again, it is in today's form and reads back equal
    assert "setup" in json.loads(again.read_text()) and "config" not in json.loads(again.read_text())
    assert Result.load(again) == r


def test_a_flat_baseline_records_no_teacher_whatever_name_it_carried(tmp_path):
    """`train` used to record the profile's teacher on a baseline, which used none."""
    r = Result.load(write(tmp_path, flat_record("baseline", "tiny_convnext")))
    assert r.teacher is None and r.setup.teacher is None and r.teacher_info == {}


def test_a_flat_paper_record_becomes_best_on_test_with_no_validation_accuracy(tmp_path):
    r = Result.load(write(tmp_path, flat_record(paper=True)))
    assert r.selection == BEST_ON_TEST and r.selection.startswith("best on test")
    assert (r.selected_epoch, r.selected_test_acc) == (2, 70.0)
    assert r.final_val_acc is None and r.setup.val_images is None
    assert [row["test_acc"] for row in r.history] == [40.0, 70.0, 60.0]
    assert not any("val_acc" in row for row in r.history)
    loaded = Result.load(r.save(tmp_path / "new.json"))
    assert loaded == r and '"val_acc"' not in loaded.save(tmp_path / "again.json").read_text()


@pytest.mark.parametrize("damage", ["no history", "no recipe", "config not a dict"])
def test_a_damaged_flat_record_is_a_corrupt_file_naming_it(tmp_path, damage):
    record = flat_record()
    if damage == "no history":
        del record["history"]
    elif damage == "no recipe":
        del record["config"]["recipe"]
    else:
        record["config"] = ["recipe"]
    path = write(tmp_path, record)
    with pytest.raises(CorruptFile, match=rf"{path} is not a complete tas_lite Result .*delete it"):
        Result.load(path)


def test_a_record_must_say_how_its_epoch_was_chosen(tmp_path):
    assert SELECTIONS == (LAST, BEST_ON_VALIDATION, BEST_ON_TEST)
    setup = Result.load(write(tmp_path, flat_record())).setup
    with pytest.raises(ValueError, match="unknown selection 'best'"):
        Result(setup, selection="best")
    assert Result.load(Result(setup, selection=LAST).save(tmp_path / "last.json")).selection == LAST


def test_a_results_file_with_an_unknown_selection_is_a_corrupt_file_naming_it(tmp_path):
    """Like every damaged or foreign results file (a sweep reads whole folders of them)."""
    setup = Result.load(write(tmp_path, flat_record())).setup
    doc = json.loads(Result(setup).save(tmp_path / "r.json").read_text())
    doc["selection"] = "best val"
    path = write(tmp_path, doc, "bad.json")
    with pytest.raises(CorruptFile, match=rf"{path} is not a complete tas_lite Result .*unknown selection 'best val'"):
        Result.load(path)


def test_a_record_of_a_method_and_recipe_holding_tuples_round_trips(tmp_path):
    """OFA's `branch_stages` and the paper recipe's crop `scale` are tuples, which JSON stores as lists: the
    record a run returns must be the record that is read back from its file."""
    config.seed_everything(0)
    teacher = models.create("tiny_convnext", num_classes=10).eval()
    student = models.create("tiny_vit", num_classes=10)
    train, val, test = data.loaders("synthetic", batch_size=16, num_samples=64, val_fraction=0.25)
    recipe = dataclasses.replace(Recipe.paper(student, 1, batch_size=16), augment=data.PAPER_CNN)  # no mixup
    ofa = methods.build("ofa", teacher, student)
    assert isinstance(ofa.arguments["branch_stages"], tuple) and isinstance(recipe.as_dict()["augment"]["scale"], tuple)
    result = distill.fit(ofa, train, val, test=test, epochs=1, max_steps=1, recipe=recipe, progress=False)
    loaded = Result.load(result.save(tmp_path / "ofa.json"))
    assert loaded.setup.method_arguments == json.loads(json.dumps(result.setup.method_arguments))
    assert loaded == result


def test_file_names_and_the_pattern_that_finds_them(tmp_path):
    assert results.file_name("tiny_convnext", "tiny_vit", "tas:no_nce+no_ofa", 2) == \
        "tiny_convnext__tiny_vit__tas-no_nce+no_ofa__seed2.json"
    assert results.file_name(None, "tiny_vit", "baseline", 0) == "none__tiny_vit__baseline__seed0.json"
    names = [results.file_name("t", "s", "kd", 1), results.file_name(None, "s", "baseline", 0)]
    assert all(fnmatch.fnmatch(n, results.PATTERN) for n in names)
    assert not fnmatch.fnmatch("table.json", results.PATTERN)
    assert results.load_folder(tmp_path / "missing") == []
    for name in names:
        write(tmp_path, flat_record(), name)
    write(tmp_path, {"not": "a result"}, "table.json")  # other files in a sweep's folder are not read
    assert [r.seed for r in results.load_folder(tmp_path)] == [3, 3]
