"""Scale-out without a GPU: DDP on CPU (gloo, 2 processes) against one process, writes from rank 0 only,
resume after a kill mid-epoch, sweep shards and SLURM arrays, and every bad input stopped before work."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tas_lite import config, data, distill, distributed, experiments, methods, models, profiles, steptimes
from tas_lite import teachers
from tas_lite.__main__ import main
from tas_lite.recipes import Recipe
from tas_lite.results import Result, Setup
from tas_lite.results import file_name as result_name

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--profile", "smoke", "--dataset", "synthetic", "--teacher", "tiny_convnext", "--student",
         "tiny_vit", "--method", "tas", "--seed", "0", "--epochs", "2", "--max-steps", "2", "--batch-size", "16",
         "--device", "cpu"]
# Plain SGD for the equivalence: Adam's first step divides every gradient element by its own size, so an
# element whose gradient is ~0 turns summation-order noise (~1e-9) into an update of up to ~lr / 10, in one
# process as in two. (With AdamW the gradients of 1 and 2 processes agree to ~1e-6 of their size.)
SGD = "Recipe('sgd', 0.05, 5e-4, warmup_epochs=0.5, min_lr=1e-3, clip_grad=5.0)"
# Wraps the command line: logs every results/checkpoint write with its rank; optionally dies mid-run.
LAUNCHER = f'''
import os, sys
from tas_lite import checkpoints, loop, results
from tas_lite.__main__ import main
from tas_lite.recipes import Recipe

rank, log = os.environ.get("RANK", "0"), os.environ["TAS_TEST_LOG"]
Recipe.choose = lambda *args, **kwargs: {SGD}

def logged(kind, real):
    def call(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{{kind}} {{rank}}\\n")
        return real(*args, **kwargs)
    return call

results.Result.save = logged("result", results.Result.save)
checkpoints.save_state = logged("checkpoint", checkpoints.save_state)
stop = int(os.environ.get("TAS_TEST_STOP_AFTER", "0"))
if stop:
    real_step, calls = loop.train_step, [0]
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] > stop:
            os._exit(3)  # killed: no clean-up, no checkpoint
        return real_step(*args, **kwargs)
    loop.train_step = step
sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, out: Path, *, torchrun: bool, stop_after: int = 0, extra=()) -> tuple[int, str, list]:
    """Two processes on gloo, either through torchrun or started by hand with torchrun's variables."""
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER)
    log = out / "writes.log"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TAS_TEST_LOG": str(log),
           "TAS_TEST_STOP_AFTER": str(stop_after)}
    args = [str(script), *TRAIN, "--out", str(out), *extra]
    port = _free_port()
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        code, output = done.returncode, done.stdout + done.stderr
    else:
        ranks = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in ranks]
        code, output = max(p.returncode for p in ranks), "".join(outputs)
    writes = log.read_text().split("\n")[:-1] if log.is_file() else []
    return code, output, writes


def _student(out: Path) -> dict[str, torch.Tensor]:
    stem = Path(result_name("tiny_convnext", "tiny_vit", "tas", 0)).stem
    return torch.load(out / "checkpoints" / stem / "last.pt", weights_only=True)["student"]


def _one_process_reference() -> dict[str, torch.Tensor]:
    """The same run in this process, on the same global batches: one 'shard' of one process, built as
    experiments.train builds it (seeded before the student and again before the method)."""
    settings = profiles.resolve("smoke", dataset="synthetic", epochs=2, max_steps=2, batch_size=16, device="cpu")
    config.seed_everything(0)
    student = models.create("tiny_vit", num_classes=10, img_size=32)
    recipe = eval(SGD, {"Recipe": Recipe})  # the recipe the launcher patches in, built here alike
    teacher = teachers.from_settings("tiny_convnext", settings, progress=False)  # cached by the DDP run
    train, val, _ = data.loaders("synthetic", batch_size=16, img_size=32, seed=0, shard=(0, 1))
    config.seed_everything(0)
    tas = methods.build("tas", teacher, student, img_size=32, label_smoothing=recipe.label_smoothing)
    distill.fit(tas, train, val, epochs=2, seed=0, recipe=recipe, device="cpu", progress=False, max_steps=2)
    return student.state_dict()


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_writes_once_and_resumes_after_a_kill(tmp_path):
    """TAS (its InfoNCE negatives gathered over processes), tiny_convnext -> tiny_vit, 2 epochs x 2 steps of a
    global batch 16: 2 processes x 8 end where 1 process x 16 ends; only rank 0 writes; a run killed in the
    middle of epoch 2 and resumed ends with the uninterrupted run's weights."""
    full = tmp_path / "full"
    code, output, writes = _launch(tmp_path, full, torchrun=True)
    assert code == 0, output[-3000:]
    assert writes == ["checkpoint 0", "checkpoint 0", "result 0"], writes  # every epoch's checkpoint, one result
    assert output.count("saved ") == 1 and (full / result_name("tiny_convnext", "tiny_vit", "tas", 0)).is_file()
    ddp, single = _student(full), _one_process_reference()
    largest = max((ddp[k].float() - single[k].float()).abs().max().item() for k in single)
    print(f"largest weight difference, 2 processes vs 1, after 4 steps: {largest:.2e}")
    assert largest < 1e-5, f"DDP and one process differ by {largest:.2e}"

    cut = tmp_path / "cut"
    code, output, writes = _launch(tmp_path, cut, torchrun=False, stop_after=3)  # dies in epoch 2, step 2
    assert code == 3 and writes == ["checkpoint 0"], (code, writes, output[-2000:])
    code, output, _ = _launch(tmp_path, cut, torchrun=False, extra=["--resume"])
    assert code == 0, output[-3000:]
    resumed = _student(cut)
    assert all(torch.equal(resumed[k], ddp[k]) for k in ddp), "resume must end with the uninterrupted weights"


@pytest.mark.slow
def test_train_runs_without_torchrun_and_resumes(tmp_path, capsys):
    """The same command as under torchrun, in one process: results JSON, per-epoch checkpoint, resume."""
    argv = [*TRAIN, "--epochs", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "best on validation" in out and out.count("saved ") == 1
    result = Result.load(tmp_path / result_name("tiny_convnext", "tiny_vit", "tas", 0))
    assert "processes" not in result.environment and result.provenance["command"].startswith("python -m tas_lite train")
    assert main([*argv, "--resume"]) == 0  # the checkpoint is complete: nothing left to train
    assert Result.load(tmp_path / result_name("tiny_convnext", "tiny_vit", "tas", 0)).history == result.history


def test_info_nce_gathers_nothing_in_one_process():
    assert distributed.world() == (0, 1)
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.all_gather(x) is x


def test_torchrun_environment_is_read_and_checked():
    assert distributed.from_env({}) == distributed.SINGLE
    assert distributed.from_env({"WORLD_SIZE": "1"}) == distributed.SINGLE
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    ctx = distributed.from_env(env)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.active, ctx.is_main) == (1, 4, 1, True, False)
    with pytest.raises(ValueError, match="MASTER_PORT is not: start distributed runs with torchrun"):
        distributed.from_env({k: v for k, v in env.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="do not fit WORLD_SIZE=4"):
        distributed.from_env({**env, "RANK": "4"})


@pytest.mark.parametrize("spec, match", [
    ("3/2", r"shard '3/2' is out of range: i/n needs n >= 1 and 0 <= i < n"),
    ("2/2", "out of range"), ("0/0", "out of range"), ("-1/2", "out of range"),
    ("1", "not of the form i/n"), ("a/b", "not of the form i/n"),
])
def test_bad_shard_specs_are_rejected(spec, match):
    with pytest.raises(ValueError, match=match):
        distributed.parse_shard(spec)


def test_shards_cover_every_configuration_exactly_once():
    runs = experiments.configurations(["tiny_convnext", "tiny_resnet"], ["tiny_vit", "tiny_mixer"],
                                      ["baseline", "kd", "ofa", "tas"], [0, 1, 2])
    for count in (1, 2, 3, 5, 8, len(runs) + 3):
        shares = [distributed.shard(runs, i, count) for i in range(count)]
        together = [r for share in shares for r in share]
        assert sorted(together, key=repr) == sorted(runs, key=repr) and len(set(together)) == len(runs)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_slurm_array_variables_pick_the_shard():
    assert distributed.shard_from_env({}) is None
    assert distributed.shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}) == (3, 8)
    assert distributed.shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                                       "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)  # sbatch --array=1-4
    with pytest.raises(ValueError, match="out of range"):
        distributed.shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "8"})


def _fake_run(calls):
    def fake(method, teacher, student, settings, *, seed, out_dir, progress, command=None):
        calls.append((method, teacher, student, seed, settings.device))
        setup = Setup(method=method, method_arguments={}, teacher=teacher, student=student, dataset=settings.dataset,
                      img_size=settings.img_size, num_classes=10, train_images=None, val_images=None, test_images=None,
                      batch_size=settings.batch_size, epochs=settings.epochs, max_steps=settings.max_steps, recipe={},
                      seed=seed, profile=settings.profile)
        result = Result(setup, final_test_acc=50.0 + seed, selected_test_acc=49.0,
                        teacher_info={"test_acc": 99.0} if teacher else {},
                        fingerprint=experiments.expected_fingerprint(method, teacher, student, settings))
        result.save(out_dir / result_name(teacher, student, method, seed))
        return result
    return fake


def test_sweep_shards_from_a_faked_slurm_array_merge_into_one_table(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(experiments, "train", _fake_run(calls))
    argv = ["sweep", "--profile", "smoke", "--teachers", "tiny_convnext", "--students", "tiny_vit", "--methods",
            "baseline", "kd", "--seeds", "0", "1", "--out", str(tmp_path)]
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert main(argv) == 0
    assert len(calls) == 2 and not (tmp_path / "table.md").exists()  # half the sweep: no table saved yet
    assert "2 of 4 configurations still to run" in capsys.readouterr().out
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert main(argv) == 0
    assert len(calls) == 4 and len({c[:4] for c in calls}) == 4  # each configuration ran exactly once
    assert (tmp_path / "table.md").is_file() and "| tiny_convnext -> tiny_vit |" in capsys.readouterr().out
    assert main([*argv, "--shard", "0/2"]) == 0 and len(calls) == 4  # --shard wins; all done already


def test_sweep_devices_give_each_worker_its_own_device(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiments, "train", _fake_run(calls))
    queue = __import__("queue").Queue()
    queue.put("cpu")
    monkeypatch.setattr(experiments, "_WORKER_DEVICE", None)
    experiments._claim_device(queue)  # what a worker process does once, when it starts
    r = experiments.Configuration("kd", "tiny_convnext", "tiny_vit", 0)
    experiments._run_one(r, profiles.resolve("smoke", device="auto"), tmp_path, None, None)
    assert calls[-1][-1] == "cpu" and queue.empty()
    monkeypatch.setattr(experiments, "_WORKER_DEVICE", None)
    experiments.sweep(profiles.resolve("smoke"), method_names=["kd"], out_dir=tmp_path / "one", progress=False,
                      devices=["cpu"])  # one device: runs here, on it
    assert calls[-1][-1] == "cpu"


def test_devices_that_do_not_exist_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="CUDA is not available"):
        distributed.parse_devices("cuda:0,cuda:1")
    with pytest.raises(ValueError, match="not 'auto'"):
        distributed.parse_devices("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device 'cuda:3' does not exist: this machine has 2 CUDA device\(s\)"):
        distributed.parse_devices("cuda:0,cuda:3")
    assert distributed.parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="local rank 2, but this machine has 2 CUDA device"):
        distributed.device_for("cuda", distributed.Context(2, 3, 2))


def test_a_backend_that_cannot_run_here_is_named(monkeypatch):
    cpu = torch.device("cpu")
    assert distributed.backend_for(cpu) == "gloo"
    with pytest.raises(ValueError, match="backend nccl needs CUDA devices"):
        distributed.backend_for(cpu, "nccl")
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        distributed.backend_for(cpu, "mpi")
    monkeypatch.setattr(distributed.dist, "is_gloo_available", lambda: False)
    with pytest.raises(ValueError, match="backend gloo is not available in this build of torch"):
        distributed.backend_for(cpu)
    monkeypatch.setattr(distributed.dist, "is_available", lambda: False)
    with pytest.raises(ValueError, match="this build of torch has no torch.distributed"):
        distributed.backend_for(cpu)


def test_global_batch_must_divide_over_processes():
    assert distributed.check_batch(128, 4) == 32
    with pytest.raises(ValueError, match="the global batch 30 does not divide over 4 processes"):
        distributed.check_batch(30, 4)
    with pytest.raises(ValueError, match="must be even; 12 over 4 processes gives 3"):
        distributed.check_batch(12, 4, even=True)


def test_sync_batchnorm_converts_a_cnn_student_and_says_where_it_cannot_run():
    student = models.create("tiny_resnet", num_classes=10)
    two = distributed.Context(0, 2, 0)
    with pytest.raises(ValueError, match="SyncBatchNorm runs on CUDA only"):
        distributed.convert_sync_batchnorm(student, torch.device("cpu"), two)
    assert distributed.convert_sync_batchnorm(student, torch.device("cpu"), distributed.SINGLE) == 0
    count = distributed.convert_sync_batchnorm(student, torch.device("cuda"), two)  # conversion needs no GPU
    assert count > 0 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in student.modules()) == count


TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


@pytest.mark.parametrize("argv, env, match", [
    (["train", "--profile", "smoke", "--paper"], {}, "needs dataset 'cifar100', got 'digits'"),
    (["train", "--profile", "gpu", "--paper", "--dataset", "cifar10"], {}, "needs dataset 'cifar100'"),
    (["train", "--profile", "smoke", "--device", "cuda:3"], {}, "CUDA is not available"),
    (["train", "--profile", "smoke", "--batch-size", "15"], TORCHRUN_ENV, "global batch 15 does not divide over 2"),
    (["train", "--profile", "smoke", "--backend", "nccl"], TORCHRUN_ENV, "backend nccl needs CUDA devices"),
    (["train", "--profile", "smoke"], {**TORCHRUN_ENV, "MASTER_ADDR": None}, "start distributed runs with torchrun"),
    (["sweep", "--profile", "smoke", "--shard", "3/2"], {}, "shard '3/2' is out of range"),
    (["sweep", "--profile", "smoke", "--devices", "cuda:5"], {}, "CUDA is not available"),
    (["sweep", "--profile", "smoke"], TORCHRUN_ENV, "start it without torchrun"),
])
def test_bad_input_stops_before_any_work(argv, env, match, monkeypatch, capsys):
    monkeypatch.setattr(experiments, "train", lambda *a, **k: pytest.fail("nothing may train"))
    monkeypatch.setattr(teachers, "from_settings", lambda *a, **k: pytest.fail("nothing may train"))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("no group may start"))
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_bench_times_a_ddp_step_on_two_processes_against_one():
    d = steptimes.ddp_overhead("tiny_convnext", "tiny_vit", img_size=32, batch_size=8, repeats=2, warmup=1,
                           progress=False)
    assert set(d["step_time_s"]) == {"1 process", "2 processes"} and all(v > 0 for v in d["step_time_s"].values())
    assert d["overhead"] == pytest.approx(d["step_time_s"]["2 processes"] / d["step_time_s"]["1 process"] - 1, abs=2e-3)
