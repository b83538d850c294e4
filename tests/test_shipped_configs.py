"""Every config in configs/ trains (task i) for two steps and writes its report, whatever the
folder holds later: each is shrunk with --set (one epoch, 64 px crops and windows, a smaller
network, a split of one labelled, one validation and one test tile), then run on the real sample
of its dataset kind in $WSSEG_SHARED/data where there is one (skipped, with the reason, without
WSSEG_SHARED), else on files this test writes in the kind's real on-disk layout.

A config whose header's command lines (`#   wsseg <subcommand> ...`, `#   python run_training.py ...`)
name only subcommands other than `wsseg train` / `wsseg sweep` (say, a model trained by a command
of its own) is skipped by that rule, naming the command.
About 50 s in all on 2 busy cores; the slowest, about 10 s each, are the two 150-class ADE20K
configs (their report figures), and CamVid's and xView2's (a pretrained encoder, more test frames)."""

from __future__ import annotations

import json
import re
import shutil
from itertools import takewhile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_xview2 import box, write_scene

from wsseg.cli import main
from wsseg.datasets import fixed_classes, known_kinds
from wsseg.datasets.camvid import CAMVID_VOID
from wsseg.datasets.colour import encode_colour_mask, save_index_png
from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen
from wsseg.pipeline.config_files import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
PX = 64
# A split every provider below can give under either split.kind: it writes or copies at least three
# train tiles (one labelled, one for validation where it comes from train, one left for a seeded
# test) and one of each other part its layout has.
SPLIT = ["split.n_labelled=1", "split.n_tagged=0", "split.n_val=1", "split.n_test=1"]
SHRINK = ["train.epochs=1", "train.iters_per_epoch=2", "train.batch_size=2", f"train.crop_px={PX}",
          "train.workers=0", "train.precision=fp32", "train.compile=false", f"eval.window_px={PX}",
          f"eval.stride_px={PX}", "eval.batch_size=4", "eval.num_triptychs=1",
          # ImageNet files are not in a test machine's resnet_weights/; the loading has tests of its own.
          "model.encoder_weights=null", "model.init_from=null", "model.reset_head=false", "device=cpu"]
# Each model family at a width that takes a CPU second; families not listed run as configured.
SMALLER_MODEL = {"fcn8s": ["model.options.width=0.125"], "encdec_unpool": ["model.options.width=0.125"],
                 "unet": ["model.options.base_channels=4"]}
# A command line of a header comment: `#   wsseg <subcommand> ...` or `#   [python] run_training.py ...`.
_COMMAND = re.compile(r"^#\s+(?:wsseg\s+([a-z][a-z-]*)|(?:\S*python\S*\s+)?run_training\.py)\b")


def documented_commands(path: Path) -> list[str]:
    """The wsseg subcommands of the command lines in a config's header comment (run_training.py is train)."""
    header = takewhile(lambda line: line.startswith("#") or not line.strip(), path.read_text().splitlines())
    return [match.group(1) or "train" for line in header if (match := _COMMAND.match(line))]


# ---------------------------------------------------------------- data, by kind

def _rgb(rng, h=48, w=64):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


def _synthetic(tmp, shared, cfg):
    return tmp / "synthetic", ["data.options.num_tiles=5", "data.options.tile_px=[96, 96]"]


def _vaihingen(tmp, shared, cfg):
    # The procedural tiles in the ISPRS folders and file names (top/, gts_for_participants/, eroded).
    return generate_synthetic_vaihingen(tmp / "vaihingen", num_tiles=5, tile_px=(96, 96), seed=0), []


def _dubai(tmp, shared, cfg):
    return shared / "dubai_aerial", ["data.scale=0.1"]


def _isprs_mmseg(sample):
    def provide(tmp, shared, cfg):
        """The one real crop under several names, in the converter's train and val folders."""
        real = next((shared / "isprs" / sample / "img_dir").glob("*.png"))
        for part, names in (("train", ("a", "b", "c")), ("val", ("d",))):
            for name in names:
                for folder in ("img_dir", "ann_dir"):
                    _copy(real.parent.parent / folder / real.name, tmp / sample / folder / part / f"{name}.png")
        return tmp / sample, ["data.scale=0.25"]
    return provide


def _voc(tmp, shared, cfg):
    """The three real VOCdevkit photos, with an official list that makes one of them val; their
    masks also stand in for SegmentationClassAug when the config reads that folder."""
    real, voc = shared / "voc" / "VOCdevkit" / "VOC2012", tmp / "VOCdevkit" / "VOC2012"
    shutil.copytree(real / "JPEGImages", voc / "JPEGImages")
    shutil.copytree(real / "SegmentationClass", voc / "SegmentationClass")
    label_dir = cfg.data.options.get("label_dir", "SegmentationClass")
    if label_dir != "SegmentationClass":
        shutil.copytree(real / "SegmentationClass", voc / label_dir)
    ids = sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png"))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[-1] + "\n")
    return tmp, ["data.scale=0.25"]


def _cityscapes(tmp, shared, cfg):
    """The real Frankfurt frame in val, and copies of it as three train frames."""
    frame = "frankfurt_000000_000294"
    real = shared / "cityscapes"
    for part, name in [("val", frame)] + [("train", f"frankfurt_00000{n}_000294") for n in (1, 2, 3)]:
        _copy(real / "leftImg8bit" / "val" / "frankfurt" / f"{frame}_leftImg8bit.png",
              tmp / "leftImg8bit" / part / "frankfurt" / f"{name}_leftImg8bit.png")
        for label in ("labelIds", "labelTrainIds"):
            _copy(real / "gtFine" / "val" / "frankfurt" / f"{frame}_gtFine_{label}.png",
                  tmp / "gtFine" / part / "frankfurt" / f"{name}_gtFine_{label}.png")
    return tmp, []


def _ade20k(tmp, shared, cfg):
    """The three real challenge validation images, also copied into training under training names."""
    real, base = shared / "ade20k_challenge" / "ADEChallengeData2016", tmp / "ADEChallengeData2016"
    shutil.copytree(real, base)
    for kind, suffix in (("images", ".jpg"), ("annotations", ".png")):
        for n in (1, 2, 3):
            _copy(real / kind / "validation" / f"ADE_val_0000000{n}{suffix}",
                  base / kind / "training" / f"ADE_train_0000000{n}{suffix}")
    return tmp, []


def _ade20k_full(tmp, shared, cfg):
    return shared / "ade20k", ["data.scale=0.05"]


def _kitti_road(tmp, shared, cfg):
    """The two real frames, twice each (as other frame numbers of the same category)."""
    real, road = shared / "kitti_road" / "data_road" / "training", tmp / "data_road" / "training"
    for n in range(4):
        source = n % 2
        _copy(real / "image_2" / f"um_00000{source}.png", road / "image_2" / f"um_00000{n}.png")
        _copy(real / "gt_image_2" / f"um_road_00000{source}.png", road / "gt_image_2" / f"um_road_00000{n}.png")
    return tmp, ["data.scale=0.2"]


def _camvid(tmp, shared, cfg):
    """SegNet's folders: frames and index annotations, 11 = void."""
    rng = np.random.default_rng(0)
    frames = {"train": ["0001TP_006690", "0001TP_006720", "0001TP_006750"], "val": ["0016E5_07959"],
              "test": ["Seq05VD_f00000"]}
    for part, names in frames.items():
        for name in names:
            _copy_array(tmp / part / f"{name}.png", _rgb(rng))
            annotation = rng.integers(0, CAMVID_VOID + 1, (48, 64), dtype=np.uint8)
            _copy_array(tmp / f"{part}annot" / f"{name}.png", annotation)
    return tmp, []


def _xview2(tmp, shared, cfg):
    """Scenes with building polygons in train, one in hold, one unlabelled in test."""
    for n in (1, 2, 3):
        write_scene(tmp, "train", f"hurricane-harvey_0000000{n}",
                    [(box(4, 4, 20, 20), "no-damage"), (box(30, 4, 40, 14), "destroyed")])
    write_scene(tmp, "hold", "palu-tsunami_00000004", [(box(0, 0, 16, 16), "major-damage")])
    write_scene(tmp, "test", "palu-tsunami_00000009", [], with_labels=False)
    return tmp, []


def _stanford_background(tmp, shared, cfg):
    """The real 715 scenes and their split lists, as MMSegmentation's tutorial writes them."""
    return shared / "stanford_background" / "iccv09Data", ["data.scale=0.5"]


def _labelmefacade(tmp, shared, cfg):
    """The real 945 photos with train.txt / test.txt, at the quarter size a smoke run needs."""
    return shared / "labelmefacade", ["data.scale=0.25"]


def _folder(tmp, shared, cfg):
    """Images and masks where the config's own options put them, coded as they say."""
    options = cfg.data.options
    classes = fixed_classes("folder", options)
    rng = np.random.default_rng(0)
    parts = {"train": 3, "test": 1} if "{part}" in options["image_dir"] else {None: 4}
    for part, count in parts.items():
        images = tmp / options["image_dir"].replace("{part}", part or "")
        masks = tmp / options["mask_dir"].replace("{part}", part or "")
        for n in range(count):
            stem = f"frame{n:03d}"
            label = rng.integers(0, classes.num_classes, (48, 64), dtype=np.uint8)
            _copy_array(images / f"{stem}.png", _rgb(rng))
            mask = masks / f"{stem}{options.get('mask_stem_suffix', '')}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            if options.get("mask_format", "index") == "colour":
                Image.fromarray(encode_colour_mask(label, classes.palette)).save(mask)
            else:
                save_index_png(mask, label, classes.palette)
    return tmp, []


def _copy_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# kind → (needs the real samples, provider(tmp, shared, cfg) → (data.root, extra --set values))
PROVIDERS = {
    "synthetic_vaihingen": (False, _synthetic), "vaihingen": (False, _vaihingen), "dubai": (True, _dubai),
    "vaihingen_mmseg": (True, _isprs_mmseg("vaihingen_mmseg")), "potsdam_mmseg": (True, _isprs_mmseg("potsdam_mmseg")),
    "voc": (True, _voc), "cityscapes": (True, _cityscapes), "ade20k": (True, _ade20k),
    "ade20k_full": (True, _ade20k_full), "kitti_road": (True, _kitti_road), "camvid": (False, _camvid),
    "xview2": (False, _xview2), "folder": (False, _folder),
    "stanford_background": (True, _stanford_background), "labelmefacade": (True, _labelmefacade),
}


def test_every_dataset_kind_has_data_here():
    assert sorted(PROVIDERS) == known_kinds()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_trains_and_reports(path, tmp_path, request):
    commands = documented_commands(path)
    if commands and not {"train", "sweep"} & set(commands):
        pytest.skip(f"{path.name} documents `wsseg {commands[0]}`, not `wsseg train`: run by its own tests")
    cfg = load_config(path)
    assert cfg.data.kind in PROVIDERS, f"{path.name}: no data for kind {cfg.data.kind!r}; add a provider here"
    needs_shared, provide = PROVIDERS[cfg.data.kind]
    shared = request.getfixturevalue("shared_data") if needs_shared else None
    root, data_sets = provide(tmp_path / "data", shared, cfg)
    out = tmp_path / "run"
    sets = [f"data.root={root}", *SHRINK, *SPLIT, *SMALLER_MODEL.get(cfg.model.name, []), *data_sets]
    argv = ["train", "--task", "i", "--config", str(path), "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    stage = out / "task_i"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["miou"] is None or 0.0 <= metrics["miou"] <= 1.0
    assert "mIoU" in (stage / "report.md").read_text()


def test_documented_commands_follow_the_header():
    assert documented_commands(REPO / "configs" / "kitti_road_fcn8s.yaml") == ["train"]
    assert set(documented_commands(REPO / "configs" / "ade20k_fcn128.yaml")) == {"sweep", "train"}
    assert documented_commands(REPO / "configs" / "demo.yaml") == []
    # Not the `wsseg check-data` in the middle of one of its lines.
    assert documented_commands(REPO / "configs" / "kitti_semantic.yaml") == ["train"]


def test_every_fcn8s_starts_from_imagenet_vgg16():
    """FCN-8s is VGG16 made convolutional: every config of it loads torchvision's ImageNet VGG16
    file by structure (fc6/fc7 included), at the width those weights fit."""
    fcn_configs = [path for path in CONFIGS if load_config(path).model.name == "fcn8s"]
    assert len(fcn_configs) >= 4
    for path in fcn_configs:
        model = load_config(path).model
        assert model.encoder_weights and Path(model.encoder_weights).name == "vgg16-397923af.pth", path.name
        assert model.options.get("width", 1.0) == 1.0, path.name
