"""Scale-out: one configuration on several processes (torchrun + DDP), and sweeps spread over machines
(shards, SLURM job arrays) and over the devices of one machine.

One configuration: `torchrun --nproc_per_node N -m tas_lite train ...` starts N processes; each reads its
`Context` (rank, world size, local rank) from torchrun's environment, joins the process group (`init`)
and trains a `Trainable` (the one module holding everything that learns) wrapped in DDP. The batch size
you give is the *global* batch: each process takes batch / N, and the global batches are the ones a
single process would see (`DistributedSampler`: rank r takes every N-th example of one shared
permutation), so N processes compute what one process computes, only faster. Rank 0 alone logs and
writes checkpoints and results.

Sweeps: `shard(items, index, count)` gives a machine its share of configurations; `shard_from_env`
reads the share from a SLURM job array. Nothing here knows about profiles, methods or datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import config

BACKENDS = ("auto", "gloo", "nccl")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a distributed run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when more than one process trains this configuration."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0


SINGLE = Context()


def rank_seed(seed: int, rank: int) -> int:
    """The seed process `rank` of a DDP run draws its own randomness from (augmentation, dropout, loader
    workers): the run's seed for rank 0, distinct for every other rank."""
    return seed + 100_003 * rank


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def from_env(environ: Mapping[str, str] | None = None) -> Context:
    """The Context torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process
    when WORLD_SIZE is unset or 1."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ or _int_variable(environ, "WORLD_SIZE") == 1:
        return SINGLE
    missing = [v for v in TORCHRUN_VARIABLES if v not in environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
                         f"start distributed runs with torchrun, which sets {', '.join(TORCHRUN_VARIABLES)}")
    ctx = Context(_int_variable(environ, "RANK"), _int_variable(environ, "WORLD_SIZE"),
                  _int_variable(environ, "LOCAL_RANK"))
    if not 0 <= ctx.rank < ctx.world_size or ctx.local_rank < 0:
        raise ValueError(f"RANK={ctx.rank}, LOCAL_RANK={ctx.local_rank} do not fit WORLD_SIZE={ctx.world_size}")
    return ctx


def check_device(name: str | torch.device) -> torch.device:
    """`config.device(name)`, and the device must exist here: cuda:3 on a machine with 2 GPUs is an error."""
    device = config.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def device_for(name: str, ctx: Context) -> torch.device:
    """The device this process trains on: `name` resolved and checked; under torchrun, a CUDA run takes
    one GPU per process, cuda:<local rank>."""
    device = check_device(name)
    if not ctx.active or device.type != "cuda":
        return device
    if device.index is not None and name != "auto":
        raise ValueError(f"under torchrun each process takes the GPU of its local rank; pass --device cuda or "
                         f"auto, not {name!r} (use CUDA_VISIBLE_DEVICES to choose GPUs)")
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(f"torchrun started a process with local rank {ctx.local_rank}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s): use --nproc_per_node "
                         f"{torch.cuda.device_count()} or fewer")
    return torch.device("cuda", ctx.local_rank)


def backend_for(device: torch.device, backend: str = "auto") -> str:
    """The process-group backend: "auto" is nccl for CUDA and gloo for CPU; an unusable one is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if not dist.is_available():
        raise ValueError("torchrun started several processes, but this build of torch has no torch.distributed; "
                         "run one process (python -m tas_lite train ...) or install a torch with distributed support")
    chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise ValueError(f"backend nccl needs CUDA devices and a torch built with NCCL; this run trains on "
                         f"{device.type}: use --backend gloo (or auto)")
    if chosen == "gloo" and not dist.is_gloo_available():
        raise ValueError("backend gloo is not available in this build of torch; use --backend nccl on CUDA")
    return chosen


def init(ctx: Context, device: torch.device, backend: str = "auto") -> Context:
    """Join the process group torchrun set up (a no-op for a single process); returns ctx with its backend."""
    if not ctx.active:
        return ctx
    chosen = backend_for(device, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(chosen, rank=ctx.rank, world_size=ctx.world_size)
    return Context(ctx.rank, ctx.world_size, ctx.local_rank, chosen)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(global_batch: int, world_size: int, *, even: bool = False) -> int:
    """Each process's share of the global batch; the global batch must divide evenly (and each share be
    even when mixup pairs images within it)."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if global_batch % world_size:
        raise ValueError(f"the global batch {global_batch} does not divide over {world_size} processes; "
                         f"use a multiple of {world_size} (each process takes batch / processes)")
    per_rank = global_batch // world_size
    if even and per_rank % 2:
        raise ValueError(f"mixup pairs images within each process's batch, so it must be even; "
                         f"{global_batch} over {world_size} processes gives {per_rank}")
    return per_rank


def world() -> tuple[int, int]:
    """(rank, world size) of the process group this process joined; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


@contextmanager
def main_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, trains and caches a teacher); the others then run it and
    find its files in place."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


def gather_objects(ctx: Context, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (a one-item list for a single process)."""
    if not ctx.active:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_module(ctx: Context, module: nn.Module | None) -> None:
    """Rank 0's weights and buffers into every process's copy of `module` (e.g. a teacher each process
    loaded from its own cache): every process then distils from the very same model."""
    if not ctx.active or module is None:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


class _Gather(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each process the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's loss depends on every slice: sum their gradients
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """The tensors of every process concatenated along dim 0, in rank order, with gradients flowing back
    to each process's own slice; `x` itself outside a process group. Shapes must agree across processes."""
    if world()[1] == 1:
        return x
    if x.requires_grad:
        return _Gather.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class Trainable(nn.Module):
    """The one module that holds everything a method trains: the student, the method's own modules
    (projectors, branches, L2G) and any other trainable parameter it names (e.g. a teacher's shared parts
    with `freeze_teacher=False`); DDP wraps this. `forward(x, y)` is the method's training step."""

    def __init__(self, method: nn.Module, params: Sequence[nn.Parameter]):
        super().__init__()
        self.student = method.student
        self.method = method
        known = {id(p) for p in self.parameters()}
        self.others = nn.ParameterList([p for p in params if id(p) not in known])

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.method(x, y)


def wrap(method: nn.Module, params: Sequence[nn.Parameter], device: torch.device) -> DistributedDataParallel:
    """`Trainable(method)` in DDP: weights and buffers broadcast from rank 0 now, gradients averaged over
    processes in every backward."""
    module = Trainable(method, params)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def convert_sync_batchnorm(model: nn.Module, device: torch.device, ctx: Context) -> int:
    """Turn the BatchNorm layers of `model` into SyncBatchNorm (batch statistics over the global batch),
    in place, before anything else holds references to them; returns how many. A no-op for a single
    process; CUDA only (torch's SyncBatchNorm)."""
    if not ctx.active:
        return 0
    if device.type != "cuda":
        raise ValueError(f"SyncBatchNorm runs on CUDA only (torch's implementation); drop --sync-bn on {device.type}")
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ValueError("convert a model that contains BatchNorm layers, not a single layer")
    count = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the children of `model` in place
    return count


def parse_shard(spec: str) -> tuple[int, int]:
    """(index, count) from "i/n", 0 <= i < n: this machine's share of a sweep."""
    index, slash, count = str(spec).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"shard {spec!r} is not of the form i/n (e.g. 0/4: the first of four shares)") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {spec!r} is out of range: i/n needs n >= 1 and 0 <= i < n (shares are "
                         f"numbered from 0, so 4 shares are 0/4 to 3/4)")
    return i, n


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The share of a SLURM job array (`sbatch --array=0-7`): (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN,
    SLURM_ARRAY_TASK_COUNT); None outside one."""
    environ = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task = _int_variable(environ, "SLURM_ARRAY_TASK_ID")
    first = _int_variable(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    count = _int_variable(environ, "SLURM_ARRAY_TASK_COUNT")
    return parse_shard(f"{task - first}/{count}")


def shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Share `index` of `count`: every count-th item from `index` on. Together the shares hold every item
    exactly once, whatever the items are, as long as every machine lists them in the same order."""
    parse_shard(f"{index}/{count}")
    return list(items[index::count])


def parse_devices(spec: str | Sequence[str]) -> list[str]:
    """["cuda:0", "cuda:1"] from "cuda:0,cuda:1", each device checked to exist here."""
    names = [d.strip() for d in (spec.split(",") if isinstance(spec, str) else spec) if d.strip()]
    if not names:
        raise ValueError("--devices needs at least one device, e.g. cuda:0,cuda:1")
    for name in names:
        if name == "auto":
            raise ValueError("--devices lists devices by name (cuda:0,cuda:1 or cpu), not 'auto'")
        check_device(name)
    return names
