"""The zoom-out model (models/zoomout.py) and its steps (pipeline/zoomout.py, `wsseg zoomout`)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.models.vgg import cfgs as torchvision_vgg_plans
from torchvision.models.vgg import make_layers

from wsseg.cli import main
from wsseg.core.checkpoint import load_checkpoint
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.models import build_segmenter, load_encoder_weights
from wsseg.models.zoomout import ZoomOut, ZoomOutMLP, fc_to_conv, load_zoomout_vgg_imagenet, tap_channels
from wsseg.pipeline.zoomout_samples import grid_cells, sample_pixels

from test_run_training import REPORT_FILES, tiny_config
from test_xview2 import box, write_scene

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("backbone, taps, z", [("vgg11", "pre_pool", 1472), ("vgg16", "all", 4224),
                                               ("vgg16", "pre_pool", 1472), ("vgg11", "all", 2752)])
def test_tap_counts(backbone, taps, z):
    assert sum(tap_channels(backbone, taps)) == z


@pytest.mark.parametrize("backbone, taps, z", [("vgg11", "pre_pool", 1472), ("vgg16", "all", 4224)])
def test_hypercolumn_is_every_tap_at_half_the_input(backbone, taps, z):
    model = ZoomOut(num_classes=3, backbone=backbone, taps=taps, hidden=(8,)).eval()
    assert model.feature_channels == z
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        taps_out = model.taps(x)
        columns = model.hypercolumn(x)
        logits = model(x)
        odd = model.hypercolumn(x[..., :35])
    assert [t.shape[1] for t in taps_out] == tap_channels(backbone, taps)
    assert columns.shape == (2, z, 20, 18) and odd.shape == (2, z, 20, 18)  # half the input, rounded up
    assert logits.shape == (2, 3, 40, 36)
    # The first tap (full resolution) halved bilinearly is the mean of each 2×2 block.
    torch.testing.assert_close(columns[:, :64], torch.nn.functional.avg_pool2d(taps_out[0], 2))


@pytest.mark.parametrize("size", [(1, 1), (17, 9), (64, 64)])
def test_any_input_size(size):
    model = build_segmenter("zoomout", 4, width=0.125, hidden=[8, 8], feature_scale=0.25)
    assert model(torch.rand(1, 3, *size)).shape == (1, 4, *size)


def test_the_backbone_is_frozen_unless_asked():
    frozen = build_segmenter("zoomout", 2, width=0.125, hidden=[8])
    assert not any(p.requires_grad for p in frozen.features.parameters())
    assert all(p.requires_grad for p in frozen.classifier.parameters())
    trained = build_segmenter("zoomout", 2, width=0.125, hidden=[8], freeze_backbone=False)
    assert all(p.requires_grad for p in trained.parameters())


def test_the_converted_network_gives_the_fc_classifiers_outputs():
    """FC classifier on hypercolumns sampled at pixel positions of the dense maps = its 1×1-conv
    form run densely, at those positions: VGG11 taps (Z = 1472), the seed's 1024 → 1024 → 21."""
    torch.manual_seed(0)
    model = ZoomOut(num_classes=21, backbone="vgg11", dropout=0.5).eval()
    image = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        dense = model.hypercolumn(image)[0]  # Z×24×20
    rows, cols = torch.randint(0, 24, (200,)), torch.randint(0, 20, (200,))
    sampled = dense[:, rows, cols].T
    with torch.no_grad():
        # The sampling path (one tap at a time) gives exactly the dense numbers.
        assert torch.equal(model.hypercolumns_at(image, rows, cols), sampled)

    mlp = ZoomOutMLP(1472, 21, dropout=0.5)
    mlp.norm.set_statistics(sampled.mean(0), sampled.std(0).clamp(min=1e-6))
    with torch.no_grad():  # logits of a trained classifier's size (a few units), not the init's ±0.4
        for layer in [*mlp.hidden, mlp.score]:
            layer.weight.mul_(2.0)
    mlp.eval()
    model.classifier.load_state_dict(fc_to_conv(mlp).state_dict())
    with torch.no_grad():
        fc_logits = mlp(sampled)
        conv_logits = model.classifier(dense[None])[0][:, rows, cols].T
    difference = (fc_logits - conv_logits).abs().max().item()
    print(f"FC vs 1×1 conv: max |Δ logit| {difference:.2e}, logits up to {fc_logits.abs().max().item():.2f}")
    assert difference < 1e-5


def test_vgg11_weights_load_by_structure(tmp_path):
    """A torchvision VGG11 state dict (written here, never downloaded) fills the 8 convs in order;
    VGG16 or BN weights, or a narrowed model, are errors."""
    torch.manual_seed(0)
    vgg11 = {f"features.{k}": v for k, v in make_layers(torchvision_vgg_plans["A"]).state_dict().items()}
    path = tmp_path / "vgg11.pth"
    torch.save(vgg11, path)
    model = load_encoder_weights("zoomout", ZoomOut(num_classes=3, hidden=(8,)), str(path))
    convs = model.features.convs()
    assert len(convs) == 8
    torch.testing.assert_close(convs[0].weight, vgg11["features.0.weight"])
    torch.testing.assert_close(convs[7].bias, vgg11["features.18.bias"])
    vgg16 = {f"features.{k}": v for k, v in make_layers(torchvision_vgg_plans["D"]).state_dict().items()}
    with pytest.raises(ValueError, match="found 13 convs.*VGG11 has 8"):
        load_zoomout_vgg_imagenet(ZoomOut(num_classes=3, hidden=(8,)), vgg16)
    load_zoomout_vgg_imagenet(ZoomOut(num_classes=3, backbone="vgg16", taps="all", hidden=(8,)), vgg16)
    bn = {f"features.{k}": v for k, v in make_layers(torchvision_vgg_plans["A"], batch_norm=True).state_dict().items()}
    with pytest.raises(ValueError, match="VGG11-BN"):
        load_zoomout_vgg_imagenet(ZoomOut(num_classes=3, hidden=(8,)), bn)
    with pytest.raises(ValueError, match="width=1.0"):
        load_zoomout_vgg_imagenet(ZoomOut(num_classes=3, width=0.5, hidden=(8,)), vgg11)


# --------------------------------------------------------------------------------- sampling
def test_sampling_draws_three_pixels_per_present_class_and_never_an_ignored_one():
    label = np.full((30, 40), IGNORE_INDEX, dtype=np.uint8)
    label[:10] = 0
    label[10:20, :20] = 2
    label[25, 5:7] = 4  # two pixels only: both are taken
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows, cols, classes = sample_pixels(label, 3, rng, num_classes=5)
        assert (label[rows, cols] == classes).all() and IGNORE_INDEX not in classes
        assert dict(zip(*np.unique(classes, return_counts=True))) == {0: 3, 2: 3, 4: 2}
        assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # distinct pixels
    rows, cols, classes = sample_pixels(np.full((4, 4), IGNORE_INDEX, np.uint8), 3, rng, num_classes=5)
    assert len(rows) == len(cols) == len(classes) == 0


def test_sampling_a_real_voc_mask(shared_data):
    """A real VOC label (background, bottle, person, void boundaries): 3 pixels of each class, no void."""
    from wsseg.datasets.voc import voc_source

    label = voc_source(shared_data / "voc").label("2011_000003")
    rows, cols, classes = sample_pixels(label, 3, np.random.default_rng(1), num_classes=21)
    assert sorted(classes.tolist()) == [0, 0, 0, 5, 5, 5, 15, 15, 15]
    assert (label[rows, cols] != IGNORE_INDEX).all() and (label[rows, cols] == classes).all()


def test_a_pixel_maps_to_the_grid_cell_holding_its_centre():
    np.testing.assert_array_equal(grid_cells(np.arange(6), 6, 3), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(grid_cells(np.arange(5), 5, 3), [0, 0, 1, 2, 2])


# ------------------------------------------------------------------------------ end to end
def zoomout_config(tmp_path, data_root):
    """test_run_training's tiny config with a zoom-out model at 1/8 width and a few steps of each kind."""
    path = tiny_config(
        tmp_path, data_root,
        model={"name": "zoomout", "options": {"backbone": "vgg11", "width": 0.125, "hidden": [32, 32],
                                              "dropout": 0.1}},
        train={"epochs": 2, "iters_per_epoch": 4, "batch_size": 4, "crop_px": 64, "optimizer": "adam", "lr": 1e-3,
               "schedule": "constant", "workers": 0, "channels_last": False, "precision": "fp32"},
        eval={"window_px": 160, "stride_px": 96, "batch_size": 2, "num_triptychs": 1})
    cfg = yaml.safe_load(path.read_text())
    cfg["zoomout"] = {"sample_crop_px": 64, "epochs": 3}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def test_train_task_i_runs_the_three_steps_and_writes_the_report(tmp_path, data_root):
    config = zoomout_config(tmp_path, data_root)
    run = tmp_path / "run"
    assert main(["train", "--task", "i", "--config", str(config), "--out", str(run)]) == 0
    samples = json.loads((run / "zoomout" / "samples" / "done.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert samples["channels"] == 184 and samples["tiles"] == 3  # VGG11 at width 1/8: 1472 / 8
    # 160 px tiles in a 64 px grid: 9 crops each, up to 3 pixels of each class a crop holds.
    assert 3 * 9 * 3 <= samples["samples"] <= 3 * 9 * 3 * 6
    for tile in split["labelled"]:
        shard = load_checkpoint(run / "zoomout" / "samples" / f"{tile}.pt")
        assert shard["features"].shape[1] == 184 and len(shard["labels"]) == len(shard["pixels"])
    assert (run / "zoomout" / "classifier" / "done.json").is_file()
    init = load_checkpoint(run / "zoomout" / "dense_init.pt")
    assert init["conversion_max_abs_diff"] < 1e-5
    for name in REPORT_FILES:
        assert (run / "task_i" / name).is_file(), name
    metrics = json.loads((run / "task_i" / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and "building" in metrics["per_class"]
    log_text = (run / "log.txt").read_text()
    assert "FC classifier → 1×1 convolutions" in log_text and "initialised from" in log_text
    # The dense network started from the converted classifier on the sampling backbone, and the
    # frozen backbone is still that one after dense training.
    best = load_checkpoint(run / "task_i" / "best.pt")["model"]
    backbone = load_checkpoint(run / "zoomout" / "samples" / "backbone.pt")["features"]
    assert all(torch.equal(best[f"features.{k}"], v) for k, v in backbone.items())


def test_the_steps_one_by_one_and_a_resumed_sampling_skips_done_tiles(tmp_path, data_root, monkeypatch, capsys):
    from wsseg.core import report

    for figure in ("plot_class_bars", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(report, figure, lambda path, *args, **kwargs: path)
    config = zoomout_config(tmp_path, data_root)
    run = tmp_path / "run"
    step = ["--config", str(config), "--out", str(run)]
    assert main(["zoomout", "fit", *step]) == 2
    assert "start it with `wsseg zoomout sample" in capsys.readouterr().err
    assert main(["zoomout", "sample", *step]) == 0
    assert "hypercolumns of 184 channels" in capsys.readouterr().out
    folder = run / "zoomout" / "samples"
    tiles = json.loads((run / "split.json").read_text())["labelled"]
    before = {t: ((folder / f"{t}.pt").stat().st_mtime_ns, load_checkpoint(folder / f"{t}.pt")) for t in tiles}

    # Interrupted before the last tile: its shard and the closing files are missing.
    for name in (f"{tiles[-1]}.pt", "feature_stats.pt", "done.json"):
        (folder / name).unlink()
    assert main(["zoomout", "sample", *step]) == 2  # an existing run needs --resume
    assert main(["zoomout", "sample", *step, "--resume"]) == 0
    assert "2 of 3 N1 tiles already sampled" in (run / "log.txt").read_text()
    for tile in tiles[:-1]:
        assert (folder / f"{tile}.pt").stat().st_mtime_ns == before[tile][0]
    again = load_checkpoint(folder / f"{tiles[-1]}.pt")
    assert torch.equal(again["features"], before[tiles[-1]][1]["features"])
    assert torch.equal(again["pixels"], before[tiles[-1]][1]["pixels"])

    assert main(["zoomout", "dense", *step]) == 2
    assert "run `wsseg zoomout fit` first" in capsys.readouterr().err
    assert main(["zoomout", "fit", *step]) == 0
    assert "FC classifier: loss" in capsys.readouterr().out
    history = load_checkpoint(run / "zoomout" / "classifier" / "last.pt")["history"]
    assert len(history) == 3 and "train_accuracy" in history[-1]
    assert main(["zoomout", "dense", *step]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert (run / "task_i" / "done.json").is_file()
    # The chain sees the finished steps: `train --task i --resume` trains nothing more.
    mtime = (run / "task_i" / "best.pt").stat().st_mtime_ns
    assert main(["train", "--task", "i", *step, "--resume"]) == 0
    assert (run / "task_i" / "best.pt").stat().st_mtime_ns == mtime


def test_zoomout_steps_need_the_zoomout_model(tmp_path, data_root, capsys):
    config = tiny_config(tmp_path, data_root)
    assert main(["zoomout", "sample", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "needs model.name: zoomout" in capsys.readouterr().err
    config = zoomout_config(tmp_path, data_root)
    assert main(["zoomout", "sample", "--config", str(config), "--out", str(tmp_path / "run2"),
                 "--set", "zoomout.class_weights=[1, 2]"]) == 2
    assert "zoomout.class_weights has 2 values for the 6 classes" in capsys.readouterr().err


def test_task_ii_trains_the_zoomout_segmenter_on_pseudo_masks(tmp_path, data_root, monkeypatch):
    """Task ii with zoom-out as the segmenter: task i first (its segmenter is fused into the pseudo
    masks), then the dense stage on N1 + N2 pseudo masks from the same converted classifier."""
    from wsseg.core import report

    for figure in ("plot_class_bars", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(report, figure, lambda path, *args, **kwargs: path)
    run = tmp_path / "run"
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL", 0.0)
    # Tiny models are unsure: keep enough pseudo pixels for the N2 crops to teach something.
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.CONFIDENCE_THRESHOLD", 0.2)
    assert main(["train", "--task", "ii", "--config", str(zoomout_config(tmp_path, data_root)), "--out", str(run),
                 "--set", "weak.pseudo.segmenter_weight=0.5", "--set", "weak.pseudo.crf=false",
                 "--set", "weak.single_stage.epochs=1"]) == 0
    for name in ("task_i/done.json", "pseudo_masks/pseudo_quality.json", "task_ii/metrics.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "pseudo_masks" / "pseudo_quality.json").read_text())["coverage"] > 0
    log_text = (run / "log.txt").read_text()
    assert f"task_ii: initialised from {run / 'zoomout' / 'dense_init.pt'}" in log_text
    assert log_text.count("zoomout fit: already finished") >= 1  # sampled and fitted once, for both tasks


def test_the_voc_config_samples_real_segmentation_class_aug_masks(tmp_path, shared_data, capsys):
    """configs/voc_hypercolumn.yaml on the ten real SBD (SegmentationClassAug) masks, with stand-in
    photos of their sizes: 3 pixels per class of each mask, none of them void."""
    from PIL import Image

    from wsseg.datasets.image_files import image_size

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    masks = shared_data / "voc_aug" / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").symlink_to(masks)
    rng = np.random.default_rng(0)
    for mask in sorted(masks.glob("*.png")):
        h, w = image_size(mask)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{mask.stem}.jpg")
    run = tmp_path / "run"
    assert main(["zoomout", "sample", "--config", str(CONFIGS / "voc_hypercolumn.yaml"), "--out", str(run),
                 "--set", f"data.root={tmp_path}", "--set", "split.kind=seeded", "--set", "split.n_labelled=4",
                 "--set", "split.n_tagged=4", "--set", "split.n_val=1", "--set", "model.options.width=0.125",
                 "--set", "train.workers=0"]) == 0
    done = json.loads((run / "zoomout" / "samples" / "done.json").read_text())
    assert done["channels"] == 184 and done["tiles"] == 4
    from wsseg.datasets.voc import voc_source

    source = voc_source(tmp_path, label_dir="SegmentationClassAug")
    for tile in json.loads((run / "split.json").read_text())["labelled"]:
        label = source.label(tile)
        shard = load_checkpoint(run / "zoomout" / "samples" / f"{tile}.pt")
        rows, cols = shard["pixels"].T.numpy()
        assert (label[rows, cols] == shard["labels"].numpy()).all() and IGNORE_INDEX not in shard["labels"]
        present = [c for c in np.unique(label) if c != IGNORE_INDEX]
        counts = dict(zip(*np.unique(shard["labels"].numpy(), return_counts=True)))
        # One 512 px crop holds the whole photo: 3 pixels of every class it shows.
        assert sorted(counts) == present and all(counts[c] == min(3, int((label == c).sum())) for c in present)


def test_the_xview2_config_samples_and_fits_localisation(tmp_path):
    """configs/xview2_zoomout.yaml (VGG16, all 13 convs, weights 0.05 / 0.95) on xView2 label files
    written here, the VGG narrowed for the test."""
    root = tmp_path / "xview2"
    for n in range(5):
        write_scene(root, "train", f"hurricane-harvey_0000000{n}", [(box(20 + n, 20, 44, 44 + n), "no-damage")])
    write_scene(root, "hold", "palu-tsunami_00000009", [(box(0, 0, 16, 16), "destroyed")])
    step = ["--config", str(CONFIGS / "xview2_zoomout.yaml"), "--out", str(tmp_path / "run"),
            "--set", f"data.root={root}", "--set", "split.n_labelled=2", "--set", "split.n_tagged=2",
            "--set", "split.n_val=1", "--set", "model.options.width=0.0625", "--set", "zoomout.sample_crop_px=32",
            "--set", "zoomout.epochs=2", "--set", "train.workers=0"]
    assert main(["zoomout", "sample", *step]) == 0
    done = json.loads((tmp_path / "run" / "zoomout" / "samples" / "done.json").read_text())
    assert done["channels"] == 4224 // 16
    # 64 px images in a 32 px grid: 4 crops each, every one with some background and some building.
    assert done["class_counts"] == {"background": 2 * 4 * 3, "building": 2 * 4 * 3}
    assert main(["zoomout", "fit", *step]) == 0
    assert "class weights background 0.05, building 0.95" in (tmp_path / "run" / "log.txt").read_text()
