"""The notebooks' contract: clean commits, a Colab badge, one papermill parameters cell."""

import json

import pytest

from tas_lite import config

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
    assert f"colab.research.google.com/github/tas-lite/tas_lite/blob/main/notebooks/{path.name}" in "".join(cells[0]["source"])
    assert "google.colab" in "".join(cells[1]["source"])
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[2]
    source = "".join(tagged[0]["source"])
    assert source.startswith("import os") and 'PROFILE = os.environ.get("TAS_LITE_PROFILE", "cpu")' in source
    assert any("assert " in "".join(c["source"]) for c in code), "every notebook has check cells"
