"""Command line: `python -m tas_lite run | sweep | bench` (also installed as `tas-lite`).

Exit status: 0 ok; 1 a notebook failed; 2 bad input or usage (a name, value or parameter); 3 an I/O or
environment problem (a folder that takes no files, a damaged or missing file, no network, out of memory);
4 training stopped on a non-finite loss or non-finite weights; 5 an unexpected internal error (a bug:
please report it with the traceback `--debug` prints). Errors print one line, naming the file and the
fix where there is one; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError

from . import bench as bench_module
from . import config, distill, experiments, methods, profiles, runner, tables
from .util import CorruptFile, NotWritable, check_writable

OK, NOTEBOOK_FAILED, BAD_INPUT, ENVIRONMENT, DIVERGED, INTERNAL = range(6)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tas_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    names = list(profiles.PROFILES)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    run = commands.add_parser("run", parents=[common], help="execute the notebooks with papermill and write an HTML site")
    run.add_argument("--profile", choices=names, default="cpu")
    run.add_argument("--only", nargs="+", metavar="NB", help="notebooks by number or name, e.g. 01 03")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameters-cell value, e.g. -p EPOCHS 3 (checked before anything runs)")
    run.add_argument("--out", help="output folder (default: outputs/<profile>)")
    run.add_argument("--notebooks", help="notebooks folder (default: the checkout's notebooks/)")
    run.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")

    sweep = commands.add_parser("sweep", parents=[common],
                                help="teacher x student x method x seed runs, aggregated into a table",
                                epilog="method variants (an ablation is a sweep over variants):\n"
                                       + methods.variants_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--teachers", nargs="+", help="default: the profile's teacher")
    sweep.add_argument("--students", nargs="+", help="default: the profile's student")
    sweep.add_argument("--methods", nargs="+", help="default: the profile's methods; variants as method:variant, "
                                                     "combined with +, e.g. tas:no_nce tas:no_ofa+no_nce")
    sweep.add_argument("--seeds", nargs="+", type=int, help="default: the profile's seeds")
    sweep.add_argument("--profile", choices=names, default="cpu")
    sweep.add_argument("--epochs", type=int, help="default: the profile's epochs")
    sweep.add_argument("--metric", choices=list(tables.METRICS), default="final_test_acc")
    sweep.add_argument("--workers", type=int, default=1, help="configurations trained at once, in separate "
                                                              "processes sharing the cores (default: 1)")
    sweep.add_argument("--out", help="results folder (default: outputs/sweep/<profile>)")

    bench = commands.add_parser("bench", parents=[common],
                                help="measure the speed claims side by side; print and save JSON")
    bench.add_argument("--device", default="cpu", choices=list(config.DEVICES))
    bench.add_argument("--out", help="JSON file to write (e.g. outputs/bench.json)")
    bench.add_argument("--repeats", type=int, default=15, help="interleaved timed steps per method")
    bench.add_argument("--paper-pair", action=argparse.BooleanOptionalAction, default=None,
                       help="also time convnext_tiny -> deit_tiny at 224 px (default: on CUDA only)")
    bench.add_argument("--notebooks", action=argparse.BooleanOptionalAction, default=True,
                       help="time each notebook in the smoke profile (default: on)")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return parser


def _run_command(args: argparse.Namespace, command: str) -> None:
    """Do what `args` ask; every check that can fail fast (names, parameters, output folders) comes first."""
    if args.command == "run":
        params = {name: runner.parse_value(value) for name, value in args.parameter}
        runner.run(args.profile, notebooks_dir=args.notebooks, only=args.only, parameters=params,
                   out_dir=args.out, cell_timeout=args.cell_timeout)
    elif args.command == "sweep":
        settings = profiles.resolve(args.profile, epochs=args.epochs)
        table = experiments.sweep(settings, args.teachers, args.students, args.methods, args.seeds,
                                  out_dir=args.out, metric=args.metric, workers=args.workers, command=command)
        print(table.markdown())
        print("\nPaired by seed:\n" + table.verdicts_markdown())
    else:
        if args.out:
            check_writable(Path(args.out).parent, "choose another --out file, or fix the folder's permissions")
        report = bench_module.bench(args.device, repeats=args.repeats, paper_pair=args.paper_pair,
                                    notebooks=args.notebooks, threads=args.threads, out=args.out)
        print(bench_module.format_table(report))
        if args.out:
            print(f"saved {args.out}")


def _explain(err: Exception) -> tuple[int, str]:
    """(exit status, one line) for an error; OS errors name their file and what to check."""
    if isinstance(err, runner.NotebookFailed):
        return NOTEBOOK_FAILED, str(err)
    if isinstance(err, distill.NonFiniteLoss):
        return DIVERGED, str(err)
    if isinstance(err, (CorruptFile, NotWritable, SafetensorError)):
        return ENVIRONMENT, str(err)
    if isinstance(err, ValueError):
        return BAD_INPUT, str(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return ENVIRONMENT, f"{err.strerror}: {err.filename}; check the path, its permissions and the free space"
    if isinstance(err, (OSError, RuntimeError)):  # RuntimeError: out of memory, CUDA and other device errors
        return ENVIRONMENT, f"{type(err).__name__}: {err}"
    return INTERNAL, f"internal error {type(err).__name__}: {err} (a bug; rerun with --debug and report the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run one command; return the exit status (module docstring: 0 ok, 1 a notebook
    failed, 2 bad input, 3 I/O or environment, 4 non-finite training, 5 internal error)."""
    args = _parser().parse_args(argv)
    try:
        _run_command(args, "python -m tas_lite " + " ".join(argv if argv is not None else sys.argv[1:]))
    except Exception as err:
        code, message = _explain(err)
        if args.debug:
            traceback.print_exc()
        lines = [line for line in message.splitlines() if line.strip()] or [type(err).__name__]
        print(f"error: {lines[0]}" + (" ..." if len(lines) > 1 else ""), file=sys.stderr)
        return code
    return OK


if __name__ == "__main__":
    sys.exit(main())
