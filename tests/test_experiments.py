"""Sweeps (resume by skipping finished configurations) and the paper-style tables they aggregate into."""

import dataclasses
import json
import math

import pandas as pd
import pytest

from tas_lite import experiments, profiles, stats, tables
from tas_lite.results import BEST_ON_TEST, BEST_ON_VALIDATION, Result, Setup
from tas_lite.results import file_name as result_name

ACC = {  # (teacher, method) -> accuracies for seeds 0, 1, 2
    ("tiny_convnext", "kd"): [90.0, 92.0, 94.0],
    ("tiny_convnext", "tas"): [95.0, 96.0, 97.0],
    ("tiny_resnet", "kd"): [80.0, 81.0, 82.0],
    ("tiny_resnet", "tas"): [79.0, 80.0, 78.0],
}


def fake_setup(method, teacher, student, seed, *, profile="cpu", epochs=12, batch_size=64, test_images=None,
               val_images=None):
    return Setup(method=method, method_arguments={}, teacher=teacher, student=student, dataset="digits", img_size=32,
                 num_classes=10, train_images=None, val_images=val_images, test_images=test_images,
                 batch_size=batch_size, epochs=epochs, max_steps=None, recipe={}, seed=seed, profile=profile)


def fake_result(method, teacher, student, seed, acc, profile="cpu", epochs=12, teacher_acc=99.0, batch_size=64,
                selection=BEST_ON_VALIDATION, **setup):
    return Result(fake_setup(method, teacher, student, seed, profile=profile, epochs=epochs, batch_size=batch_size,
                             **setup), final_test_acc=acc, selected_test_acc=acc - 1, selection=selection,
                  teacher_info={} if teacher is None else {"test_acc": teacher_acc})


def fabricated():
    results = [fake_result(m, t, "tiny_vit", seed, acc) for (t, m), accs in ACC.items() for seed, acc in enumerate(accs)]
    return results + [fake_result("baseline", None, "tiny_vit", seed, acc) for seed, acc in enumerate([85.0, 86.0, 87.0])]


def test_aggregate_mean_std_and_best(tmp_path):
    for r in fabricated():
        r.save(tmp_path / result_name(r.teacher, r.student, r.method, r.seed))
    table = tables.aggregate(tmp_path)
    assert list(table.mean.columns) == ["baseline", "kd", "tas"]  # registry order
    row = "tiny_convnext -> tiny_vit"
    assert table.mean.at[row, "kd"] == pytest.approx(92.0) and table.std.at[row, "kd"] == pytest.approx(2.0)
    assert table.mean.at[row, "tas"] == pytest.approx(96.0) and table.count.at[row, "tas"] == 3
    assert table.mean.at["tiny_resnet -> tiny_vit", "baseline"] == pytest.approx(86.0)  # baseline fills every row
    assert table.best.to_dict() == {row: "tas", "tiny_resnet -> tiny_vit": "baseline"}
    assert table.teacher_acc == {row: 99.0, "tiny_resnet -> tiny_vit": 99.0}
    md = table.markdown()
    assert "| tiny_convnext -> tiny_vit | 99.00 | 86.00 ± 1.00 | 92.00 ± 2.00 | **96.00 ± 1.00** |" in md
    assert "**86.00 ± 1.00**" in md.splitlines()[3] and "seeds 0, 1, 2" in md and "Profile cpu, digits, 12 epochs" in md
    paths = table.save(tmp_path)
    csv = pd.read_csv(paths["csv"], index_col="pair")
    assert csv.at[row, "best"] == "tas" and csv.at[row, "kd_std"] == pytest.approx(2.0) and csv.at[row, "kd_n"] == 3
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
    paired = table.paired(row, "tas", "kd")  # +5, +4, +3 over seeds 0-2
    assert paired.mean == pytest.approx(4.0) and paired.n == 3
    assert (paths["md"].read_text().count("| tiny_convnext -> tiny_vit | TAS - KD | +4.00 |") == 1
            and paths["comparisons"].is_file())
    best_val = tables.aggregate(fabricated(), metric="selected_test_acc")
    assert best_val.mean.at[row, "tas"] == pytest.approx(95.0)
    assert f"epoch each run's selection picked ({BEST_ON_VALIDATION})" in best_val.caption


def test_aggregate_single_seed_and_errors(tmp_path):
    table = tables.aggregate([fake_result("kd", "a", "b", 0, 50.0), fake_result("baseline", None, "c", 0, 40.0)])
    assert table.cell("a -> b", "kd") == "50.00" and math.isnan(table.std.at["a -> b", "kd"])
    assert table.mean.at["(no teacher) -> c", "baseline"] == 40.0
    with pytest.raises(ValueError, match="no results JSON"):
        tables.aggregate(tmp_path)
    with pytest.raises(ValueError, match="different setups"):
        tables.aggregate([fake_result("kd", "a", "b", 0, 1.0), fake_result("kd", "a", "b", 1, 1.0, profile="smoke")])
    with pytest.raises(ValueError, match="allowed: final_test_acc, selected_test_acc, final_val_acc"):
        tables.aggregate(fabricated(), metric="best_val_test_acc")
    few = fake_result("kd", "a", "b", 1, 1.0)
    few.fingerprint = {"train_images": 100}
    with pytest.raises(ValueError, match="different setups .profile, dataset, epochs, train_images, selection."):
        tables.aggregate([fake_result("kd", "a", "b", 0, 1.0), few])
    assert "each student trained on 100 labelled images" in tables.aggregate([few]).caption
    on_test = fake_result("kd", "a", "b", 1, 1.0, selection=BEST_ON_TEST)  # the paper's way never mixes with ours
    with pytest.raises(ValueError, match="different setups"):
        tables.aggregate([fake_result("kd", "a", "b", 0, 1.0), on_test])


def test_configurations_run_baseline_once_per_student():
    runs = experiments.configurations(["tiny_convnext", "tiny_resnet"], ["tiny_vit"], ["baseline", "kd"], [0, 1])
    assert sum(r.method == "baseline" for r in runs) == 2 and len(runs) == 6
    assert all(r.teacher is None for r in runs if r.method == "baseline")
    with pytest.raises(ValueError, match="unknown method"):
        experiments.configurations(["tiny_convnext"], ["tiny_vit"], ["kd", "crd"], [0])
    with pytest.raises(ValueError, match="unknown model 'tiny_vitt'"):
        experiments.configurations(["tiny_convnext"], ["tiny_vitt"], ["kd"], [0])
    with pytest.raises(ValueError, match="non-negative ints"):
        experiments.configurations(["tiny_convnext"], ["tiny_vit"], ["kd"], [-1])


def test_sweep_skips_finished_configurations(tmp_path, monkeypatch):
    calls = []

    def fake_run(method, teacher, student, settings, *, seed, out_dir, progress, command=None):
        calls.append((method, teacher, student, seed))
        result = fake_result(method, teacher, student, seed, 50.0 + seed + len(method), profile=settings.profile,
                             epochs=settings.epochs, batch_size=settings.batch_size)
        result.fingerprint = experiments.expected_fingerprint(method, teacher, student, settings)
        result.save(out_dir / result_name(teacher, student, method, seed))
        return result

    monkeypatch.setattr(experiments, "train", fake_run)
    smoke = profiles.resolve("smoke")
    kwargs = dict(teacher_names=["tiny_convnext"], student_names=["tiny_vit"], method_names=["baseline", "kd", "tas"],
                  seeds=[0, 1], out_dir=tmp_path, progress=False)
    table = experiments.sweep(smoke, **kwargs)
    assert len(calls) == 6 and table.count.loc["tiny_convnext -> tiny_vit"].tolist() == [2, 2, 2]
    assert (tmp_path / "table.md").is_file() and (tmp_path / "table.csv").is_file()
    experiments.sweep(smoke, **kwargs)
    assert len(calls) == 6  # everything was already done
    (tmp_path / result_name("tiny_convnext", "tiny_vit", "tas", 1)).unlink()
    experiments.sweep(smoke, **kwargs)
    assert calls[6:] == [("tas", "tiny_convnext", "tiny_vit", 1)]
    with pytest.raises(ValueError, match=r"holds a run of another recipe \(.*epochs: 1 -> 40"):
        experiments.sweep(profiles.resolve("smoke", epochs=40), **kwargs)


def test_paper_table_and_gains():
    paper = tables.paper_table()
    assert len(paper.mean) == 5 and set(paper.best) == {"tas"}
    assert paper.mean.at["Swin-T -> ResNet18", "tas"] == 81.61 and "arXiv 2410.12342" in paper.caption
    assert "**81.61**" in paper.markdown() and "Teacher" in paper.markdown()
    gains = tables.gains_over(paper, "kd")
    assert gains["TAS"] == pytest.approx((2.87 + 4.67 + 9.33 + 6.58 + 5.78) / 5)


def test_paper_reference():
    assert tables.paper_reference("convnext_tiny", "deit_tiny_patch16_224")[0] == "ConvNeXt-T -> DeiT-T"
    label, row = tables.paper_reference("tiny_convnext", "tiny_vit")
    assert label == "ConvNeXt-T -> DeiT-T (same families)" and row["tas"] == 79.57
    assert tables.paper_reference("swin_tiny_patch4_window7_224", "resnet18")[1]["baseline"] == 74.01
    assert experiments.default_dir(profiles.resolve("cpu")).parts[-2:] == ("sweep", "cpu")


def test_paired_comparisons_use_seeds_and_a_t_interval():
    """KD - baseline paired by seed: +5, +6, +7 has mean 6, sd 1, so the 95% t-interval (t = 4.303, 2 df)
    is 6 +- 2.484: 'better'. An unpaired standard error would be far wider here."""
    table = tables.aggregate(fabricated())
    row = "tiny_convnext -> tiny_vit"
    c = table.paired(row, "kd", "baseline")
    assert (c.mean, c.n) == (pytest.approx(6.0), 3)
    assert c.low == pytest.approx(6 - 4.302653 / math.sqrt(3), abs=1e-5) and c.verdict == "better"
    worse = table.paired("tiny_resnet -> tiny_vit", "tas", "baseline")  # 79-85, 80-86, 78-87: -6, -6, -9
    assert worse.verdict == "worse" and worse.high < 0
    noise = stats.paired([1.0, -1.0, 0.5], [0.0, 0.0, 0.0], ("x", "y"))
    assert noise.verdict == "within noise" and noise.low < 0 < noise.high
    one = stats.paired([1.0], [0.0])
    assert one.verdict == "one seed: no verdict" and "no interval" in one.sentence()
    frame = table.comparisons()
    assert set(frame["comparison"]) == {"TAS - KD", "KD - Baseline"}  # no OFA in this table
    assert "| tiny_convnext -> tiny_vit | KD - Baseline | +6.00 |" in table.verdicts_markdown()


def test_identical_differences_are_not_a_zero_width_interval():
    """Three seeds each one test image apart (359 images: 0.2786 points) have a sample std of 0; with the
    std floored at one image the interval is 0.2786 +- 4.303 * 0.2786 / sqrt(3): within noise."""
    step = 100 / 359
    a, b = [99.0 + step, 98.5 + step, 98.0 + step], [99.0, 98.5, 98.0]
    assert stats.paired(a, b).verdict == "better"  # the raw t-interval has zero width
    c = stats.paired(a, b, resolution=step)
    assert c.low == pytest.approx(step - 4.302653 * step / math.sqrt(3), abs=1e-5) and c.verdict == "within noise"
    runs = [fake_result(m, "tiny_convnext", "tiny_vit", seed, acc, epochs=40, test_images=359)
            for seed in range(3) for m, acc in (("tas", b[seed]), ("tas:no_ts", a[seed]))]
    table = tables.aggregate(runs)
    assert table.resolution == pytest.approx(step)
    assert table.paired("tiny_convnext -> tiny_vit", "tas:no_ts", "tas").verdict == "within noise"
    for r in runs:  # runs that did not record their test set's size: no resolution (nothing is loaded to guess it)
        r.setup = dataclasses.replace(r.setup, test_images=None)
    assert tables.aggregate(runs).resolution == 0.0
    assert tables.aggregate(runs).paired("tiny_convnext -> tiny_vit", "tas:no_ts", "tas").verdict == "better"


def test_stats_match_scipys_paired_t_test():
    from scipy import stats as scipy_stats

    a, b = [97.2, 98.1, 96.5, 99.0, 97.7], [96.0, 97.9, 95.1, 98.2, 97.0]
    c = stats.paired(a, b)
    d = [x - y for x, y in zip(a, b)]
    interval = scipy_stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=scipy_stats.sem(d))
    assert (c.low, c.high) == pytest.approx(interval)
    assert (c.low > 0) == (scipy_stats.ttest_rel(a, b).pvalue < 0.05 and sum(d) > 0)


def test_results_carry_fingerprint_and_provenance_and_stale_ones_are_named(tmp_path):
    smoke = profiles.resolve("smoke")
    result = experiments.train("kd", "tiny_resnet", "tiny_vit", smoke, out_dir=tmp_path, progress=False,
                             command="python -m tas_lite sweep --profile smoke")
    prov = result.provenance
    assert prov["command"] == "python -m tas_lite sweep --profile smoke"
    assert {"git_commit", "date", "torch", "threads", "cpu"} <= set(prov)
    saved = Result.load(tmp_path / result_name("tiny_resnet", "tiny_vit", "kd", 0))
    assert saved == result
    assert saved.fingerprint == experiments.expected_fingerprint("kd", "tiny_resnet", "tiny_vit", smoke)
    assert saved.fingerprint["method_arguments"] == saved.setup.method_arguments == {"temperature": 1.0, "weight": 1.0}
    assert (saved.setup.profile, saved.setup.dataset, saved.setup.epochs, saved.setup.max_steps) == ("smoke", "digits", 1, 4)
    assert saved.teacher == "tiny_resnet" and saved.teacher_info["test_acc"] is not None
    changed = experiments.describe_differences(saved.fingerprint, experiments.expected_fingerprint(
        "kd:t4", "tiny_resnet", "tiny_vit", smoke))
    assert "method_arguments.temperature: 1.0 -> 4.0" in changed


def test_sweep_rejects_bad_methods_and_workers_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "train", lambda *a, **k: pytest.fail("nothing may train"))
    smoke = profiles.resolve("smoke")
    with pytest.raises(ValueError, match="'tas' has no variant 'no_foo'"):
        experiments.sweep(smoke, method_names=["kd", "tas:no_foo"], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        experiments.sweep(smoke, method_names=["kd"], out_dir=tmp_path, progress=False, workers=0)


@pytest.mark.slow
def test_sweep_with_two_workers_writes_each_result_once(tmp_path):
    smoke = profiles.resolve("smoke", seeds=[0, 1])
    table = experiments.sweep(smoke, method_names=["baseline", "kd:t4"], out_dir=tmp_path, progress=False, workers=2)
    files = sorted(p.name for p in tmp_path.glob("*__seed*.json"))
    assert files == sorted(result_name(t, "tiny_vit", m, s) for m, t in (("baseline", None), ("kd:t4", "tiny_convnext"))
                           for s in (0, 1))
    assert list(table.mean.columns) == ["baseline", "kd:t4"] and table.count.values.min() == 2


def test_convergence_compares_the_last_epochs_change_with_seed_noise():
    def run(method, seed, curve):
        return Result(fake_setup(method, "t", "s", seed, epochs=len(curve), val_images=100),
                      history=[{"epoch": i + 1, "val_acc": v} for i, v in enumerate(curve)])
    flat = [run("kd", s, [50.0] * 5 + [90.0 + s] * 10) for s in range(3)]          # plateaued: change 0
    rising = [run("tas", s, [50.0 + 4 * e for e in range(10)]) for s in range(3)]   # +20 points per 5 epochs
    table = tables.convergence(flat + rising)
    assert table.loc["kd", "converged"] and table.loc["kd", "change"] == 0.0
    assert table.loc["kd", "seed_std"] == pytest.approx(1.0)
    assert not table.loc["tas", "converged"] and table.loc["tas", "change"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="10 epochs of history"):
        tables.convergence([run("kd", 0, [1.0, 2.0])])


def test_train_images_is_part_of_the_recipe_and_its_results_are_not_stale(tmp_path):
    few = profiles.resolve("smoke", train_images=40, epochs=2)
    command = "python -m tas_lite sweep --profile smoke --epochs 2 --train-images 40 --methods baseline"
    result = experiments.train("baseline", None, "tiny_vit", few, out_dir=tmp_path, progress=False, command=command)
    assert result.fingerprint["train_images"] == 40 and result.setup.train_images == 40
    assert result.teacher is None and result.teacher_info == {}
    assert "train_images" not in experiments.expected_fingerprint("baseline", None, "tiny_vit", profiles.resolve("smoke"))
    assert experiments.stale(tmp_path) == []  # judged against what its command trains: 2 epochs, 40 images
    path = tmp_path / result_name(None, "tiny_vit", "baseline", 0)
    doc = json.loads(path.read_text())
    doc["provenance"]["command"] = "python -m tas_lite sweep --profile smoke --methods baseline"
    path.write_text(json.dumps(doc))
    (line,) = experiments.stale(tmp_path)  # the same run, as if the command had not asked for them
    assert "epochs: 2 -> 1" in line and "train_images: 40 -> (none)" in line


def test_bad_train_images_fail_before_any_teacher_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments.teachers, "from_settings", lambda *a, **k: pytest.fail("no teacher may train"))
    with pytest.raises(ValueError, match="train_images must be an int from 10"):
        experiments.train("kd", "tiny_convnext", "tiny_vit", profiles.resolve("smoke", train_images=9999),
                        out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="train_images must be an int from 10"):
        experiments.sweep(profiles.resolve("smoke", train_images=9999), method_names=["kd"], out_dir=tmp_path,
                          progress=False)
    with pytest.raises(ValueError, match="train_images must be a positive int"):
        profiles.resolve("smoke", train_images=0)
    with pytest.raises(ValueError, match="drop train_images"):
        profiles.resolve("gpu", paper=True, train_images=100)


def test_command_settings_read_the_recipe_knobs_a_command_sets():
    """A recorded command is judged by what it trains today: its profile, with its own --dataset, --epochs
    and --train-images (a dataset other than the profile's takes the values the profile keeps for it)."""
    digits = experiments.command_settings("python -m tas_lite sweep --profile cpu --dataset digits --epochs 3", "cpu")
    assert (digits.dataset, digits.epochs, digits.train_images) == ("digits", 3, None)
    assert digits.teacher_epochs == profiles.DATASET_VALUES["cpu"]["digits"]["teacher_epochs"]
    assert experiments.command_settings("python -m tas_lite train --train-images 50", "cpu").train_images == 50
    assert experiments.command_settings("experiments.train('kd', 'a', 'b', profile 'smoke', seed=0)", "smoke") == \
        profiles.resolve("smoke")
