"""The methods by name, their named variants, the metrics a table reports and the tiny models' families, as
plain data: what the command
line and the notebooks check before anything heavy is imported (the classes behind the method names live in
`tas_lite.methods`, the tables in `tas_lite.tables`).

A method spec is a name, then variants joined by "+": "tas", "tas:no_nce", "tas:no_nce+no_ofa".
"""

from __future__ import annotations

from typing import Any

NAMES = ("baseline", "kd", "dkd", "dist", "fitnet", "ofa", "tas")  # registry order: tables' column order
# The tiny CPU models by family (`tas_lite.models` builds them): what tables and checks need without building one.
TINY_FAMILIES = {"tiny_resnet": "cnn", "tiny_mobilenetv2": "cnn", "tiny_convnext": "cnn", "tiny_vit": "vit",
                 "tiny_swin": "swin", "tiny_mixer": "mlp", "tiny_resmlp": "mlp"}
METRICS = {"final_test_acc": "test accuracy after the last epoch",  # a results field -> what it measures
           "selected_test_acc": "test accuracy of the epoch each run's selection picked",
           "final_val_acc": "validation accuracy after the last epoch"}

_NO = {"nce": ("nce_ts", "nce_ta", "nce_as"), "ofa": ("ofa_ts", "ofa_ta", "ofa_as"), "ts": ("nce_ts", "ofa_ts"),
       "ta": ("nce_ta", "ofa_ta"), "as": ("nce_as", "ofa_as")}
# method -> variant -> (what it changes, keyword arguments). "tas:no_nce+no_ofa" combines variants.
VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "kd": {"t4": ("temperature 4 instead of the OFA authors' 1", {"temperature": 4.0})},
    "dkd": {"ofa": ("the OFA authors' train.py defaults: alpha 1, beta 2, T 1, no warm-up",
                    {"beta": 2.0, "temperature": 1.0, "warmup_epochs": 0.0})},
    "ofa": {"s123": ("branches after stages 1-3 only (lighter than the authors' 1-4)", {"branch_stages": (1, 2, 3)})},
    "tas": {
        **{f"no_{k}": (f"without the {' and '.join(v)} term{'s' if len(v) > 1 else ''}",
                       {"weights": dict.fromkeys(v, 0.0)}) for k, v in _NO.items()},
        "no_l2g_attn": ("L2G without its attention block: a patch embedding only", {"l2g_attention": False}),
        "paper": ("the paper's reading: every other in-batch image is an InfoNCE negative, same class or not",
                  {"negatives": "all"}),
        "warmup": ("assistant -> student terms ramped up over the first 5 epochs", {"warmup_epochs": 5.0}),
    },
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `changes`, where a dict value (TAS's loss `weights`) merges key by key instead of
    replacing the whole dict: the one place keyword arguments are combined."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    return merged


def variants_help() -> str:
    """Every variant, one per line: `method:variant  what it changes`."""
    return "\n".join(f"{m}:{v}  {text}" for m, table in VARIANTS.items() for v, (text, _) in table.items())


def parse(spec: str) -> tuple[str, dict[str, Any]]:
    """("tas", kwargs) from "tas:no_nce+no_ofa": a method name, then variants joined by "+"."""
    if not isinstance(spec, str):
        raise ValueError(f"a method is named by a string, got {spec!r}; allowed: {', '.join(NAMES)}")
    name, colon, rest = spec.partition(":")
    if name not in NAMES:
        raise ValueError(f"unknown method {name!r} in {spec!r}; allowed: {', '.join(NAMES)}")
    table = VARIANTS.get(name, {})
    kwargs: dict[str, Any] = {}
    for variant in rest.split("+") if colon else []:
        if variant not in table:
            allowed = ", ".join(f"{name}:{v}" for v in table) or "none"
            raise ValueError(f"{name!r} has no variant {variant!r} (in {spec!r}); its variants: {allowed}")
        kwargs = merge(kwargs, table[variant][1])
    return name, kwargs


def check(specs) -> list[str]:
    """The method specs as a list, every one valid (name and variants), or one ValueError naming them."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise ValueError(f"no method given; allowed: {', '.join(NAMES)} (variants: method:variant)")
    for spec in specs:
        parse(spec)
    return specs
