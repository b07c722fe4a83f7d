"""Run the numbered notebooks with papermill, in order, for one profile, and render an HTML site.

`run("cpu")` validates every `-p` override against the notebooks' `parameters` cells first (papermill
itself only warns about unknown names; method and model names are checked too) and that the output
folder takes files, then executes each notebook in the notebooks folder with the
venv's `python3` kernel, writes the executed copies and an `index.html` to `outputs/<profile>/`, and
stops at the first failing notebook with that cell's error, keeping its executed copy.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
from papermill.exceptions import PapermillExecutionError

from . import catalog, config, models, profiles
from .report import NotebookRun, RunReport, write_site
from .util import check_writable, say

NOTEBOOK_PATTERN = re.compile(r"^\d\d_.+\.ipynb$")
KERNEL = "python3"
_TYPE_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": tuple}


class NotebookFailed(RuntimeError):
    """A notebook raised in a cell; `report` holds the run so far (the site is already written)."""

    def __init__(self, message: str, report: RunReport):
        super().__init__(message)
        self.report = report


def discover(notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in order; `only` picks some by number or name ("03", "03_l2g")."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else config.notebooks_dir()
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


# ---- parameters ---------------------------------------------------------------------------------------

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


def notebook_parameters(path: str | Path) -> dict[str, ParamSpec]:
    """The names a notebook's `parameters` cell declares, with their accepted types (papermill.inspect_notebook)."""
    inspected = papermill.inspect_notebook(str(path))
    return {name: _spec(name, p["default"], p["inferred_type_name"], p["help"]) for name, p in inspected.items()}


@dataclass
class Job:
    """One notebook to execute and the papermill parameters it gets."""

    path: Path
    parameters: dict[str, Any]


def default_dir(profile: str) -> Path:
    """Where a profile's run writes by default: `outputs/<profile>`."""
    return config.outputs_dir() / profile


def batch_parameters(out_dir: Path) -> dict[str, Any]:
    """What every batch-run notebook learns from the runner, where it declares the name: no widgets, no
    progress bars (papermill logs each update), and where to keep its results."""
    return {"INTERACTIVE": False, "PROGRESS": False, "RESULTS_DIR": str(Path(out_dir).resolve() / "results")}


def plan(profile: str, notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None,
         parameters: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> list[Job]:
    """Validate the profile and every override against the selected notebooks; nothing runs here.

    An override applies to the notebooks that declare it; a name no selected notebook declares, or a
    value of the wrong type, is a ValueError listing the valid names and types. `batch` values
    (`batch_parameters`) go to the notebooks that declare them, and overrides win over them.
    """
    profiles.resolve(profile)  # an unknown profile is an error before anything else
    paths = discover(notebooks_dir, only)
    specs = {path: notebook_parameters(path) for path in paths}
    jobs = [Job(path, {name: value for name, value in {"PROFILE": profile, **(batch or {})}.items()
                       if name in specs[path]}) for path in paths]
    for name, value in (parameters or {}).items():
        if name == "PROFILE":
            raise ValueError("set the profile with --profile (run(profile=...)), not as a parameter")
        declared = [job for job in jobs if name in specs[job.path]]
        if not declared:
            raise ValueError(f"unknown parameter {name!r}: no selected notebook declares it; valid names: "
                             f"{_valid_names(specs)}")
        for job in declared:
            job.parameters[name] = specs[job.path][name].check(value, job.path.name)
            _check_names(name, job.parameters[name], job.path.name)
    return jobs


def _check_names(name: str, value: Any, where: str) -> None:
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
    elif name in ("TEACHER", "STUDENT"):
        try:
            models.default_img_size(value)
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


# ---- execution ----------------------------------------------------------------------------------------

@contextmanager
def kernel_environment() -> Iterator[None]:
    """Environment the kernels inherit: the venv's kernelspecs first (a user-level `python3` can't take
    over), and matplotlib's inline backend (an inherited MPLBACKEND=Agg would keep figures out of the
    executed notebooks). Everything a notebook needs to know comes as papermill parameters instead."""
    saved = dict(os.environ)
    venv_jupyter = str(Path(sys.prefix) / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (venv_jupyter, saved.get("JUPYTER_PATH")) if p)
    os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(profile: str = "cpu", *, notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None,
        parameters: dict[str, Any] | None = None, out_dir: str | Path | None = None, progress: bool = True,
        cell_timeout: int | None = None, start_timeout: int = 180) -> RunReport:
    """Execute the notebooks in order (cwd: their folder) and write executed copies plus `index.html`.

    Raises ValueError before anything runs when a parameter is unknown, mistyped or names no method or
    model, `util.NotWritable` when the output folder takes no files, and NotebookFailed (with the cell's
    error and the executed copy's path) when a notebook fails; later notebooks don't run.
    """
    out = Path(out_dir) if out_dir is not None else default_dir(profile)
    jobs = plan(profile, notebooks_dir, only, parameters, batch_parameters(out))
    check_writable(out, "choose another folder with --out (out_dir=), or fix its permissions")
    report = RunReport(profile, out, [NotebookRun(j.path, out / j.path.name, j.parameters) for j in jobs])
    started = time.perf_counter()
    failure = None
    with kernel_environment():
        for k, record in enumerate(report.notebooks, start=1):
            say(progress, f"[{k}/{len(jobs)}] {record.name} ({profile}) ... ", end="")
            failure = _execute(record, cell_timeout, start_timeout)
            say(progress, f"{record.status} in {record.wall_s:.1f} s" + (f"\n  {failure}" if failure else ""))
            if failure:
                break
    report.wall_s = time.perf_counter() - started
    report.index = write_site(report)
    say(progress, f"{sum(nb.status == 'ok' for nb in report.notebooks)}/{len(jobs)} notebooks ok in "
                   f"{report.wall_s:.1f} s; site: {report.index}")
    if failure:
        raise NotebookFailed(failure, report)
    return report


def _execute(record: NotebookRun, cell_timeout: int | None, start_timeout: int) -> str | None:
    """Run one notebook with papermill; fill `record`; return an error message or None."""
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(record.source), str(record.output), parameters=record.parameters,
                                   kernel_name=KERNEL, cwd=str(record.source.parent), progress_bar=False,
                                   log_output=False, start_timeout=start_timeout, execution_timeout=cell_timeout,
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no kernel chatter on stderr
        record.status = "ok"
    except PapermillExecutionError as err:
        first_line = next((line for line in err.source.splitlines() if line.strip()), "")
        record.error = f"{err.ename}: {err.evalue}"
        record.status = "failed"
        message = (f"{record.source.name} failed in cell {err.cell_index} (In [{err.exec_count}], "
                   f"starting {first_line.strip()!r}): {record.error}")
    except Exception as err:  # kernel died, cell timeout, unreadable notebook: stop the run the same way
        record.error = f"{type(err).__name__}: {err}"
        record.status = "failed"
        message = f"{record.source.name} failed: {record.error}"
    record.wall_s = time.perf_counter() - started
    if record.status == "ok":
        return None
    kept = f"; executed copy kept at {record.output}" if record.output.is_file() else ""
    return message + kept
