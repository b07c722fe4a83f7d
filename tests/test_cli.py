"""The command line as a learner meets it: its name and version, `notebooks DIR`, and bad input rejected by
the light checks before papermill or torch is imported."""

import subprocess
import sys

import pytest

import tas_lite
from tas_lite import paths
from tas_lite.__main__ import main, prog_name


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"python -m tas_lite {tas_lite.__version__}\n"


def test_prog_follows_how_it_was_started():
    assert prog_name("/venv/bin/tas-lite") == "tas-lite"
    assert prog_name(f"{paths.PACKAGE_DIR}/__main__.py") == "python -m tas_lite"


def test_help_of_the_module_names_it_as_started():
    result = subprocess.run([sys.executable, "-m", "tas_lite", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m tas_lite ")
    assert all(command in result.stdout for command in ("run", "notebooks", "train", "sweep", "bench"))


def test_notebooks_command_copies_the_course_and_keeps_edits(tmp_path, capsys):
    target = tmp_path / "course"
    assert main(["notebooks", str(target)]) == 0
    copied = sorted(p.name for p in target.glob("*.ipynb"))
    assert copied == sorted(p.name for p in paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb")) and len(copied) == 6
    assert f"copied 6 notebooks to {target}" in capsys.readouterr().out
    (target / copied[0]).write_text("my edits")
    assert main(["notebooks", str(target)]) == 2
    assert "already in" in capsys.readouterr().err and (target / copied[0]).read_text() == "my edits"
    assert main(["notebooks", str(target), "--overwrite"]) == 0 and (target / copied[0]).read_text() != "my edits"


@pytest.mark.parametrize("argv, code, message", [
    (["run", "--profile", "smoke", "-p", "EPOCHZ", "3"], 2, "unknown parameter 'EPOCHZ'"),
    (["run", "--profile", "smoke", "--only", "42"], 2, "--only '42' matches no notebook"),
    (["run", "--profile", "smoke", "--notebooks", "/nonexistent/notebooks"], 2, "does not exist"),
    (["run", "--profile", "smoke", "--out", "/proc/tas_lite_out"], 3, "cannot write to /proc/tas_lite_out"),
    (["sweep", "--profile", "smoke", "--methods", "kd", "kd_typo"], 2, "unknown method 'kd_typo'"),
    (["sweep", "--profile", "smoke", "--train-images", "0"], 2, "train_images must be a positive int"),
    (["train", "--profile", "smoke", "--method", "tas:no_such_part"], 2, "has no variant 'no_such_part'"),
    (["notebooks", "/proc/tas_lite_notebooks"], 3, "cannot write to /proc/tas_lite_notebooks"),
])
def test_bad_input_is_rejected_before_anything_heavy_is_imported(argv, code, message):
    """A wrong name, number or folder: one line, the documented exit status, and no torch or papermill loaded."""
    probe = (f"import sys; from tas_lite.__main__ import main; status = main({argv!r}); "
             "print(status, sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'papermill', 'timm'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"{code} []", result.stdout + result.stderr[-800:]
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_a_value_listed_in_a_heavy_module_is_still_checked(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--device", "tpu"])
    assert done.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def test_every_default_is_in_its_list():
    """Defaults pass the command line unread (reading the list imports torch), so they are checked here."""
    from tas_lite import config, distributed

    parser = tas_lite.__main__._parser("tas-lite")
    commands = parser._subparsers._group_actions[0].choices
    lists = {"--device": config.DEVICES, "--backend": distributed.BACKENDS}
    for command in commands.values():
        for action in command._actions:
            if isinstance(action.type, tas_lite.__main__._OneOf):
                assert action.default in lists[action.option_strings[0]], action.option_strings


def test_a_model_name_is_checked_against_the_zoo_before_papermill_is_imported():
    probe = ("import sys; from tas_lite.__main__ import main; "
             "status = main(['run', '--profile', 'smoke', '--only', '05', '-p', 'STUDENT', 'tiny_vitt']); "
             "print(status, 'papermill' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "2 False", result.stdout + result.stderr[-800:]
    assert "STUDENT of 05_distillation.ipynb: unknown model 'tiny_vitt'" in result.stderr
