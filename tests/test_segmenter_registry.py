import pytest
import torch

from wsseg.models import SEGMENTERS, build_segmenter


def test_known_names():
    assert {"encdec_unpool", "effnet_lite0_unet", "unet", "fcn8s"} <= SEGMENTERS.keys()


@pytest.mark.parametrize("name, kwargs", [
    ("encdec_unpool", {"width": 0.125, "decoder_dropout": 0.5}),
    ("effnet_lite0_unet", {"pretrained": False, "decoder_channels": (16, 16, 8, 8)}),
    ("unet", {"base_channels": 4, "depth": 3}),
    ("fcn8s", {"width": 0.0625}),
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
