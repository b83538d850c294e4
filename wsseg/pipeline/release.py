"""Trained models that travel: `publish` writes a release folder from a run's checkpoint, and
`resolve_checkpoint` loads a segmenter from wherever it is.

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
import logging
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

import wsseg
from wsseg.core.checkpoint import CheckpointError, load_checkpoint, load_weights
from wsseg.core.config import ConfigError, config_to_dict, saved_config_from_dict
from wsseg.core.hub import DownloadError, download, file_sha256, forget, load_registry, unpack_zip
from wsseg.core.io import atomic_write, to_jsonable
from wsseg.core.provenance import git_commit
from wsseg.core.report import metrics_summary, per_class_table
from wsseg.datasets import fixed_classes, input_bands
from wsseg.datasets.base import ClassSpec, DatasetError
from wsseg.datasets.splits import load_split
from wsseg.datasets.tags import tags_title
from wsseg.models import build_segmenter, head_prefixes, untrained_options
from wsseg.models.normalization import normalisation_of

log = logging.getLogger(__name__)

FORMAT = "wsseg-model"
# Raised when model.json changes in a way an older wsseg cannot read.
FORMAT_VERSION = 1
WEIGHTS_FILE, META_FILE, CARD_FILE, IOU_PLOT, ARCHIVE_FILE = (
    "model.safetensors", "model.json", "README.md", "iou_bars.png", "model.zip")
STAGE_TITLES = {"task_i": "task i: N1 pixel labels only", "task_ii": "task ii: N1 pixel labels + N2 {tags}",
                "oracle": "oracle: N1 + N2 pixel labels (experiments only)"}


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
    return _run_model(state, cfg, checkpoint_classes(state, path), path, device, source)


def _run_model(state: dict, cfg: dict, classes: ClassSpec, path: Path, device, source: str | None) -> TrainedModel:
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
    but the classifier's (`models.HEAD_PREFIXES`): `model` keeps its own fresh classifier."""
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


# ----------------------------------------------------------------------------- publishing

@dataclass(frozen=True)
class Published:
    """A release folder just written: its files' sha256 (in writing order) and its name."""

    folder: Path
    name: str
    sha256: dict[str, str]

    def registry_line(self, url: str | None = None) -> str:
        url = url or f"https://<where you upload it>/{self.name}/{ARCHIVE_FILE}"
        return f"{self.name}: {{url: {url}, sha256: {self.sha256[ARCHIVE_FILE]}}}"


def publish(checkpoint: str | Path, out_dir: str | Path, *, name: str | None = None, force: bool = False) -> Published:
    """Write the release folder of a run checkpoint (a .pt, or a stage folder: its best.pt) to `out_dir`.

    A non-empty `out_dir` is refused unless `force`. Every file is written atomically."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "best.pt"
    state, cfg = read_run_checkpoint(checkpoint)
    classes = checkpoint_classes(state, checkpoint)
    # Building the model checks that the weights fit it before anything is written.
    trained = _run_model(state, cfg, classes, checkpoint, "cpu", None)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise ValueError(f"{out_dir} is not empty: pass --force to write the release over it")
    name = name or out_dir.resolve().name
    metrics = _stage_metrics(checkpoint, state)
    split = _run_split(checkpoint)
    stage = checkpoint.parent.name
    sha256: dict[str, str] = {}

    def write(file_name: str, writer) -> Path:
        path = out_dir / file_name
        atomic_write(path, writer)
        os.chmod(path, 0o644)  # files to share: readable by all (the atomic temporary file was private)
        sha256[file_name] = file_sha256(path)
        return path

    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state["model"].items()}
    write(WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "model": {"name": trained.model_name, "options": trained.options},
        "classes": {"names": list(classes.names), "palette": [list(c) for c in classes.palette],
                    "in_mean": list(classes.in_mean), "ignore_index": classes.ignore_index},
        "input": {"bands": list(trained.bands), "channels_first": True, "dtype": "float32", "value_range": [0.0, 1.0],
                  "mean": list(trained.mean), "std": list(trained.std),
                  "normalised_inside": True},
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256[WEIGHTS_FILE], "format": "safetensors",
                    "tensors": len(tensors), "parameters": sum(p.numel() for p in trained.model.parameters())},
        # "epochs": what the training ran to, fewer than the config's where a time budget cut it
        # (None in checkpoints from before wsseg saved it).
        "trained": {"stage": stage, "checkpoint": checkpoint.name, "epoch": int(state.get("epoch", -1)) + 1,
                    "epochs": state.get("epochs"), "validation_score": state.get("best_score")},
        "config": cfg,
        "split": asdict(split) if split is not None else None,
        "metrics": metrics,
        "wsseg_version": wsseg.__version__,
        "git_commit": git_commit(),
    }
    write(META_FILE, lambda tmp: tmp.write_text(json.dumps(to_jsonable(meta), indent=2, allow_nan=False) + "\n",
                                                encoding="utf-8"))
    plot = checkpoint.parent / IOU_PLOT
    if metrics is not None and plot.is_file():
        write(IOU_PLOT, lambda tmp: shutil.copyfile(plot, tmp))
    write(CARD_FILE, lambda tmp: tmp.write_text(model_card(meta, sha256), encoding="utf-8"))
    members = [f for f in (META_FILE, WEIGHTS_FILE, CARD_FILE, IOU_PLOT) if f in sha256]
    write(ARCHIVE_FILE, lambda tmp: _write_zip(tmp, [(f, out_dir / f) for f in members]))
    return Published(out_dir, name, sha256)


def _write_zip(path: Path, files: list[tuple[str, Path]]) -> None:
    # Fixed dates and modes: the same release gives the same zip, byte for byte, so its sha256
    # in the registry stays valid if it is published again.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, source in files:
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, source.read_bytes())


def _stage_metrics(checkpoint: Path, state: dict) -> dict | None:
    """The test metrics the stage wrote for this checkpoint (metrics.json beside it), if they are its own."""
    path = checkpoint.parent / "metrics.json"
    if not path.is_file():
        log.warning(f"{checkpoint.parent} has no metrics.json: the release has no test metrics")
        return None
    metrics = json.loads(path.read_text())
    evaluated = metrics.get("checkpoint", {})
    if evaluated.get("path") != checkpoint.name or evaluated.get("epoch") != int(state.get("epoch", -1)) + 1:
        log.warning(f"{path} evaluated {evaluated.get('path')} (epoch {evaluated.get('epoch')}), not "
                    f"{checkpoint.name}: the release has no test metrics")
        return None
    return metrics


def _run_split(checkpoint: Path):
    """The split of the run the checkpoint belongs to: split.json in the run folder (round_<r>/ sits in it)."""
    for folder in list(checkpoint.resolve().parents)[1:4]:
        if (folder / "split.json").is_file():
            return load_split(folder / "split.json")
    log.warning(f"no split.json above {checkpoint}: the release does not record its split")
    return None


def _stage_title(stage: str, cfg: dict) -> str:
    # Grid tags were the only kind before `weak.tags` existed; a config from then has none.
    tags = tags_title(cfg.get("weak", {}).get("tags", "grid"))
    return STAGE_TITLES[stage].format(tags=tags) if stage in STAGE_TITLES else stage


def model_card(meta: dict, sha256: dict[str, str]) -> str:
    """README.md of a release: scores, training, loading."""
    name, cfg, model = meta["name"], meta["config"], meta["model"]
    names = meta["classes"]["names"]
    stage = meta["trained"]["stage"]
    train, split = cfg["train"], meta["split"]
    md = [f"# {name}", "",
          f"A `{model['name']}` segmenter trained with wsseg {meta['wsseg_version']} "
          f"({_stage_title(stage, cfg)}) on `{cfg['data']['kind']}` data, {len(names)} classes: "
          f"{', '.join(names)}.", ""]
    metrics = meta["metrics"]
    md += ["## Test scores", ""]
    if metrics is None:
        md += ["This checkpoint was not evaluated on test tiles.", ""]
    else:
        tiles = f" on the {len(split['test'])} test tiles of its split" if split else ""
        md += [f"Whole-tile sliding-window evaluation{tiles}, never used to choose the checkpoint.", "",
               *metrics_summary(metrics), "", per_class_table(metrics, names), ""]
        if IOU_PLOT in sha256:
            md += [f"![per-class IoU]({IOU_PLOT})", ""]
    md += ["## How it was trained", ""]
    if split:
        md.append(f"- split ({split['kind']}, seed {split['seed']}): {len(split['labelled'])} pixel-labelled tiles "
                  f"(N1), {len(split['tagged'])} tagged tiles (N2), {len(split['val'])} validation, "
                  f"{len(split['test'])} test")
    md += [f"- model: `{model['name']}` with options `{json.dumps(model['options'])}`",
           f"- {_epochs_trained(meta['trained'], train)} × {train['iters_per_epoch']} steps of {train['batch_size']} crops of "
           f"{train['crop_px']} px, {train['optimizer']} at lr {train['lr']} ({train['schedule']} schedule), "
           f"precision {train['precision']}, seed {train['seed']}",
           f"- checkpoint: `{meta['trained']['checkpoint']}` of `{stage}`, epoch {meta['trained']['epoch']} "
           f"(chosen on validation mIoU)",
           f"- input: float N×3×H×W in [0, 1], channels ({', '.join(meta['input']['bands'])}); the model "
           f"normalises inside with mean {_floats(meta['input']['mean'])} and std {_floats(meta['input']['std'])}",
           f"- wsseg {meta['wsseg_version']}" + (f", commit {meta['git_commit']}" if meta["git_commit"] else ""),
           f"- the whole merged training config is `config` in {META_FILE}, the split `split`", "",
           "## How to use it", "",
           f"Point wsseg at this folder, at `{ARCHIVE_FILE}` on disk or on the web "
           f"(`https://.../{ARCHIVE_FILE}#sha256=<its sha256>`), or at its registry name:", "",
           "```python", "from wsseg.pipeline.release import resolve_checkpoint", "",
           f'trained = resolve_checkpoint("{name}")  # a folder, a model.zip, its URL or a registry name',
           "logits = trained.model(images)  # images: float N×3×H×W in [0, 1]; logits N×C×H×W",
           "classes = logits.argmax(1)      # index into trained.class_names, drawn in trained.palette", "```", "",
           "```bash",
           f"wsseg eval --checkpoint {name} --set data.root=/path/to/data   # its test tiles, with the report",
           f"wsseg train --task all --config my.yaml --init-from {name}     # start from it; --reset-head for "
           "other classes", "```", "",
           "## Files", "", "| file | sha256 |", "|---|---|"]
    md += [f"| {f} | `{h}` |" for f, h in sha256.items()]
    return "\n".join(md) + "\n"


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _epochs_trained(trained: dict, train: dict) -> str:
    """"16 epochs", or "9 epochs (of 16 asked, within train.max_minutes 3.0)" where a budget cut them."""
    epochs = trained.get("epochs") or train["epochs"]
    if epochs == train["epochs"]:
        return f"{epochs} epochs"
    return f"{epochs} epochs (of {train['epochs']} asked, within train.max_minutes {train.get('max_minutes')})"
