import pytest
import torch

from wsseg.models.unet import UNet


@pytest.mark.parametrize("size", [(16, 16), (37, 53), (64, 65), (17, 31)])
def test_output_has_input_size(size):
    model = UNet(num_classes=5, base_channels=4)
    assert model(torch.rand(2, 3, *size)).shape == (2, 5, *size)


def test_channels_double_per_stage_as_in_the_paper():
    model = UNet(num_classes=2)
    assert [stage[0].out_channels for stage in [model.stem, *model.down]] == [64, 128, 256, 512, 1024]
    assert [up.conv[0].out_channels for up in model.up] == [512, 256, 128, 64]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_depth_sets_the_number_of_stages(depth):
    model = UNet(num_classes=3, base_channels=2, depth=depth)
    assert len(model.down) == len(model.up) == depth
    assert model(torch.rand(2, 3, 35, 70)).shape == (2, 3, 35, 70)


def test_gradients_reach_the_first_layer():
    model = UNet(num_classes=3, base_channels=4)
    model(torch.rand(2, 3, 24, 24)).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
