"""The tag-free semi-supervised arm: CutMix within a batch, its crops (never a label read), its loss
on a toy batch, the mean teacher saved and restored with the run, and `--task semi` end to end."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from wsseg.cli import main
from wsseg.core.checkpoint import load_checkpoint
from wsseg.datasets.base import IGNORE_INDEX
from wsseg.datasets.crops import RandomCropDataset
from wsseg.datasets.synthetic_aerial import synthetic_vaihingen_source
from wsseg.datasets.unlabelled import NO_BOX, PairedCrops, UnlabelledViews
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pseudo_labels.consistency import consistency_targets, paste_boxes

from test_run_training import tiny_config


def test_cutmix_pastes_the_box_of_the_next_crop_and_wraps_around():
    batch = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(3)])
    boxes = torch.tensor([[0, 0, 2, 2], list(NO_BOX), [1, 2, 3, 2]])
    mixed = paste_boxes(batch, boxes)
    assert (mixed[0, 0, :2, :2] == 1).all() and (mixed[0, 0, 2:] == 0).all() and (mixed[0, 0, :, 2:] == 0).all()
    assert (mixed[1] == 1).all()  # no box: the crop as it was
    assert (mixed[2, 0, 1:4, 2:4] == 0).all() and (mixed[2, 0, 0] == 2).all()  # the last takes from the first
    assert (batch == torch.stack([torch.full((1, 4, 4), float(i)) for i in range(3)])).all()  # a copy
    # Targets (N×H×W) move with the same boxes.
    targets = paste_boxes(batch[:, 0].long(), boxes)
    assert torch.equal(targets, mixed[:, 0].long())


def test_untagged_targets_are_the_confident_argmax():
    probs = torch.tensor([[0.96, 0.50], [0.04, 0.50]])[None, :, None, :]  # 1×2 classes×1×2 pixels
    targets = consistency_targets(probs.log(), None, 0.95)
    assert targets.tolist() == [[[0, IGNORE_INDEX]]]


class LabelsForbidden:
    """A TileSource whose labels must never be read."""

    def __init__(self, source):
        self.source = source

    def __getattr__(self, name):
        return getattr(self.source, name)

    def label(self, tile_id):
        raise AssertionError(f"the label of {tile_id} was read")


def ids(source):
    return [tile.tile_id for tile in source.tiles]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic_vaihingen_source(tmp_path_factory.mktemp("synthetic"), num_tiles=4, tile_px=(96, 96), seed=3)


def test_unlabelled_views_read_no_label_and_keep_pixels_in_place(source):
    crops = RandomCropDataset(LabelsForbidden(source), ids(source)[:2], 64, 6, seed=1, images_only=True)
    views = UnlabelledViews(crops, cutmix_p=1.0)
    sample = views[3]
    assert sample["weak"].shape == sample["strong"].shape == (3, 64, 64)
    assert not torch.equal(sample["weak"], sample["strong"])
    top, left, h, w = sample["box"].tolist()
    assert h > 0 and w > 0 and top + h <= 64 and left + w <= 64
    again = views[3]  # a function of (seed, epoch, index)
    assert all(torch.equal(sample[k], again[k]) for k in sample)
    assert (UnlabelledViews(crops, cutmix_p=0.0)[3]["box"] == torch.tensor(NO_BOX)).all()
    with pytest.raises(ValueError, match="images_only"):
        UnlabelledViews(RandomCropDataset(source, ids(source)[:2], 64, 6))


def test_paired_crops_keep_the_labelled_crops_of_task_i(source):
    labelled = RandomCropDataset(source, ids(source)[:2], 64, 5, seed=0)
    unlabelled = UnlabelledViews(RandomCropDataset(source, ids(source)[2:], 64, 5, seed=2, images_only=True))
    pairs = PairedCrops(labelled, unlabelled)
    pairs.set_epoch(1)
    labelled.set_epoch(1)
    image, mask, views = pairs[4]
    expected_image, expected_mask = labelled[4]
    assert torch.equal(image, expected_image) and torch.equal(mask, expected_mask)
    assert torch.equal(views["weak"], unlabelled[4]["weak"]) and unlabelled.crops.epoch == 1


class Constant(nn.Module):
    """A 'segmenter' whose logits are a learnable per-class bias: class 0 confident at the start."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([4.0, 0.0]))

    def forward(self, x, perturb_from=None):
        return self.bias[None, :, None, None].expand(x.shape[0], 2, *x.shape[-2:])


class FakeStage:
    device = torch.device("cpu")

    def to_device(self, tensor):
        return tensor

    images_to_device = to_device


def toy_batch(n=2, px=8):
    masks = torch.ones(n, px, px, dtype=torch.long)  # N1 says class 1 everywhere
    views = {"weak": torch.rand(n, 3, px, px), "strong": torch.rand(n, 3, px, px),
             "box": torch.tensor([[0, 0, 4, 4]] + [list(NO_BOX)] * (n - 1))}
    return torch.rand(n, 3, px, px), masks, torch.ones(n), views


def test_the_unlabelled_loss_ramps_up_and_learns_the_teachers_confident_class():
    from wsseg.pipeline.semi import build_teacher, semi_loss

    cfg = config_from_dict({})
    model = Constant()
    progress = {"value": 0.0}
    loss_fn = semi_loss(cfg, FakeStage(), build_teacher(model), None, IGNORE_INDEX,
                        progress=lambda: progress["value"], rampup=0.5)
    batch = toy_batch()
    loss, scalars = loss_fn(model, batch, 0)
    # At the start the unlabelled term weighs nothing: the loss is the N1 cross-entropy.
    assert scalars["ramp"] == 0.0 and loss.item() == pytest.approx(scalars["labelled"])
    assert scalars["confident_pixels"] == 1.0 and scalars["strong"] > 0.0  # p(class 0) = 0.98 ≥ 0.95
    progress["value"] = 0.25
    loss, scalars = loss_fn(model, batch, 0)
    assert scalars["ramp"] == 0.5
    assert loss.item() == pytest.approx(scalars["labelled"] + 0.5 * 0.5 * scalars["strong"])
    # Every strong pixel learns the teacher's class 0, against N1's class 1.
    assert scalars["strong"] == pytest.approx(-torch.log_softmax(model.bias.detach(), 0)[0].item(), rel=1e-4)
    assert scalars["labelled"] == pytest.approx(-torch.log_softmax(model.bias.detach(), 0)[1].item(), rel=1e-4)


def test_the_tags_veto_the_teachers_confident_class_and_travel_with_cutmix():
    """Task ii online: the teacher is sure of class 0 everywhere; crop 0's tags rule class 0 out,
    crop 1's rule class 1 out. Crop 0's targets become class 1 (its only allowed class, at
    probability 1), crop 1's stay class 0, and the box of crop 1 pasted into crop 0 brings class
    0 with it."""
    from wsseg.datasets.tags import TAG_NEGATIVE, TAG_UNKNOWN
    from wsseg.pipeline.semi import build_teacher, semi_loss

    cfg = config_from_dict({})
    model = Constant()
    loss_fn = semi_loss(cfg, FakeStage(), build_teacher(model), None, IGNORE_INDEX, progress=lambda: 1.0, rampup=0.0)
    images, masks, weights, views = toy_batch()  # crop 0 gets a 4×4 box of crop 1, of its 8×8 pixels
    views["tag_targets"] = torch.tensor([[TAG_NEGATIVE, TAG_UNKNOWN], [TAG_UNKNOWN, TAG_NEGATIVE]], dtype=torch.int8)
    _, scalars = loss_fn(model, (images, masks, weights, views), 0)
    assert scalars["confident_pixels"] == 1.0
    nll = -torch.log_softmax(model.bias.detach(), 0)
    class_1_pixels = 64 - 16  # crop 0 outside its box
    expected = (class_1_pixels * nll[1] + (128 - class_1_pixels) * nll[0]) / 128
    assert scalars["strong"] == pytest.approx(expected.item(), rel=1e-4)
    # Without tags every pixel learns the teacher's class 0.
    del views["tag_targets"]
    _, untagged = loss_fn(model, (images, masks, weights, views), 0)
    assert untagged["strong"] == pytest.approx(nll[0].item(), rel=1e-4)


def test_feature_perturbation_adds_a_term_on_the_weak_views():
    from wsseg.pipeline.semi import build_teacher, semi_loss

    cfg = config_from_dict({"semi": {"feature_perturbation": 0.5}})
    model = Constant()
    loss_fn = semi_loss(cfg, FakeStage(), build_teacher(model), None, IGNORE_INDEX, progress=lambda: 1.0, rampup=0.0)
    loss, scalars = loss_fn(model, toy_batch(), 0)
    assert loss.item() == pytest.approx(scalars["labelled"] + 0.5 * scalars["strong"]
                                        + 0.5 * scalars["feature_perturbation"])


def test_feature_perturbation_drops_out_only_the_samples_asked():
    from wsseg.models import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("unet", 3, base_channels=4, depth=2).train()
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    plain = model(x)
    torch.manual_seed(1)
    perturbed = model(x, perturb_from=2)
    # BatchNorm in train mode mixes the batch: compare in eval mode, where samples are independent.
    model.eval()
    plain, perturbed = model(x), model(x, perturb_from=2)
    torch.testing.assert_close(plain[:2], perturbed[:2])
    assert not torch.allclose(plain[2:], perturbed[2:])


def test_feature_perturbation_needs_a_segmenter_that_supports_it():
    from wsseg.core.typed import ConfigError
    from wsseg.pipeline.config_checks import check_config

    with pytest.raises(ConfigError, match="semi.feature_perturbation: segmenter 'fcn8s'"):
        check_config(config_from_dict({"model": {"name": "fcn8s"}, "semi": {"feature_perturbation": 0.5}}))
    with pytest.raises(ConfigError, match=r"semi.threshold must be in \[0, 1\], got 1.5"):
        check_config(config_from_dict({"semi": {"threshold": 1.5}}))


def test_task_semi_trains_on_the_n2_images_and_saves_its_teacher(tmp_path):
    data_root = tmp_path / "synthetic"
    config = tiny_config(tmp_path, data_root, train={"epochs": 2, "iters_per_epoch": 4})
    run = tmp_path / "run"
    assert main(["train", "--task", "semi", "--config", str(config), "--out", str(run)]) == 0
    done = json.loads((run / "semi" / "done.json").read_text())
    assert done["checkpoint"]["epochs_trained"] == 2 and done["minutes"] > 0
    last = load_checkpoint(run / "semi" / "last.pt")
    history = last["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert 0.0 <= history[-1]["train_confident_pixels"] <= 1.0 and history[-1]["train_ramp"] == 1.0
    assert not (run / "task_i").exists()  # no time budget: task i's epochs are train.epochs
    # The mean teacher is saved with the run, so that a resumed run teaches as an uninterrupted one.
    teacher = last["companions"]["teacher"]
    assert int(teacher["n_averaged"]) == 2 * 4 and set(teacher) >= {f"module.{k}" for k in last["model"]}
    assert not torch.equal(teacher["module.classifier.weight"], last["model"]["classifier.weight"])


def test_a_resumed_run_restores_the_mean_teacher(tmp_path):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from torch.utils.data import DataLoader

    from test_train import NoisyCrops, tiny_model
    from wsseg.core.losses import weighted_cross_entropy
    from wsseg.core.optim import build_optimizer, build_scheduler
    from wsseg.core.train import fit

    def run(run_dir, fail_in_epoch=None, resume=False):
        torch.manual_seed(0)
        model = tiny_model()
        teacher = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        optimizer = build_optimizer(model.parameters(), "adam", 1e-2)
        loader = DataLoader(NoisyCrops(), batch_size=4, shuffle=True)

        def compute_loss(model, batch, epoch):
            if epoch == fail_in_epoch:
                raise RuntimeError("the machine went down")
            teacher.update_parameters(model)
            images, masks = batch
            return weighted_cross_entropy(model(images), masks), {}

        fit(model=model, loader=loader, optimizer=optimizer, scheduler=build_scheduler(optimizer, "constant", 6),
            compute_loss=compute_loss, epochs=3, run_dir=run_dir, device=torch.device("cpu"), resume=resume,
            log=lambda message: None, show_progress=False, companions={"teacher": teacher})
        return teacher

    whole = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="went down"):
        run(tmp_path / "cut", fail_in_epoch=2)
    resumed = run(tmp_path / "cut", resume=True)
    assert int(resumed.n_averaged) == int(whole.n_averaged) == 6
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


def test_the_strong_views_leave_batchnorms_running_statistics_alone():
    """Evaluation normalises with running statistics: those of the N1 crops alone, as in task i."""
    from wsseg.pipeline.semi import build_teacher, semi_loss

    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    reference = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    reference.load_state_dict(student.state_dict())
    loss_fn = semi_loss(config_from_dict({}), FakeStage(), build_teacher(student), None, IGNORE_INDEX,
                        progress=lambda: 1.0, rampup=0.0)
    images, masks, weights, views = toy_batch()
    views["strong"] = views["strong"] * 5 + 3  # statistics far from the N1 crops'
    loss_fn(student, (images, masks.clamp(max=1), weights, views), 0)
    reference(images)
    torch.testing.assert_close(student[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(student[1].running_var, reference[1].running_var)
    assert student[1].momentum == 0.1  # restored after the strong pass
