"""The report page: every card states the notebook's finding in one line, and figures open full size."""

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402

from tas_lite import report  # noqa: E402


def _png() -> str:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _executed(tmp_path, name: str, lines: list[str]) -> report.NotebookRun:
    node = nbformat.v4.new_notebook()
    node.cells = [nbformat.v4.new_markdown_cell(f"# {name} title\n\nWhat the notebook teaches."),
                  nbformat.v4.new_code_cell("print(...)", outputs=[
                      nbformat.v4.new_output("stream", name="stdout", text="\n".join(lines) + "\n"),
                      nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})])]
    source, output = tmp_path / f"{name}.ipynb", tmp_path / "out" / f"{name}.ipynb"
    output.parent.mkdir(exist_ok=True)
    nbformat.write(node, source)
    nbformat.write(node, output)
    return report.NotebookRun(source, output, {"PROFILE": "smoke"}, status="ok", wall_s=1.0)


def test_finding_prints_one_line_and_rejects_an_empty_half(capsys):
    assert report.finding(paper="ViT layers are  more uniform", measured="0.91 vs 0.85\n(CNN)") is None
    line = "FINDING: paper says ViT layers are more uniform / we measured 0.91 vs 0.85 (CNN)"
    assert capsys.readouterr().out == line + "\n"  # printed once; nothing returned for a cell to echo
    with pytest.raises(ValueError, match="both"):
        report.finding(paper="x", measured=" ")


def test_each_card_shows_its_last_finding_and_large_clickable_figures(tmp_path):
    with_finding = _executed(tmp_path, "01_a", ["other output", "FINDING: paper says superseded / we measured superseded",
                                                "FINDING: paper says A holds / we measured 0.5 < 0.7"])
    without = _executed(tmp_path, "02_b", ["no finding here"])
    run = report.RunReport("smoke", tmp_path / "out", [with_finding, without], wall_s=2.0)
    index = report.write_site(run).read_text()
    assert report.findings(report.nbformat.read(with_finding.output, as_version=4)) == [
        "paper says superseded / we measured superseded", "paper says A holds / we measured 0.5 < 0.7"]
    assert "<b>paper says</b> A holds<br><b>we measured</b> 0.5 &lt; 0.7" in index and "superseded" not in index
    assert "no finding stated" in index
    for nb in (with_finding, without):
        (figure,) = nb.figures
        assert f'<a href="figures/{figure.name}" target="_blank"' in index and f'src="figures/{figure.name}"' in index
    assert "minmax(440px" in index, "figures are laid out large, not as thumbnails"
