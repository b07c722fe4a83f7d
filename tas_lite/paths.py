"""Where the course's files live: the notebooks and the shipped reference results (a source checkout's own
folders, or the copies an installed package carries), the caches and the outputs.

Light on purpose (no torch, no numpy): the command line reads it before deciding what else to import.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from .util import check_writable

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
PACKAGED = "_course"  # where a wheel carries the checkout's notebooks/ and results/ (pyproject's package-dir)


def in_checkout() -> bool:
    """True when tas_lite is imported from a source checkout (pyproject + notebooks beside it)."""
    return (REPO_DIR / "pyproject.toml").is_file() and (REPO_DIR / "notebooks").is_dir()


def _course_folder(name: str) -> Path:
    """A folder of the course: `<repo>/<name>` in a checkout, else the installed package's copy."""
    if in_checkout():
        return REPO_DIR / name
    folder = resources.files(__package__).joinpath(PACKAGED, name)
    if not isinstance(folder, Path):
        raise OSError(f"tas_lite is installed as an archive ({folder}); reinstall it as files (pip install tas_lite) "
                      f"so that its {name} folder can be read")
    return folder


def results_dir() -> Path:
    """The reference results that ship with the course: `<repo>/results` in a checkout, else the package's copy."""
    return _course_folder("results")


# The shipped reference sweep of each dataset: the course track, its saturated predecessor, the paper's data.
REFERENCE_FOLDERS = {"fashion_mnist": "cpu", "digits": "digits", "cifar100": "gpu"}


def reference_dir(dataset: str) -> Path:
    """The shipped reference comparison for `dataset` (results/cpu for Fashion-MNIST, results/digits for
    digits, results/gpu for CIFAR-100); a dataset without one gets results/<dataset>, which may not exist."""
    return results_dir() / REFERENCE_FOLDERS.get(dataset, dataset)


def notebooks_dir() -> Path:
    """The numbered notebooks of the course: `<repo>/notebooks` in a checkout, else the package's copy."""
    return _course_folder("notebooks")


def home() -> Path:
    """Cache root: $TAS_LITE_HOME, else `<repo>/data` in a checkout, else `~/.cache/tas_lite`."""
    env = os.environ.get("TAS_LITE_HOME")
    if env:
        root = Path(env).expanduser()
    elif in_checkout():
        root = REPO_DIR / "data"
    else:
        root = Path.home() / ".cache" / "tas_lite"
    root.mkdir(parents=True, exist_ok=True)
    return root


def datasets_dir() -> Path:
    """Folder for downloaded datasets (CIFAR archives and the like)."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """Folder for trained models (safetensors + JSON sidecars)."""
    path = home() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir() -> Path:
    """Where runs write executed notebooks, results and reports: `<repo>/outputs` in a checkout, else under home()."""
    path = (REPO_DIR if in_checkout() else home()) / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def copy_notebooks(destination: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Copy the course's numbered notebooks into `destination` (created if needed) for Jupyter; returns the
    copies. An existing notebook there is kept (it may hold your edits) unless `overwrite`: then a ValueError
    names the ones in the way before anything is copied."""
    target = Path(destination).expanduser()
    sources = sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file, not a folder; choose a folder for the notebooks")
    clashes = [target / p.name for p in sources if (target / p.name).exists()]
    if clashes and not overwrite:
        raise ValueError(f"{len(clashes)} notebook(s) already in {target} (e.g. {clashes[0].name}), perhaps with your "
                         f"edits; choose another folder, or pass --overwrite to replace them")
    check_writable(target, "choose another folder for the notebooks")
    return [Path(shutil.copyfile(p, target / p.name)) for p in sources]
