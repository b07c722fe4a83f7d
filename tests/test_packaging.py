"""What pyproject promises: one version, declared dependencies that match what the code imports (base for
the library, the [notebooks] extra for papermill and the report), extras that keep Jupyter servers out of
Colab, one address, a licence. (The wheel's contents: tests/test_ways_in.py.)"""

import ast
import importlib.metadata
import sys

import pytest
from packaging.requirements import Requirement

import tas_lite
from tas_lite import paths

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((paths.REPO_DIR / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
NOTEBOOK_MODULES = {"report", "runner", "bench", "widgets"}  # notebooks only: need the [notebooks] extra
JUPYTER_SERVERS = {"jupyterlab", "notebook", "jupyter-server", "nbclassic", "jupyter", "nbval"}


def names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


def third_party_imports(module: str) -> set[str]:
    tree = ast.parse((paths.PACKAGE_DIR / f"{module}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"tas_lite", "__future__"}


PROVIDERS = importlib.metadata.packages_distributions()  # import name -> the distributions that provide it


def distributions(import_name: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in PROVIDERS.get(import_name, [])}


def test_one_version():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tas_lite.__version__"}


def test_every_import_is_declared_where_it_is_needed():
    base, notebooks = names(PROJECT["dependencies"]), names(PROJECT["optional-dependencies"]["notebooks"])
    missing = {}
    for module in [*tas_lite.MODULES, "__main__"]:
        allowed = base | (notebooks if module in NOTEBOOK_MODULES else set())
        lacking = {name for name in third_party_imports(module) if not distributions(name) & allowed}
        if lacking:
            missing[module] = sorted(lacking)
    assert not missing, f"imports no dependency declares: {missing}"


def test_nothing_declared_goes_unused():
    imported = set().union(*(distributions(n) for m in tas_lite.MODULES for n in third_party_imports(m)))
    assert names(PROJECT["dependencies"]) - imported == set()


def test_extras_keep_jupyter_servers_and_test_tools_out_of_what_colab_installs():
    extras = PROJECT["optional-dependencies"]
    assert not (names(PROJECT["dependencies"]) | names(extras["notebooks"])) & (JUPYTER_SERVERS | {"pytest", "playwright"})
    assert names(extras["lab"]) == {"jupyterlab"} and {"pytest", "nbval", "playwright"} <= names(extras["test"])
    assert all(not any(op in r for op in ("==", "<", "~=")) for r in PROJECT["dependencies"]), "lower bounds, not pins"


def test_the_address_and_the_licence():
    assert list(PROJECT["urls"]) == ["Repository"] and PROJECT["license"] == "MIT"
    assert (paths.REPO_DIR / "LICENSE").read_text().startswith("MIT License")
    assert "cff-version" in (paths.REPO_DIR / "CITATION.cff").read_text()
