import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsseg.models.fcn import FCN8s, bilinear_kernel, load_fcn8s_vgg16_imagenet


@pytest.fixture(scope="module")
def vgg16_state():
    torch.manual_seed(0)
    return torchvision.models.vgg16().state_dict()


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64), (5, 200)])
def test_output_has_input_size(size):
    model = FCN8s(num_classes=5, width=0.0625)
    assert model(torch.rand(2, 3, *size)).shape == (2, 5, *size)


def test_width_scales_fc_layers_too():
    model = FCN8s(num_classes=5, width=0.125)
    assert (model.fc6.in_channels, model.fc6.out_channels, model.fc6.kernel_size) == (64, 512, (7, 7))
    assert model.score_pool3.in_channels == 32 and model.score_pool4.in_channels == 64


def test_upsampling_starts_bilinear():
    kernel = bilinear_kernel(2, 4)
    assert torch.allclose(kernel[0, 0, 1], torch.tensor([0.1875, 0.5625, 0.5625, 0.1875]))
    assert kernel[0, 1].abs().sum() == 0  # channels upsample independently
    model = FCN8s(num_classes=2, width=0.0625)
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 2, 6, 6)
    up = model.upscore2(ramp)
    # Interior of a linear ramp stays on the ramp, at half the step.
    torch.testing.assert_close(up[0, 0, 5, 2:10], torch.arange(2, 10) / 2 - 0.25)
    assert model.upscore8.weight.requires_grad


def test_score_layers_start_at_zero():
    model = FCN8s(num_classes=3, width=0.0625)
    assert torch.all(model(torch.rand(2, 3, 40, 40)) == 0)


def test_vgg16_weights_make_fc6_the_fully_connected_layer(vgg16_state):
    model = load_fcn8s_vgg16_imagenet(FCN8s(num_classes=3), vgg16_state).eval()
    torch.testing.assert_close(model.blocks[4][4].weight, vgg16_state["features.28.weight"])
    pool5 = torch.rand(1, 512, 7, 7)
    with torch.no_grad():
        conv = model.fc6(pool5)[0, :, 3, 3]  # the centre window sees all 7×7 without padding
        linear = F.linear(pool5.flatten(1), vgg16_state["classifier.0.weight"],
                          vgg16_state["classifier.0.bias"])[0]
    torch.testing.assert_close(conv, linear, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.fc7.weight[:, :, 0, 0], vgg16_state["classifier.3.weight"])


def test_bn_weights_or_missing_classifier_are_errors(vgg16_state):
    model = FCN8s(num_classes=3)
    bn_state = dict(vgg16_state)
    bn_state.update({"features.1.weight": torch.ones(64), "features.1.bias": torch.zeros(64),
                     "features.1.running_mean": torch.zeros(64),
                     "features.1.running_var": torch.ones(64)})
    with pytest.raises(ValueError, match="VGG16-BN"):
        load_fcn8s_vgg16_imagenet(model, bn_state)
    no_fc7 = {k: v for k, v in vgg16_state.items() if not k.startswith("classifier.3")}
    with pytest.raises(KeyError, match=r"classifier\.3\.bias"):
        load_fcn8s_vgg16_imagenet(model, no_fc7)
    with pytest.raises(ValueError, match="width=1.0"):
        load_fcn8s_vgg16_imagenet(FCN8s(num_classes=3, width=0.5), vgg16_state)
