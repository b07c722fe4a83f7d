"""The ways a learner starts, each in a fresh environment, offline (packages come from this machine's registries):

* Colab-like: a venv holding only torch, torchvision and timm (what Colab preinstalls that we depend on),
  the notebooks' Colab cell run as Colab runs it (TAS_LITE_REPO pointing at a local clone), then notebook 05
  in the smoke profile with papermill from the cloned folder: it shows the reference results, and no Jupyter
  server package was installed and nothing Colab had was replaced.
* pip: the wheel built from this checkout, installed with the [notebooks] extra into a fresh venv that already
  holds torch, then `tas-lite run --profile smoke --only 05 06` from a temporary folder.

The `ways_in` tests take minutes; `.ci/run` runs them after `make test` (`pytest -m ways_in`). Preinstalled
packages are hard links of this venv's files (installing torch again would copy gigabytes); pip replacing one
would unlink the copy, never this venv's file. Each test prints what its way in installed and how long it took.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import tas_lite
from tas_lite import colab, paths

REPO = paths.REPO_DIR
JUPYTER_SERVERS = {"jupyter-server", "notebook", "jupyterlab", "nbclassic", "jupyter-server-terminals", "nbval"}
SITE = Path(sysconfig.get_paths()["purelib"])

pytestmark = pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs a git checkout of the course")


def run(command: list[str], timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def course_copy(destination: Path) -> Path:
    """The files git tracks, as they are in this working tree: what a fresh clone of this state holds."""
    tracked = run(["git", "ls-files", "-z"], cwd=REPO).stdout.split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def closure(*names: str) -> set[str]:
    """The installed distributions `names` need, with their dependencies and the extras they ask for (markers
    evaluated here)."""
    seen: set[tuple[str, str]] = set()
    found: set[str] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        found.add(key)
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, wanted) for wanted in ["", *requirement.extras]]
    return found


def fresh_venv(folder: Path, preinstalled: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A new venv with pip and `preinstalled` (with their dependencies) hard-linked from this one; returns its
    python and the versions it starts with."""
    run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
    python = folder / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    for name in sorted(closure("pip", *preinstalled)):
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            source = Path(dist.locate_file(file)).resolve()
            if SITE in source.parents and source.is_file():
                target = site / source.relative_to(SITE)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.link(source, target)
    return python, installed(python)


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without what would leak this checkout or the test settings into a fresh venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUPYTER_PATH", "MPLBACKEND", "VIRTUAL_ENV",
                                                           "TAS_LITE_PROFILE", "TAS_LITE_HOME")}
    return {**env, **values}


def installed(python: Path) -> dict[str, str]:
    listed = json.loads(run([str(python), "-m", "pip", "list", "--format", "json"]).stdout)
    return {p["name"].lower().replace("_", "-"): p["version"] for p in listed}


def site_megabytes(python: Path) -> float:
    """Size of the venv's site-packages, counting hard links to this venv's files as nothing added."""
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and f.stat().st_nlink == 1) / 1e6


def summary(way: str, before: dict[str, str], after: dict[str, str], megabytes: float, seconds: float) -> str:
    added = sorted(set(after) - set(before))
    replaced = sorted(n for n in before if n in after and before[n] != after[n])
    return (f"{way}: installed {len(added)} packages, {megabytes:.0f} MB, in {seconds:.0f} s; replaced: "
            f"{replaced or 'none'}; added: {', '.join(added)}")


def notebook_text(path: Path) -> str:
    """Everything an executed notebook shows: streams, text and Markdown outputs, errors."""
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                parts.append("".join(output.get("data", {}).get(kind, "")))
            parts.append(" ".join(output.get("traceback", [])))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built from a clean copy of its tracked files (no stale build/ folder)."""
    source = course_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)])
    (built,) = out.glob("tas_lite-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_the_notebooks_and_the_reference_results(wheel):
    assert wheel.name.startswith(f"tas_lite-{tas_lite.__version__}-")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = run(["git", "ls-files", "notebooks", "results"], cwd=REPO).stdout.split()
    shipped = [f for f in tracked if (REPO / f).is_file() and f.endswith((".ipynb", ".json", ".md", ".csv", ".png",
                                                                             ".safetensors"))]
    assert shipped and sorted(f"tas_lite/{paths.PACKAGED}/{f}" for f in shipped) == sorted(
        n for n in inside if n.startswith(f"tas_lite/{paths.PACKAGED}/"))
    assert not any(name.startswith(("tests/", "data/")) for name in inside)


@pytest.mark.ways_in
def test_pip_install_then_run_from_any_folder(wheel, tmp_path):
    python, before = fresh_venv(tmp_path / "venv", ("torch",))
    started = time.perf_counter()
    run([str(python), "-m", "pip", "install", "-q", f"{wheel}[notebooks]"])
    took = time.perf_counter() - started
    after = installed(python)
    print("\n" + summary("pip install tas_lite[notebooks] (torch already there)", before, after,
                         site_megabytes(python), took))
    assert not set(after) & JUPYTER_SERVERS and all(after[n] == v for n, v in before.items())
    script = python.parent / "tas-lite"
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    env = clean_env(TAS_LITE_HOME=str(tmp_path / "home"))
    version = run([str(script), "--version"], cwd=elsewhere, env=env).stdout
    assert version == f"tas-lite {tas_lite.__version__}\n"
    started = time.perf_counter()
    run([str(script), "run", "--profile", "smoke", "--only", "05", "06", "--out", str(tmp_path / "out")],
        cwd=elsewhere, env=env, timeout=1200)
    print(f"tas-lite run --profile smoke --only 05 06: {time.perf_counter() - started:.0f} s")
    for name in ("05_distillation", "06_results"):
        text = notebook_text(tmp_path / "out" / f"{name}.ipynb")
        assert f"{paths.PACKAGED}/results/" in text and "no reference results" not in text.lower(), name
    assert (tmp_path / "out" / "index.html").is_file()


def colab_cell_driver(cell: str, start: Path) -> str:
    """A script that runs the Colab cell the way Colab does: `google.colab` imported, the notebook's folder as cwd."""
    return (f"import os, sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
            f"os.chdir({str(start)!r})\nexec(compile({cell!r}, 'colab cell', 'exec'), {{}})\n"
            "print('CWD', os.getcwd())\n")


@pytest.mark.ways_in
def test_colab_cell_then_notebook_05_from_the_clone(tmp_path):
    origin = course_copy(tmp_path / "origin")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q", str(origin)])
    run([*git, "add", "-A"])
    run([*git, "commit", "-q", "-m", "the course"])
    python, before = fresh_venv(tmp_path / "colab", ("torch", "torchvision", "timm"))
    content = tmp_path / "content"
    content.mkdir()
    env = clean_env(TAS_LITE_REPO=f"file://{origin}")
    started = time.perf_counter()
    result = run([str(python), "-c", colab_cell_driver(colab.install_cell(), content)], env=env)
    took = time.perf_counter() - started
    clone = content / "tas_lite"
    assert f"tas_lite installed from file://{origin}; working in {clone}" in result.stdout
    assert f"CWD {clone}" in result.stdout and (clone / "results").is_dir()
    after = installed(python)
    print("\n" + summary("Colab cell (pip install -e clone[notebooks]; torch, torchvision, timm already there)",
                         before, after, site_megabytes(python), took))
    assert not set(after) & JUPYTER_SERVERS, "the Colab cell installed a Jupyter server package"
    assert {n: after.get(n) for n in before} == before, "the Colab cell replaced a package Colab already had"
    env = clean_env(TAS_LITE_HOME=str(tmp_path / "home"), JUPYTER_PATH=str(python.parent.parent / "share" / "jupyter"))
    executed = tmp_path / "05_executed.ipynb"
    started = time.perf_counter()
    run([str(python), "-m", "papermill", "notebooks/05_distillation.ipynb", str(executed), "-k", "python3",
         "-p", "PROFILE", "smoke", "-p", "PROGRESS", "False", "--cwd", str(clone / "notebooks")],
        cwd=clone, env=env, timeout=1200)
    print(f"notebook 05, smoke profile, from the clone: {time.perf_counter() - started:.0f} s")
    text = notebook_text(executed)
    assert f"{clone}/results/" in text and "no reference results" not in text.lower()
