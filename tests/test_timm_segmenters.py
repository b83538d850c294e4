"""The segmenters on timm encoders (timm_unet, timm_fpn, deeplabv3plus) keep every promise a wsseg
segmenter makes: logits at the input size, feature perturbation, the encoder's learning-rate
group, channels-last, the least input, ONNX, publish and --checkpoint, and the tasks end to end.
Random weights throughout (pretrained=False): nothing is downloaded."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from wsseg.cli import main
from wsseg.core.checkpoint import load_checkpoint
from wsseg.models import (build_segmenter, encoder_prefixes, min_input_px, parameter_groups,
                          supports_feature_perturbation, timm_segmenters)
from wsseg.pipeline.release import resolve_checkpoint
from test_predict import make_checkpoint
from test_run_training import tiny_config

HEADS = timm_segmenters()
# The encoders the issue names, at their real sizes (ResNet-18 stands for ResNet-50 in most cases).
ENCODERS = ["resnet18", "convnext_atto", "mobilenetv3_large_100", "efficientnet_b0", "vit_tiny_patch16_224"]
# timm's own test models (a few hundred thousand weights): a CNN with a stride-2 map, and a plain ViT.
TINY_CNN, TINY_VIT = "test_efficientnet", "test_vit"


def tiny(head: str, encoder: str = TINY_CNN) -> dict:
    """Options of a small model: the narrowest decoder each head takes."""
    widths = {"timm_unet": {}, "timm_fpn": {"channels": 16}, "deeplabv3plus": {"channels": 16}}[head]
    return {"encoder": encoder, "pretrained": False, **widths}


def encoder_and_rest(name: str, model: nn.Module) -> tuple[set[str], set[str]]:
    keys = [k for k, _ in model.named_parameters()]
    encoder = {k for k in keys if k.startswith(encoder_prefixes(name))}
    return encoder, set(keys) - encoder


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_head_on_every_encoder_gives_logits_at_the_input_size_and_trains_every_weight(head, encoder):
    torch.manual_seed(0)
    model = build_segmenter(head, 4, encoder=encoder, pretrained=False).train()
    logits = model(torch.rand(2, 3, 45, 51))
    assert logits.shape == (2, 4, 45, 51)
    logits.square().mean().backward()
    # A weight without a gradient is dead weight, and DistributedDataParallel refuses the model.
    assert [k for k, p in model.named_parameters() if p.grad is None] == []


def test_resnet50_under_the_unet_decoder():
    model = build_segmenter("timm_unet", 3, encoder="resnet50", pretrained=False).eval()
    assert model.encoder.channels == [64, 256, 512, 1024, 2048] and model.encoder.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 40, 36)).shape == (1, 3, 40, 36)


def test_deeplab_runs_aspp_at_output_stride_16_on_the_stride_4_skip():
    model = build_segmenter("deeplabv3plus", 3, encoder="resnet18", pretrained=False)
    assert model.encoder.strides == [4, 16] and model.encoder.channels == [64, 512]
    assert [m.dilation for m in model.aspp.atrous.modules() if isinstance(m, nn.Conv2d)] == [(6, 6), (12, 12), (18, 18)]
    assert model.reduce[0].out_channels == 48 and model.aspp.project[0].out_channels == 256
    # The ViT's pyramid builds only the two maps the head reads: no layer without a gradient.
    vit = build_segmenter("deeplabv3plus", 3, **tiny("deeplabv3plus", TINY_VIT))
    assert vit.encoder.strides == [4, 16] and len(vit.encoder.pyramid.levels) == 2


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("encoder", [TINY_CNN, TINY_VIT])
def test_feature_perturbation_drops_out_only_the_samples_asked(head, encoder):
    assert supports_feature_perturbation(head)
    torch.manual_seed(0)
    model = build_segmenter(head, 3, **tiny(head, encoder)).eval()  # eval: samples are independent
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        plain, perturbed = model(x), model(x, perturb_from=2)
    torch.testing.assert_close(plain[:2], perturbed[:2])
    assert not torch.allclose(plain[2:], perturbed[2:])


@pytest.mark.parametrize("head", HEADS)
def test_the_encoder_learning_rate_reaches_the_imagenet_weights_only(head):
    model = build_segmenter(head, 3, **tiny(head, TINY_VIT))
    encoder, rest = encoder_and_rest(head, model)
    assert encoder == {f"encoder.body.{k}" for k, _ in model.encoder.body.named_parameters()}
    # The ViT's pyramid is as new as the decoder: it learns at the decoder's rate.
    assert any(k.startswith("encoder.pyramid.") for k in rest) and any(k.startswith("classifier.") for k in rest)
    groups = parameter_groups(head, model, encoder_lr_mult=0.1)
    assert groups[0]["lr_mult"] == 0.1 and len(groups[0]["params"]) == len(encoder)
    assert len(groups[1]["params"]) == len(rest)


@pytest.mark.parametrize("head", HEADS)
def test_channels_last_gives_the_same_logits(head):
    torch.manual_seed(0)
    model = build_segmenter(head, 3, **tiny(head)).eval()
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_the_least_input_trains(head):
    least = min_input_px(head, tiny(head))
    assert least == 32
    for encoder in (TINY_CNN, TINY_VIT):
        model = build_segmenter(head, 3, **tiny(head, encoder)).train()
        assert model(torch.rand(2, 3, least, least)).shape == (2, 3, least, least)


def test_a_crop_below_the_least_input_is_a_config_error():
    from wsseg.core.typed import ConfigError
    from wsseg.pipeline.config_checks import check_config
    from wsseg.pipeline.config_files import config_from_dict

    cfg = config_from_dict({"model": {"name": "deeplabv3plus", "options": tiny("deeplabv3plus")},
                            "train": {"crop_px": 16}})
    with pytest.raises(ConfigError, match="train.crop_px 16 is smaller than 32 px"):
        check_config(cfg)


def test_bad_options_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"timm .* has no model 'resnet5O'; did you mean .*resnet50"):
        build_segmenter("timm_unet", 3, encoder="resnet5O", pretrained=False)
    with pytest.raises(ValueError, match=r"decoder_channels needs 4 entries for 'test_efficientnet' \(one per skip, "
                                         r"at strides 16, 8, 4, 2\), got \(8, 8\)"):
        build_segmenter("timm_unet", 3, encoder=TINY_CNN, pretrained=False, decoder_channels=[8, 8])
    with pytest.raises(ValueError, match="no pretrained weights for 'test_vit4'"):
        build_segmenter("timm_fpn", 3, encoder="test_vit4", pretrained=True)


VALUES = {"data": {"kind": "synthetic_vaihingen"}, "eval": {"window_px": 48, "stride_px": 32, "batch_size": 2}}


@pytest.mark.parametrize("head, encoder", [("timm_unet", TINY_CNN), ("timm_fpn", "test_convnext"),
                                           ("deeplabv3plus", "test_resnet")])
def test_onnx_export_matches_pytorch_at_two_sizes(head, encoder, tmp_path):
    import onnxruntime

    checkpoint = make_checkpoint(tmp_path / "best.pt", {**VALUES, "model": {"name": head,
                                                                           "options": tiny(head, encoder)}})
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    model = resolve_checkpoint(checkpoint).model
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for height, width in ((48, 48), (37, 61)):
        x = torch.rand(1, 3, height, width)
        with torch.inference_mode():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=0, atol=1e-4)


def test_a_vit_encoder_does_not_export_and_says_which_op(tmp_path, capsys):
    """timm resamples a ViT's position embedding to the input with antialiased bicubic interpolation,
    which ONNX opset 17 lacks; traced, its token reshapes keep the example's size."""
    checkpoint = make_checkpoint(tmp_path / "best.pt", {**VALUES, "model": {"name": "timm_unet",
                                                                           "options": tiny("timm_unet", TINY_VIT)}})
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "aten::_upsample_bicubic2d_aa" in capsys.readouterr().err.splitlines()[-1]
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "does not trace to a size-independent graph" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("head, encoder", [("timm_unet", TINY_VIT), ("deeplabv3plus", TINY_CNN)])
def test_publish_and_checkpoint_round_trip(head, encoder, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "run" / "task_i" / "best.pt",
                                 {**VALUES, "model": {"name": head, "options": tiny(head, encoder)}})
    assert main(["publish", str(checkpoint.parent), "--out", str(tmp_path / "release")]) == 0
    meta = json.loads((tmp_path / "release" / "model.json").read_text())
    assert meta["model"] == {"name": head, "options": tiny(head, encoder)}
    mean = [0.5] * 3 if encoder == TINY_VIT else [0.485, 0.456, 0.406]
    np.testing.assert_allclose(meta["input"]["mean"], mean, rtol=1e-6)
    x = torch.rand(2, 3, 40, 44)
    with torch.no_grad():
        expected = resolve_checkpoint(checkpoint).model(x)
        for spec in (tmp_path / "release", tmp_path / "release" / "model.zip"):
            torch.testing.assert_close(resolve_checkpoint(spec).model(x), expected, rtol=0, atol=0)
    # What --checkpoint takes, through the command line: the release predicts an image.
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "release"), str(tmp_path / "a.png"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "a_mask.png").is_file()


def test_every_task_trains_a_timm_segmenter_end_to_end(tmp_path, monkeypatch):
    """Task i, the semi arm (with feature perturbation), task ii (with a timm single-stage backbone)
    and the oracle, on 64 px tiles, a step or two each, channels-last, the encoder at 0.1× the rate."""
    from wsseg.core import report

    # The reports' figures would take most of the time, and are not what this test is about.
    for figure in ("plot_class_bars", "plot_confusion", "plot_curves"):
        monkeypatch.setattr(report, figure, lambda path, *args, **kwargs: path)
    config = tiny_config(
        tmp_path, tmp_path / "data",
        data={"options": {"num_tiles": 8, "tile_px": [64, 64], "seed": 3}},
        split={"n_labelled": 2, "n_tagged": 3, "n_val": 1},
        model={"name": "deeplabv3plus", "options": tiny("deeplabv3plus")},
        train={"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_px": 32, "optimizer": "adamw",
               "schedule": "constant", "workers": 0, "precision": "fp32", "channels_last": True,
               "encoder_lr_mult": 0.1},
        eval={"window_px": 64, "stride_px": 64, "batch_size": 2, "num_triptychs": 0},
        semi={"feature_perturbation": 0.5},
        weak={"tag_crop_px": 32,
              "single_stage": {"backbone": "timm:test_resnet", "pretrained": None, "width": 0.0625, "epochs": 1,
                               "iters_per_epoch": 2, "batch_size": 2, "crop_px": 48,
                               "self_supervised_from_epoch": 1},
              "pseudo": {"scales": [1.0], "use_pamr": False, "crf": False}})
    monkeypatch.setattr("wsseg.pipeline.pseudo_masks.REJECT_BACKGROUND_BELOW_RECALL", 0.0)
    run = tmp_path / "run"
    assert main(["train", "--task", "all", "--oracle", "--config", str(config), "--out", str(run)]) == 0
    comparison = json.loads((run / "comparison.json").read_text())
    assert {"task_i", "semi", "task_ii", "oracle"} <= set(comparison)
    for stage in ("task_i", "semi", "task_ii", "oracle"):
        assert (run / stage / "best.pt").is_file(), stage
    history = load_checkpoint(run / "semi" / "last.pt")["history"]
    assert "train_feature_perturbation" in history[-1]
