"""The one table of profile defaults, and `resolve()`: the only place that reads a profile's name.

Notebooks and the command line call `resolve(PROFILE, epochs=EPOCHS, ...)` once, at the edge; every
function below takes the resolved values explicitly (a `Settings` object or plain arguments), and a
function that needs a profile value reads it when called, never as a default frozen at import.
smoke: each notebook < 60 s on 2 cores (the tests); cpu: the course on a laptop; gpu: the paper.
A profile may also carry values for another dataset (`DATASET_VALUES`): `resolve("cpu", dataset="digits")`
gives the digits recipe the cpu profile had before it moved to Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Every knob of a profile, resolved. Lists are stored as tuples, so a Settings object never changes."""

    profile: str
    dataset: str                 # "digits" (embedded), "fashion_mnist", "cifar100", ...
    img_size: int                # input side in pixels
    batch_size: int              # student training batch
    epochs: int                  # student epochs: the full recipe (sweeps, reference results)
    demo_epochs: int             # student epochs of notebook 05's own runs (a shorter schedule on 2 cores)
    max_steps: int | None        # cap on student steps per epoch (smoke runs), None: whole epochs
    teacher_epochs: int          # epochs of a cached teacher (from scratch, or fine-tuning when pretrained)
    analysis_epochs: int         # epochs of the models notebooks 01-03 look inside (trained, not necessarily best)
    teacher_batch_size: int
    teacher_max_steps: int | None
    pretrained: bool             # teachers start from timm's ImageNet weights
    cka_examples: int            # images CKA sees (notebook 01)
    probe_images: int            # images the probes average over (notebook 02)
    cnn: str                     # one model per family for notebooks 01-02
    vit: str
    mlp: str
    teacher: str                 # the default pair of notebooks 04-06 and sweeps
    student: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    assistant_pairs: tuple[tuple[str, str], ...]  # notebook 03
    train_steps: int             # notebook 03's short TAS run
    device: str                  # "auto": cuda, then mps, then cpu
    amp: bool | None             # None: on for CUDA
    recipe: str = "course"       # "course": the course's optimisers (recipes.Recipe.for_student); "paper": the
                                 # OFA authors' CIFAR configs with timm's augmentation (recipes.Recipe.paper)
    paper: bool = False          # train on the whole training split, pick the best *test* epoch as the paper
                                 # reports (CIFAR-100 only); False keeps a validation split for choosing
    train_images: int | None = None  # labelled images a student trains on (an even share per class), None: the
                                     # whole training split; teachers always train on the whole split

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; allowed: {', '.join(RECIPES)}")
        if self.paper and self.dataset != "cifar100":
            raise ValueError(f"paper=True (--paper) reproduces the paper's CIFAR-100 protocol (all 50k training "
                             f"images, best test epoch); it needs dataset 'cifar100', got {self.dataset!r}")
        if self.train_images is not None:
            if not isinstance(self.train_images, int) or isinstance(self.train_images, bool) or self.train_images < 1:
                raise ValueError(f"train_images must be a positive int (labelled images per student), got "
                                 f"{self.train_images!r}; None trains on the whole training split")
            if self.paper:
                raise ValueError("paper=True trains on all training images; drop train_images (--train-images)")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some knobs changed (None leaves a knob as it is); unknown names are an error."""
        _check_names(changes)
        return dataclasses.replace(self, **_frozen({k: v for k, v in changes.items() if v is not None}))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "digits", "img_size": 32, "batch_size": 32, "epochs": 1, "demo_epochs": 1, "max_steps": 4,
        "teacher_epochs": 2, "analysis_epochs": 2, "teacher_batch_size": 32, "teacher_max_steps": 4, "pretrained": False,
        "cka_examples": 128, "probe_images": 8, "cnn": "tiny_resnet", "vit": "tiny_vit", "mlp": "tiny_mixer",
        "teacher": "tiny_convnext", "student": "tiny_vit", "methods": ["baseline", "kd", "ofa", "tas"],
        "seeds": [0], "assistant_pairs": [["tiny_vit", "tiny_resnet"]], "train_steps": 3,
        "device": "cpu", "amp": False, "recipe": "course", "paper": False, "train_images": None,
    },
    "cpu": {
        "dataset": "fashion_mnist", "img_size": 32, "batch_size": 32, "epochs": 80, "demo_epochs": 4,
        "max_steps": None, "teacher_epochs": 20, "analysis_epochs": 20, "teacher_batch_size": 32,
        "teacher_max_steps": None, "pretrained": False,
        "cka_examples": 512, "probe_images": 32, "cnn": "tiny_convnext", "vit": "tiny_vit", "mlp": "tiny_mixer",
        "teacher": "tiny_convnext", "student": "tiny_vit", "methods": ["baseline", "kd", "fitnet", "ofa", "tas"],
        "seeds": [0, 1, 2, 3, 4],
        "assistant_pairs": [["tiny_vit", "tiny_resnet"], ["tiny_convnext", "tiny_vit"], ["tiny_mixer", "tiny_resnet"]],
        "train_steps": 40, "device": "auto", "amp": False, "recipe": "course", "paper": False,
        "train_images": 2500,
    },
    "gpu": {
        "dataset": "cifar100", "img_size": 224, "batch_size": 128, "epochs": 300, "demo_epochs": 300,
        "max_steps": None,
        "teacher_epochs": 10, "analysis_epochs": 10, "teacher_batch_size": 128, "teacher_max_steps": None,
        "pretrained": True,
        "cka_examples": 2048, "probe_images": 64, "cnn": "resnet50", "vit": "vit_small_patch16_224",
        "mlp": "mixer_b16_224", "teacher": "convnext_tiny", "student": "deit_tiny_patch16_224",
        "methods": ["baseline", "kd", "ofa", "tas"], "seeds": [0, 1, 2],
        "assistant_pairs": [["swin_tiny_patch4_window7_224", "resnet18"], ["vit_small_patch16_224", "resnet18"],
                            ["vit_small_patch16_224", "mobilenetv2_100"], ["convnext_tiny", "deit_tiny_patch16_224"],
                            ["convnext_tiny", "resmlp_12_224"]],
        "train_steps": 200, "device": "auto", "amp": True, "recipe": "paper", "paper": False, "train_images": None,
    },
}
# Values a profile takes for a dataset other than its own; an explicit override still wins over them.
DATASET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"digits": {"epochs": 40, "demo_epochs": 10, "teacher_epochs": 40, "analysis_epochs": 10,
                       "cnn": "tiny_resnet", "train_images": None}},
}
RECIPES = ("course", "paper")
KNOBS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "profile")


def _frozen(values: dict[str, Any]) -> dict[str, Any]:
    """Lists (and lists of lists) as tuples."""
    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v
    return {k: freeze(v) for k, v in values.items()}


def _check_names(knobs: dict[str, Any]) -> None:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; profile knobs are: {', '.join(sorted(KNOBS))}")


def resolve(profile: str, **overrides: Any) -> Settings:
    """The profile's Settings for its dataset (or the `dataset` override, with the values the profile keeps
    for it), with every override that is not None applied; unknown names are an error.

    >>> resolve("smoke", epochs=None, batch_size=8).batch_size
    8
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    _check_names(overrides)
    dataset = overrides.get("dataset") or PROFILES[profile]["dataset"]
    values = {**PROFILES[profile], **DATASET_VALUES.get(profile, {}).get(dataset, {})}
    return Settings(profile=profile, **_frozen(values)).replace(**overrides)


