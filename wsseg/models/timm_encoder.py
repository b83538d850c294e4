"""Encoders from timm (PyTorch Image Models): any timm model as multi-scale features.

`TimmFeatures("resnet50")` is `timm.create_model("resnet50", features_only=True)` with the input
normalisation of the weights it was trained with inside, returning feature maps fine to coarse
with their strides (`strides`) and widths (`channels`). The segmenters in timm_unet.py,
timm_fpn.py and deeplabv3plus.py, and the single-stage backbone `timm:<name>`, decode these.

`output_stride` (8 or 16) dilates the last stages instead of striding them (timm's own
`output_stride`), as DeepLab does: maps past it keep its size.

Plain ViTs give one stride only (16 for patch 16): every block's tokens on the patch grid. Their
four blocks at a quarter, half, three quarters and all of the depth are reassembled into strides
4, 8, 16, 32 as in DPT (Ranftl et al., ICCV 2021): a 1×1 projection, then a transposed conv up
(×4, ×2), nothing, or a strided 3×3 conv down. Those layers are new (no ImageNet weights) and
live in `pyramid`, outside `body`. The ViT takes any input size (`dynamic_img_size`: its
position embedding is resampled to the grid; `dynamic_img_pad`: the image is padded to whole
patches).

ImageNet weights (`pretrained=True`) come through timm's own download (the Hugging Face hub, or
the URL timm records for a model), into timm's cache, or `$WSSEG_CACHE/timm` where `$WSSEG_CACHE`
is set and the user named no Hugging Face cache of their own. `$WSSEG_WEIGHTS_URL`, a mirror,
replaces the hub: timm then downloads `<mirror>/timm/<model>.<tag>.pth`, a state dict.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from wsseg.models.normalization import register_normalisation
from wsseg.models.registry import SegmenterSpec, register_segmenter

# core.hub's cache variable, read here too: the layer contract keeps models from importing core.
CACHE_ENV = "WSSEG_CACHE"
# The mirror of every ImageNet file wsseg fetches (pipeline.weights reads it for the others).
WEIGHTS_URL_ENV = "WSSEG_WEIGHTS_URL"
# Where huggingface_hub takes its cache from; any of them set is the user's own choice.
HF_CACHE_ENVS = ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE")
# Where timm looks for a model's weights on the hub, in its order: safetensors first.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Strides of the pyramid a plain ViT is reassembled into.
PYRAMID_STRIDES = (4, 8, 16, 32)


def import_timm():
    """The timm package, or an error that says how to install it: it is an extra of wsseg
    (`wsseg[timm]`), which requirements.txt installs."""
    try:
        import timm
    except ImportError as error:
        raise ModuleNotFoundError("timm encoders need the timm package: `pip install timm==1.0.31` (pinned in "
                                  "requirements.txt) or `pip install 'wsseg[timm]'`") from error
    return timm


def check_timm_name(name: str) -> None:
    """A ValueError unless timm builds `name` (with a valid pretrained tag, if it has one)."""
    timm = import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"timm {timm.__version__} has no model {name!r}{hint} (timm.list_models() lists them)")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:  # a tag the architecture does not have
        raise ValueError(f"timm model {name!r}: {err}") from None


def timm_cache_dir() -> Path | None:
    """Where timm downloads go: `$WSSEG_CACHE/timm` when `$WSSEG_CACHE` is set and no Hugging Face
    cache variable is; otherwise None, timm's and the hub's own defaults."""
    if os.environ.get(CACHE_ENV) and not any(os.environ.get(v) for v in HF_CACHE_ENVS):
        return Path(os.environ[CACHE_ENV]).expanduser() / "timm"
    return None


def _pretrained_cfg(name: str) -> dict:
    """timm's record of where `name`'s weights are, with the mirror (`$WSSEG_WEIGHTS_URL`) in
    place of the hub when one is set."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return {}
    cfg = cfg.to_dict()
    mirror = os.environ.get(WEIGHTS_URL_ENV)
    published = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if mirror and published:
        tagged = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
        cfg.update(hf_hub_id=None, hf_hub_filename=None, file=None,
                   url=f"{mirror.rstrip('/')}/timm/{tagged}.pth")
    return cfg


def _require_weights(name: str, cfg: dict) -> None:
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        # timm itself would only warn, and go on with random weights.
        raise ValueError(f"timm has no pretrained weights for {name!r}: set pretrained: false, or choose a "
                         f"model of timm.list_models(pretrained=True)")


def _download_options(name: str) -> dict:
    """`timm.create_model` arguments that put `name`'s weights where `cached_timm_weights` looks."""
    cfg = _pretrained_cfg(name)
    _require_weights(name, cfg)
    options = {"cache_dir": timm_cache_dir()}
    if os.environ.get(WEIGHTS_URL_ENV):
        options["pretrained_cfg_overlay"] = {k: cfg[k] for k in ("hf_hub_id", "hf_hub_filename", "file", "url")}
    return options


def cached_timm_weights(name: str) -> Path | None:
    """The file timm loads `name`'s ImageNet weights from, if it is downloaded already; else None
    (a ValueError if timm has none for it). Looks only: nothing is fetched."""
    cfg = _pretrained_cfg(name)
    _require_weights(name, cfg)
    cache = timm_cache_dir()
    if cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg["hf_hub_id"].partition("@")
        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HF_WEIGHT_FILES
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.get("url"):
        folder = cache if cache is not None else Path(torch.hub.get_dir()) / "checkpoints"
        path = folder / Path(urlparse(cfg["url"]).path).name
        return path if path.is_file() else None
    return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None


def fetch_timm_weights(name: str) -> Path:
    """Download `name`'s ImageNet weights through timm (once: a cached file is used as it is) and
    load them into the whole model, which checks every key and shape; returns the file."""
    timm = import_timm()
    check_timm_name(name)
    timm.create_model(name, pretrained=True, **_download_options(name))
    path = cached_timm_weights(name)
    if path is None:
        raise FileNotFoundError(f"timm loaded the weights of {name!r} but they are not in its cache "
                                f"({timm_cache_dir() or 'the default'}): a cache variable changed meanwhile?")
    return path


def init_fresh_(*modules: nn.Module) -> None:
    """He-normal convs (fan-out, ReLU) with zero bias, for the layers around a timm encoder that
    have no ImageNet weights."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class ViTPyramid(nn.Module):
    """DPT's reassembly of same-stride ViT feature maps, one per entry of `strides` (4, 8, 16 or
    32; `widths` channels each)."""

    def __init__(self, channels: int, patch_stride: int, strides: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for stride, width in zip(strides, widths):
            project = nn.Conv2d(channels, width, 1)
            if stride < patch_stride:
                factor = patch_stride // stride
                resample = nn.ConvTranspose2d(width, width, factor, stride=factor)
            elif stride > patch_stride:
                resample = nn.Conv2d(width, width, 3, stride=stride // patch_stride, padding=1)
            else:
                resample = nn.Identity()
            self.levels.append(nn.Sequential(project, resample))
        init_fresh_(self)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [level(f) for level, f in zip(self.levels, features)]


def every_level(strides: list[int]) -> list[int]:
    return list(range(len(strides)))


def levels_from(stride: int) -> Callable[[list[int]], list[int]]:
    """`TimmFeatures(levels=...)` keeping the maps at `stride` and coarser."""
    def pick(strides: list[int]) -> list[int]:
        if stride not in strides:
            raise ValueError(f"no features at stride {stride}")
        return [i for i, s in enumerate(strides) if s >= stride]
    return pick


def skip_and_deepest(stride: int) -> Callable[[list[int]], list[int]]:
    """`TimmFeatures(levels=...)` keeping the first map at `stride` (a decoder's skip) and the deepest."""
    def pick(strides: list[int]) -> list[int]:
        if stride not in strides:
            raise ValueError(f"no features at stride {stride}")
        return [strides.index(stride), len(strides) - 1]
    return pick


class TimmFeatures(nn.Module):
    """timm model `name` as an encoder: RGB in [0, 1] → feature maps fine to coarse.

    Args:
        name: a timm model name (`timm.list_models()`), optionally with a pretrained tag.
        pretrained: load its ImageNet weights (timm's download; see the module docstring).
        output_stride: None (the model's own, 32 for most), 16 or 8: the coarsest stride wanted.
        levels: which of the maps to hand out, as indices into their strides (fine to coarse;
            `levels(strides)`). A ViT's pyramid then builds only those: a layer whose output no
            loss sees would hold weights without gradients, which DistributedDataParallel refuses.
    """

    def __init__(self, name: str, pretrained: bool = True, output_stride: int | None = None,
                 levels: Callable[[list[int]], list[int]] = every_level) -> None:
        super().__init__()
        if output_stride not in (None, 8, 16):
            raise ValueError(f"output_stride must be 8, 16 or None, got {output_stride}")
        check_timm_name(name)
        self.name = name
        body = self._create(name, pretrained, output_stride=output_stride)
        strides, channels = list(body.feature_info.reduction()), list(body.feature_info.channels())
        self.pyramid = None
        if len(set(strides)) == 1:
            # A plain ViT: four blocks spread over its depth make the pyramid, as DPT's do.
            depth, patch_stride, width = len(body.model.feature_info), strides[0], channels[-1]
            blocks = [round(depth * k / 4) - 1 for k in range(1, 5)]
            cap = output_stride or PYRAMID_STRIDES[-1]
            strides = [min(s, cap) for s in PYRAMID_STRIDES]
            # DPT's widths (96, 192, 384, 768 for ViT-B): fewer channels where the maps are larger.
            channels = [max(1, width * s // PYRAMID_STRIDES[-1]) for s in PYRAMID_STRIDES]
            self.kept = self._levels(levels, strides)
            # Rebuilt to hand out only the blocks kept, at any input size.
            body = self._create(name, pretrained, out_indices=tuple(blocks[i] for i in self.kept),
                                dynamic_img_size=True, dynamic_img_pad=True)
            self.pyramid = ViTPyramid(width, patch_stride, [strides[i] for i in self.kept],
                                      [channels[i] for i in self.kept])
        else:
            self.kept = self._levels(levels, strides)
        self.strides = [strides[i] for i in self.kept]
        self.channels = [channels[i] for i in self.kept]
        self.body = body
        register_normalisation(self, mean=body.pretrained_cfg["mean"], std=body.pretrained_cfg["std"])

    def _levels(self, levels, strides: list[int]) -> list[int]:
        try:
            return list(levels(strides))
        except ValueError as err:  # a stride the head needs is not there
            raise ValueError(f"timm encoder {self.name!r} (feature strides {', '.join(map(str, strides))}): "
                             f"{err}") from None

    @staticmethod
    def _create(name: str, pretrained: bool, output_stride: int | None = None, **options) -> nn.Module:
        timm = import_timm()
        if pretrained:
            options.update(_download_options(name))
        if output_stride is not None:
            options["output_stride"] = output_stride
        try:
            return timm.create_model(name, pretrained=pretrained, features_only=True, **options)
        except TypeError as err:
            if "output_stride" not in str(err):
                raise
            # A model that cannot dilate; a plain ViT, whose pyramid takes the stride, tells by its features.
            body = timm.create_model(name, pretrained=pretrained, features_only=True,
                                     **{k: v for k, v in options.items() if k != "output_stride"})
            if len(set(body.feature_info.reduction())) > 1:
                raise ValueError(f"timm model {name!r} cannot be dilated to output stride {output_stride} "
                                 f"(timm: {err}); choose an encoder that can, or a head that needs none") from None
            return body

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.body((x - self.mean) / self.std)
        if self.pyramid is not None:
            return self.pyramid(features)
        return [features[i] for i in self.kept]


def register_timm_segmenter(name: str, constructor) -> None:
    """Register a segmenter on a timm encoder: only `encoder.body.` holds ImageNet weights (a
    ViT's pyramid, `encoder.pyramid.`, is new, as the decoder is); 32 is the coarsest stride of
    the encoders, or of a ViT's pyramid."""
    register_segmenter(SegmenterSpec(name, constructor, encoder_prefixes=("encoder.body.",),
                                     head_prefixes=("classifier.",), min_input_px=32, timm_encoder=True,
                                     perturbable=True))
