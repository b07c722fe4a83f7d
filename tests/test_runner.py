"""The papermill runner: parameter validation before anything runs, a smoke run, a failing notebook."""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tas_lite import config, runner

PARAMS = """import os
PROFILE = os.environ.get("TAS_LITE_PROFILE", "cpu")
EPOCHS = None
METHODS = None
SCALE = 2.0
LABEL = "x"
"""


BATCH_PARAMS = PARAMS + "PROGRESS = None\nINTERACTIVE = None\nRESULTS_DIR = None\n"


def make_notebook(path, body, params=PARAMS, title="Fabricated notebook"):
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [new_markdown_cell(f"# {title}\n\nA tiny notebook the runner tests execute."),
                new_code_cell(params, metadata={"tags": ["parameters"]}), *map(new_code_cell, body)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def folder(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    make_notebook(nbs / "01_first.ipynb", ["print('one')"])
    make_notebook(nbs / "02_second.ipynb", ["print('two')"], params="import os\nPROFILE = 'cpu'\nSEEDS = [0]\n")
    return nbs


def no_execution(*args, **kwargs):
    raise AssertionError("papermill must not run before the parameters are validated")


def test_discover_and_only(folder):
    assert [p.name for p in runner.discover(folder)] == ["01_first.ipynb", "02_second.ipynb"]
    assert [p.name for p in runner.discover(folder, ["2"])] == ["02_second.ipynb"]
    assert [p.name for p in runner.discover(folder, ["02_second", "01"])] == ["01_first.ipynb", "02_second.ipynb"]
    with pytest.raises(ValueError, match="available: 01_first, 02_second"):
        runner.discover(folder, ["07"])


def test_parse_value():
    assert runner.parse_value("3") == 3 and runner.parse_value("0.5") == 0.5
    assert runner.parse_value("[0, 1]") == [0, 1] and runner.parse_value("True") is True
    assert runner.parse_value("false") is False and runner.parse_value("none") is None
    assert runner.parse_value("tiny_vit") == "tiny_vit"


def test_plan_types_from_profile_table_and_defaults(folder):
    jobs = runner.plan("smoke", folder, parameters={"EPOCHS": 3, "METHODS": "kd,tas", "SCALE": 1, "SEEDS": [1, 2]})
    first, second = (job.parameters for job in jobs)
    assert first == {"PROFILE": "smoke", "EPOCHS": 3, "METHODS": ["kd", "tas"], "SCALE": 1}
    assert second == {"PROFILE": "smoke", "SEEDS": [1, 2]}  # a parameter only goes where it is declared
    assert runner.plan("cpu", folder, parameters={"EPOCHS": None})[0].parameters["EPOCHS"] is None


@pytest.mark.parametrize("params, message", [
    ({"EPOCH": 3}, r"unknown parameter 'EPOCH'.*valid names: EPOCHS \[int or None\] \(01\), LABEL \[str\] \(01\)"),
    ({"EPOCHS": "three"}, r"EPOCHS of 01_first.ipynb expects int or None, got 'three' \(str\)"),
    ({"EPOCHS": True}, r"expects int or None, got True \(bool\)"),
    ({"SCALE": None}, r"SCALE of 01_first.ipynb expects float, got None"),
    ({"METHODS": [1, 2]}, r"expects list of str or None"),
    ({"PROFILE": "gpu"}, r"--profile"),
])
def test_bad_parameters_rejected_before_anything_runs(folder, tmp_path, monkeypatch, params, message):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", no_execution)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        runner.run("smoke", notebooks_dir=folder, parameters=params, out_dir=out, progress=False)
    assert not out.exists()


def test_only_checks_selected_notebooks_and_profile(folder):
    with pytest.raises(ValueError, match="no selected notebook declares it"):
        runner.plan("smoke", folder, only=["01"], parameters={"SEEDS": [0]})
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        runner.plan("laptop", folder)


def test_smoke_run_writes_executed_notebook_figures_and_site(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    make_notebook(nbs / "01_plot.ipynb", [
        "import matplotlib.pyplot as plt\nfrom tas_lite import profiles\ncfg = profiles.resolve(PROFILE, epochs=EPOCHS)",
        "print('RESULT', PROFILE, cfg.epochs, PROGRESS, INTERACTIVE, RESULTS_DIR)",
        "plt.plot([0, 1], [1, 0])\nplt.title('a line')\nplt.show()",
    ], params=BATCH_PARAMS, title="Plotting notebook")
    report = runner.run("smoke", notebooks_dir=nbs, parameters={"EPOCHS": 5}, out_dir=tmp_path / "out")
    (record,) = report.notebooks
    assert record.status == "ok" and record.wall_s > 0
    executed = nbformat.read(tmp_path / "out" / "01_plot.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert f"RESULT smoke 5 False False {(tmp_path / 'out').resolve() / 'results'}" in printed
    assert record.figures and record.figures[0].read_bytes().startswith(b"\x89PNG")
    index = (tmp_path / "out" / "index.html").read_text()
    assert "Plotting notebook" in index and "figures/01_plot_1.png" in index and "01_plot.html" in index
    assert "all notebooks" in (tmp_path / "out" / "01_plot.html").read_text()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["notebooks"][0]["status"] == "ok"
    assert "[1/1] 01_plot (smoke) ... ok in" in capsys.readouterr().out


def test_failing_notebook_stops_the_run_and_keeps_its_copy(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    make_notebook(nbs / "01_fails.ipynb", ["x = 1", "raise ValueError('boom at ' + PROFILE)"])
    make_notebook(nbs / "02_never.ipynb", ["print('should not run')"])
    out = tmp_path / "out"
    with pytest.raises(runner.NotebookFailed, match=r"01_fails.ipynb failed in cell \d+ .*ValueError: boom at smoke") as err:
        runner.run("smoke", notebooks_dir=nbs, out_dir=out, progress=False)
    assert "executed copy kept at" in str(err.value)
    assert [nb.status for nb in err.value.report.notebooks] == ["failed", "not run"]
    assert (out / "01_fails.ipynb").is_file() and not (out / "02_never.ipynb").exists()
    assert "boom at smoke" in (out / "index.html").read_text()


def test_real_notebook_parameters_are_known():
    """Every committed notebook declares PROFILE in its parameters cell, and its knobs are typed."""
    paths = runner.discover() if any(config.notebooks_dir().glob("0*.ipynb")) else []
    for path in paths:
        specs = runner.notebook_parameters(path)
        assert "PROFILE" in specs, f"{path.name} has no PROFILE in its parameters cell"


def test_cli_run_rejects_unknown_parameter(folder, monkeypatch, capsys):
    import papermill

    from tas_lite.__main__ import main

    monkeypatch.setattr(papermill, "execute_notebook", no_execution)
    assert main(["run", "--profile", "smoke", "--notebooks", str(folder), "-p", "EPOCHS", "x"]) == 2
    assert "EPOCHS of 01_first.ipynb expects int or None, got 'x'" in capsys.readouterr().err


def test_results_notebook_through_the_runner(tmp_path):
    """Notebook 06 in the smoke profile, reading a folder of results instead of training (fast)."""
    from tas_lite.results import Result, Setup, file_name

    if not (config.notebooks_dir() / "06_results.ipynb").is_file():
        pytest.skip("notebook 06 is not in this checkout")
    results = tmp_path / "sweep"
    for method, accs in {"baseline": [90.0, 91.0], "kd": [92.0, 93.0], "ofa": [93.0, 94.5], "tas": [94.0, 95.0]}.items():
        teacher = None if method == "baseline" else "tiny_convnext"
        for seed, acc in enumerate(accs):
            setup = Setup(method=method, method_arguments={}, teacher=teacher, student="tiny_vit", dataset="digits",
                          img_size=32, num_classes=10, train_images=None, val_images=None, test_images=None,
                          batch_size=32, epochs=1, max_steps=None, recipe={}, seed=seed, profile="smoke")
            Result(setup, final_test_acc=acc, selected_test_acc=acc,
                   teacher_info={} if teacher is None else {"test_acc": 97.0}).save(
                results / file_name(teacher, "tiny_vit", method, seed))
    report = runner.run("smoke", only=["06"], parameters={"SWEEP_DIR": str(results), "RUN_SWEEP": False},
                        out_dir=tmp_path / "out", progress=False)
    (record,) = report.notebooks
    assert record.status == "ok" and len(record.figures) >= 1
    html = record.html.read_text()
    assert "<strong>94.50 ± 0.71</strong>" in html  # the folder's own table, best per row in bold
    assert "TAS - OFA" in html and "+0.75" in html  # its paired verdicts: (95 - 94.5 + 94 - 93) / 2
    index = (tmp_path / "out" / "index.html").read_text()
    assert all(f'src="figures/{f.name}"' in index for f in record.figures), "the index shows every figure"


def test_batch_parameters_go_only_where_declared(folder):
    """The runner tells notebooks it runs in batch (no widgets, no bars, where results go) through papermill
    parameters, never environment variables, and only where a notebook declares the name."""
    jobs = runner.plan("smoke", folder, batch={"PROGRESS": False, "SEEDS": [3]}, parameters={"SEEDS": [1]})
    first, second = (job.parameters for job in jobs)
    assert "PROGRESS" not in first and "SEEDS" not in first
    assert second["SEEDS"] == [1], "an explicit override wins over the runner's batch value"
