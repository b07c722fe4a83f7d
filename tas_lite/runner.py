"""Run the numbered notebooks with papermill, in order, for one profile, and render an HTML site.

`run("cpu")` validates every `-p` override against the notebooks' `parameters` cells first (papermill
itself only warns about unknown names), then executes each notebook in the notebooks folder with the
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config

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
    values = [table[name.lower()] for table in config.PROFILES.values() if name.lower() in table]
    types = tuple(dict.fromkeys(type(v) for v in values if v is not None))
    items = tuple(dict.fromkeys(type(i) for v in values if isinstance(v, list) for i in v))
    return ParamSpec(name, default, types, items, nullable=True, help=help_text)


def notebook_parameters(path: str | Path) -> dict[str, ParamSpec]:
    """The names a notebook's `parameters` cell declares, with their accepted types (papermill.inspect_notebook)."""
    import papermill

    inspected = papermill.inspect_notebook(str(path))
    return {name: _spec(name, p["default"], p["inferred_type_name"], p["help"]) for name, p in inspected.items()}


@dataclass
class Job:
    """One notebook to execute and the papermill parameters it gets."""

    path: Path
    parameters: dict[str, Any]


def plan(profile: str, notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None,
         parameters: dict[str, Any] | None = None) -> list[Job]:
    """Validate the profile and every override against the selected notebooks; nothing runs here.

    An override applies to the notebooks that declare it; a name no selected notebook declares, or a
    value of the wrong type, is a ValueError listing the valid names and types.
    """
    config.profile(profile)
    paths = discover(notebooks_dir, only)
    specs = {path: notebook_parameters(path) for path in paths}
    jobs = [Job(path, {"PROFILE": profile} if "PROFILE" in specs[path] else {}) for path in paths]
    for name, value in (parameters or {}).items():
        if name == "PROFILE":
            raise ValueError("set the profile with --profile (run(profile=...)), not as a parameter")
        declared = [job for job in jobs if name in specs[job.path]]
        if not declared:
            raise ValueError(f"unknown parameter {name!r}: no selected notebook declares it; valid names: "
                             f"{_valid_names(specs)}")
        for job in declared:
            job.parameters[name] = specs[job.path][name].check(value, job.path.name)
    return jobs


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

@dataclass
class NotebookRun:
    """What happened to one notebook: status "ok", "failed" or "not run", wall time, outputs."""

    source: Path
    output: Path
    parameters: dict[str, Any]
    status: str = "not run"
    wall_s: float = 0.0
    error: str | None = None
    html: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.stem


@dataclass
class RunReport:
    """A run of the notebook sequence; `index` is the site's entry page."""

    profile: str
    out_dir: Path
    notebooks: list[NotebookRun]
    wall_s: float = 0.0
    index: Path | None = None


@contextmanager
def kernel_environment(profile: str, out_dir: Path) -> Iterator[None]:
    """Environment the kernels inherit: the venv's kernelspecs first (a user-level `python3` can't take over),
    the profile, the run's folder (`config.run_dir`), batch mode (no widgets), and matplotlib's inline
    backend (an inherited MPLBACKEND=Agg would keep figures out of the executed notebooks)."""
    saved = dict(os.environ)
    venv_jupyter = str(Path(sys.prefix) / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (venv_jupyter, saved.get("JUPYTER_PATH")) if p)
    os.environ.update(TAS_LITE_PROFILE=profile, TAS_LITE_BATCH="1", TAS_LITE_RUN_DIR=str(Path(out_dir).resolve()))
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

    Raises ValueError before anything runs when a parameter is unknown or mistyped, and NotebookFailed
    (with the cell's error and the executed copy's path) when a notebook fails; later notebooks don't run.
    """
    jobs = plan(profile, notebooks_dir, only, parameters)
    out = Path(out_dir) if out_dir is not None else config.run_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    report = RunReport(profile, out, [NotebookRun(j.path, out / j.path.name, j.parameters) for j in jobs])
    started = time.perf_counter()
    failure = None
    with kernel_environment(profile, out):
        for k, record in enumerate(report.notebooks, start=1):
            _say(progress, f"[{k}/{len(jobs)}] {record.name} ({profile}) ... ", end="")
            failure = _execute(record, cell_timeout, start_timeout)
            _say(progress, f"{record.status} in {record.wall_s:.1f} s" + (f"\n  {failure}" if failure else ""))
            if failure:
                break
    report.wall_s = time.perf_counter() - started
    report.index = write_site(report)
    _say(progress, f"{sum(nb.status == 'ok' for nb in report.notebooks)}/{len(jobs)} notebooks ok in "
                   f"{report.wall_s:.1f} s; site: {report.index}")
    if failure:
        raise NotebookFailed(failure, report)
    return report


def _execute(record: NotebookRun, cell_timeout: int | None, start_timeout: int) -> str | None:
    """Run one notebook with papermill; fill `record`; return an error message or None."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

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


def _say(enabled: bool, text: str, end: str = "\n") -> None:
    if enabled:
        print(text, end=end, flush=True)


# ---- the HTML site ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """Platform, CPU count, Python and torch versions: stamped on every report so runs can be compared."""
    import platform
    from importlib.metadata import version

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": version("torch")}


def write_site(report: RunReport) -> Path:
    """Render each executed notebook to HTML (figures embedded), save its figures as PNGs, and write
    `index.html` (one card per notebook: status, wall time, its figures, links) plus `run.json`."""
    import json

    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    cards = []
    for nb in report.notebooks:
        executed = nb.status != "not run" and nb.output.is_file()
        node = nbformat.read(nb.output if executed else nb.source, as_version=4)
        if executed:
            nb.figures = _save_figures(node, report.out_dir / "figures", nb.name)
            body, _ = exporter.from_notebook_node(node)
            nb.html = nb.output.with_suffix(".html")
            nav = (f'<nav style="padding:8px 16px;font:14px sans-serif;background:#f3f4f6">'
                   f'<a href="index.html">&larr; all notebooks</a> &middot; {_esc(nb.name)} &middot; profile '
                   f'{_esc(report.profile)} &middot; {nb.status}, {nb.wall_s:.1f} s</nav>')
            nb.html.write_text(re.sub(r"(<body[^>]*>)", lambda m, nav=nav: m.group(1) + nav, body, count=1))
        cards.append(_card(nb, node))
    info = machine()
    ok = sum(nb.status == "ok" for nb in report.notebooks)
    summary = (f"{ok} of {len(report.notebooks)} notebooks ran without error in {report.wall_s / 60:.1f} min "
               f"&middot; profile <b>{_esc(report.profile)}</b> &middot; {time.strftime('%Y-%m-%d %H:%M')} "
               f"&middot; {_esc(info['platform'])}, {info['cpu_count']} CPUs, torch {_esc(info['torch'])}")
    index = report.out_dir / "index.html"
    index.write_text(_PAGE.replace("{summary}", summary).replace("{cards}", "\n".join(cards))
                     .replace("{profile}", _esc(report.profile)))
    (report.out_dir / "run.json").write_text(json.dumps({
        "profile": report.profile, "wall_s": round(report.wall_s, 2), "machine": info,
        "notebooks": [{"name": nb.name, "status": nb.status, "wall_s": round(nb.wall_s, 2), "error": nb.error,
                       "parameters": nb.parameters, "figures": len(nb.figures)} for nb in report.notebooks]},
        indent=2, default=str))
    return index


def _save_figures(node, folder: Path, stem: str) -> list[Path]:
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{stem}_*.png"):  # from an earlier run of the same notebook
        stale.unlink()
    paths = []
    for cell in node.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                path = folder / f"{stem}_{len(paths) + 1}.png"
                path.write_bytes(base64.b64decode(png))
                paths.append(path)
    return paths


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def _card(nb: NotebookRun, node) -> str:
    """One notebook's card: title, blurb, status, wall time, check cells, first figure, links, and a
    strip with every figure the notebook drew (each links to its full-size PNG)."""
    paragraphs = [" ".join(part.split()) for c in node.cells if c.cell_type == "markdown"
                  for part in re.split(r"\n\s*\n", c.source)]
    title = next((p.lstrip("# ") for p in paragraphs if p.startswith("# ")), nb.name)
    blurb = next((p for p in paragraphs if p and not p.startswith(("#", "[![", "<", "|", "!", "-", "*", "$"))), "")
    blurb = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", blurb).replace("*", "").replace("`", "")
    if len(blurb) > 300:
        blurb = blurb[:300].rsplit(" ", 1)[0] + " …"
    checks = sum(any(line.lstrip().startswith("assert") for line in c.source.splitlines())
                 for c in node.cells if c.cell_type == "code")
    extra = {k: v for k, v in nb.parameters.items() if k != "PROFILE"}
    thumb = (f'<a href="{_esc(nb.html.name)}"><img src="figures/{_esc(nb.figures[0].name)}" alt="first figure"></a>'
             if nb.figures and nb.html else '<div class="nofig">no figure</div>')
    links = (f'<a href="{_esc(nb.html.name)}">HTML</a> &middot; <a href="{_esc(nb.output.name)}">executed .ipynb</a>'
             if nb.html else "not executed")
    error = f'<pre class="error">{_esc(nb.error)}</pre>' if nb.error else ""
    gallery = "".join(f'<a href="figures/{_esc(f.name)}" title="figure {i}"><img src="figures/{_esc(f.name)}" '
                      f'alt="figure {i} of {_esc(nb.name)}"></a>' for i, f in enumerate(nb.figures, 1))
    gallery = f'<div class="gallery">{gallery}</div>' if len(nb.figures) > 1 else ""
    params = f"<p class=\"meta\">parameters: {_esc(extra)}</p>" if extra else ""
    return f"""<article class="card {nb.status.replace(' ', '-')}">
  {thumb}
  <div class="body">
    <h2><a href="{_esc(nb.html.name) if nb.html else '#'}">{_esc(title)}</a></h2>
    <p class="meta"><span class="badge">{_esc(nb.status)}</span> {nb.wall_s:.1f} s &middot; {len(nb.figures)} figures
      &middot; {checks} check cells &middot; <code>{_esc(nb.source.name)}</code></p>
    <p>{_esc(blurb)}</p>{params}{error}
    <p class="links">{links}</p>
  </div>
  {gallery}
</article>"""


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tas_lite notebooks ({profile})</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f6f7f9; color: #1f2937; }
header { background: #1e3a8a; color: white; padding: 22px 32px; }
header h1 { margin: 0 0 6px; font-size: 26px; } header p { margin: 0; opacity: .9; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 18px; padding: 24px 32px; }
.card { display: flex; flex-wrap: wrap; gap: 16px; background: white; border-radius: 10px; padding: 14px;
        box-shadow: 0 1px 3px rgba(0,0,0,.12); border-left: 6px solid #9ca3af; }
.card.ok { border-left-color: #16a34a; } .card.failed { border-left-color: #dc2626; }
.card img, .nofig { width: 220px; height: 160px; object-fit: contain; border: 1px solid #e5e7eb; border-radius: 6px; background: white; }
.gallery { flex-basis: 100%; display: flex; flex-wrap: wrap; gap: 8px; }
.gallery img { width: auto; height: 96px; max-width: 180px; object-fit: contain; border: 1px solid #e5e7eb; border-radius: 4px; }
.nofig { display: flex; align-items: center; justify-content: center; color: #9ca3af; }
.body { flex: 1; min-width: 0; } h2 { font-size: 18px; margin: 0 0 4px; } h2 a { color: #1e3a8a; text-decoration: none; }
.meta { color: #4b5563; font-size: 13px; margin: 4px 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 9px; background: #e5e7eb; font-weight: 600; }
.ok .badge { background: #dcfce7; color: #166534; } .failed .badge { background: #fee2e2; color: #991b1b; }
.error { background: #fef2f2; color: #991b1b; padding: 6px; white-space: pre-wrap; font-size: 12px; }
.links a { font-weight: 600; }
</style></head>
<body><header><h1>tas_lite: heterogeneous distillation notebooks</h1><p>{summary}</p></header>
<main>
{cards}
</main></body></html>
"""
