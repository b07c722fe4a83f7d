"""The reference results in results/ are what the current code would produce: same recipe (fingerprint),
with provenance, and their tables are what the results aggregate to. A stale result fails here, named."""

import json

import pytest

from tas_lite import config, experiments, profiles, tables
from tas_lite.results import Result

RESULTS = config.results_dir()
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir()) if RESULTS.is_dir() else []


def test_the_default_sweep_and_the_ablation_ship_with_the_repository():
    assert {"cpu", "cpu_ablation", "cpu_100_images"} <= {p.name for p in FOLDERS}, f"missing reference results in {RESULTS}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_results_match_the_current_recipe(folder):
    stale = experiments.stale(folder)
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_results_carry_provenance(folder):
    for path in sorted(folder.glob("*__seed*.json")):
        prov = Result.load(path).config.get("provenance", {})
        assert {"command", "git_commit", "date", "torch", "threads", "cpu"} <= set(prov), path.name
        assert prov["command"].startswith("python -m tas_lite sweep"), path.name


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_shipped_tables_are_what_their_results_aggregate_to(folder):
    table = tables.aggregate(folder)
    shipped = (folder / "table.md").read_text()
    assert table.markdown() in shipped and table.verdicts_markdown() in shipped


@pytest.mark.parametrize("name", ["cpu", "cpu_ablation", "cpu_100_images"])
def test_the_readme_quotes_the_shipped_tables(name):
    """README's 'Honest numbers' and results/ show the same numbers: each table as the results aggregate it."""
    readme = (config.REPO_DIR / "README.md").read_text()
    assert tables.aggregate(RESULTS / name).markdown().split("\n\n")[0] in readme


def test_a_changed_recipe_is_reported_stale(tmp_path):
    smoke = profiles.resolve("smoke")
    result = experiments.train("kd", "tiny_resnet", "tiny_vit", smoke, out_dir=tmp_path, progress=False,
                             command="python -m tas_lite sweep --profile smoke --methods kd")
    assert experiments.stale(tmp_path) == []
    path = tmp_path / experiments.result_name("tiny_resnet", "tiny_vit", "kd", 0)
    doc = json.loads(path.read_text())
    doc["config"]["fingerprint"]["epochs"] = 99
    doc["config"]["fingerprint"]["method_arguments"]["temperature"] = 4.0
    path.write_text(json.dumps(doc))
    (line,) = experiments.stale(tmp_path)
    assert line.startswith("stale: ") and "epochs: 99 -> 1" in line and "temperature: 4.0 -> 1.0" in line
    assert line.endswith("python -m tas_lite sweep --profile smoke --methods kd")
    assert result.final_test_acc >= 0
