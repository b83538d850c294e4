"""timm models as multi-scale encoders: strides and widths, dilation, a plain ViT's pyramid, the
input normalisation, and where timm's downloads go. Random weights: nothing is downloaded (the
downloads are tested against a local server in test_weights.py)."""

import pytest
import torch

from wsseg.models.timm_encoder import TimmFeatures, check_timm_name, skip_and_deepest, timm_cache_dir


def shapes(features) -> list[tuple[int, ...]]:
    return [tuple(f.shape) for f in features]


def test_a_cnn_gives_its_maps_fine_to_coarse_with_strides_and_widths():
    encoder = TimmFeatures("resnet18", pretrained=False).eval()
    assert encoder.strides == [2, 4, 8, 16, 32] and encoder.channels == [64, 64, 128, 256, 512]
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 96))
    assert shapes(features) == [(1, c, 64 // s, 96 // s) for c, s in zip(encoder.channels, encoder.strides)]
    # The statistics its ImageNet weights were trained with, applied inside.
    assert encoder.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_output_stride_dilates_the_last_stages():
    encoder = TimmFeatures("convnext_atto", pretrained=False, output_stride=8).eval()
    assert encoder.strides == [4, 8, 8, 8]
    with torch.no_grad():
        assert [f.shape[-1] for f in encoder(torch.rand(1, 3, 64, 64))] == [16, 8, 8, 8]


def test_a_plain_vit_is_reassembled_into_a_pyramid_from_blocks_spread_over_its_depth():
    encoder = TimmFeatures("vit_tiny_patch16_224", pretrained=False).eval()
    assert encoder.body.feature_info.module_name() == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert encoder.strides == [4, 8, 16, 32] and encoder.channels == [24, 48, 96, 192]  # DPT's widths
    assert encoder.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    with torch.no_grad():  # any size: 45 × 70 is padded to 48 × 80, three by five patches
        assert shapes(encoder(torch.rand(2, 3, 45, 70))) == [(2, 24, 12, 20), (2, 48, 6, 10), (2, 96, 3, 5),
                                                             (2, 192, 2, 3)]
    capped = TimmFeatures("test_vit", pretrained=False, output_stride=16, levels=skip_and_deepest(4))
    assert capped.strides == [4, 16] and len(capped.body.feature_info.module_name()) == 2


def test_an_encoder_that_cannot_dilate_or_lacks_a_stride_is_named():
    with pytest.raises(ValueError, match="timm model 'test_mambaout' cannot be dilated to output stride 16"):
        TimmFeatures("test_mambaout", pretrained=False, output_stride=16)
    with pytest.raises(ValueError, match=r"timm encoder 'test_convnext' \(feature strides 4, 8, 16, 32\): no features "
                                         r"at stride 2"):
        TimmFeatures("test_convnext", pretrained=False, levels=skip_and_deepest(2))


def test_names_are_checked_with_suggestions():
    check_timm_name("resnet50.a1_in1k")
    with pytest.raises(ValueError, match=r"has no model 'convnext_tinny'; did you mean convnext_tiny"):
        check_timm_name("convnext_tinny")
    with pytest.raises(ValueError, match=r"timm model 'resnet50.no_such_tag': Invalid pretrained tag"):
        check_timm_name("resnet50.no_such_tag")


def test_downloads_go_to_the_wsseg_cache_unless_the_user_named_a_hugging_face_cache(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "cache"))
    assert timm_cache_dir() == tmp_path / "cache" / "timm"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert timm_cache_dir() is None  # theirs: timm and huggingface_hub use it as they always do
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("WSSEG_CACHE")
    assert timm_cache_dir() is None
