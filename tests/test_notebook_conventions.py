"""The notebooks' contract: clean commits, a Colab badge and the Colab cell (generated from the repository's
address), one papermill parameters cell."""

import json
import re

import pytest

from tas_lite import colab, config

NOTEBOOKS = sorted(config.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def test_the_six_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_conventions(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit notebooks without outputs"
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    assert colab.badge(path.name) in "".join(cells[0]["source"]).split("\n")[:3], "the Colab badge under the title"
    assert "".join(cells[1]["source"]) == colab.install_cell(), "the Colab cell as colab.install_cell() writes it"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[2]
    source = "".join(tagged[0]["source"])
    assert source.startswith("import os") and 'PROFILE = os.environ.get("TAS_LITE_PROFILE", "cpu")' in source
    assert any("assert " in "".join(c["source"]) for c in code), "every notebook has check cells"


# Notebooks in the course's teaching form: a computed Summary that states the finding, Exercises, and one
# Checks cell at the end holding every test-only assert: all six notebooks.
COURSE_FORM = NOTEBOOKS


def _headings(cells) -> list[tuple[int, str]]:
    return [(k, line.strip()) for k, c in enumerate(cells) if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines() if line.startswith("## ")]


@pytest.mark.parametrize("path", COURSE_FORM, ids=lambda p: p.stem)
def test_notebook_ends_with_summary_exercises_and_checks(path):
    cells = json.loads(path.read_text())["cells"]
    headings = _headings(cells)
    titles = [title for _, title in headings]
    assert titles[-3:] == ["## Summary", "## Exercises", "## Checks"], f"last sections must be Summary, Exercises, Checks: {titles}"
    summary_at = dict((t, k) for k, t in headings)["## Summary"]
    summary_code = "".join("".join(c["source"]) for c in cells[summary_at:] if c["cell_type"] == "code")
    assert "report.finding(" in summary_code, "the Summary computes the notebook's finding (report.finding)"
    exercises = "".join("".join(c["source"]) for c in cells
                        if c["cell_type"] == "markdown" and "## Exercises" in "".join(c["source"]))
    exercises = exercises.split("## Exercises", 1)[1].split("## Checks", 1)[0]
    items = [block for block in re.split(r"\n(?=\d+\. )", exercises) if re.match(r"\d+\. ", block)]
    assert len(items) >= 3 and all("`" in item for item in items), "at least 3 numbered, runnable exercises"


@pytest.mark.parametrize("path", COURSE_FORM, ids=lambda p: p.stem)
def test_test_only_asserts_live_in_the_final_checks_cell(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert cells[-1] is code[-1], "the Checks cell is the notebook's last cell"
    with_asserts = [k for k, c in enumerate(code) if any(line.lstrip().startswith("assert ")
                                                           for line in "".join(c["source"]).splitlines())]
    assert with_asserts == [len(code) - 1], f"asserts outside the Checks cell, in code cells {with_asserts[:-1]}"


@pytest.mark.parametrize("path", COURSE_FORM, ids=lambda p: p.stem)
def test_notebook_declares_progress_for_its_long_cells(path):
    params = "".join(json.loads(path.read_text())["cells"][2]["source"])
    assert "\nPROGRESS = None" in params, "PROGRESS: bars in a live session, quiet when the runner passes False"
