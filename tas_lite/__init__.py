"""tas_lite: heterogeneous knowledge distillation (TAS / Fuse Before Transfer, OFA-KD, KD), as a course.

`import tas_lite` is cheap: submodules load on first use, so `tas_lite.cka.linear` works without a
separate `import tas_lite.cka`, the way `torch.nn` is reachable from `torch`.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)

# In import order: each module imports only modules above it (tests/test_architecture.py checks it).
MODULES = ("util", "paths", "colab", "config", "distributed", "profiles", "catalog", "plan", "stats", "sources",
           "data", "stages", "models", "cka", "probes", "losses", "assistant", "heads", "methods", "results",
           "recipes", "checkpoints", "loop", "distill", "teachers", "plots", "widgets", "figures", "tables", "report",
           "experiments", "runner", "steptimes", "bench")


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; submodules: {', '.join(MODULES)}")


def __dir__() -> list[str]:
    return sorted([*globals(), *MODULES])
