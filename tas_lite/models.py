"""Model zoo: tiny CPU models built from timm's own classes, any timm name, and cached trained models.

Every tiny model runs at 32 px and has one member per family the paper uses. CNNs keep full
resolution in stage 1 (grids 32, 16, 8, 4); ViT/Mixer/ResMLP use 4 px patches (an 8x8 grid, the
same as the CNNs' stage 3); Swin uses 2 px patches (grids 16, 8, 4, 2).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .stages import FAMILIES, StageView, family, stages  # noqa: F401  (re-exported API)


def _tiny_resnet(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, channels=(16, 32, 64, 128),
                   stem_type="deep", stem_width=8, zero_init_last=False)  # deep stem -> 16 channels
    model.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)  # CIFAR-style stem
    model.maxpool = nn.Identity()
    return model


def _tiny_mobilenetv2(num_classes: int, img_size: int) -> nn.Module:
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r2_k3_s2_e6_c32", "ir_r2_k3_s1_e6_c48"],
            ["ir_r2_k3_s2_e6_c80", "ir_r1_k3_s1_e6_c128"]]
    model = EfficientNet(decode_arch_def(arch), num_classes=num_classes, num_features=512, stem_size=16,
                         act_layer=nn.ReLU6)
    model.conv_stem.stride = (1, 1)  # keep 32 px in stage 1, as the other tiny CNNs
    return model


def _tiny_convnext(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(num_classes=num_classes, depths=(1, 1, 3, 1), dims=(24, 48, 96, 192), patch_size=1,
                    ls_init_value=1e-6)


def _tiny_vit(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    # 6 blocks of width 96 (DeiT-T's head width, 32 per head): a 12-block, width-64 variant reached only
    # ~44% validation accuracy on digits in our recipe study, this one 73/79% (seeds 0/1, 10 epochs, see
    # distill.Recipe.for_student); depth slows a from-scratch ViT on small data.
    return VisionTransformer(img_size=img_size, patch_size=4, num_classes=num_classes, embed_dim=96, depth=6,
                             num_heads=3, mlp_ratio=4.0)


def _tiny_swin(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=img_size, patch_size=2, num_classes=num_classes, embed_dim=24,
                           depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, drop_path_rate=0.0)


def _tiny_mixer(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=num_classes, img_size=img_size, patch_size=4, num_blocks=12, embed_dim=96,
                    mlp_ratio=(0.5, 4.0))


def _tiny_resmlp(num_classes: int, img_size: int) -> nn.Module:
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    return MlpMixer(num_classes=num_classes, img_size=img_size, patch_size=4, num_blocks=12, embed_dim=96,
                    mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)


# name -> (builder, divisor img_size must honour, family)
TINY: dict[str, tuple[Callable[[int, int], nn.Module], int, str]] = {
    "tiny_resnet": (_tiny_resnet, 8, "cnn"),
    "tiny_mobilenetv2": (_tiny_mobilenetv2, 8, "cnn"),
    "tiny_convnext": (_tiny_convnext, 8, "cnn"),
    "tiny_vit": (_tiny_vit, 4, "vit"),
    "tiny_swin": (_tiny_swin, 16, "swin"),
    "tiny_mixer": (_tiny_mixer, 4, "mlp"),
    "tiny_resmlp": (_tiny_resmlp, 4, "mlp"),
}


def _check_common(name: str, num_classes: int, img_size: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(img_size, int) or img_size < 8:
        raise ValueError(f"img_size must be an int >= 8, got {img_size!r}")
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string; tiny models: {', '.join(TINY)}, or any timm name")


def create(name: str, *, num_classes: int, img_size: int = 32, pretrained: bool = False,
           pretrained_file: str | None = None, **timm_kwargs) -> nn.Module:
    """A tiny model by name, or any timm model (passed through `timm.create_model`).

    `pretrained=True` uses timm's real loading (Hugging Face hub, on the user's machine);
    `pretrained_file` points that same loader at a local checkpoint instead. Token models get
    `img_size`; convolutional timm models take any size.
    """
    import timm

    _check_common(name, num_classes, img_size)
    if name in TINY:
        builder, divisor, _ = TINY[name]
        if pretrained or pretrained_file:
            raise ValueError(f"{name} has no pretrained weights; use tas_lite.models.trained({name!r}) "
                             f"for a cached model trained on embedded data")
        if img_size % divisor:
            raise ValueError(f"{name} needs img_size divisible by {divisor}, got {img_size}")
        model = builder(num_classes, img_size)
        model.tas_lite_name = name
        return model
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; tiny models: {', '.join(TINY)}; or any timm model name "
                         f"(timm.list_models() lists them, e.g. resnet18, vit_small_patch16_224)")
    kwargs = dict(num_classes=num_classes, **timm_kwargs)
    if pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
    cfg_size = timm.models.get_pretrained_cfg_value(name, "input_size")
    pretrained = pretrained or pretrained_file is not None
    try:
        try:  # token models need the image size at construction; CNNs do not accept the argument
            model = timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        _check_token_grid(model, img_size)
    except (AssertionError, ValueError) as err:
        raise ValueError(f"{name} cannot be built at img_size={img_size} (its default input is {cfg_size}); "
                         f"pick a size its patch/window grid divides ({err})") from err
    model.tas_lite_name = name
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


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, each shared tensor counted once."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def trained(name: str, dataset: str = "digits", seed: int = 0, *, epochs: int | None = None,
            img_size: int = 32, profile: str | None = None, progress: bool = True,
            device: str = "auto", retrain: bool = False) -> nn.Module:
    """A model trained on `dataset` with a fixed recipe, cached; trains only when the cache is missing.

    The cache key holds name, dataset, seed and a hash of the recipe, so a changed recipe retrains.
    `profile` sets the default epochs and, in "smoke", caps the steps per epoch (fast, barely trained).
    Returns the model in eval mode; its accuracy and config are in `model.tas_lite_info`.
    """
    from .checkpoints import load_or_train

    return load_or_train(name, dataset, seed, epochs=epochs, img_size=img_size, profile=profile,
                         progress=progress, device=device, retrain=retrain)

