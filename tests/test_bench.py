"""The bench's JSON schema on tiny settings (no timing thresholds: timings belong to the bench, not tests)."""

import json

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tas_lite import bench, steptimes
from tas_lite.__main__ import main

TINY_CKA = {"layers": 3, "examples": 32, "batch_size": 16, "dim": 8}


def test_step_times_are_interleaved_per_method():
    times = steptimes.step_times(["baseline", "kd"], "tiny_resnet", "tiny_vit", img_size=32, batch_size=4, repeats=3,
                             warmup=0)
    assert set(times) == {"baseline", "kd"} and all(len(v) == 3 and min(v) > 0 for v in times.values())
    summary = steptimes.summarise({"tas": [2.0, 2.0], "ofa": [1.0, 1.0], "kd": [0.5, 0.5]}, batch_size=8)
    assert summary["step_time_ratio"] == {"tas/ofa": 2.0, "tas/kd": 4.0, "ofa/kd": 2.0}
    assert summary["images_per_s"] == {"tas": 4.0, "ofa": 8.0, "kd": 16.0}


def test_bench_json_schema(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [new_code_cell("import os\nPROFILE = os.environ.get('TAS_LITE_PROFILE', 'cpu')",
                              metadata={"tags": ["parameters"]}), new_code_cell("assert PROFILE == 'smoke'")]
    (nbs / "01_tiny.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "bench.json"
    report = bench.bench("cpu", method_names=["kd", "ofa", "tas"], repeats=2, warmup=1, batch_size=4, cka_kwargs=TINY_CKA,
                         notebooks_dir=nbs, out=out, progress=False)
    saved = json.loads(out.read_text())
    assert set(saved["step_time_ratio"]) == {"tas/ofa", "tas/kd", "ofa/kd"}
    assert set(saved["images_per_s"]) == {"kd", "ofa", "tas"} and all(v > 0 for v in saved["images_per_s"].values())
    assert saved["cka_speedup"] > 0 and saved["cka"]["max_abs_diff"] < 1e-6
    assert {"platform", "cpu_count", "torch", "device"} <= set(saved["machine"])
    assert saved["notebook_smoke_s"]["01_tiny"]["status"] == "ok" and saved["paper_pairs"] is None
    assert set(saved["meets_targets"]) == set(bench.TARGETS)
    text = bench.format_table(report)
    assert "step-time ratio tas/ofa" in text and "01_tiny" in text


def test_cli_rejects_bad_device(capsys):
    with pytest.raises(SystemExit) as err:
        main(["bench", "--device", "tpu"])
    assert err.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_paper_pairs_report_ratios_targets_and_added_parameters(monkeypatch):
    """The paper-pair bench's schema on a tiny stand-in pair (the real ones take minutes on a CPU)."""
    monkeypatch.setattr(steptimes, "PAPER_PAIRS", ({"label": "ViT-S -> ResNet18", "teacher": "tiny_vit",
                                                "student": "tiny_resnet"},))
    monkeypatch.setattr(steptimes, "PAPER_SETUP", {"img_size": 32, "num_classes": 10, "batch_size": 4})
    (row,) = steptimes.paper_pairs(repeats=1, warmup=0, progress=False)
    assert set(row["step_time_ratio"]) == {"tas/kd", "tas/ofa", "ofa/kd"} and row["batch_size"] == 4
    assert set(row["meets_targets"]) == {"tas/kd", "tas/ofa"} and row["targets"]["tas/kd"] == 1.2
    assert set(row["cpu_time_ratio"]) == set(row["step_time_ratio"]) and min(row["cpu_time_s"].values()) > 0
    added = row["parameters"]["added"]
    assert added["kd"] == 0 and 0 < added["ofa:s123"] < added["ofa"] and added["tas"] > 0
    assert row["parameters"]["ratio"]["ofa:s123/ofa"] == round(added["ofa:s123"] / added["ofa"], 3)
    split = row["tas_split_ms"]  # where a TAS step goes: every part timed (values are times, not asserted)
    assert list(split) == ["step", "teacher forward", "student forward+backward", "assistant from stage 3",
                           "of which L2G"] and min(split.values()) > 0
    least = row["step_time_s"]["kd"] + split["assistant from stage 3"] / 1000  # KD's step + the assistant's part
    assert row["tas_floor"] == {"tas/kd": round(least / row["step_time_s"]["kd"], 3),
                                "tas/ofa": round(least / row["step_time_s"]["ofa"], 3)}
    lines = "\n".join(bench._pair_lines("paper pair", row, row, row["targets"]))
    assert "step-time ratio tas/kd" in lines and "target <= 1.2" in lines and "ofa:s123/ofa" in lines
    assert "where a TAS step goes" in lines and "of which L2G" in lines and "the method's floor" in lines


def test_family_pairs_time_kd_ofa_and_tas_for_every_teacher_student_pair():
    rows = steptimes.family_pairs(["tiny_resnet", "tiny_vit"], img_size=32, batch_size=4, repeats=1, warmup=1,
                                  progress=False)
    assert [(r["teacher"], r["student"]) for r in rows] == [("tiny_resnet", "tiny_resnet"), ("tiny_resnet", "tiny_vit"),
                                                           ("tiny_vit", "tiny_resnet"), ("tiny_vit", "tiny_vit")]
    for r in rows:
        assert set(r["step_time_s"]) == {"kd", "ofa", "tas"} and all(v > 0 for v in r["step_time_s"].values())
        assert abs(r["step_time_ratio"]["tas/kd"] - r["step_time_s"]["tas"] / r["step_time_s"]["kd"]) < 0.01
    text = bench.format_table({"machine": {"device_name": "cpu", "platform": "p", "cpu_count": 2, "torch": "t",
                                           "torch_threads": 1}, "pair": {"teacher": "a", "student": "b", "img_size": 32,
                                                                         "batch_size": 4},
                               "step_time_s": {}, "images_per_s": {}, "step_time_ratio": {}, "matrix": rows,
                               "cka": {"layers": 2, "examples": 8, "all_pairs_s": 0.1, "loop_s": 0.2,
                                       "max_abs_diff": 0.0, "accumulator_bytes": 8}, "cka_speedup": 2.0})
    assert "tiny_vit -> tiny_resnet" in text and "TAS/KD" in text
