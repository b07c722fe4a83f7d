"""Command line: `tas-lite run | notebooks | train | sweep | teachers | bench` (as `python -m tas_lite ...`).

Exit status: 0 ok; 1 a notebook failed; 2 bad input or usage (a name, value or parameter); 3 an I/O or
environment problem (a folder that takes no files, a damaged or missing file or dataset, no network, out of
memory); 4 training stopped on a non-finite loss or non-finite weights; 5 an unexpected internal error (a
bug: please report it with the traceback `--debug` prints). Errors print one line, naming the file and the
fix where there is one; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tas_lite

from . import __version__, catalog, paths, plan, profiles
from .util import CorruptFile, MissingDataset, NotWritable, check_writable

# Only light modules are imported above, so `--help`, `--version` and the checks of names, numbers and folders
# answer at once. A command reaches the modules it needs (torch, papermill, ...) when it runs, through the
# package's lazy submodules: `tas_lite.runner`, `tas_lite.experiments`.

OK, NOTEBOOK_FAILED, BAD_INPUT, ENVIRONMENT, DIVERGED, INTERNAL = range(6)


class _OneOf:
    """`type=` for a value that must be listed in a heavy module (`config.DEVICES` needs torch): the list is read
    only when a value is given, so `--help`, the other commands and the fast checks never pay for the import.
    The option's default passes unread (the tests check that every default is in its list)."""

    def __init__(self, module: str, name: str, default: str):
        self.module, self.name, self.default = module, name, default
        self.__name__ = name.lower()  # how argparse names the type in its messages

    def __call__(self, value: str) -> str:
        if value == self.default:
            return value
        allowed = list(getattr(getattr(tas_lite, self.module), self.name))
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(map(repr, allowed))})")
        return value


def prog_name(argv0: str | None = None) -> str:
    """How the command was started, for its usage lines and records: `python -m tas_lite`, or the installed
    script's name (`tas-lite`)."""
    name = Path(argv0 if argv0 is not None else sys.argv[0]).name
    return "python -m tas_lite" if name in ("__main__.py", "") else name


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    run.add_argument("--notebooks", help="notebooks folder (default: the course's own)")
    run.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")

    notebooks = commands.add_parser("notebooks", parents=[common],
                                    help="copy the course's notebooks into a folder, to open them in Jupyter")
    notebooks.add_argument("folder", help="where to put them (created if needed)")
    notebooks.add_argument("--overwrite", action="store_true", help="replace notebooks already in the folder")

    _sweep_parser(commands, names, common)
    _train_parser(commands, names, common)

    ship = commands.add_parser("teachers", parents=[common],
                               help="train the profile's teachers (and the models notebooks 01-03 look inside) and "
                                    "ship them with the course")
    ship.add_argument("--profile", choices=names, default="cpu")
    ship.add_argument("--names", nargs="+", help="default: every model the profile's notebooks load")
    ship.add_argument("--out", help="folder (default: the course's results/teachers)")
    ship.add_argument("--retrain", action="store_true", help="train even where the cache already holds a model")

    bench = commands.add_parser("bench", parents=[common],
                                help="measure the speed claims side by side; print and save JSON")
    bench.add_argument("--device", default="cpu", type=_OneOf("config", "DEVICES", "cpu"),
                       help="the device to time (default: %(default)s; a wrong name is rejected with the list)")
    bench.add_argument("--out", help="JSON file to write (e.g. outputs/bench.json)")
    bench.add_argument("--repeats", type=int, default=15, help="interleaved timed steps per method")
    bench.add_argument("--paper-pair", action=argparse.BooleanOptionalAction, default=None,
                       help="also time the paper's pairs, ViT-S -> ResNet18 and ConvNeXt-T -> DeiT-T, at 224 px, "
                            "batch 16, with each method's added parameters (default: on CUDA only)")
    bench.add_argument("--ddp", action="store_true", help="also time one DDP step on 2 processes (gloo) against one")
    bench.add_argument("--matrix", action="store_true", help="also time KD, OFA and TAS for every teacher -> student "
                                                             "pair of the profile's CNN, ViT and MLP at its image size")
    bench.add_argument("--notebooks", action=argparse.BooleanOptionalAction, default=True,
                       help="time each notebook in the smoke profile (default: on)")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return parser


def _sweep_parser(commands, names: list[str], common: argparse.ArgumentParser) -> None:
    sweep = commands.add_parser("sweep", parents=[common],
                                help="teacher x student x method x seed runs, aggregated into a table",
                                epilog="method variants (an ablation is a sweep over variants):\n"
                                       + catalog.variants_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--teachers", nargs="+", help="default: the profile's teacher")
    sweep.add_argument("--students", nargs="+", help="default: the profile's student")
    sweep.add_argument("--methods", nargs="+", help="default: the profile's methods; variants as method:variant, "
                                                     "combined with +, e.g. tas:no_nce tas:no_ofa+no_nce")
    sweep.add_argument("--seeds", nargs="+", type=int, help="default: the profile's seeds")
    sweep.add_argument("--profile", choices=names, default="cpu")
    sweep.add_argument("--dataset", help="default: the profile's dataset (another takes the profile's values for it, "
                                         "e.g. --profile cpu --dataset digits)")
    sweep.add_argument("--epochs", type=int, help="default: the profile's epochs")
    sweep.add_argument("--train-images", type=int, help="labelled images each student trains on, an even share per "
                                                        "class (teachers keep the whole split); default: the profile's")
    sweep.add_argument("--metric", choices=list(catalog.METRICS), default="final_test_acc",
                       help="the results field the table reports (default: %(default)s)")
    sweep.add_argument("--workers", type=int, default=1, help="configurations trained at once, in separate "
                                                              "processes sharing the cores (default: 1)")
    sweep.add_argument("--out", help="results folder (default: outputs/sweep/<profile>)")
    sweep.add_argument("--shard", metavar="I/N", help="train only share I of N of the configurations (0/4 .. 3/4), "
                                                      "machines sharing one --out folder; default: the SLURM job "
                                                      "array's task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) "
                                                      "when set, else all")
    sweep.add_argument("--devices", metavar="LIST", help="one configuration per device at once, e.g. cuda:0,cuda:1")


def _train_parser(commands, names: list[str], common: argparse.ArgumentParser) -> None:
    train = commands.add_parser(
        "train", parents=[common], help="one configuration (teacher, student, method, seed); on N processes under torchrun (DDP)",
        description="Train one configuration. Under `torchrun --nproc_per_node N -m tas_lite train ...` the N "
                    "processes share the global --batch-size (each takes batch / N; the global batches are "
                    "those one process would take) and train one DDP model; rank 0 alone logs and writes.")
    train.add_argument("--profile", choices=names, default="cpu")
    train.add_argument("--teacher", help="default: the profile's teacher")
    train.add_argument("--student", help="default: the profile's student")
    train.add_argument("--method", default="tas", help="a method or variant (default: tas)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, help="default: the profile's epochs")
    train.add_argument("--batch-size", type=int, help="the global batch, over all processes (default: the profile's)")
    train.add_argument("--max-steps", type=int, help="cap on steps per epoch (default: the profile's)")
    train.add_argument("--dataset", help="default: the profile's dataset")
    train.add_argument("--train-images", type=int, help="labelled images the student trains on, an even share per "
                                                        "class (the teacher keeps the whole split); default: all")
    train.add_argument("--paper", action="store_true", help="the paper's protocol: all 50k CIFAR-100 training images "
                       "train, the best test epoch is reported (labelled as the paper's way); CIFAR-100 only")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default: the profile's; under torchrun each "
                                        "process takes cuda:<local rank>)")
    train.add_argument("--backend", type=_OneOf("distributed", "BACKENDS", "auto"), default="auto",
                       help="process-group backend under torchrun (default: auto, nccl on CUDA and gloo on CPU)")
    train.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm for a CNN student under DDP (CUDA)")
    train.add_argument("--out", help="results folder (default: outputs/train/<profile>)")
    train.add_argument("--resume", action="store_true", help="continue from the last epoch's checkpoint in --out")


def _run_command(args: argparse.Namespace, command: str) -> None:
    """Do what `args` ask; every check that can fail fast (names, parameters, output folders) comes first,
    before the command's heavy modules are imported."""
    if args.command == "run":
        _run(args)
    elif args.command == "notebooks":
        copies = paths.copy_notebooks(args.folder, overwrite=args.overwrite)
        print(f"copied {len(copies)} notebooks to {Path(args.folder).resolve()}; open them in Jupyter (with the "
              f"[lab] extra: jupyter lab {args.folder})")
    elif args.command == "train":
        _train(args, command)
    elif args.command == "sweep":
        _sweep(args, command)
    elif args.command == "teachers":
        _teachers(args, command)
    else:
        if args.out:
            check_writable(Path(args.out).parent, "choose another --out file, or fix the folder's permissions")
        bench = tas_lite.bench
        report = bench.bench(args.device, repeats=args.repeats, paper_pair=args.paper_pair, ddp=args.ddp,
                             matrix=args.matrix,
                             notebooks=args.notebooks, threads=args.threads, out=args.out)
        print(bench.format_table(report))
        if args.out:
            print(f"saved {args.out}")


def _run(args: argparse.Namespace) -> None:
    """The `run` command: the plan and the output folder are checked without papermill (and without torch unless
    a model name needs the model zoo), then it runs."""
    params: dict[str, Any] = {name: plan.parse_value(value) for name, value in args.parameter}
    out = Path(args.out) if args.out else plan.default_dir(args.profile)
    check_model = tas_lite.models.default_img_size if {"TEACHER", "STUDENT"} & set(params) else None
    plan.plan(args.profile, args.notebooks, args.only, params, plan.batch_parameters(out), check_model)
    check_writable(out, "choose another folder with --out (out_dir=), or fix its permissions")
    tas_lite.runner.run(args.profile, notebooks_dir=args.notebooks, only=args.only, parameters=params,
                        out_dir=out, cell_timeout=args.cell_timeout)


def _sweep(args: argparse.Namespace, command: str) -> None:
    """The `sweep` command: profile, knobs, methods and the output folder first, then the training."""
    settings = profiles.resolve(args.profile, dataset=args.dataset, epochs=args.epochs, train_images=args.train_images)
    if args.methods:
        catalog.check(args.methods)
    if args.out:
        check_writable(args.out, "choose another --out folder, or fix its permissions")
    distributed, experiments = tas_lite.distributed, tas_lite.experiments
    if distributed.from_env().active:
        raise ValueError("sweep spreads configurations, not processes: start it without torchrun and use "
                         "--shard (machines, SLURM arrays) or --devices (GPUs of one machine)")
    shard = distributed.parse_shard(args.shard) if args.shard else distributed.shard_from_env()
    table = experiments.sweep(settings, args.teachers, args.students, args.methods, args.seeds,
                              out_dir=args.out, metric=args.metric, workers=args.workers, command=command,
                              shard=shard, devices=args.devices)
    if table is not None:
        print(table.markdown())
        print("\nPaired by seed:\n" + table.verdicts_markdown())


def _teachers(args: argparse.Namespace, command: str) -> None:
    """The `teachers` command: train (or take from the cache) the profile's models and copy them where a cold
    start finds them, each sidecar recording this command."""
    settings = profiles.resolve(args.profile)
    if not args.out and not paths.in_checkout():
        raise ValueError("outside a checkout the shipped teachers live in the installed package; pass --out FOLDER")
    if args.out:
        check_writable(args.out, "choose another --out folder, or fix its permissions")
    teachers = tas_lite.teachers
    names = args.names or teachers.course_models(settings)
    for path in teachers.ship(names, settings, args.out, command=command, retrain=args.retrain):
        print(f"shipped {path}")


def _train(args: argparse.Namespace, command: str) -> None:
    """The `train` command: resolve, check, join the process group, run one configuration, report."""
    settings = profiles.resolve(args.profile, epochs=args.epochs, batch_size=args.batch_size, dataset=args.dataset,
                                max_steps=args.max_steps, device=args.device, paper=args.paper or None,
                                train_images=args.train_images)
    catalog.check(args.method)
    distributed, experiments = tas_lite.distributed, tas_lite.experiments
    ctx = distributed.from_env()
    device = distributed.device_for(settings.device, ctx)
    distributed.check_batch(settings.batch_size, ctx.world_size)
    ctx = distributed.init(ctx, device, args.backend)
    teacher, student = args.teacher or settings.teacher, args.student or settings.student
    teacher = None if catalog.parse(args.method)[0] == "baseline" else teacher  # a baseline uses no teacher
    out = Path(args.out) if args.out else paths.outputs_dir() / "train" / settings.profile
    name = tas_lite.results.file_name(teacher, student, args.method, args.seed)
    try:
        result = experiments.train(args.method, teacher, student, settings, seed=args.seed, out_dir=out, dist=ctx,
                                   checkpoint_dir=out / "checkpoints" / Path(name).stem, resume=args.resume,
                                   sync_bn=args.sync_bn, command=command)
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(experiments.summary(result))
        print(f"saved {out / name}")


def _raised(err: Exception, module: str, name: str) -> bool:
    """Whether `err` is `module.name`, checked only if the command imported that module (else it cannot be)."""
    kind = getattr(sys.modules.get(module), name, None)
    return kind is not None and isinstance(err, kind)


def _explain(err: Exception) -> tuple[int, str]:
    """(exit status, one line) for an error; OS errors name their file and what to check."""
    if _raised(err, "tas_lite.runner", "NotebookFailed"):
        return NOTEBOOK_FAILED, str(err)
    if _raised(err, "tas_lite.distill", "NonFiniteLoss"):
        return DIVERGED, str(err)
    if isinstance(err, (CorruptFile, NotWritable, MissingDataset)) or _raised(err, "safetensors", "SafetensorError"):
        return ENVIRONMENT, str(err)
    if isinstance(err, ValueError):
        return BAD_INPUT, str(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return ENVIRONMENT, f"{err.strerror}: {err.filename}; check the path, its permissions and the free space"
    if isinstance(err, (OSError, RuntimeError)):  # RuntimeError: out of memory, CUDA and other device errors
        return ENVIRONMENT, f"{type(err).__name__}: {err}"
    return INTERNAL, f"internal error {type(err).__name__}: {err} (a bug; rerun with --debug and report the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the command line) and run one command; return the exit status (module
    docstring: 0 ok, 1 a notebook failed, 2 bad input, 3 I/O or environment, 4 non-finite training, 5 internal
    error). Called with `argv`, it names itself `python -m tas_lite`; from the shell, as it was started."""
    prog = prog_name() if argv is None else "python -m tas_lite"
    args = _parser(prog).parse_args(argv)
    try:
        _run_command(args, f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:]))
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
