"""The repository's address is written once (pyproject), and the README's badges and the notebooks' Colab
cell are generated from it; the Colab cell clones, installs and moves into the course, or says in one
sentence what to set."""

import json
import re
import shutil
import subprocess
import sys
import types

import pytest

from tas_lite import colab, paths

REPO = paths.REPO_DIR
ADDRESS = "github.com/tas-lite/tas_lite"


def test_readme_badges_and_notebook_cells_agree_with_pyproject():
    assert colab.stale() == [], "run `make sync` after changing [project.urls] (or a notebook's first cells)"


def test_the_address_is_written_once():
    """Only pyproject names the repository; everything else is generated from it (or reads it)."""
    assert (REPO / "pyproject.toml").read_text().count(ADDRESS) == 1
    assert colab.repository() == f"https://{ADDRESS}"
    code = [p for p in (REPO / "tas_lite").glob("*.py") if ADDRESS in p.read_text()]
    assert not code, f"the address is hard-coded in {code}"


def test_sync_follows_a_new_address_and_touches_nothing_else(tmp_path, monkeypatch):
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    before = {p.name: json.loads(p.read_text()) for p in (tmp_path / "notebooks").glob("*.ipynb")}
    monkeypatch.setattr(colab, "repository", lambda: "https://github.com/a-fork/course")
    changed = colab.sync(tmp_path)
    assert len(changed) == 1 + len(before) and colab.stale(tmp_path) == []
    readme = (tmp_path / "README.md").read_text()
    assert "tas-lite/tas_lite" not in readme
    assert readme.count("colab.research.google.com/github/a-fork/course/blob/main/notebooks/") == len(before)
    for path in (tmp_path / "notebooks").glob("*.ipynb"):
        after = json.loads(path.read_text())
        assert after["cells"][2:] == before[path.name]["cells"][2:], "only the first two cells are generated"
        assert 'os.environ.get("TAS_LITE_REPO", "https://github.com/a-fork/course")' in "".join(after["cells"][1]["source"])


def test_only_github_addresses_make_badges():
    assert colab.github_path("https://github.com/o/n.git") == "o/n"
    with pytest.raises(ValueError, match="not a https://github.com/<owner>/<name> URL"):
        colab.colab_url("01_x.ipynb", "https://gitlab.com/o/n")
    with pytest.raises(ValueError, match="numbered notebook"):
        colab.colab_url("intro.ipynb")


def run_cell(monkeypatch, cwd, repo, pip_returncode=0, pip_stderr=""):
    """Run the Colab cell as Colab would (google.colab imported), pip replaced by a recorder."""
    calls = []
    real_run = subprocess.run

    def fake_run(command, **kwargs):
        calls.append(list(command))
        if list(command[:3]) == [sys.executable, "-m", "pip"]:
            return subprocess.CompletedProcess(command, pip_returncode, "", pip_stderr)
        return real_run(command, **kwargs)

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("TAS_LITE_REPO", str(repo))
    monkeypatch.chdir(cwd)
    exec(compile(colab.install_cell(), "colab cell", "exec"), {})
    return calls


@pytest.fixture
def tiny_repo(tmp_path):
    """A git repository shaped like the course (a package folder), to clone without a network."""
    origin = tmp_path / "origin"
    (origin / "tas_lite").mkdir(parents=True)
    (origin / "tas_lite" / "__init__.py").write_text("")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "course"], check=True)
    return origin


def test_colab_cell_clones_installs_the_notebooks_extra_and_moves_in(tmp_path, tiny_repo, monkeypatch, capsys):
    start = tmp_path / "content"
    start.mkdir()
    calls = run_cell(monkeypatch, start, f"file://{tiny_repo}")
    course = start / "tas_lite"
    assert (course / "tas_lite" / "__init__.py").is_file() and paths.Path.cwd() == course
    assert calls[0][:5] == ["git", "clone", "-q", "--depth", "1"]
    assert calls[1] == [sys.executable, "-m", "pip", "install", "-q", "-e", f"{course}[notebooks]"]
    assert capsys.readouterr().out == f"tas_lite installed from file://{tiny_repo}; working in {course}\n"
    again = run_cell(monkeypatch, course, f"file://{tiny_repo}")  # run twice: no second clone, same folder
    assert [c[0] for c in again] == [sys.executable] and paths.Path.cwd() == course


def test_colab_cell_says_in_one_sentence_what_to_set_when_the_clone_fails(tmp_path, monkeypatch, capsys):
    calls = run_cell(monkeypatch, tmp_path, tmp_path / "no-such-repository")
    out = capsys.readouterr()
    assert [c[0] for c in calls] == ["git"], "no pip after a failed clone"
    assert re.fullmatch(r"Could not clone \S+: set TAS_LITE_REPO to [^.]+\.\n", out.out) and not out.err
    assert paths.Path.cwd() == tmp_path


def test_colab_cell_reports_a_failed_install_in_one_line(tmp_path, tiny_repo, monkeypatch, capsys):
    run_cell(monkeypatch, tmp_path, f"file://{tiny_repo}", pip_returncode=1,
             pip_stderr="  some detail\nERROR: No matching distribution found for timm>=1.0\n")
    out = capsys.readouterr().out
    assert out == f"Could not install {tmp_path / 'tas_lite'}: ERROR: No matching distribution found for timm>=1.0\n"
    assert paths.Path.cwd() == tmp_path


def test_the_cell_does_nothing_outside_colab(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(colab.install_cell(), "colab cell", "exec"), {})
    assert capsys.readouterr().out == "" and not any(tmp_path.iterdir())
