"""Trained models that travel: `resolve_checkpoint` loads a segmenter from wherever it is, a run
checkpoint or a release folder that `publish` (`pipeline.publish`) wrote from one.

A release folder (`wsseg publish RUN/task_ii --out DIR`) holds

    model.safetensors   the weights alone (safetensors: no pickle, nothing in it can run)
    model.json          what the weights need: model name and options, classes and palette,
                        input bands and normalisation, the merged training config, the split,
                        the test metrics, the wsseg version and commit, the weights' sha256
    README.md           the model card: per-class test scores, how it was trained, how to load it
    iou_bars.png        the per-class IoU plot of the run's test evaluation
    model.zip           the four files above: the one file to upload and to name in the registry

`resolve_checkpoint(spec)` takes any of

    RUN/task_ii/best.pt       a run checkpoint (torch.load with weights_only=True, always)
    RUN/task_ii               a stage folder: its best.pt
    DIR, DIR/model.json       a release folder (or its model.json / model.safetensors)
    DIR/model.zip             a release zip on disk
    https://HOST/model.zip    a release zip on the web, optionally `#sha256=<64 hex digits>`
    NAME                      a name in the registry (wsseg/checkpoints.yaml: url + sha256)

Downloads and unpacked zips live in the cache (`core.hub`: $WSSEG_CACHE), so a model fetched
once loads offline after that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from wsseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights
from wsseg.core.hub import DownloadError, download, file_sha256, forget, load_registry, unpack_zip
from wsseg.core.typed import ConfigError
from wsseg.datasets import fixed_classes, input_bands
from wsseg.datasets.base import ClassSpec, DatasetError
from wsseg.models import build_segmenter, head_prefixes, untrained_options
from wsseg.models.normalization import normalisation_of
from wsseg.pipeline.config import config_to_dict
from wsseg.pipeline.config_files import saved_config_from_dict

FORMAT = "wsseg-model"
# Raised when model.json changes in a way an older wsseg cannot read.
FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE, CARD_FILE, IOU_PLOT, ARCHIVE_FILE = (
    "model.safetensors", "model.json", "README.md", "iou_bars.png", "model.zip")


@dataclass
class TrainedModel:
    """A trained segmenter and what it needs to be used.

    `model` is in eval mode and normalises inside: feed it float N×3×H×W in [0, 1] whose
    channels are `bands`; `mean` and `std` are the statistics it normalises with. It returns
    logits N×C×H×W, channel c being class `class_names[c]`, drawn in `palette[c]`. `options` are
    the constructor options that rebuild it (`build_segmenter(model_name, C, **options)`), ImageNet
    loading off; `config` is the merged training config; `source` says where it came from.
    """

    model: nn.Module
    model_name: str
    options: dict
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[str, ...]
    config: dict
    source: str


@dataclass(frozen=True)
class ModelLocation:
    """Where a model spec points on this machine, once fetched: a run checkpoint or a release folder."""

    kind: Literal["checkpoint", "release"]
    path: Path
    source: str


# ------------------------------------------------------------------------------- loading

def resolve_checkpoint(spec: str | Path, device: str | torch.device = "cpu", *,
                       registry: str | Path | None = None) -> TrainedModel:
    """The trained segmenter `spec` names (see the module docstring), on `device`, in eval mode.

    Every weight must fit the model exactly; anything else is a CheckpointError naming the file."""
    location = locate_model(spec, registry)
    if location.kind == "checkpoint":
        return load_run_checkpoint(location.path, device, location.source)
    return load_release(location.path, device, location.source)


def locate_model(spec: str | Path, registry: str | Path | None = None) -> ModelLocation:
    """Where `spec` is on this machine: downloaded and unpacked into the cache if it is a URL or a name."""
    text = str(spec)
    if text.startswith(("http://", "https://")):
        url, _, fragment = text.partition("#")
        sha256 = fragment.removeprefix("sha256=") if fragment else None
        if fragment and not fragment.startswith("sha256="):
            raise CheckpointError(f"{text}: the only URL fragment understood is #sha256=<64 hex digits>")
        return ModelLocation("release", _fetch_release(url, sha256), text)
    path = Path(text).expanduser()
    if path.exists():
        return _locate_local(path)
    if "/" in text or "\\" in text or path.suffix in (".pt", ".pth", ".zip", ".json", ".safetensors"):
        raise CheckpointError(f"checkpoint {text} does not exist")
    names = load_registry(registry)
    if text in names:
        entry = names[text]
        return ModelLocation("release", _fetch_release(entry["url"], entry["sha256"]), f"{text} ({entry['url']})")
    known = f"; registry names: {', '.join(sorted(names))}" if names else " (the registry names no model yet)"
    raise CheckpointError(f"{text!r} is not a checkpoint file, a stage or release folder, an http(s) URL or a "
                          f"registry name{known}")


def _locate_local(path: Path) -> ModelLocation:
    if path.is_dir():
        if (path / META_FILE).is_file():
            return ModelLocation("release", path, str(path))
        if (path / "best.pt").is_file():
            return ModelLocation("checkpoint", path / "best.pt", str(path / "best.pt"))
        if (path / "config.yaml").is_file():
            raise CheckpointError(f"{path} is a run folder: name one of its stages (task_i, task_ii) or a checkpoint")
        raise CheckpointError(f"{path} holds neither {META_FILE} (a release) nor best.pt (a stage of a run)")
    if path.name in (META_FILE, WEIGHTS_FILE):
        return ModelLocation("release", path.parent, str(path.parent))
    if path.suffix == ".zip":
        return ModelLocation("release", _unpacked_release(path, str(path)), str(path))
    return ModelLocation("checkpoint", path, str(path))


def _fetch_release(url: str, sha256: str | None) -> Path:
    archive = download(url, sha256)
    return _unpacked_release(archive, url, downloaded=True)


def _unpacked_release(archive: Path, source: str, downloaded: bool = False) -> Path:
    try:
        folder = unpack_zip(archive)
    except DownloadError as err:
        if downloaded:  # a broken download is not worth keeping: the next try fetches it again
            forget(archive)
        raise DownloadError(f"{source}: {err}") from None
    if not (folder / META_FILE).is_file():
        raise CheckpointError(f"{source}: the zip holds no {META_FILE}; it is not a model written by wsseg publish")
    return folder


def load_run_checkpoint(path: Path, device: str | torch.device = "cpu", source: str | None = None) -> TrainedModel:
    """A run checkpoint's segmenter: the model and classes its config (and class record) name."""
    state, cfg = read_run_checkpoint(path)
    return run_model(state, cfg, checkpoint_classes(state, path), path, device, source)


def run_model(state: dict, cfg: dict, classes: ClassSpec, path: Path, device, source: str | None) -> TrainedModel:
    """The segmenter of a read run checkpoint (`read_run_checkpoint`), as `TrainedModel`."""
    model = _build(cfg["model"]["name"], cfg["model"]["options"], classes.num_classes, state["model"], str(path),
                   device)
    return TrainedModel(model=model, model_name=cfg["model"]["name"],
                        options=untrained_options(cfg["model"]["options"]),
                        class_names=classes.names, palette=classes.palette, ignore_index=classes.ignore_index,
                        mean=normalisation_of(model)[0], std=normalisation_of(model)[1],
                        bands=input_bands(cfg["data"]["kind"]), config=cfg, source=source or str(path))


def read_run_checkpoint(path: Path) -> tuple[dict, dict]:
    """A segmenter checkpoint of a run (weights only: a pickle payload is refused) and its merged config."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "config"} <= set(state) or not state["config"]:
        raise CheckpointError(f"{path} is not a wsseg run checkpoint (it needs 'model' and 'config')")
    try:
        cfg = saved_config_from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its config is not one this wsseg reads: {err}") from None
    return state, config_to_dict(cfg)


def checkpoint_classes(state: dict, path: Path) -> ClassSpec:
    """The classes of a run checkpoint: recorded in it since wsseg stores them, else those its
    dataset kind fixes, else read from its dataset (which must then be at its data.root)."""
    if "classes" in state:
        c = state["classes"]
        return ClassSpec(tuple(c["names"]), tuple(tuple(int(v) for v in rgb) for rgb in c["palette"]),
                         tuple(c.get("in_mean") or ()), int(c.get("ignore_index", 255)))
    data = state["config"].get("data", {})
    if (classes := fixed_classes(data.get("kind", ""), data.get("options") or {})) is not None:
        return classes
    from wsseg.pipeline.data import load_source

    try:
        return load_source(saved_config_from_dict(state["config"])).classes
    except (DatasetError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} predates class names in checkpoints and its dataset ({data.get('kind')!r} at "
                              f"{data.get('root')!r}) cannot be read for them: {err}") from None


def load_release(folder: Path, device: str | torch.device = "cpu", source: str | None = None) -> TrainedModel:
    """The segmenter of a release folder, its weights checked against the sha256 in its model.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_release_meta(folder)
    weights_path = folder / meta["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: {meta['weights']['file']} is missing")
    expected, actual = meta["weights"]["sha256"], file_sha256(weights_path)
    if actual != expected:
        raise CheckpointError(f"{weights_path}: sha256 mismatch: {META_FILE} says {expected}, the file has {actual}")
    try:
        weights = load_file(str(weights_path), device="cpu")
    except Exception as err:  # a corrupt header: say which file
        raise CheckpointError(f"cannot read {weights_path}: {err}") from None
    classes, model_meta = meta["classes"], meta["model"]
    model = _build(model_meta["name"], model_meta["options"], len(classes["names"]), weights, str(weights_path), device)
    return TrainedModel(model=model, model_name=model_meta["name"], options=dict(model_meta["options"]),
                        class_names=tuple(classes["names"]), palette=tuple(tuple(c) for c in classes["palette"]),
                        ignore_index=int(classes["ignore_index"]), mean=normalisation_of(model)[0],
                        std=normalisation_of(model)[1], bands=tuple(meta["input"]["bands"]),
                        config=meta["config"], source=source or str(folder))


def read_release_meta(folder: Path) -> dict:
    """model.json of a release folder, checked for the keys loading needs."""
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a wsseg model file (format {FORMAT!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta['format_version']}; this wsseg reads up to "
                              f"{FORMAT_VERSION}: update wsseg")
    for key, sub in (("model", ("name", "options")), ("classes", ("names", "palette", "ignore_index")),
                     ("input", ("bands",)), ("weights", ("file", "sha256")), ("config", ())):
        if not isinstance(meta.get(key), dict) or any(k not in meta[key] for k in sub):
            raise CheckpointError(f"{path}: missing {key} ({', '.join(sub) or 'a mapping'})")
    return meta


def _build(name: str, options: dict, num_classes: int, weights: dict, source: str,
           device: str | torch.device) -> nn.Module:
    try:
        # Building a model draws its initial weights: the caller's random stream stays as it was.
        with torch.random.fork_rng(devices=[]):
            model = build_segmenter(name, num_classes, **untrained_options(options))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot build its model: {err}") from None
    load_weights(model, weights, source)
    return model.to(device).eval()


# ------------------------------------------------------------------------------ reusing

def initialise_from(model: nn.Module, trained: TrainedModel, *, model_name: str, options: dict, class_names,
                    reset_head: bool = False) -> nn.Module:
    """Load `trained`'s weights into `model` (segmenter `model_name` built with `options` for
    `class_names`), every one exactly.

    Other classes (by name, in order) are an error unless `reset_head`, which loads every weight
    but the classifier's (its spec's `head_prefixes`): `model` keeps its own fresh classifier."""
    if trained.model_name != model_name:
        raise CheckpointError(f"{trained.source} is a {trained.model_name!r} model; this run's model.name is "
                              f"{model_name!r}")
    class_names = tuple(class_names)
    if trained.class_names != class_names and not reset_head:
        raise CheckpointError(f"{trained.source} was trained on the classes ({', '.join(trained.class_names)}), "
                              f"this dataset has ({', '.join(class_names)}): pass --reset-head (model.reset_head: "
                              f"true) to learn a new classifier on its other weights")
    keep = head_prefixes(model_name) if reset_head else ()
    try:
        load_weights(model, trained.model.state_dict(), trained.source, keep=keep)
    except CheckpointError as err:
        options = untrained_options(options)
        hint = f" (it was built with options {trained.options}, this run's are {options})" \
            if options != trained.options else ""
        raise CheckpointError(f"{err}{hint}") from None
    return model
