"""The package's shape: modules import one way (each only from modules above it and from the layers its layer may
use, at module level), every
module imports alone in a fresh interpreter, the command line starts without the heavy libraries, no
function grows past ~60 lines, and nothing cites files outside the repository."""

import ast
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tas_lite

PACKAGE = Path(tas_lite.__file__).parent
ORDER = list(tas_lite.MODULES)
REPO = PACKAGE.parent
# What the command line imports before it knows the command: enough to parse, check names, numbers and folders.
LIGHT = {"util", "paths", "profiles", "catalog", "plan"}
HEAVY = ("torch", "torchvision", "timm", "numpy", "scipy", "sklearn", "pandas", "matplotlib", "papermill", "nbformat",
         "nbconvert", "jsonschema", "IPython", "ipywidgets", "safetensors")


def tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text())


def internal_imports(name: str) -> set[str]:
    """tas_lite modules a module imports (relative `from . import x`, `from .x import y`)."""
    found = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_every_module_is_listed_in_import_order():
    on_disk = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert on_disk == set(ORDER), "tas_lite.MODULES must list every module, in import order"


@pytest.mark.parametrize("name", ORDER)
def test_modules_import_only_from_modules_above_them(name):
    below = set(ORDER[ORDER.index(name) + 1:]) | {name}
    assert not internal_imports(name) & below, f"{name} imports {internal_imports(name) & below}, which sit below it"


# The layers, bottom up, and what each may import besides its own layer: a plot that imports a loss, or a
# table that loads data, fails here even where the plain module order would allow it.
LAYERS = {
    "settings": {"util", "paths", "colab", "config", "distributed", "profiles", "catalog", "plan", "stats"},
    "data and models": {"sources", "data", "stages", "models"},
    "analysis": {"cka", "probes"},
    "method": {"losses", "assistant", "heads", "methods"},
    "records": {"results"},
    "training": {"recipes", "checkpoints", "loop", "distill", "teachers"},
    "presentation": {"plots", "widgets", "figures", "tables", "report"},
    "experiments": {"experiments"},
    "interface": {"runner", "steptimes", "bench"},
}
MAY_IMPORT = {
    "settings": set(),
    "data and models": {"settings"},
    "analysis": {"settings", "data and models"},
    "method": {"settings", "data and models", "analysis"},
    "records": {"settings"},
    "training": {"settings", "data and models", "analysis", "method", "records"},
    "presentation": {"settings", "records"},
    "experiments": {"settings", "data and models", "method", "records", "training", "presentation"},
    "interface": set(LAYERS),
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def test_every_module_sits_in_one_layer():
    assert set(LAYER_OF) == set(ORDER), f"unplaced: {set(ORDER) - set(LAYER_OF)}; gone: {set(LAYER_OF) - set(ORDER)}"


@pytest.mark.parametrize("name", ORDER)
def test_modules_import_only_from_the_layers_theirs_may_use(name):
    layer = LAYER_OF[name]
    allowed = MAY_IMPORT[layer] | {layer}
    crossing = {m: LAYER_OF[m] for m in internal_imports(name) if LAYER_OF[m] not in allowed}
    assert not crossing, f"{name} ({layer}) imports {crossing}; {layer} may use only {sorted(allowed)}"


def test_the_layer_rule_catches_a_plot_that_imports_a_loss(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "internal_imports", lambda name: {"losses"} if name == "plots" else set())
    with pytest.raises(AssertionError, match="plots .presentation. imports .'losses': 'method'"):
        test_modules_import_only_from_the_layers_theirs_may_use("plots")


@pytest.mark.parametrize("name", [*ORDER, "__main__"])
def test_all_imports_sit_at_module_level(name):
    for node in ast.walk(tree(name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{name}.{node.name} imports inside a function (line {inner[0].lineno})"


def test_the_command_line_imports_only_light_modules():
    """`__main__` imports light modules at module level and reaches a command's modules when the command runs,
    as the package's lazy attributes (`tas_lite.runner.run(...)`): the one place a module is reached lazily."""
    assert internal_imports("__main__") <= LIGHT | {"__version__"}
    code = ("import sys, tas_lite.__main__ as m; m._parser('tas-lite').parse_args(['run', '--profile', 'smoke']); "
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(HEAVY)!r}))")
    result = _fresh(code)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-800:]


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_light_modules_stay_light(name):
    result = _fresh(f"import sys, tas_lite.{name}; print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(HEAVY)!r}))")
    assert result.returncode == 0 and result.stdout.strip() == "[]", f"tas_lite.{name} imports {result.stdout}"


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_each_module_imports_alone_in_a_fresh_interpreter():
    """One fresh interpreter per module, all started at once (each pays torch's import on its own)."""
    children = {m: subprocess.Popen([sys.executable, "-c", f"import tas_lite.{m}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for m in [*ORDER, "__main__"]}
    failed = {}
    for name, child in children.items():
        _, err = child.communicate(timeout=600)
        if child.returncode:
            failed[name] = err[-400:]
    assert not failed, failed


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_modules_import_in_any_order(order):
    names = ORDER[::-1] if order == "reversed" else random.Random(0).sample(ORDER, len(ORDER))
    result = _fresh("; ".join(f"import tas_lite.{m}" for m in names))
    assert result.returncode == 0, result.stderr[-800:]


def test_submodules_are_reachable_from_the_package():
    result = _fresh("import tas_lite; print(tas_lite.cka.linear.__name__, tas_lite.models.create.__name__)")
    assert result.stdout.split() == ["linear", "create"], result.stderr[-800:]
    with pytest.raises(AttributeError, match="submodules: util, paths"):
        tas_lite.nonexistent  # noqa: B018


def test_no_function_is_longer_than_60_lines():
    long = [f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1})" for path in PACKAGE.glob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


def test_the_repository_stands_alone():
    """No file the repository tracks cites documents that live outside it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = ("METHOD" + ".md", "DESIGN" + ".md", "NOTEBOOKS" + ".md", "../" + "shared")
    hits = [f for f in tracked if (REPO / f).is_file() and f.endswith((".py", ".ipynb", ".md", ".toml", ".yml"))
            and any(word in (REPO / f).read_text(errors="ignore") for word in outside)]
    assert not hits, f"these files cite documents outside the repository: {hits}"


def test_the_readmes_module_table_is_true():
    """Every module once, in import order, each in the layer this test gives it."""
    rows = re.findall(r"^\| ([a-z ]+) \| `(\w+)` \|", (REPO / "README.md").read_text(), flags=re.M)
    listed = [(layer, module) for layer, module in rows if module != "__main__"]
    assert [module for _, module in listed] == ORDER, "the README's module table must list tas_lite.MODULES in order"
    wrong = {module: layer for layer, module in listed if LAYER_OF[module] != layer}
    assert not wrong, f"README places these in the wrong layer: {wrong}"
