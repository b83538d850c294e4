"""`wsseg publish`: the release folder of a run checkpoint, whose layout `pipeline.release`
describes and reads back: weights as safetensors, model.json, the model card, the IoU plot and the
zip of them all.

Every file is written atomically and readable by all, and the zip is the same byte for byte
when the same checkpoint is published again, so that the sha256 a registry holds stays valid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import wsseg
from wsseg.core.hub import file_sha256
from wsseg.core.io import atomic_write, to_jsonable
from wsseg.core.provenance import git_commit
from wsseg.core.report import metrics_summary, per_class_table
from wsseg.datasets.splits import load_split
from wsseg.datasets.tags import tags_title
from wsseg.pipeline.release import (ARCHIVE_FILE, CARD_FILE, FORMAT, FORMAT_VERSION, IOU_PLOT, META_FILE, WEIGHTS_FILE,
                                    checkpoint_classes, read_run_checkpoint, run_model)

log = logging.getLogger(__name__)

STAGE_TITLES = {"task_i": "task i: N1 pixel labels only", "task_ii": "task ii: N1 pixel labels + N2 {tags}",
                "oracle": "oracle: N1 + N2 pixel labels (experiments only)"}


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
    trained = run_model(state, cfg, classes, checkpoint, "cpu", None)
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
           f"- {_epochs_trained(meta['trained'], train)} × {train['iters_per_epoch']} steps of "
           f"{train['batch_size']} crops of "
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
