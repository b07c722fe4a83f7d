"""Optional live controls for the notebooks: dropdowns and sliders over a figure, in a Jupyter or Colab session.

Every control draws its static figure first, so batch runs (papermill, nbval) and the HTML export keep a
figure; only a live kernel adds the widgets. Only the notebooks import this module (ipywidgets comes with the
`[notebooks]` extra); the library never does.
"""

from __future__ import annotations

import ipywidgets
from IPython import get_ipython


def available() -> bool:
    """True inside an IPython kernel, where ipywidgets can show. Batch runs look live too (papermill and
    nbval run real kernels), so the runner passes INTERACTIVE=False, and `explore` and `sliders` always
    draw their static figures first."""
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def explore(render, options: dict[str, list], *, interactive: bool, static: list[dict] | None = None) -> None:
    """`render(**choice)` for each fixed choice in `static` (default: the first of every option), which
    survive batch runs and HTML export; then, when `interactive` and ipywidgets is installed, dropdowns
    over `options` for a live session."""
    for choice in static or [{k: v[0] for k, v in options.items()}]:
        render(**choice)
    if not interactive:
        return
    ipywidgets.interact(render, **{k: ipywidgets.Dropdown(options=v, description=k) for k, v in options.items()})


def sliders(render, ranges: dict[str, tuple[float, float, float, float]], *, interactive: bool) -> None:
    """`render(**defaults)` once (kept by batch runs and HTML export); then, when `interactive` and
    ipywidgets is installed, float sliders over `ranges` = {name: (min, max, step, default)}."""
    render(**{name: spec[3] for name, spec in ranges.items()})
    if not interactive:
        return
    ipywidgets.interact(render, **{name: ipywidgets.FloatSlider(value=d, min=lo, max=hi, step=st, description=name)
                                   for name, (lo, hi, st, d) in ranges.items()})
