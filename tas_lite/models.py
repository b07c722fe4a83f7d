"""Model zoo: tiny CPU models built from timm's own classes and registered in timm, plus any timm name.

Every tiny model runs at 32 px and has one member per family the paper uses. CNNs keep full
resolution in stage 1 (grids 32, 16, 8, 4); the ViT uses 8 px patches (a 4x4 grid, like the CNNs'
stage 4), Mixer/ResMLP 4 px patches (an 8x8 grid, like the CNNs' stage 3); Swin uses 2 px patches
(grids 16, 8, 4, 2). Being registered, they are
built by `timm.create_model("tiny_vit", num_classes=10)` as well as by `create`.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
from timm.models import register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock
from timm.models.resnet import BasicBlock, ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .catalog import TINY_FAMILIES
from .stages import FAMILIES, StageView, count_parameters, family, stages  # noqa: F401  (public API)

TINY_IMG_SIZE = 32
TINY_STATS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # digits are scaled to [-1, 1]


def _tiny_resnet(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, channels=(16, 32, 64, 128),
                   stem_type="deep", stem_width=8, zero_init_last=False, **kwargs)  # deep stem -> 16 channels
    model.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR-style stem
    model.maxpool = nn.Identity()
    return model


def _tiny_mobilenetv2(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    arch = [["ds_r1_k3_s1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r2_k3_s2_e6_c32", "ir_r2_k3_s1_e6_c48"],
            ["ir_r2_k3_s2_e6_c80", "ir_r1_k3_s1_e6_c128"]]
    model = EfficientNet(decode_arch_def(arch), num_classes=num_classes, num_features=512, stem_size=16,
                         act_layer=nn.ReLU6, **kwargs)
    model.conv_stem.stride = (1, 1)  # keep 32 px in stage 1, as the other tiny CNNs
    return model


def _tiny_convnext(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    return ConvNeXt(num_classes=num_classes, depths=(1, 1, 3, 1), dims=(24, 48, 96, 192), patch_size=1,
                    ls_init_value=1e-6, **kwargs)


def _tiny_vit(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    # 6 blocks of width 96 (DeiT-T's head width, 32 per head); 8 px patches, a 4x4 grid: one token per
    # 2x2 pixels of the 8x8 digit. In our recipe study (digits, 40 epochs, affine augmentation, seeds 0-2)
    # 8 px patches reached 98.2% validation accuracy (mean of the last 5 epochs) against 98.5% for 4 px
    # patches, within one validation image, at a third of the step time; a 12-block, width-64 variant
    # trained far slower (~44% after 10 epochs). Depth and tokens slow a from-scratch ViT on small data.
    return VisionTransformer(img_size=img_size, patch_size=8, num_classes=num_classes, embed_dim=96, depth=6,
                             num_heads=3, mlp_ratio=4.0, **kwargs)


def _tiny_swin(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    return SwinTransformer(img_size=img_size, patch_size=2, num_classes=num_classes, embed_dim=24,
                           depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, **kwargs)


def _tiny_mixer(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    return MlpMixer(num_classes=num_classes, img_size=img_size, patch_size=4, num_blocks=12, embed_dim=96,
                    mlp_ratio=(0.5, 4.0), **kwargs)


def _tiny_resmlp(num_classes: int, img_size: int, **kwargs) -> nn.Module:
    return MlpMixer(num_classes=num_classes, img_size=img_size, patch_size=4, num_blocks=12, embed_dim=96,
                    mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine, **kwargs)


# name -> (builder, divisor img_size must honour, family); the families are catalog's
_BUILDERS = {"tiny_resnet": (_tiny_resnet, 8), "tiny_mobilenetv2": (_tiny_mobilenetv2, 8), "tiny_convnext": (_tiny_convnext, 8),
             "tiny_vit": (_tiny_vit, 8), "tiny_swin": (_tiny_swin, 16), "tiny_mixer": (_tiny_mixer, 4),
             "tiny_resmlp": (_tiny_resmlp, 4)}
TINY: dict[str, tuple[Callable[..., nn.Module], int, str]] = {
    name: (*_BUILDERS[name], kind) for name, kind in TINY_FAMILIES.items()}


def _build_tiny(name: str, pretrained: bool, num_classes: int, img_size: int, **kwargs) -> nn.Module:
    """What timm calls for a tiny name: build, check, and attach a pretrained_cfg like timm's own models."""
    builder, divisor, _ = TINY[name]
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; use tas_lite.teachers.trained({name!r}) "
                         f"for a cached model trained on embedded data")
    if img_size % divisor:
        raise ValueError(f"{name} needs img_size divisible by {divisor}, got {img_size}")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory options
        kwargs.pop(key, None)
    model = builder(num_classes, img_size, **kwargs)
    model.pretrained_cfg = {"architecture": name, "input_size": (3, img_size, img_size), "num_classes": num_classes,
                            **TINY_STATS}
    return model


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, num_classes: int = 10, img_size: int = TINY_IMG_SIZE, **kwargs):
        return _build_tiny(name, pretrained, num_classes, img_size, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"tas_lite's {name} ({TINY[name][2]} family, {TINY_IMG_SIZE} px by default)."
    entrypoint.__module__ = __name__
    return entrypoint


for _name in TINY:
    if not timm.is_model(_name):
        register_model(_entrypoint(_name))
    elif timm.models.model_entrypoint(_name).__module__ != __name__:  # ours already, if this module is re-imported
        raise ImportError(f"timm {timm.__version__} has a model of its own named {_name!r}; tas_lite's tiny "
                          f"models need that name")


def _check_common(name: str, num_classes: int, img_size: int | None) -> None:
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string; tiny models: {', '.join(TINY)}, or any timm name")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if img_size is not None and (not isinstance(img_size, int) or img_size < 8):
        raise ValueError(f"img_size must be an int >= 8 (or None: the model's own), got {img_size!r}")


def default_img_size(name: str) -> int:
    """The input side a model is built for when no img_size is given: 32 for tiny models, timm's own otherwise."""
    if name in TINY:
        return TINY_IMG_SIZE
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; tiny models: {', '.join(TINY)}; or any timm model name "
                         f"(timm.list_models() lists them, e.g. resnet18, vit_small_patch16_224)")
    size = timm.models.get_pretrained_cfg_value(name, "input_size")
    return int(size[-1]) if size else 224


def create(name: str, *, num_classes: int, img_size: int | None = None, pretrained: bool = False,
           **timm_kwargs) -> nn.Module:
    """A tiny model by name, or any timm model, through `timm.create_model`.

    `img_size=None` builds the model at its own input size (32 px for tiny models, timm's default
    otherwise, e.g. 224 for deit_tiny_patch16_224). `pretrained=True` uses timm's real loading (Hugging
    Face hub, on the user's machine); timm's own options pass through, e.g. `checkpoint_path=` (exact
    weights) or `pretrained_cfg_overlay=dict(file=...)` (ImageNet weights from a local file, new head).
    """
    _check_common(name, num_classes, img_size)
    size = default_img_size(name) if img_size is None else img_size
    if name in TINY:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=size, **timm_kwargs)
    try:
        try:  # token models take the image size at construction; CNNs do not accept the argument
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=size,
                                      **timm_kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
        _check_token_grid(model, size)
    except (AssertionError, ValueError) as err:
        raise ValueError(f"{name} cannot be built at img_size={size} (its default input is "
                         f"{default_img_size(name)} px); pick a size its patch/window grid divides ({err})") from err
    return model


def _check_token_grid(model: nn.Module, img_size: int) -> None:
    """Patch models need img_size divisible by the patch; Swin also by its merges (2 per stage)."""
    embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        return
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    merges = 2 ** (len(model.layers) - 1) if hasattr(model, "layers") else 1
    if img_size % (patch * merges):
        raise ValueError(f"img_size must be divisible by {patch * merges} (patch {patch} x {merges} merges)")


def tiny_family(name: str) -> str:
    """Family of a tiny model name without building it."""
    if name not in TINY:
        raise ValueError(f"unknown tiny model {name!r}; allowed: {', '.join(TINY)}")
    return TINY[name][2]


def model_name(model: nn.Module | None) -> str | None:
    """The name a model was created with (tiny or timm), for reports."""
    if model is None:
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def input_size(model: nn.Module) -> int | None:
    """The square input side a model was built for: a token model's patch grid fixes it; a CNN takes any
    size, so its pretrained_cfg (what create() built it for) is only a default. None if unknown."""
    embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    size = getattr(embed, "img_size", None) or (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if size is None:
        return None
    return int(size[-1]) if isinstance(size, (tuple, list)) else int(size)
