"""Figures over epochs read as epochs: whole-epoch ticks, whatever the number of epochs."""

import matplotlib

matplotlib.use("Agg")

import pytest

from tas_lite import figures, plots


def _history(epochs: int) -> list[dict]:
    return [{"epoch": e, "val_acc": 50.0 + e, "loss/ce": 2.0 / e, "loss/ce_s": 2.0 / e, "loss/nce_ts": 1.0 / e,
             "cka/t~a": 0.7, "cka/a~s": 0.5, "cka/t~s": 0.6, **{f"cka/t~s/stage{s}": 0.8 for s in range(1, 5)}}
            for e in range(1, epochs + 1)]


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_epoch_axes_tick_whole_epochs_only(epochs):
    figs = [plots.learning_curves({"kd": _history(epochs)}, title="t"),
            plots.curves({"a": (range(1, epochs + 1), range(epochs))}, title="t", xlabel="epoch", ylabel="y"),
            figures.bridge(_history(epochs), title="t")]
    for fig in figs:
        fig.canvas.draw()
        for ax in fig.axes:
            if ax.get_xlabel() == "epoch":
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
