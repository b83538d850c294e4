import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsseg.models.backbones import build_backbone
from wsseg.models.single_stage import (ClassLayout, SingleStageSegmenter, focal_mask_penalty,
                                       normalised_gwp)

WIDTH = 0.0625  # ResNet-38 and head at 1/16 of their channels: the real topology, CPU-cheap


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SingleStageSegmenter(num_classes=4, width=WIDTH)


def test_ngwp_hand_computed():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 4.0]]]])
    masks = torch.tensor([[[[0.5, 0.0], [1.0, 0.25]]]])
    # Σ m·y = 1 + 0 + 0.5 + 1 = 2.5; 1 + Σ m = 2.75
    assert torch.allclose(normalised_gwp(logits, masks), torch.tensor([[2.5 / 2.75]]))


def test_focal_penalty_hand_computed():
    masks = torch.tensor([[[[0.5, 0.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]])
    penalty = focal_mask_penalty(masks, p=3, lam=0.01)
    # mean 0.5 → 0.5³·log(0.51); empty mask → 1·log(0.01)
    expected = torch.tensor([[0.125 * math.log(0.51), math.log(0.01)]])
    assert torch.allclose(penalty, expected)


def test_forward_outputs_and_scores(model):
    model.eval()
    image = torch.rand(2, 3, 65, 65)
    out = model(image)
    assert set(out) == {"cls", "logits", "masks"}  # no PAMR unless training or asked
    assert out["cls"].shape == (2, 4)
    assert out["logits"].shape == out["masks"].shape == (2, 5, 17, 17)  # stride 4
    assert torch.equal(out["logits"][:, 0], torch.ones(2, 17, 17))  # constant background
    assert torch.allclose(out["masks"].sum(1), torch.ones(2, 17, 17))
    scores = normalised_gwp(out["logits"], out["masks"]) + focal_mask_penalty(out["masks"])
    assert torch.allclose(out["cls"], scores[:, 1:])

    tags = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1]])
    loss = model.classification_loss(out["cls"], tags)
    manual = -(tags * F.logsigmoid(out["cls"]) + (1 - tags) * F.logsigmoid(-out["cls"])).mean()
    assert torch.allclose(loss, manual)


def test_training_step_freezing_and_pamr(model):
    model.train()
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(m.training for m in model.aspp.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.gci.out[1].training and model.gate.training

    model.zero_grad()
    out = model(torch.rand(2, 3, 49, 49))
    assert out["masks_pamr"].shape == out["masks"].shape and not out["masks_pamr"].requires_grad
    assert torch.allclose(out["masks_pamr"].sum(1), torch.ones(2, 13, 13), atol=1e-5)
    model.classification_loss(out["cls"], torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]])).backward()
    assert model.backbone.conv1a.weight.grad is None and model.backbone.b2_1.conv_branch2a.weight.grad is None
    assert model.backbone.bn7.weight.grad is None
    assert model.backbone.b3.conv_branch2a.weight.grad is not None
    assert model.aspp.project[1].weight.grad is not None


def test_param_groups_partition_trainable_parameters(model):
    groups = model.param_groups(lr=1e-3)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", 1e-3, 5e-4), ("new_weights", 1e-2, 5e-4), ("new_biases", 2e-2, 0.0)]
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups[0]["params"]} <= backbone
    assert all(id(p) not in backbone for g in groups[1:] for p in g["params"])
    assert any(p is model.classifier[-1].bias for p in groups[2]["params"])
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9)


def test_predict_masks_multiscale_and_restriction(model):
    image = torch.rand(3, 40, 56)
    tags = torch.tensor([1, 0, 0, 1])
    probs = model.predict_masks(image, tags=tags, scales=(1, 0.5), flip=True)
    assert probs.shape == (5, 40, 56)
    assert (probs[2:4] == 0).all() and (probs[1] > 0).all()
    assert model.training  # mode restored

    # One scale, no flip: the upsampled softmax with background cubed.
    single = model.predict_masks(image, tags=torch.ones(4), scales=(1,), flip=False, bg_pow=3)
    model.eval()
    with torch.no_grad():
        masks = F.interpolate(model(image[None])["masks"], size=(40, 56), mode="bilinear",
                              align_corners=True)[0]
    masks[0] = masks[0] ** 3
    assert torch.allclose(single, masks, atol=1e-6)

    # Without tags the classes come from the scores: an impossible threshold keeps none.
    none_kept = model.predict_masks(image, scales=(1,), flip=False, score_threshold=1.0)
    assert (none_kept[1:] == 0).all()


def test_learned_background_layout():
    layout = ClassLayout(num_dataset_classes=3, background_index=None)
    model = SingleStageSegmenter(layout.num_scored, width=WIDTH, background=layout.background).eval()
    out = model(torch.rand(1, 3, 33, 33))
    assert out["logits"].shape == (1, 3, 9, 9) and out["cls"].shape == (1, 3)
    scores = normalised_gwp(out["logits"], out["masks"]) + focal_mask_penalty(out["masks"])
    assert torch.allclose(out["cls"], scores)
    assert model.predict_masks(torch.rand(3, 20, 20), scales=(1,), flip=False).shape == (3, 20, 20)


def test_class_layout_maps_clutter_to_the_constant_channel():
    # ISPRS option A: clutter (5) is the background channel 0.
    layout = ClassLayout(num_dataset_classes=6, background_index=5)
    assert layout.background == "constant" and layout.num_scored == 5
    assert layout.channel_classes == [5, 0, 1, 2, 3, 4]
    dataset_tags = torch.tensor([[1, 0, 1, 0, 0, 1]])
    assert layout.scored_tags(dataset_tags).tolist() == [[1, 0, 1, 0, 0]]
    channels = torch.arange(6.0)[:, None, None]  # channel c holds value c
    assert layout.to_dataset_order(channels).flatten().tolist() == [1, 2, 3, 4, 5, 0]
    assert layout.labels_to_dataset(torch.tensor([0, 1, 5, 255])).tolist() == [5, 0, 4, 255]


def test_self_supervised_loss_wiring(model):
    model.train()
    image = torch.rand(2, 3, 49, 49)
    out = model(image)
    tags = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]])
    loss = model.self_supervised_loss(out, tags, crop_size=image.shape[-2:])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("name, shallow, deep", [("vgg16", 256, 512), ("resnet50", 256, 2048)])
def test_torchvision_backbones_are_output_stride_8(name, shallow, deep):
    backbone = build_backbone(name).train()
    assert (backbone.shallow_channels, backbone.deep_channels) == (shallow, deep)
    with torch.no_grad():
        s, d = backbone(torch.rand(1, 3, 64, 64))
    assert s.shape == (1, shallow, 16, 16) and d.shape == (1, deep, 8, 8)
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(p.requires_grad for n, p in backbone.named_parameters()
                          if n.startswith(("layer3.0.conv", "features.28")))


def test_effnet_backbone_matches_the_stride_8_grid():
    model = SingleStageSegmenter(num_classes=2, backbone="effnet_lite0", width=WIDTH).eval()
    out = model(torch.rand(1, 3, 65, 65))
    assert out["logits"].shape == (1, 3, 17, 17)


@pytest.mark.parametrize("backbone", ["resnet38", "effnet_lite0"])
def test_every_trainable_parameter_gets_a_gradient(backbone):
    # DistributedDataParallel fails on a trainable parameter left without a gradient (torchrun runs).
    model = SingleStageSegmenter(num_classes=3, backbone=backbone, width=WIDTH, pamr_iter=2).train()
    out = model(torch.rand(2, 3, 48, 48), refine=False)
    model.classification_loss(out["cls"], torch.ones_like(out["cls"])).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_unknown_backbone_is_an_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet18")


@pytest.mark.parametrize("backbone", ["timm:test_resnet", "timm:test_vit"])
def test_a_timm_backbone_trains_with_frozen_batch_norms(backbone):
    """`weak.single_stage.backbone: timm:<name>`: two SGD steps of the published recipe's losses
    on random weights; its BatchNorms keep their statistics, as every backbone's do."""
    torch.manual_seed(0)
    model = SingleStageSegmenter(num_classes=3, backbone=backbone, width=WIDTH, pamr_iter=2).train()
    frozen = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training or m.weight.requires_grad for m in frozen)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(model.param_groups(lr=1e-2), lr=1e-2, momentum=0.9)
    tags = torch.tensor([[1, 0, 1], [0, 1, 0]])
    for _ in range(2):
        out = model(torch.rand(2, 3, 49, 49))
        loss = model.classification_loss(out["cls"], tags) + model.self_supervised_loss(out, tags, (49, 49))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert out["logits"].shape == out["masks_pamr"].shape == (2, 4, 13, 13)  # stride 4, as every backbone
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if "running_" in k)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("encoder.body.")
               and "running_" not in k)


def test_a_timm_backbone_is_dilated_to_stride_8_and_loads_a_local_state_dict(tmp_path):
    resnet = build_backbone("timm:resnet50")
    assert (resnet.shallow_channels, resnet.deep_channels) == (256, 2048)  # torchvision's ResNet-50's
    with torch.no_grad():
        shallow, deep = resnet.eval()(torch.rand(1, 3, 50, 50))
    assert shallow.shape[-2:] == (13, 13) and deep.shape[-2:] == (7, 7)
    torch.manual_seed(1)
    source = build_backbone("timm:test_efficientnet")
    torch.save(source.encoder.body.state_dict(), tmp_path / "body.pth")
    torch.manual_seed(2)
    loaded = build_backbone("timm:test_efficientnet", pretrained=tmp_path / "body.pth")
    assert all(torch.equal(v, loaded.encoder.body.state_dict()[k]) for k, v in source.encoder.body.state_dict().items())
    with pytest.raises(ValueError, match="unknown backbone 'resnet5'.*timm:<a timm model name>"):
        build_backbone("resnet5")
