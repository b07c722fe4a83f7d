"""Command line: `python -m tas_lite run | train | sweep | bench` (also installed as `tas-lite`).

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
from . import catalog, config, distill, distributed, experiments, profiles, runner, tables
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
                                       + catalog.variants_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("--teachers", nargs="+", help="default: the profile's teacher")
    sweep.add_argument("--students", nargs="+", help="default: the profile's student")
    sweep.add_argument("--methods", nargs="+", help="default: the profile's methods; variants as method:variant, "
                                                     "combined with +, e.g. tas:no_nce tas:no_ofa+no_nce")
    sweep.add_argument("--seeds", nargs="+", type=int, help="default: the profile's seeds")
    sweep.add_argument("--profile", choices=names, default="cpu")
    sweep.add_argument("--epochs", type=int, help="default: the profile's epochs")
    sweep.add_argument("--train-images", type=int, help="labelled images each student trains on, an even share per "
                                                        "class (teachers keep the whole split); default: all")
    sweep.add_argument("--metric", choices=list(tables.METRICS), default="final_test_acc")
    sweep.add_argument("--workers", type=int, default=1, help="configurations trained at once, in separate "
                                                              "processes sharing the cores (default: 1)")
    sweep.add_argument("--out", help="results folder (default: outputs/sweep/<profile>)")
    sweep.add_argument("--shard", metavar="I/N", help="train only share I of N of the configurations (0/4 .. 3/4), "
                                                      "machines sharing one --out folder; default: the SLURM job "
                                                      "array's task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) "
                                                      "when set, else all")
    sweep.add_argument("--devices", metavar="LIST", help="one configuration per device at once, e.g. cuda:0,cuda:1")
    _train_parser(commands, names, common)

    bench = commands.add_parser("bench", parents=[common],
                                help="measure the speed claims side by side; print and save JSON")
    bench.add_argument("--device", default="cpu", choices=list(config.DEVICES))
    bench.add_argument("--out", help="JSON file to write (e.g. outputs/bench.json)")
    bench.add_argument("--repeats", type=int, default=15, help="interleaved timed steps per method")
    bench.add_argument("--paper-pair", action=argparse.BooleanOptionalAction, default=None,
                       help="also time the paper's pairs, ViT-S -> ResNet18 and ConvNeXt-T -> DeiT-T, at 224 px, "
                            "batch 16, with each method's added parameters (default: on CUDA only)")
    bench.add_argument("--ddp", action="store_true", help="also time one DDP step on 2 processes (gloo) against one")
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
    elif args.command == "train":
        _train(args, command)
    elif args.command == "sweep":
        if distributed.from_env().active:
            raise ValueError("sweep spreads configurations, not processes: start it without torchrun and use "
                             "--shard (machines, SLURM arrays) or --devices (GPUs of one machine)")
        settings = profiles.resolve(args.profile, epochs=args.epochs, train_images=args.train_images)
        shard = distributed.parse_shard(args.shard) if args.shard else distributed.shard_from_env()
        table = experiments.sweep(settings, args.teachers, args.students, args.methods, args.seeds,
                                  out_dir=args.out, metric=args.metric, workers=args.workers, command=command,
                                  shard=shard, devices=args.devices)
        if table is not None:
            print(table.markdown())
            print("\nPaired by seed:\n" + table.verdicts_markdown())
    else:
        if args.out:
            check_writable(Path(args.out).parent, "choose another --out file, or fix the folder's permissions")
        report = bench_module.bench(args.device, repeats=args.repeats, paper_pair=args.paper_pair, ddp=args.ddp,
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
    train.add_argument("--backend", choices=list(distributed.BACKENDS), default="auto",
                       help="process-group backend under torchrun (auto: nccl on CUDA, gloo on CPU)")
    train.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm for a CNN student under DDP (CUDA)")
    train.add_argument("--out", help="results folder (default: outputs/train/<profile>)")
    train.add_argument("--resume", action="store_true", help="continue from the last epoch's checkpoint in --out")


def _train(args: argparse.Namespace, command: str) -> None:
    """The `train` command: resolve, check, join the process group, run one configuration, report."""
    settings = profiles.resolve(args.profile, epochs=args.epochs, batch_size=args.batch_size, dataset=args.dataset,
                                max_steps=args.max_steps, device=args.device, paper=args.paper or None,
                                train_images=args.train_images)
    catalog.check(args.method)
    ctx = distributed.from_env()
    device = distributed.device_for(settings.device, ctx)
    distributed.check_batch(settings.batch_size, ctx.world_size)
    ctx = distributed.init(ctx, device, args.backend)
    teacher, student = args.teacher or settings.teacher, args.student or settings.student
    out = Path(args.out) if args.out else config.outputs_dir() / "train" / settings.profile
    name = experiments.result_name(teacher, student, args.method, args.seed)
    try:
        result = experiments.train(args.method, teacher, student, settings, seed=args.seed, out_dir=out, dist=ctx,
                                 checkpoint_dir=out / "checkpoints" / Path(name).stem, resume=args.resume,
                                 sync_bn=args.sync_bn, command=command)
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(experiments.summary(result))
        print(f"saved {out / name}")


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
