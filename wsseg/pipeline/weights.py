"""`wsseg weights fetch NAME`: the ImageNet weights a config names, downloaded once, checked, and
put where runs look for them.

    resnet38              the authors' wide ResNet-38 ("model A1") of the single-stage model
                          (`weak.single_stage.pretrained`), every key and shape checked
    vgg16, vgg16_bn,      torchvision's VGG weights (`model.encoder_weights`), checked against
    vgg11, vgg11_bn       the sha256 prefix in their file names (torchvision's own check)
    timm:<model>          a timm encoder's weights (`model.options.pretrained`,
                          `weak.single_stage.pretrained: imagenet`), through timm's own download

The files download as `--checkpoint` URLs do (`core.hub`: pooch, into $WSSEG_CACHE, never half a
file) and are then kept as `<cache>/<their file name>`, where a config's
`resnet_weights/vgg16-397923af.pth` is looked up when that path does not exist
(`pipeline.data.weights_file`). timm's stay in timm's cache (`models.timm_encoder`).

$WSSEG_WEIGHTS_URL names a mirror that serves the same file names (timm's as
`timm/<model>.<tag>.pth`) in place of the publishers' addresses: a cluster without the internet,
or a test server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wsseg.core.hub import DownloadError, cache_dir, download, file_sha256, forget
from wsseg.models.backbones import TIMM_PREFIX
from wsseg.models.resnet38 import ResNet38, checked_resnet38_state
from wsseg.models.timm_encoder import WEIGHTS_URL_ENV, cached_timm_weights, check_timm_name, fetch_timm_weights

TORCHVISION = "https://download.pytorch.org/models"
AUTHORS = "https://download.visinf.tu-darmstadt.de/data/2020-cvpr-araslanov-1-stage-wseg/models"
# torchvision's file names end in the first hex digits of their sha256: vgg16-397923af.pth.
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,})\.")


def check_hash_prefix(path: Path) -> None:
    prefix = _HASH_PREFIX.search(path.name).group(1)
    actual = file_sha256(path)
    if not actual.startswith(prefix):
        raise ValueError(f"sha256 {actual} does not start with {prefix}, as the file name says it must")


def check_resnet38_layout(path: Path) -> None:
    """Every key and shape of the ResNet-38 the single-stage model builds: the authors publish no
    checksum. Read mapped and matched against a model on the meta device, so 400 MB of weights
    are never all in memory at once."""
    with torch.device("meta"):
        model = ResNet38()
    checked_resnet38_state(torch.load(path, map_location="cpu", weights_only=True, mmap=True), model.state_dict())


@dataclass(frozen=True)
class WeightsFile:
    file: str
    url: str
    used_by: str
    check: Callable[[Path], None]


WEIGHTS = {
    "resnet38": WeightsFile("ilsvrc-cls_rna-a1_cls1000_ep-0001.pth", f"{AUTHORS}/ilsvrc-cls_rna-a1_cls1000_ep-0001.pth",
                            "weak.single_stage.backbone: resnet38", check_resnet38_layout),
    "vgg16": WeightsFile("vgg16-397923af.pth", f"{TORCHVISION}/vgg16-397923af.pth",
                         "model.encoder_weights (encdec_unpool, fcn8s, zoomout); single-stage vgg16",
                         check_hash_prefix),
    "vgg16_bn": WeightsFile("vgg16_bn-6c64b313.pth", f"{TORCHVISION}/vgg16_bn-6c64b313.pth",
                            "model.encoder_weights (encdec_unpool)", check_hash_prefix),
    "vgg11": WeightsFile("vgg11-8a719046.pth", f"{TORCHVISION}/vgg11-8a719046.pth",
                         "model.encoder_weights (zoomout with backbone vgg11)", check_hash_prefix),
    "vgg11_bn": WeightsFile("vgg11_bn-6002323d.pth", f"{TORCHVISION}/vgg11_bn-6002323d.pth",
                            "model.encoder_weights (zoomout with backbone vgg11)", check_hash_prefix),
}


def weights_names() -> str:
    return ", ".join([*WEIGHTS, f"{TIMM_PREFIX}<a timm model name>"])


def weights_url(name: str) -> str:
    """Where `name`'s file is fetched from: the mirror ($WSSEG_WEIGHTS_URL) if set, else its publisher."""
    mirror = os.environ.get(WEIGHTS_URL_ENV)
    return f"{mirror.rstrip('/')}/{WEIGHTS[name].file}" if mirror else WEIGHTS[name].url


def fetch_command(file_name: str) -> str | None:
    """The `wsseg weights fetch` line that brings the file called `file_name`, if one does."""
    for name, spec in WEIGHTS.items():
        if spec.file == file_name:
            return f"wsseg weights fetch {name}"
    return None


def fetch_weights(name: str) -> tuple[Path, bool]:
    """Fetch the weights `name` (see the module docstring) unless they are there already; returns
    where they are and whether they were downloaded now. A download that fails its check is deleted
    and a DownloadError names the URL and the reason."""
    if name.startswith(TIMM_PREFIX):
        return _fetch_timm(name[len(TIMM_PREFIX):])
    if name not in WEIGHTS:
        raise ValueError(f"no weights called {name!r}; wsseg fetches {weights_names()}")
    spec = WEIGHTS[name]
    target = cache_dir() / spec.file
    if target.is_file():
        try:
            spec.check(target)
        except Exception as err:
            raise DownloadError(f"{target} is in the cache but is not the {name} weights ({_reason(err)}): delete "
                                f"it and fetch again") from None
        return target, False
    url = weights_url(name)
    downloaded = download(url)
    try:
        spec.check(downloaded)
    except Exception as err:  # torch.load raises many types for a file that is not a state dict
        forget(downloaded)
        raise DownloadError(f"{url}: not the {name} weights ({_reason(err)}); the download was deleted") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, target)
    forget(downloaded)  # only its folder is left: removed when empty
    return target, True


def _fetch_timm(model: str) -> tuple[Path, bool]:
    check_timm_name(model)
    cached = cached_timm_weights(model)
    if cached is not None:
        return cached, False
    try:
        return fetch_timm_weights(model), True
    except ValueError:  # timm has no weights for it: the name is at fault, not the network
        raise
    except Exception as err:  # timm and huggingface_hub raise many types for a failed download
        raise DownloadError(f"{TIMM_PREFIX}{model}: cannot fetch its ImageNet weights through timm "
                            f"({_reason(err)})") from None


def _reason(err: BaseException, limit: int = 400) -> str:
    """`err` on one line, shortened: the key lists of a mismatched checkpoint run to pages."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
