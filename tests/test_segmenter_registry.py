import pytest
import torch

from wsseg.models import build_segmenter, segmenter_names


def test_known_names():
    assert {"encdec_unpool", "effnet_lite0_unet", "unet", "fcn8s", "zoomout", "timm_unet", "timm_fpn",
            "deeplabv3plus"} <= set(segmenter_names())


@pytest.mark.parametrize("name, kwargs", [
    ("encdec_unpool", {"width": 0.125, "decoder_dropout": 0.5}),
    ("effnet_lite0_unet", {"pretrained": False, "decoder_channels": (16, 16, 8, 8)}),
    ("unet", {"base_channels": 4, "depth": 3}),
    ("fcn8s", {"width": 0.0625}),
    ("zoomout", {"width": 0.125, "hidden": [8, 8]}),
    ("timm_unet", {"encoder": "test_efficientnet", "pretrained": False, "decoder_channels": (16, 16, 8, 8)}),
    ("timm_fpn", {"encoder": "test_convnext", "pretrained": False, "channels": 16}),
    ("deeplabv3plus", {"encoder": "test_vit", "pretrained": False, "channels": 16}),
])
def test_every_segmenter_keeps_the_contract(name, kwargs):
    model = build_segmenter(name, 4, **kwargs)
    assert model(torch.rand(2, 3, 45, 51)).shape == (2, 4, 45, 51)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="encdec_unpool.*fcn8s.*unet"):
        build_segmenter("deeplab", 4)


def test_unknown_argument_is_named():
    with pytest.raises(TypeError, match="base_width"):
        build_segmenter("unet", 4, base_width=8)


@pytest.mark.parametrize("name, kwargs", [
    ("encdec_unpool", {"width": 0.125}),
    ("effnet_lite0_unet", {"pretrained": False}),
    ("unet", {"base_channels": 4, "depth": 2}),
    ("fcn8s", {"width": 0.0625}),
    ("zoomout", {"width": 0.125, "hidden": [8, 8]}),
    ("timm_unet", {"encoder": "test_vit", "pretrained": False}),
    ("timm_fpn", {"encoder": "test_efficientnet", "pretrained": False, "channels": 16}),
    ("deeplabv3plus", {"encoder": "test_resnet", "pretrained": False, "channels": 16}),
])
def test_the_registered_head_is_exactly_what_the_class_count_shapes(name, kwargs):
    """`--reset-head` learns afresh the weights under the spec's head_prefixes: those, and only those,
    change shape with the number of classes."""
    from wsseg.models import head_prefixes

    three, five = build_segmenter(name, 3, **kwargs).state_dict(), build_segmenter(name, 5, **kwargs).state_dict()
    class_sized = {k for k in three if three[k].shape != five[k].shape}
    assert class_sized and class_sized == {k for k in three if k.startswith(head_prefixes(name))}


def test_a_segmenter_is_registered_once():
    from wsseg.models import register_segmenter, segmenter_spec

    with pytest.raises(ValueError, match="'unet' is registered twice"):
        register_segmenter(segmenter_spec("unet"))
