"""What a notebook run will do, checked before anything runs: the numbered notebooks found, the names their
`parameters` cells declare (read from the notebook's JSON, as papermill reads them, without importing
papermill or torch), and every override checked against them.

Light on purpose: the command line rejects a wrong name, type or folder in well under a second with it;
`tas_lite.runner` executes the plan.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import catalog, paths, profiles

NOTEBOOK_PATTERN = re.compile(r"^\d\d_.+\.ipynb$")
_TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": tuple}
_TYPE_COMMENT = re.compile(r"^type:\s*(\S+)\s*")


def discover(notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in order; `only` picks some by number or name ("03", "03_l2g")."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else paths.notebooks_dir()
    if not folder.is_dir():
        raise ValueError(f"notebooks folder {folder} does not exist")
    found = sorted(p for p in folder.iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if not found:
        raise ValueError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    if not only:
        return found
    chosen = set()
    for item in only:
        key = item.removesuffix(".ipynb")
        matches = [p for p in found if p.stem == key or p.stem.split("_", 1)[0] == key.zfill(2)]
        if not matches:
            raise ValueError(f"--only {item!r} matches no notebook; available: {', '.join(p.stem for p in found)}")
        chosen.update(matches)
    return [p for p in found if p in chosen]


def parse_value(text: str) -> Any:
    """A CLI string as a Python value: literals (3, 0.5, [0, 1], 'x'), true/false/none in any case, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    return text


@dataclass(frozen=True)
class ParamSpec:
    """One name of a notebook's parameters cell and the values it accepts (empty `types`: any)."""

    name: str
    default: str
    types: tuple[type, ...] = ()
    items: tuple[type, ...] = ()
    nullable: bool = True
    help: str = ""

    def describe(self) -> str:
        names = [f"list of {'/'.join(t.__name__ for t in self.items)}" if t is list and self.items else t.__name__
                 for t in self.types] or ["any literal"]
        return " or ".join(names + (["None"] if self.nullable and self.types else []))

    def check(self, value: Any, where: str) -> Any:
        """`value` if it fits (ints count as floats; "a,b" counts as a list), else a ValueError."""
        if value is None and self.nullable or not self.types:
            return value
        if list in self.types and isinstance(value, str):
            value = [parse_value(part.strip()) for part in value.split(",") if part.strip()]
        ok = any(_fits(value, t) for t in self.types)
        if ok and isinstance(value, list) and self.items:
            ok = all(any(_fits(item, t) for t in self.items) for item in value)
        if not ok:
            raise ValueError(f"parameter {self.name} of {where} expects {self.describe()}, "
                             f"got {value!r} ({type(value).__name__})")
        return value


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _spec(name: str, default: str, annotation: str, help_text: str) -> ParamSpec:
    """Accepted types from, in order: an annotation or `# type:` comment, a literal default, the profile table."""
    if annotation in _TYPE_NAMES:
        return ParamSpec(name, default, (_TYPE_NAMES[annotation],), nullable=default == "None", help=help_text)
    try:
        literal = ast.literal_eval(default)
    except (ValueError, SyntaxError):
        return ParamSpec(name, default, help=help_text)  # an expression: accept any literal
    if literal is not None:
        items = tuple({type(v) for v in literal}) if isinstance(literal, list) and literal else ()
        return ParamSpec(name, default, (type(literal),), items, nullable=False, help=help_text)
    values = [table[name.lower()] for table in profiles.PROFILES.values() if name.lower() in table]
    types = tuple(dict.fromkeys(type(v) for v in values if v is not None))
    items = tuple(dict.fromkeys(type(i) for v in values if isinstance(v, list) for i in v))
    return ParamSpec(name, default, types, items, nullable=True, help=help_text)


def parameters_cell(path: str | Path) -> str:
    """The source of a notebook's cell tagged `parameters` ("" when it has none)."""
    path = Path(path)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read notebook {path}: {err}") from err
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return ""


def notebook_parameters(path: str | Path) -> dict[str, ParamSpec]:
    """The names a notebook's `parameters` cell assigns, with their accepted types: each top-level `NAME = value`
    (or `NAME: type = value`), its trailing comment as help and `# type: T` as its type, as papermill reads them."""
    source = parameters_cell(path)
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"the parameters cell of {Path(path).name} is not valid Python (line {err.lineno}): "
                         f"{err.msg}") from err
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    specs = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None or not isinstance(target, ast.Name):
            continue
        comment = comments.get(node.end_lineno, "")
        type_comment = _TYPE_COMMENT.match(comment)
        annotation = ast.unparse(node.annotation) if isinstance(node, ast.AnnAssign) else (
            type_comment.group(1) if type_comment else "None")
        help_text = comment[type_comment.end():] if type_comment else comment
        default = ast.get_source_segment(source, node.value) or ast.unparse(node.value)
        specs[target.id] = _spec(target.id, " ".join(default.split()), annotation, help_text)
    return specs


@dataclass
class Job:
    """One notebook to execute and the papermill parameters it gets."""

    path: Path
    parameters: dict[str, Any]


def default_dir(profile: str) -> Path:
    """Where a profile's run writes by default: `outputs/<profile>`."""
    return paths.outputs_dir() / profile


def batch_parameters(out_dir: Path) -> dict[str, Any]:
    """What every batch-run notebook learns from the runner, where it declares the name: no widgets, no
    progress bars (papermill logs each update), and where to keep its results."""
    return {"INTERACTIVE": False, "PROGRESS": False, "RESULTS_DIR": str(Path(out_dir).resolve() / "results")}


def plan(profile: str, notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None,
         parameters: dict[str, Any] | None = None, batch: dict[str, Any] | None = None,
         check_model: Callable[[str], Any] | None = None) -> list[Job]:
    """Validate the profile and every override against the selected notebooks; nothing runs here.

    An override applies to the notebooks that declare it; a name no selected notebook declares, or a
    value of the wrong type, is a ValueError listing the valid names and types. Method names are checked
    here; model names (TEACHER, STUDENT) by `check_model`, a callable raising ValueError for an unknown
    name (the runner passes the model zoo's; without it no torch is needed). `batch` values
    (`batch_parameters`) go to the notebooks that declare them, and overrides win over them.
    """
    profiles.resolve(profile)  # an unknown profile is an error before anything else
    found = discover(notebooks_dir, only)
    specs = {path: notebook_parameters(path) for path in found}
    jobs = [Job(path, {name: value for name, value in {"PROFILE": profile, **(batch or {})}.items()
                       if name in specs[path]}) for path in found]
    for name, value in (parameters or {}).items():
        if name == "PROFILE":
            raise ValueError("set the profile with --profile (run(profile=...)), not as a parameter")
        declared = [job for job in jobs if name in specs[job.path]]
        if not declared:
            raise ValueError(f"unknown parameter {name!r}: no selected notebook declares it; valid names: "
                             f"{_valid_names(specs)}")
        for job in declared:
            job.parameters[name] = specs[job.path][name].check(value, job.path.name)
            _check_names(name, job.parameters[name], job.path.name, check_model)
    return jobs


def _check_names(name: str, value: Any, where: str, check_model: Callable[[str], Any] | None) -> None:
    """Method and model names must exist: a typo found here costs nothing, found in notebook 05 it costs
    every notebook before it (and `METHODS []` would train nothing and fail on an empty table)."""
    if value is None:
        return
    if name == "METHODS":
        if not value:
            raise ValueError(f"parameter METHODS of {where} needs at least one method; allowed: "
                             f"{', '.join(catalog.NAMES)}")
        try:
            catalog.check(value)
        except ValueError as err:
            raise ValueError(f"parameter METHODS of {where}: {err}") from err
    elif name in ("TEACHER", "STUDENT") and check_model is not None:
        try:
            check_model(value)
        except ValueError as err:
            raise ValueError(f"parameter {name} of {where}: {err}") from err


def _valid_names(specs: dict[Path, dict[str, ParamSpec]]) -> str:
    where: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for path, declared in specs.items():
        for name, spec in declared.items():
            if name != "PROFILE":
                where.setdefault(name, []).append(path.stem.split("_", 1)[0])
                kinds[name] = spec.describe()
    if not where:
        return "(none: the selected notebooks declare no parameters besides PROFILE)"
    return ", ".join(f"{n} [{kinds[n]}] ({' '.join(where[n])})" for n in sorted(where))
