"""The reference results in results/ are what the current code would produce: same recipe (fingerprint),
with provenance, and their tables are what the results aggregate to. A stale result fails here, named."""

import json
import math

import pytest
import torch

from tas_lite import config, distill, experiments, profiles, results, tables
from tas_lite.__main__ import main
from tas_lite.results import SELECTIONS, Result

RESULTS = config.results_dir()
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir() and any(p.glob(results.PATTERN))) \
    if RESULTS.is_dir() else []
DIGITS = ["digits", "digits_ablation", "digits_100_images", "digits_same_family"]  # made when cpu meant digits


def test_the_digits_reference_sweeps_ship_with_the_repository():
    assert set(DIGITS) <= {p.name for p in FOLDERS}, f"missing reference results in {RESULTS}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_shipped_result_loads_as_a_complete_record(folder):
    files = sorted(folder.glob(results.PATTERN))
    loaded = results.load_folder(folder)
    assert len(loaded) == len(files) > 0
    for path, r in zip(files, loaded):
        assert path.name == results.file_name(r.teacher, r.student, r.method, r.seed), "file named by its content"
        assert r.selection in SELECTIONS and r.history and len(r.history) == r.epochs == r.setup.epochs, path.name
        scored = "test_acc" if r.selection == results.BEST_ON_TEST else "val_acc"
        assert all(scored in row for row in r.history), path.name
        assert 1 <= r.selected_epoch <= r.epochs and not math.isnan(r.selected_test_acc), path.name
        assert (r.teacher is None) == (r.method == "baseline") == (r.teacher_info == {}), path.name
        assert r.setup.dataset == r.fingerprint["dataset"] and r.setup.profile is not None, path.name
        assert r.setup.method_arguments == r.fingerprint["method_arguments"], path.name


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_results_match_the_current_recipe(folder):
    stale = experiments.stale(folder)
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_results_carry_provenance(folder):
    for path in sorted(folder.glob(results.PATTERN)):
        r = Result.load(path)
        prov = r.provenance
        assert {"command", "git_commit", "date", "torch", "threads", "cpu"} <= set(prov), path.name
        assert prov["command"].startswith("python -m tas_lite sweep"), path.name
        if r.setup.dataset != profiles.resolve(r.setup.profile).dataset:  # made when the profile meant this dataset
            assert f"--dataset {r.setup.dataset}" in prov["command"], path.name
            assert "--dataset" not in prov["recorded_command"], path.name


@pytest.mark.parametrize("name", DIGITS)
def test_the_digits_results_rerun_as_digits_today(name):
    """Their commands ask for digits themselves: today's cpu profile (Fashion-MNIST) would train otherwise."""
    for r in results.load_folder(RESULTS / name):
        assert r.setup.dataset == "digits" and "--dataset digits" in r.provenance["command"]
        assert experiments.command_settings(r.provenance["command"], r.setup.profile).dataset == "digits"
        assert experiments.command_settings(r.provenance["recorded_command"], r.setup.profile).dataset != "digits"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_tables_are_what_their_results_aggregate_to(folder):
    table = tables.aggregate(folder)
    shipped = (folder / "table.md").read_text()
    assert table.markdown() in shipped and table.verdicts_markdown() in shipped


@pytest.mark.parametrize("name", ["digits", "digits_ablation", "digits_100_images"])
def test_the_readme_quotes_the_shipped_tables(name):
    """README's 'Honest numbers' and results/ show the same numbers: each table as the results aggregate it."""
    readme = (config.REPO_DIR / "README.md").read_text()
    assert tables.aggregate(RESULTS / name).markdown().split("\n\n")[0] in readme


def test_a_changed_recipe_is_reported_stale(tmp_path):
    smoke = profiles.resolve("smoke")
    result = experiments.train("kd", "tiny_resnet", "tiny_vit", smoke, out_dir=tmp_path, progress=False,
                             command="python -m tas_lite sweep --profile smoke --methods kd")
    assert experiments.stale(tmp_path) == []
    path = tmp_path / results.file_name("tiny_resnet", "tiny_vit", "kd", 0)
    doc = json.loads(path.read_text())
    doc["fingerprint"]["epochs"] = 99
    doc["fingerprint"]["method_arguments"]["temperature"] = 4.0
    path.write_text(json.dumps(doc))
    (line,) = experiments.stale(tmp_path)
    assert line.startswith("stale: ") and "epochs: 99 -> 1" in line and "temperature: 4.0 -> 1.0" in line
    assert line.endswith("python -m tas_lite sweep --profile smoke --methods kd")
    assert result.final_test_acc >= 0


@pytest.mark.parametrize("entry", ["experiments.train", "the command line's train"])
def test_the_shipped_baseline_reruns_to_the_shipped_first_epoch(tmp_path, monkeypatch, entry):
    """results/digits' baseline, seed 0, made by a sweep, trained again at one thread through `train` as its
    command resolves today (the profile's teacher named, the recipe's whole schedule) repeats its first
    epoch bit for bit: losses, accuracies, learning rate. Only the first epoch is trained (seconds, not minutes)."""
    shipped = Result.load(RESULTS / "digits" / results.file_name(None, "tiny_vit", "baseline", 0))
    made = shipped.provenance
    if (results.cpu_model(), torch.__version__) != (made["cpu"], made["torch"]):
        pytest.skip(f"bitwise equality holds on the machine that made it ({made['cpu']}, torch {made['torch']}); this "
                    f"is {results.cpu_model()}, torch {torch.__version__}")
    settings = experiments.command_settings(made["command"], shipped.setup.profile)
    real = distill._train_epochs
    monkeypatch.setattr(distill, "_train_epochs", lambda run, result, train, scored, epochs, ckpt, **kw:
                        real(run, result, train, scored, range(0, 1), ckpt, **kw))
    threads = torch.get_num_threads()
    torch.set_num_threads(made["threads"])
    try:
        if entry == "experiments.train":
            again = experiments.train("baseline", settings.teacher, "tiny_vit", settings, seed=0, progress=False)
        else:
            argv = ["train", "--profile", shipped.setup.profile, "--dataset", settings.dataset, "--student", "tiny_vit",
                    "--method", "baseline", "--seed", "0", "--out", str(tmp_path)]
            assert main(argv) == 0
            again = Result.load(tmp_path / results.file_name(None, "tiny_vit", "baseline", 0))
    finally:
        torch.set_num_threads(threads)
    first = [{k: v for k, v in r.history[0].items() if k not in ("images_per_s", "wall_s")} for r in (again, shipped)]
    assert first[0] == first[1]
    assert again.fingerprint == shipped.fingerprint and again.teacher is None


def test_each_profile_finds_the_reference_of_its_own_data():
    """Notebooks 05 and 06 compare against the shipped sweep on the profile's dataset: digits for smoke (what
    the pip and Colab ways in run), Fashion-MNIST's results/cpu for cpu, CIFAR-100's results/gpu for gpu."""
    assert config.reference_dir(profiles.resolve("smoke").dataset) == RESULTS / "digits"
    assert {r.setup.dataset for r in results.load_folder(config.reference_dir("digits"))} == {"digits"}
    assert config.reference_dir(profiles.resolve("cpu").dataset) == RESULTS / "cpu"
    assert config.reference_dir(profiles.resolve("gpu").dataset) == RESULTS / "gpu"
