"""Run the numbered notebooks with papermill, in order, for one profile, and render an HTML site.

`run("cpu")` first checks the plan (`tas_lite.plan`: every `-p` override against the notebooks'
`parameters` cells, method and model names) and that the output folder takes files, then executes each
notebook in the notebooks folder with the venv's `python3` kernel, writes the executed copies and an
`index.html` to `outputs/<profile>/`, and stops at the first failing notebook with that cell's error,
keeping its executed copy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import papermill
from papermill.exceptions import PapermillExecutionError

from . import models
from . import plan as planning
from .plan import (  # noqa: F401  (the runner's vocabulary, as runner.* too)
    Job,
    ParamSpec,
    batch_parameters,
    default_dir,
    discover,
    notebook_parameters,
    parse_value,
)
from .report import NotebookRun, RunReport, write_site
from .util import check_writable, say

KERNEL = "python3"


class NotebookFailed(RuntimeError):
    """A notebook raised in a cell; `report` holds the run so far (the site is already written)."""

    def __init__(self, message: str, report: RunReport):
        super().__init__(message)
        self.report = report


def plan(profile: str, notebooks_dir: str | Path | None = None, only: Sequence[str] | None = None,
         parameters: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> list[Job]:
    """`tas_lite.plan.plan` with model names (TEACHER, STUDENT) checked against the model zoo too."""
    return planning.plan(profile, notebooks_dir, only, parameters, batch, check_model=models.default_img_size)


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
