"""The course's address, written once (pyproject's `[project.urls]` Repository), and what is generated from it:
the README's "Open in Colab" badges and each notebook's first cells (the badge under the title, then the
Colab-only cell that clones the repository, installs it with the `[notebooks]` extra and moves into it).

`sync()` (`make sync`) rewrites them after the address changes; `stale()` lists what disagrees (a test
keeps it empty). In Colab, `TAS_LITE_REPO` overrides the address at run time: a fork, a mirror.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

from . import paths
from .util import atomic_write

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the installed package's metadata holds the same address
    tomllib = None

BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\((https://colab\.research\.google\.com/github/[^)]*?"
                    r"/notebooks/(\d\d_\w+)\.ipynb)\)")
_NOTEBOOK = re.compile(r"^\d\d_\w+\.ipynb$")

INSTALL_CELL = '''# NBVAL_SKIP
# Colab only (elsewhere this cell does nothing): fetch the course with a shallow git clone, install it with
# its [notebooks] extra (Colab's own torch and Jupyter stay as they are) and work inside it. A fork or a
# mirror: set os.environ["TAS_LITE_REPO"] to its git URL first.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    repo = os.environ.get("TAS_LITE_REPO", "{repository}")
    inside = os.path.isfile(os.path.join("tas_lite", "__init__.py"))  # this cell ran before: already in the course
    course = os.getcwd() if inside else os.path.abspath("tas_lite")

    def run(*command):
        return subprocess.run(command, capture_output=True, text=True)

    if not os.path.isdir(course) and run("git", "clone", "-q", "--depth", "1", repo, course).returncode:
        print(f"Could not clone {{repo}}: set TAS_LITE_REPO to the course's git URL (a fork or mirror you can reach) "
              "and run this cell again.")
    elif (pip := run(sys.executable, "-m", "pip", "install", "-q", "-e", course + "[notebooks]")).returncode:
        print(f"Could not install {{course}}: {{(pip.stderr.strip().splitlines() or ['pip failed'])[-1]}}")
    else:
        os.chdir(course)
        print(f"tas_lite installed from {{repo}}; working in {{course}}")
'''


def repository() -> str:
    """The course's git repository: `[project.urls]` Repository in pyproject (a checkout), else the installed
    package's metadata."""
    if paths.in_checkout() and tomllib is not None:
        urls = tomllib.loads((paths.REPO_DIR / "pyproject.toml").read_text())["project"].get("urls", {})
        if "Repository" in urls:
            return urls["Repository"]
        raise ValueError("pyproject.toml names no Repository under [project.urls]; add the course's git URL there")
    for entry in metadata.metadata("tas_lite").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip()
    raise ValueError("the installed tas_lite names no Repository URL; reinstall it from the course's repository")


def github_path(url: str) -> str:
    """"owner/name" of a GitHub URL (Colab opens notebooks from GitHub only)."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?", url)
    if not match:
        raise ValueError(f"repository {url!r} is not a https://github.com/<owner>/<name> URL; Colab's badges open "
                         f"notebooks from GitHub only")
    return match.group(1)


def colab_url(notebook: str, url: str | None = None) -> str:
    """The Colab address that opens `notebook` (e.g. "05_distillation.ipynb") from the repository's main branch."""
    if not _NOTEBOOK.match(notebook):
        raise ValueError(f"{notebook!r} is not a numbered notebook name (NN_name.ipynb)")
    return (f"https://colab.research.google.com/github/{github_path(url or repository())}/blob/{BRANCH}/"
            f"notebooks/{notebook}")


def badge(notebook: str, url: str | None = None) -> str:
    """The "Open in Colab" badge, as Markdown, for one notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, url)})"


def install_cell(url: str | None = None) -> str:
    """The source of every notebook's Colab cell (the second cell), cloning `url` (default: `repository()`)."""
    return INSTALL_CELL.format(repository=url or repository()).rstrip("\n")


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _synced_notebook(text: str, name: str, url: str) -> str:
    """A notebook's JSON with its first cell's badge right under the title and its second cell the install cell."""
    nb = json.loads(text)
    title_cell, install = nb["cells"][0], nb["cells"][1]
    lines = [line for line in "".join(title_cell["source"]).split("\n") if not _BADGE.search(line)]
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    body = lines[1:]
    while body and not body[0].strip():
        body.pop(0)
    title_cell["source"] = _lines("\n".join([lines[0], "", badge(name, url), *([""] + body if body else [])]))
    install["source"] = _lines(install_cell(url))
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _synced_readme(text: str, url: str) -> str:
    return _BADGE.sub(lambda m: badge(f"{m.group(2)}.ipynb", url), text)


def _expected(root: Path) -> dict[Path, str]:
    """Every generated file's content as `sync` would write it."""
    url = repository()
    expected = {root / "README.md": _synced_readme((root / "README.md").read_text(), url)}
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        expected[path] = _synced_notebook(path.read_text(), path.name, url)
    return expected


def stale(root: str | Path | None = None) -> list[Path]:
    """The files (README, notebooks) whose badges or Colab cell disagree with the repository's address."""
    return [path for path, text in _expected(Path(root or paths.REPO_DIR)).items() if path.read_text() != text]


def sync(root: str | Path | None = None) -> list[Path]:
    """Rewrite the README's badges and the notebooks' first cells from the repository's address; returns the
    files changed. Only the badge line and the Colab cell change; every other cell is kept as it is."""
    changed = []
    for path, text in _expected(Path(root or paths.REPO_DIR)).items():
        if path.read_text() != text:
            atomic_write(path, text)
            changed.append(path)
    return changed
