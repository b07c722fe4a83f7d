"""Fault injection: what a hostile but realistic user (or a crash, a full disk, a second process) can do,
one test per fault, each asserting a clear error naming the file and the fix, or correct behaviour.

Cheap by design: synthetic data, one or two training steps, tiny models; subprocesses only where the
fault needs them (two processes racing, kill -9).
"""

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image
from safetensors import SafetensorError

import tas_lite
from tas_lite import checkpoints, cka, config, data, distill, experiments, loop, methods, models, profiles
from tas_lite import results, runner, sources, teachers, util
from tas_lite.__main__ import main
from tas_lite.recipes import Recipe
from tas_lite.results import Result, Setup
from tas_lite.util import CorruptFile, NotWritable

REPO = Path(tas_lite.__file__).resolve().parent.parent
UNWRITABLE = "/proc/tas_lite_cannot_write_here"  # no user, root included, can create anything under /proc
TEACHER_KW = dict(epochs=1, max_steps=2, batch_size=16, progress=False, device="cpu")


def synthetic(val_fraction=0.25, batch=16, seed=0):
    return data.loaders("synthetic", batch_size=batch, num_samples=64, val_fraction=val_fraction, seed=seed)


def student(name="tiny_vit", seed=0, **kwargs):
    torch.manual_seed(seed)
    return models.create(name, num_classes=kwargs.pop("num_classes", 10), **kwargs)


def fit(method, teacher, model, train, val, **options):
    """`distill.fit` on the method built as `experiments.train` builds it (seeded first)."""
    config.seed_everything(0)
    return distill.fit(methods.build(method, teacher, model), train, val, **options)


def record(acc, method="kd"):
    """A small results record (a run of one epoch)."""
    setup = Setup(method=method, method_arguments={}, teacher="t", student="s", dataset="digits", img_size=32,
                  num_classes=10, train_images=None, val_images=None, test_images=None, batch_size=32, epochs=1,
                  max_steps=None, recipe={}, seed=0)
    return Result(setup, final_test_acc=acc)


def finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def child_env():
    """Children import this checkout's tas_lite, run on one thread, and cache where the parent says."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def read_only_folder(path: Path) -> Path:
    """A folder this process cannot write: mode 0o555, or for root (whom modes do not stop) a link to a
    /proc folder, where nobody can create files."""
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/fdinfo", target_is_directory=True)
    else:
        path.mkdir()
        path.chmod(0o555)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tests take a step or two, where a second thread only adds contention (on a
    busy 2-core machine, 20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_entry(tmp_path_factory):
    """One trained-model cache entry (tiny_resnet on synthetic data), trained once for the module."""
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("TAS_LITE_HOME")
    os.environ["TAS_LITE_HOME"] = str(home)
    try:
        model = teachers.trained("tiny_resnet", "synthetic", **TEACHER_KW)
    finally:
        if saved is None:
            os.environ.pop("TAS_LITE_HOME")
        else:
            os.environ["TAS_LITE_HOME"] = saved
    return home, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def cached(cache_entry, tmp_path, monkeypatch):
    """A private copy of the cache entry: (weights path, trained state); TAS_LITE_HOME points at it."""
    home, state = cache_entry
    shutil.copytree(home, tmp_path / "home")
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    (weights,) = (tmp_path / "home" / "checkpoints").glob("*.safetensors")
    return weights, state


def no_training(*args, **kwargs):
    raise AssertionError("nothing may train here")


# ---- 1. finite weights or a clear stop ------------------------------------------------------------------

def test_sgd_lr_1e3_stops_on_non_finite_weights_instead_of_returning():
    """Row: fit with SGD lr 1e3 (max_steps=1, 3 epochs) returned normally with NaN weights."""
    train, val, _ = synthetic()
    recipe = Recipe("sgd", 1e3, 0.0, warmup_epochs=0, min_lr=1e3)
    with pytest.raises(loop.NonFiniteWeights, match=r"non-finite weights after epoch \d.*Lower the learning rate"):
        fit("baseline", None, student(), train, val, epochs=3, max_steps=1, recipe=recipe, progress=False)


def test_lr_1e6_names_a_checkpoint_that_really_is_finite(tmp_path):
    """Row: with lr 1e6 the error said "last good checkpoint (epoch 2) is intact" of a NaN checkpoint."""
    train, val, _ = synthetic()
    recipe = Recipe("sgd", 1e6, 0.0, warmup_epochs=0, min_lr=1e6)
    with pytest.raises(distill.NonFiniteLoss, match=r"last good checkpoint \(epoch (\d)\) is intact") as err:
        fit("baseline", None, student(), train, val, epochs=3, max_steps=1, recipe=recipe, progress=False,
                    checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert f"(epoch {state['epoch'] + 1})" in str(err.value) and str(tmp_path / "last.pt") in str(err.value)
    assert finite(state["student"]) and finite(state["best_student"] or {})


# ---- 2. a cache that verifies what it loads -------------------------------------------------------------

def test_bit_flips_in_cached_weights_are_caught(cached):
    """Row: 2000 bit flips in a cached .safetensors loaded silently (18.1% -> 10.6% test accuracy)."""
    weights, state = cached
    raw = bytearray(weights.read_bytes())
    rng = np.random.default_rng(0)
    for position in rng.integers(len(raw) // 2, len(raw), 2000):  # in the tensor data, after the header
        raw[position] ^= 1 << int(rng.integers(8))
    weights.write_bytes(bytes(raw))
    with pytest.raises(CorruptFile, match=rf"{weights}.*sha256.*retrain=True"):
        teachers.trained("tiny_resnet", "synthetic", **TEACHER_KW)
    rebuilt = teachers.trained("tiny_resnet", "synthetic", retrain=True, **TEACHER_KW)  # the documented fix
    assert all(torch.equal(v, state[k]) for k, v in rebuilt.state_dict().items())


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_truncated_empty_or_garbage_weights_name_the_file(cached, tmp_path, damage):
    """Row: truncated, empty or garbage .safetensors gave a raw SafetensorError without the path."""
    weights, _ = cached
    payload = {"truncated": weights.read_bytes()[:1000], "empty": b"", "garbage": os.urandom(4096)}[damage]
    weights.write_bytes(payload)
    with pytest.raises(CorruptFile, match=rf"{weights}.*retrain=True"):
        teachers.trained("tiny_resnet", "synthetic", **TEACHER_KW)
    own = tmp_path / "mine.safetensors"  # your own weights, no sidecar: the safetensors reader's error, named
    own.write_bytes(payload)
    with pytest.raises(CorruptFile, match=rf"{own} is not a readable safetensors file"):
        teachers.prepare("tiny_resnet", "synthetic", checkpoint=own)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "no test_acc"])
def test_truncated_or_deleted_sidecar_names_the_file(cached, damage):
    """Row: a truncated or deleted JSON sidecar gave JSONDecodeError, or KeyError 'test_acc' in notebook 05."""
    weights, _ = cached
    sidecar = weights.with_suffix(".json")
    if damage == "truncated":
        sidecar.write_text(sidecar.read_text()[:40])
    elif damage == "deleted":
        sidecar.unlink()
    else:
        meta = json.loads(sidecar.read_text())
        del meta["test_acc"]
        sidecar.write_text(json.dumps(meta))
    with pytest.raises(CorruptFile, match=rf"{sidecar}.*retrain=True"):
        teachers.trained("tiny_resnet", "synthetic", **TEACHER_KW)


def image_folder(root: Path, classes=("a", "b"), per_class=6) -> Path:
    """train/ and test/ folders of tiny PNGs, one subfolder per class; each class's images differ in size."""
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8 + k, 8 + k), (40 * k, 10 * i, 0)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def count_training(monkeypatch):
    calls = []
    real = teachers._train
    monkeypatch.setattr(teachers, "_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_imagefolder_data_changed_after_training_is_not_served_stale(tmp_path, monkeypatch, count_training):
    """Row: imagefolder data changed after training (classes swapped) reused the stale cached teacher."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    root = image_folder(tmp_path / "images")
    name = f"imagefolder:{root}"
    teachers.trained("tiny_resnet", name, **{**TEACHER_KW, "batch_size": 4})
    for split in ("train", "test"):  # swap the two classes' images
        (root / split / "a").rename(root / split / "tmp")
        (root / split / "b").rename(root / split / "a")
        (root / split / "tmp").rename(root / split / "b")
    teachers.trained("tiny_resnet", name, **{**TEACHER_KW, "batch_size": 4})
    assert len(count_training) == 2, "changed data must train a new model, not load the old one"
    assert len(list((tmp_path / "home" / "checkpoints").glob("*.safetensors"))) == 2


def test_imagefolder_gaining_a_class_trains_a_wider_model(tmp_path, monkeypatch, count_training):
    """Row: an imagefolder that gained a class gave a raw 'RuntimeError: size mismatch'."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    root = image_folder(tmp_path / "images")
    name = f"imagefolder:{root}"
    assert teachers.trained("tiny_resnet", name, **{**TEACHER_KW, "batch_size": 4}).num_classes == 2
    image_folder(root, classes=("a", "b", "c"))
    assert teachers.trained("tiny_resnet", name, **{**TEACHER_KW, "batch_size": 4}).num_classes == 3
    assert len(count_training) == 2
    own = models.create("tiny_resnet", num_classes=5)  # and loading weights into the wrong head says so
    with pytest.raises(ValueError, match=r"does not fit.*fc.weight \(\d, \d+\) \(model: \(5, \d+\)\).*number of classes"):
        checkpoints.load_weights(own, next((tmp_path / "home" / "checkpoints").glob("*.safetensors")))


def test_imagefolder_cache_file_name_is_flat_and_safe(tmp_path, monkeypatch):
    """Row: an imagefolder cache file name kept the path's slashes (nested folders under checkpoints/)."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))
    root = image_folder(tmp_path / "my data" / "flowers:v2")
    spec = teachers.cache_spec("tiny_resnet", f"imagefolder:{root}/", img_size=32, epochs=1, batch_size=4, max_steps=2,
                           pretrained=False)
    path = teachers.cache_path(spec, 0)
    assert path.parent == tmp_path / "home" / "checkpoints"
    assert path.name.startswith("tiny_resnet-imagefolder-flowers_v2-s0-") and " " not in path.name
    assert set(path.stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# ---- 3. resume that refuses a different set-up ----------------------------------------------------------

@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A folder holding the last.pt of one epoch (2 steps) of tiny_vit on synthetic data, made once."""
    folder = tmp_path_factory.mktemp("one_epoch")
    train, val, _ = synthetic()
    fit("baseline", None, student(), train, val, epochs=1, max_steps=2, progress=False, checkpoint_dir=folder)
    return folder


@pytest.fixture
def last_pt(one_epoch, tmp_path):
    shutil.copy(one_epoch / "last.pt", tmp_path / "last.pt")
    return tmp_path / "last.pt"


@pytest.mark.parametrize("change, message", [
    ({"max_steps": 1}, r"max_steps 2 there, 1 now"),
    ({"recipe": Recipe("adamw", 5e-4, 0.05, warmup_epochs=0, min_lr=1e-5)}, r"recipe .*0\.001.* there"),
    ({"data_seed": 1}, r"scored_images '[0-9a-f]+' there, '[0-9a-f]+' now"),
    ({"batch": 8}, r"batch_size 16 there, 8 now"),
    ({"seed": 1}, r"seed 0 there, 1 now"),
])
def test_resume_under_another_setup_is_refused_with_the_differences(last_pt, change, message):
    """Row: resuming with another max_steps (or recipe, dataset, batch size) was accepted silently."""
    train, val, _ = synthetic(batch=change.get("batch", 16), seed=change.get("data_seed", 0))
    with pytest.raises(ValueError, match=rf"{last_pt} was written by another set-up \(.*{message}"):
        fit("baseline", None, student(), train, val, epochs=1, max_steps=change.get("max_steps", 2),
                    recipe=change.get("recipe"), seed=change.get("seed", 0), progress=False,
                    checkpoint_dir=last_pt.parent, resume=True)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["TAS_LITE_PAYLOAD_MARK"]),))


@pytest.mark.parametrize("damage", ["truncated", "empty", "empty dict", "pickle payload"])
def test_damaged_last_pt_names_the_file(last_pt, tmp_path, monkeypatch, damage):
    """Row: last.pt truncated, empty or {} gave EOFError with an empty message or KeyError 'run'."""
    last, mark = last_pt, tmp_path / "payload_ran"
    monkeypatch.setenv("TAS_LITE_PAYLOAD_MARK", str(mark))
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "empty dict":
        torch.save({}, last)
    else:
        last.write_bytes(pickle.dumps({"student": Payload()}, protocol=2))
    train, val, _ = synthetic()
    with pytest.raises(CorruptFile, match=rf"{last} (is not a readable|holds no) tas_lite training state.*delete it"):
        fit("baseline", None, student(), train, val, epochs=1, max_steps=2, progress=False,
                    checkpoint_dir=tmp_path, resume=True)
    assert not mark.exists(), "a pickle payload placed as a checkpoint must never run"


RESUME_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from tas_lite import data, distill, loop, methods, models
    torch.set_num_threads(1)
    real = loop.train_step
    def slow(run, x, y, step):
        if step >= run.steps_per_epoch:  # epoch 2 has begun: say so, then hang until killed
            print("EPOCH2", flush=True)
            time.sleep(300)
        return real(run, x, y, step)
    loop.train_step = slow
    train, val, _ = data.loaders("synthetic", batch_size=16, num_samples=64, val_fraction=0.25)
    torch.manual_seed(0)
    student = models.create("tiny_vit", num_classes=10)
    kd = methods.build("kd", models.create("tiny_resnet", num_classes=10), student)
    distill.fit(kd, train, val, epochs=2, max_steps=2, progress=False, checkpoint_dir=sys.argv[1])
""")


def _kd_run(checkpoint_dir, resume=False):
    train, val, _ = data.loaders("synthetic", batch_size=16, num_samples=64, val_fraction=0.25)
    torch.manual_seed(0)
    s = models.create("tiny_vit", num_classes=10)
    t = models.create("tiny_resnet", num_classes=10)
    distill.fit(methods.build("kd", t, s), train, val, epochs=2, max_steps=2, progress=False,
                checkpoint_dir=checkpoint_dir, resume=resume)
    return s.state_dict()


def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    """Done-when: kill -9 during training, then resume: the same weights as an uninterrupted run."""
    expected = _kd_run(tmp_path / "full")
    child = subprocess.Popen([sys.executable, "-c", RESUME_CHILD, str(tmp_path / "cut")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        line = child.stdout.readline()
        assert line.strip() == "EPOCH2", child.stderr.read()[-2000:]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["last.pt"], "no half-written files"
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 0
    got = _kd_run(tmp_path / "cut", resume=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---- 4. writes that are atomic and safe under concurrency -----------------------------------------------

SAVER_CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import torch
    from tas_lite import checkpoints
    writer, path, go = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    torch.manual_seed(writer)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    print("READY", flush=True)
    while not go.exists():
        time.sleep(0.005)
    for i in range(100):
        checkpoints.save_weights(model, path, {"writer": writer, "save": i})
""")


def _start_together(script: str, args: list[list[str]], go: Path) -> list[subprocess.Popen]:
    """Start one child per argument list, wait until each says READY, then let them all go at once."""
    children = [subprocess.Popen([sys.executable, "-c", script, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=child_env()) for a in args]
    for child in children:
        assert child.stdout.readline().strip() == "READY", child.stderr.read()[-2000:]
    go.touch()
    return children


def test_two_processes_saving_the_same_file_100_times_each(tmp_path):
    """Row: two processes writing the same cache file: 27 of 400 saves crashed on a shared fixed .tmp name."""
    path = tmp_path / "shared.safetensors"
    children = _start_together(SAVER_CHILD, [["0", str(path), str(tmp_path / "go")],
                                             ["1", str(path), str(tmp_path / "go")]], tmp_path / "go")
    for child in children:
        _, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    meta = checkpoints.load_weights(model, path)  # verifies the weights against the sidecar's sha256
    assert "sha256" in meta and meta["save"] == 99
    torch.manual_seed(meta["writer"])
    writer = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    assert all(torch.equal(v, writer.state_dict()[k]) for k, v in model.state_dict().items()), \
        "the weights and the sidecar come from the same writer"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"


TRAINER_CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import torch
    from tas_lite import teachers
    real = teachers._train
    def slow(*args, **kwargs):
        print("TRAINING", flush=True)
        time.sleep(2)  # long enough for the other process to ask for the same model meanwhile
        return real(*args, **kwargs)
    teachers._train = slow
    print("READY", flush=True)
    while not pathlib.Path(sys.argv[1]).exists():
        time.sleep(0.005)
    model = teachers.trained("tiny_resnet", "synthetic", epochs=1, max_steps=2, batch_size=16, progress=False,
                             device="cpu")
    print("SUM", float(sum(p.double().sum() for p in model.state_dict().values())), flush=True)
""")


def test_two_processes_asking_for_the_same_model_train_it_once(tmp_path, monkeypatch):
    """Row: two processes calling trained() for the same model both trained."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "home"))  # the children inherit it
    children = _start_together(TRAINER_CHILD, [[str(tmp_path / "go")]] * 2, tmp_path / "go")
    outputs = [child.communicate(timeout=600) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err[-2000:]
    assert sum(out.count("TRAINING") for out, _ in outputs) == 1, "the second process must wait, then load"
    sums = [line for out, _ in outputs for line in out.splitlines() if line.startswith("SUM")]
    assert len(sums) == 2 and sums[0] == sums[1]


# ---- 5. validation before work --------------------------------------------------------------------------

def fabricated_notebooks(folder: Path) -> Path:
    folder.mkdir()
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [new_code_cell("import os\nPROFILE = os.environ.get('TAS_LITE_PROFILE', 'cpu')\nMETHODS = None\n"
                              "STUDENT = None", metadata={"tags": ["parameters"]}), new_code_cell("print(METHODS)")]
    nbformat.write(nb, folder / "01_train.ipynb")
    return folder


@pytest.fixture
def no_papermill(monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", no_training)


def test_cli_run_out_unwritable_is_exit_3_in_one_line(tmp_path, capsys, no_papermill):
    """Row: `run --out /proc/x` gave a traceback and exit code 1 (the code for "a notebook failed")."""
    nbs = fabricated_notebooks(tmp_path / "nbs")
    assert main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--out", UNWRITABLE]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write to {UNWRITABLE}" in err and "--out" in err


@pytest.mark.parametrize("command", ["sweep", "bench"])
def test_cli_sweep_and_bench_check_out_before_any_work(command, monkeypatch, capsys):
    """Row: `sweep --out` / `bench --out` unwritable trained or benchmarked first, then a traceback."""
    from tas_lite import bench

    monkeypatch.setattr(experiments, "train", no_training)
    monkeypatch.setattr(bench, "bench", no_training)
    out = UNWRITABLE if command == "sweep" else f"{UNWRITABLE}/bench.json"
    assert main([command, "--out", out] + (["--profile", "smoke"] if command == "sweep" else [])) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write to {UNWRITABLE}" in err


def test_read_only_cache_fails_before_training(tmp_path, monkeypatch, cached):
    """Row: with a read-only TAS_LITE_HOME and the model not cached, trained() trained, then failed to save."""
    monkeypatch.setenv("TAS_LITE_HOME", str(tmp_path / "ro_home"))
    (tmp_path / "ro_home").mkdir()
    read_only_folder(tmp_path / "ro_home" / "checkpoints")
    monkeypatch.setattr(teachers, "_train", no_training)
    with pytest.raises(NotWritable, match=r"cannot write to .*checkpoints.*TAS_LITE_HOME"):
        teachers.trained("tiny_mixer", "synthetic", **TEACHER_KW)
    weights, state = cached  # a read-only cache still serves what it holds
    monkeypatch.setenv("TAS_LITE_HOME", str(weights.parent.parent))
    def read_only(folder, fix):
        raise NotWritable(f"cannot write to {folder}")

    monkeypatch.setattr(teachers, "check_writable", read_only)
    model = teachers.trained("tiny_resnet", "synthetic", **TEACHER_KW)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unknown_method_or_model_is_rejected_before_the_teacher_trains(monkeypatch):
    """Row: distill.run("kd_typo", ...) (experiments.train today) trained the teacher before rejecting the name."""
    monkeypatch.setattr(teachers, "_train", no_training)
    monkeypatch.setattr(data, "loaders", no_training)
    settings = profiles.resolve("smoke")
    with pytest.raises(ValueError, match=r"unknown method 'kd_typo'"):
        experiments.train("kd_typo", "tiny_convnext", "tiny_vit", settings)
    with pytest.raises(ValueError, match=r"unknown model 'tiny_vitt'"):
        experiments.train("kd", "tiny_convnext", "tiny_vitt", settings)


def test_cli_methods_with_an_unknown_name_is_rejected_before_any_notebook(tmp_path, capsys, no_papermill):
    """Row: `run -p METHODS kd,foo` trained kd completely, then failed on foo."""
    nbs = fabricated_notebooks(tmp_path / "nbs")
    with pytest.raises(ValueError, match=r"METHODS of 01_train.ipynb: unknown method 'foo' in 'foo'; allowed"):
        runner.plan("smoke", nbs, parameters={"METHODS": "kd,foo"})
    assert main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--out", str(tmp_path / "out"),
                 "-p", "METHODS", "kd,foo", "-p", "STUDENT", "tiny_vit"]) == 2
    assert "unknown method 'foo' in 'foo'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"STUDENT of 01_train.ipynb: unknown model 'tiny_vitt'"):
        runner.plan("smoke", nbs, parameters={"STUDENT": "tiny_vitt"})


def test_cli_methods_empty_list_is_rejected(tmp_path, capsys, no_papermill):
    """Row: `run -p METHODS []` gave a raw pandas KeyError."""
    nbs = fabricated_notebooks(tmp_path / "nbs")
    assert main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--out", str(tmp_path / "out"),
                 "-p", "METHODS", "[]"]) == 2
    assert "METHODS of 01_train.ipynb needs at least one method; allowed: baseline, kd" in capsys.readouterr().err


@pytest.mark.parametrize("max_steps", [-1, 0, 1.5, True])
def test_max_steps_must_be_a_positive_int_or_none(max_steps):
    """Rows: fit(max_steps=-1) returned "success" after 0 steps; fit(max_steps=0) was ignored."""
    train, val, _ = synthetic()
    with pytest.raises(ValueError, match=rf"max_steps must be a positive int or None .*got {max_steps!r}"):
        fit("baseline", None, student(), train, val, epochs=1, max_steps=max_steps, progress=False)


def test_empty_validation_split_is_a_clear_error():
    """Row: val_fraction=0.0 then fit gave a bare StopIteration."""
    train, val, _ = synthetic(val_fraction=0.0)
    with pytest.raises(ValueError, match=r"validation loader is empty \(val_fraction=0\?\).*val_fraction=0.1"):
        fit("baseline", None, student(), train, val, epochs=1, max_steps=1, progress=False)


def test_student_with_too_few_classes_is_a_clear_error():
    """Row: a student with 5 classes on digits gave a raw IndexError."""
    train, val, _ = data.loaders("digits", batch_size=16)
    with pytest.raises(ValueError, match=r"student tiny_resnet predicts 5 classes but the data hold 10; .*num_classes=10"):
        fit("baseline", None, student("tiny_resnet", num_classes=5), train, val, epochs=1, max_steps=1,
                    progress=False)


def test_student_built_for_64px_fed_32px_is_a_clear_error():
    """Row: a student built for 64 px fed 32 px gave a raw timm AssertionError."""
    train, val, _ = synthetic()
    with pytest.raises(ValueError, match=r"student tiny_vit was built for 64 px images but the data are 32 px; "
                                         r"build it with img_size=32"):
        fit("baseline", None, student(img_size=64), train, val, epochs=1, max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"teacher tiny_mixer was built for 64 px"):
        fit("kd", student("tiny_mixer", img_size=64), student(), train, val, epochs=1, max_steps=1,
                    progress=False)


@pytest.mark.parametrize("kind", ["linear", "rbf"])
def test_cka_with_two_examples_is_an_error_not_1(kind):
    """Row: cka.linear with 2 examples was always exactly 1.0 (the docstring promised an error or NaN)."""
    X, Y = torch.randn(2, 5), torch.randn(2, 7)
    with pytest.raises(ValueError, match=r"need at least 3 examples, got 2: with 2, centring .* exactly 1"):
        getattr(cka, kind)(X, Y)
    assert getattr(cka, kind)(torch.randn(3, 5), torch.randn(3, 7)) < 1.0


def test_cka_matrix_says_what_is_wrong():
    """Row: cka_matrix with batches of 3, or an empty loader, said "call update() first"."""
    model = models.create("tiny_resnet", num_classes=10)
    threes = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(9, 3, 32, 32)), batch_size=3)
    with pytest.raises(ValueError, match=r"batches of at least 4 images .* 3 batch\(es\) hold at most 3; use batch_size >= 4"):
        cka.cka_matrix(model, model, threes, device="cpu")
    with pytest.raises(ValueError, match=r"empty loader"):
        cka.cka_matrix(model, model, [], device="cpu")


def test_result_save_is_atomic_and_a_truncated_results_json_is_named(tmp_path, monkeypatch):
    """Row: Result.save was not atomic; a truncated results JSON stopped the sweep with "Expecting value:
    line 1 column 1" and no file name."""
    path = tmp_path / "r.json"
    record(50.0).save(path)

    def crash(*args):
        raise KeyboardInterrupt  # the process dies after writing the data, before the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        record(99.0).save(path)
    monkeypatch.undo()
    assert Result.load(path).final_test_acc == 50.0 and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert stat.S_IMODE(path.stat().st_mode) == util.FILE_MODE, "atomic writes keep the usual file mode, not 0600"

    settings = profiles.resolve("smoke")
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    truncated = sweep_dir / results.file_name(None, settings.student, "baseline", 0)
    truncated.write_text('{"method": "baseline", "teach')
    monkeypatch.setattr(experiments, "train", no_training)
    with pytest.raises(CorruptFile, match=rf"{truncated} is not valid JSON .*delete it"):
        experiments.sweep(settings, out_dir=sweep_dir, progress=False)


# ---- 6. downloads ---------------------------------------------------------------------------------------

def cifar10_archive(monkeypatch, n=4) -> bytes:
    """A small archive in CIFAR-10's layout, registered under its own md5."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            obj = ({"label_names": [f"class{i}" for i in range(10)]} if name == "batches.meta" else
                   {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()})
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    url, archive, _, folder = sources.CIFAR_ARCHIVES["cifar10"]
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, "cifar10", (url, archive, hashlib.md5(buf.getvalue()).hexdigest(), folder))
    return buf.getvalue()


def test_truncated_cifar_archive_is_reported_then_fetched_again(tmp_path, monkeypatch):
    """Row: a truncated CIFAR archive (interrupted download) gave EOFError, then UnpicklingError forever;
    download=True could not repair it."""
    good = cifar10_archive(monkeypatch)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(good[: len(good) // 2])
    for _ in range(2):  # the same clear report every time, and nothing half-extracted left behind
        with pytest.raises(CorruptFile, match=rf"{archive} is damaged: its md5 .*download=True"):
            data.load("cifar10", root=tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-python.tar.gz"]
    fetched = []

    def fake_download(url, root, filename, md5):  # what torchvision does: fetch, then check the md5
        fetched.append(url)
        (Path(root) / filename).write_bytes(good)

    monkeypatch.setattr(sources, "download_url", fake_download)
    assert len(data.load("cifar10", root=tmp_path, download=True)) == 20 and len(fetched) == 1


def test_no_network_is_one_sentence_with_the_manual_way(tmp_path, monkeypatch):
    """Row: no network with download=True gave a raw URLError."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"could not download https://www.cs.toronto.edu/.*cifar-10-python.tar.gz "
                                              r"\(.*unreachable\); without a network, download it by hand .* to "
                                              rf"{tmp_path / 'cifar-10-python.tar.gz'}"):
        data.load("cifar10", root=tmp_path, download=True)


def test_image_folder_with_an_empty_class_folder_is_a_clear_error(tmp_path):
    """Row: an image folder with an empty class folder gave a traceback."""
    root = image_folder(tmp_path / "images")
    (root / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"imagefolder '{root / 'train'}' cannot .*classes empty.*at least one image"):
        data.load(f"imagefolder:{root}", "train")


# ---- 7. CLI exit codes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("error, code, shown", [
    (OSError(errno.EACCES, "Permission denied", "/data/x.safetensors"), 3, "Permission denied: /data/x.safetensors"),
    (SafetensorError("Error while deserializing header: HeaderTooLarge"), 3, "HeaderTooLarge"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsee the memory docs"), 3, "CUDA out of memory"),
    (CorruptFile("/x/last.pt is damaged; delete it"), 3, "/x/last.pt is damaged"),
    (distill.NonFiniteLoss("non-finite loss at epoch 1"), 4, "non-finite loss"),
    (ValueError("unknown dataset 'x'"), 2, "unknown dataset"),
    (KeyError("oops"), 5, "internal error KeyError"),
])
def test_cli_errors_are_one_line_with_a_documented_exit_code(monkeypatch, capsys, error, code, shown):
    """Row: the CLI caught only ValueError; every OSError, SafetensorError or RuntimeError was a traceback
    with exit code 1."""
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(experiments, "sweep", fail)
    assert main(["sweep", "--profile", "smoke"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and shown in err and "Traceback" not in err
    assert main(["sweep", "--profile", "smoke", "--debug"]) == code
    assert "Traceback" in capsys.readouterr().err


# ---- 8. temporary folders are cleaned up ----------------------------------------------------------------

def test_scratch_folder_of_a_smoke_sweep_is_removed_at_exit(tmp_path):
    """Row: each smoke run of notebook 06 left a /tmp/tas_lite_smoke_sweep_* folder behind."""
    code = ("from tas_lite import experiments\nfolder = experiments.scratch_dir('tas_lite_smoke_sweep_')\n"
            "(folder / 'r.json').write_text('{}')\nprint(folder)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**child_env(), "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path and folder.name.startswith("tas_lite_smoke_sweep_")
    assert not folder.exists(), "the scratch folder must be gone when the process (a kernel too) exits"
