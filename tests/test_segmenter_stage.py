"""The segmenter stage's choices that a config makes: measured class weights and their cap."""

import numpy as np
import pytest
import torch
from PIL import Image

from wsseg.datasets.colour import save_index_png
from wsseg.datasets.folder import folder_source
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pipeline.segmenter import segmenter_class_weights

NAMES = ("common", "rare")
PALETTE = ((0, 0, 0), (255, 255, 255))


@pytest.fixture
def source(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    label = np.zeros((40, 50), np.uint8)
    label[0, :20] = 1  # 20 of 2000 pixels: median weighting gives the rare class 50×
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "t.png")
    save_index_png(tmp_path / "gt" / "t.png", label, PALETTE)
    return folder_source(tmp_path, "img", "gt", NAMES, PALETTE)


def test_measured_class_weights_are_capped(source):
    uncapped = segmenter_class_weights(config_from_dict({"train": {"class_weights": "median"}}), source, ["t"])
    assert uncapped[1] / uncapped[0] == pytest.approx(1980 / 20)
    capped = segmenter_class_weights(config_from_dict({"train": {"class_weights": "median", "class_weight_cap": 5}}),
                                     source, ["t"])
    assert capped.tolist() == pytest.approx([uncapped[0].item(), 5.0])
    assert segmenter_class_weights(config_from_dict({"train": {"class_weights": "none"}}), source, ["t"]) is None


def test_measured_class_weights_keep_the_floor(tmp_path, monkeypatch):
    # "common" is 95 % of the labelled pixels, "rare" 5 %, "unseen" absent from N1.
    names, palette = ("common", "rare", "unseen"), ((0, 0, 0), (255, 255, 255), (9, 9, 9))
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    label = np.zeros((40, 50), np.uint8)
    label[:2] = 1
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "t.png")
    save_index_png(tmp_path / "gt" / "t.png", label, palette)
    three = folder_source(tmp_path, "img", "gt", names, palette)

    def weights(**train):
        return segmenter_class_weights(config_from_dict({"train": {"class_weights": "median", **train}}), three,
                                       ["t"]).tolist()

    # median frequency 0.5: 0.5 / 0.95 and 0.5 / 0.05; the floor 0.1 does not bind here
    assert weights() == pytest.approx([0.5 / 0.95, 10.0, 1.0])
    monkeypatch.setattr("wsseg.pipeline.segmenter.CLASS_WEIGHT_FLOOR", 0.8)
    assert weights(class_weight_cap=4) == pytest.approx([0.8, 4.0, 1.0])
    # A class N1 lacks can be in task ii's pseudo masks: it gets a finite weight inside the bounds.
    monkeypatch.setattr("wsseg.pipeline.segmenter.CLASS_WEIGHT_FLOOR", 2.0)
    assert weights(class_weight_cap=4) == pytest.approx([2.0, 4.0, 2.0])


@pytest.mark.parametrize("cap", [0.05, 0.0, -1.0])
def test_a_class_weight_cap_below_the_floor_is_a_config_error(cap):
    from wsseg.core.typed import ConfigError
    from wsseg.pipeline.config_checks import check_config

    with pytest.raises(ConfigError, match=rf"train.class_weight_cap {cap} is below 0.1, the floor"):
        check_config(config_from_dict({"train": {"class_weight_cap": cap}}))
    check_config(config_from_dict({"train": {"class_weight_cap": 0.1}}))


def test_extra_pseudo_mode_keeps_every_n1_crop(source):
    from wsseg.datasets.splits import Split
    from wsseg.pipeline.data import Run
    from wsseg.pipeline.segmenter import n2_per_batch, training_crops

    split = Split(labelled=["t"], tagged=["t"], val=[], test=[], seed=0)
    base = {"train": {"iters_per_epoch": 5, "batch_size": 6}}
    share = config_from_dict(base)
    run = Run(share, source, split, source.tiles[0].image_path.parent)
    n1, n2 = (len(part) for part in training_crops(share, run, None, oracle=True).datasets)
    assert (n1, n2) == (30 - 15, 15) and n2_per_batch(share) == 3
    extra = config_from_dict({**base, "weak": {"pseudo_mode": "extra"}})
    n1, n2 = (len(part) for part in training_crops(extra, run, None, oracle=True).datasets)
    assert (n1, n2) == (30, 5 * 6) and n2_per_batch(extra) == 6
    assert len(training_crops(extra, run, None).datasets) == 1  # task i: N1 alone


# ----------------------------------------------------------------- task ii's pseudo-mask batches
TINY = {"split": {"n_labelled": 3, "n_tagged": 6, "n_val": 0},
        "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "train": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 4, "crop_px": 32, "workers": 0,
                  "precision": "fp32"},
        "eval": {"window_px": 64, "stride_px": 64, "num_triptychs": 1},
        "weak": {"tag_crop_px": 16}}


def tiny_run(data_root, run_dir, **weak):
    """A prepared run on 64 px synthetic tiles, with the N2 ground truth as its pseudo masks."""
    from wsseg.datasets.colour import save_index_png
    from wsseg.pipeline.data import crop_tags_of, prepare_run

    values = {**TINY, "data": {"kind": "synthetic_vaihingen", "root": str(data_root),
                               "options": {"num_tiles": 14, "tile_px": [64, 64], "seed": 3}},
              "weak": {**TINY["weak"], **weak}}
    run = prepare_run(config_from_dict(values), run_dir)
    pseudo = {}
    for tile in run.split.tagged:
        pseudo[tile] = run_dir / "pseudo" / f"{tile}.png"
        pseudo[tile].parent.mkdir(exist_ok=True)
        save_index_png(pseudo[tile], run.source.label(tile), run.source.classes.palette)
    return run, pseudo, crop_tags_of(run)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def _items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_task_ii_crops_are_n1_and_pseudo_labelled_n2_crops_with_their_weights(data_root, tmp_path):
    from wsseg.pipeline.segmenter import PSEUDO_WEIGHT, training_crops

    run, pseudo, _ = tiny_run(data_root, tmp_path / "run")
    items = _items(training_crops(run.cfg, run, pseudo))
    assert all(len(item) == 3 for item in items)  # (image, mask, weight)
    weights = [float(weight) for *_, weight in items]
    assert weights.count(PSEUDO_WEIGHT) >= len(items) // 2  # PSEUDO_RATIO 0.5
    assert all(len(item) == 3 for item in _items(training_crops(run.cfg, run, None)))  # task i: N1 alone


def _reference_training(run, stage_dir, pseudo):
    """Task ii's segmenter written out by hand: pixel labels and pseudo masks, one cross-entropy."""
    from wsseg.core.checkpoint import unwrap
    from wsseg.core.losses import weighted_cross_entropy
    from wsseg.core.optim import build_optimizer, build_scheduler
    from wsseg.datasets.crops import RandomCropDataset
    from wsseg.models import parameter_groups
    from wsseg.pipeline.segmenter import PSEUDO_RATIO, PSEUDO_WEIGHT, EpochConcat, WeightedCrops, build_model

    cfg, split, t = run.cfg, run.split, run.cfg.train
    with run.stage(stage_dir, t.precision, t.channels_last) as stage:
        n2 = int(round(t.iters_per_epoch * t.batch_size * PSEUDO_RATIO))
        n1 = t.iters_per_epoch * t.batch_size - n2
        crops = EpochConcat([
            WeightedCrops(RandomCropDataset(run.source, split.labelled, t.crop_px, n1, seed=t.seed), 1.0),
            WeightedCrops(RandomCropDataset(run.source, split.tagged, t.crop_px, n2, label_override=pseudo,
                                            seed=t.seed + 1), PSEUDO_WEIGHT)])
        loader = stage.loader(crops, t.batch_size)
        model = stage.prepare(build_model(cfg, run.source.classes.num_classes),
                              input_shape=(t.batch_size, 3, t.crop_px, t.crop_px))

        def compute_loss(model, batch, epoch):
            images, masks, weights = batch
            return weighted_cross_entropy(model(images), masks, None, weights[:, None, None].expand_as(masks)), {}

        optimizer = build_optimizer(parameter_groups(cfg.model.name, unwrap(model), t.encoder_lr_mult), t.optimizer,
                                    t.lr, t.weight_decay)
        scheduler = build_scheduler(optimizer, t.schedule, t.epochs * len(loader))
        history = stage.fit(model, loader, optimizer, scheduler, compute_loss, t.epochs)
    return unwrap(model).state_dict(), history


def test_task_ii_trains_the_weights_of_its_reference_loop(data_root, tmp_path):
    from wsseg.core.checkpoint import load_checkpoint
    from wsseg.pipeline.segmenter import train_segmenter

    run, pseudo, _ = tiny_run(data_root, tmp_path / "run")
    train_segmenter(run, tmp_path / "run" / "task_ii", pseudo_masks=pseudo)
    state = load_checkpoint(tmp_path / "run" / "task_ii" / "last.pt")
    reference, history = _reference_training(run, tmp_path / "reference", pseudo)
    assert state["history"][0]["train_loss"] == history[0]["train_loss"]
    assert state["model"].keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(state["model"][key], value), key


def test_task_ii_and_the_oracle_train_as_many_epochs_as_task_i(source, tmp_path, monkeypatch):
    """Where train.max_minutes cut task i, the other arms follow it: the comparison stays at equal steps."""
    from wsseg.datasets.splits import Split
    from wsseg.pipeline import chain
    from wsseg.pipeline.data import Run

    asked = {}

    def fake_training(run, stage_dir, *, epochs=None, **_):
        asked[stage_dir.name] = epochs
        return {"miou": 0.5, "checkpoint": {"path": "best.pt", "epoch": 2, "epochs_trained": epochs or 2}}

    monkeypatch.setattr(chain, "train_segmenter", fake_training)
    monkeypatch.setattr(chain, "_weak_stage", lambda *args: {"miou_final": 0.4})
    cfg = config_from_dict({"train": {"epochs": 16, "max_minutes": 1.0}})
    run = Run(cfg, source, Split(labelled=["t"], tagged=["t"], val=[], test=["t"], seed=0), tmp_path)
    assert chain.epochs_of_task_i(run) is None  # task i not trained yet
    chain.run_task_i(run)
    chain.run_oracle(run)
    chain.run_task_ii(run)
    # Task i took its budget (2 of 16 epochs, here); the oracle and task ii the epochs it trained.
    assert asked == {"task_i": None, "oracle": 2, "task_ii": 2}
