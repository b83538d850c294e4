import pytest
import torch
import torchvision

from wsseg.models.encdec_unpool import EncDecUnpool, load_vgg16_imagenet


def conv_shapes(sequential_blocks):
    return [[(layer.conv.in_channels, layer.conv.out_channels) for layer in block]
            for block in sequential_blocks]


@pytest.fixture(scope="module")
def vgg16_bn():
    """A torchvision VGG16-BN with random weights and random BN statistics (no download)."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn()
    for module in vgg.features:
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return vgg.eval()


@pytest.mark.parametrize("size", [(37, 53), (32, 32), (64, 47)])
def test_output_has_input_size_for_odd_sizes(size):
    model = EncDecUnpool(num_classes=6, width=0.125, decoder_dropout=0.5)
    x = torch.rand(2, 3, *size)
    assert model(x).shape == (2, 6, *size)
    assert model.eval()(x).shape == (2, 6, *size)


def test_channel_plan_follows_vgg16_and_its_mirror():
    model = EncDecUnpool(num_classes=6)
    assert conv_shapes(model.encoder) == [
        [(3, 64), (64, 64)], [(64, 128), (128, 128)], [(128, 256), (256, 256), (256, 256)],
        [(256, 512), (512, 512), (512, 512)], [(512, 512), (512, 512), (512, 512)],
    ]
    assert conv_shapes(model.decoder) == [
        [(512, 512), (512, 512), (512, 512)], [(512, 512), (512, 512), (512, 256)],
        [(256, 256), (256, 256), (256, 128)], [(128, 128), (128, 64)], [(64, 64)],
    ]
    assert (model.classifier.in_channels, model.classifier.out_channels) == (64, 6)


def test_width_scales_every_channel_count():
    model = EncDecUnpool(num_classes=6, width=0.25)
    assert conv_shapes(model.encoder)[0] == [(3, 16), (16, 16)]
    assert conv_shapes(model.decoder)[1] == [(128, 128), (128, 128), (128, 64)]


def test_decoder_dropout_only_when_asked():
    assert isinstance(EncDecUnpool(3, width=0.125).dropout, torch.nn.Identity)
    assert EncDecUnpool(3, width=0.125, decoder_dropout=0.5).dropout.p == 0.5


def test_unpooling_puts_values_back_where_pooling_found_them():
    model = EncDecUnpool(num_classes=2, width=0.125)
    # 5×5 (odd): the last row and column are dropped by pooling and must come back as zeros.
    x = torch.tensor([[1., 9, 2, 0, 7],
                      [3, 4, 8, 1, 7],
                      [6, 0, 5, 5, 7],
                      [0, 2, 3, 9, 7],
                      [7, 7, 7, 7, 7]]).view(1, 1, 5, 5)
    pooled, indices = model.pool(x)
    assert pooled.view(2, 2).tolist() == [[9, 8], [6, 9]]
    restored = model.unpool(pooled, indices, output_size=x.shape[-2:])
    expected = torch.zeros(5, 5)
    expected[0, 1], expected[1, 2], expected[2, 0], expected[3, 3] = 9, 8, 6, 9
    assert torch.equal(restored.view(5, 5), expected)


def test_vgg16_bn_weights_reproduce_torchvision_encoder(vgg16_bn):
    model = load_vgg16_imagenet(EncDecUnpool(num_classes=6), vgg16_bn.state_dict()).eval()
    x = torch.rand(1, 3, 40, 48)
    normalised = (x - model.mean) / model.std
    with torch.no_grad():
        # Block 1 alone (torchvision features 0..5: conv, bn, relu, conv, bn, relu) ...
        torch.testing.assert_close(model.encoder[0](normalised), vgg16_bn.features[:6](normalised))
        # ... and the whole encoder with its pools, which is torchvision's `features`.
        h = normalised
        for block in model.encoder:
            h, _ = model.pool(block(h))
        torch.testing.assert_close(h, vgg16_bn.features(normalised), rtol=1e-4, atol=1e-4)


# Positions of the 13 convs in torchvision's `features`: VGG16-BN has conv, bn, relu (+ pool)
# per layer, plain VGG16 only conv, relu (+ pool).
VGG16_BN_CONV_INDICES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def test_plain_vgg16_loads_only_convs(vgg16_bn, tmp_path):
    plain = {}
    for bn_index, index in zip(VGG16_BN_CONV_INDICES, VGG16_CONV_INDICES):
        plain[f"features.{index}.weight"] = vgg16_bn.features[bn_index].weight.detach()
        plain[f"features.{index}.bias"] = vgg16_bn.features[bn_index].bias.detach()
    path = tmp_path / "vgg16.pth"  # the file form of `weights`
    torch.save(plain, path)
    model = EncDecUnpool(num_classes=6)
    load_vgg16_imagenet(model, path)
    convs = model.encoder_convs()
    torch.testing.assert_close(convs[0].conv.weight, vgg16_bn.features[0].weight)
    torch.testing.assert_close(convs[12].conv.bias, vgg16_bn.features[40].bias)
    assert torch.equal(convs[0].bn.weight, torch.ones(64))  # BN keeps its fresh init
    assert torch.equal(convs[0].bn.running_var, torch.ones(64))


def test_mismatched_shape_is_an_error_naming_the_key(vgg16_bn):
    state = dict(vgg16_bn.state_dict())
    state["features.3.weight"] = torch.zeros(64, 32, 3, 3)
    with pytest.raises(ValueError, match=r"features\.3\.weight.*encoder\.0\.1\.conv\.weight"):
        load_vgg16_imagenet(EncDecUnpool(num_classes=6), state)


def test_missing_and_unexpected_keys_are_errors_naming_them(vgg16_bn):
    state = dict(vgg16_bn.state_dict())
    del state["features.8.running_var"]
    with pytest.raises(KeyError, match=r"features\.8\.running_var"):
        load_vgg16_imagenet(EncDecUnpool(num_classes=6), state)

    state = dict(vgg16_bn.state_dict())
    state["features.8.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"features\.8\.extra"):
        load_vgg16_imagenet(EncDecUnpool(num_classes=6), state)

    state = dict(vgg16_bn.state_dict())
    state["module.features.0.weight"] = state.pop("features.0.weight")
    with pytest.raises(KeyError, match=r"module\.features\.0\.weight"):
        load_vgg16_imagenet(EncDecUnpool(num_classes=6), state)


def test_imagenet_weights_need_full_width(vgg16_bn):
    with pytest.raises(ValueError, match="width=1.0"):
        load_vgg16_imagenet(EncDecUnpool(num_classes=6, width=0.5), vgg16_bn.state_dict())


def test_bf16_autocast_channels_last_runs():
    model = EncDecUnpool(num_classes=4, width=0.125).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 33, 35).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, 4, 33, 35)
    logits.float().sum().backward()
    assert model.encoder[0][0].conv.weight.grad is not None
