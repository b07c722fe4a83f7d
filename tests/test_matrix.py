"""The family matrix: every teacher x student pair of three families, each method's gain over the student's own
baseline paired by seed, and TAS against KD and OFA, as a table and a figure built from the results."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from tas_lite import figures, stats, tables  # noqa: E402
from tas_lite.results import BEST_ON_VALIDATION, Result, Setup  # noqa: E402

MODELS = ("tiny_convnext", "tiny_vit", "tiny_mixer")
BASELINE = {"tiny_convnext": 88.0, "tiny_vit": 80.0, "tiny_mixer": 82.0}
GAIN = {"kd": 1.0, "ofa": 2.0, "tas": 3.0}  # over the baseline, before each seed's own wobble


def run(method, teacher, student, seed, acc):
    setup = Setup(method=method, method_arguments={}, teacher=teacher, student=student, dataset="fashion_mnist",
                  img_size=32, num_classes=10, train_images=5000, val_images=6000, test_images=10000, batch_size=32,
                  epochs=40, max_steps=None, recipe={}, seed=seed, profile="cpu")
    return Result(setup, final_test_acc=acc, selected_test_acc=acc, selection=BEST_ON_VALIDATION,
                  teacher_info={} if teacher is None else {"test_acc": 90.0})


@pytest.fixture(scope="module")
def matrix():
    wobble = [0.0, 0.3, -0.2]
    runs = [run("baseline", None, s, seed, BASELINE[s] + w) for s in MODELS for seed, w in enumerate(wobble)]
    for t in MODELS:
        for s in MODELS:
            for method, gain in GAIN.items():
                # the same-family pairs gain nothing from KD, so one cell of the KD grid is within noise
                extra = 0.0 if method == "kd" and t == s else gain
                runs += [run(method, t, s, seed, BASELINE[s] + extra + w + 0.1 * seed * (t == s))
                         for seed, w in enumerate(wobble)]
    return tables.aggregate(runs)


def test_the_grid_pairs_each_method_with_its_own_students_baseline(matrix):
    grid = tables.family_grid(matrix, "tas")
    assert set(grid) == {(t, s) for t in MODELS for s in MODELS}
    assert all(isinstance(c, stats.Comparison) and c.n == 3 for c in grid.values())
    assert grid[("tiny_vit", "tiny_convnext")].mean == pytest.approx(3.0)
    assert grid[("tiny_vit", "tiny_convnext")].verdict == "better"
    kd = tables.family_grid(matrix, "kd")
    assert kd[("tiny_mixer", "tiny_mixer")].verdict == "within noise"
    assert tables.family_grid(matrix, "tas", "ofa")[("tiny_convnext", "tiny_vit")].mean == pytest.approx(1.0)


def test_the_markdown_names_families_and_marks_intervals_that_exclude_zero(matrix):
    text = tables.matrix_markdown(matrix)
    lines = text.splitlines()
    assert lines[0].startswith("| Teacher -> Student | families | KD - Baseline | OFA - Baseline | TAS - Baseline")
    assert len(lines) == 2 + 9
    row = next(line for line in lines if line.startswith("| tiny_convnext -> tiny_vit |"))
    assert "| cnn -> vit |" in row and "+3.00 (" in row and ")*" in row
    same = next(line for line in lines if line.startswith("| tiny_mixer -> tiny_mixer |"))
    assert same.split(" | ")[2].startswith("+0.10 (") and not same.split(" | ")[2].endswith("*")


def test_the_figure_draws_one_panel_per_comparison_and_frames_findings(matrix):
    grids = {f"{tables.label(a)} - {tables.label(b)}": tables.family_grid(matrix, a, b) for a, b in tables.MATRIX_PAIRS}
    fig = figures.family_matrix(grids, title="fabricated", families={m: tables.family_of(m) for m in MODELS})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(grids)
    framed = sum(1 for ax in panels for p in ax.patches if p.get_linewidth() == 2)
    findings = sum(c.verdict in ("better", "worse") for g in grids.values() for c in g.values())
    assert framed == findings and findings < 45
