import os
from pathlib import Path

import pytest
import torch

from wsseg.models.resnet38 import CheckpointMismatchError, ResNet38, load_resnet38_imagenet

SHARED = Path(os.environ.get("WSSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
KEYS_FILE = SHARED / "spec" / "resnet38_keys.txt"


def checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} not found (set WSSEG_SHARED)")
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


@pytest.fixture(scope="module")
def full_model():
    return ResNet38(width=1.0)


@pytest.fixture(scope="module")
def authors_state():
    """Random tensors in the authors' key layout, as the released .pth has them."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in checkpoint_shapes().items():
        if name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


def test_state_dict_matches_authors_keys_exactly():
    with torch.device("meta"):
        model = ResNet38()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    expected = checkpoint_shapes()
    assert len(expected) == 191
    assert ours == expected


def test_width_keeps_keys_and_scales_shapes():
    with torch.device("meta"):
        full, half = ResNet38().state_dict(), ResNet38(width=0.5).state_dict()
    assert list(full) == list(half)
    assert half["b7.conv_branch2b2.weight"].shape == (2048, 1024, 1, 1)
    assert half["conv1a.weight"].shape == (32, 3, 3, 3)


def test_authors_layout_loads_strictly(full_model, authors_state):
    prefixed = {"module." + k: v for k, v in authors_state.items()}
    prefixed["module.fc8.weight"] = torch.zeros(1000, 4096, 1, 1)  # classifier: ignored
    load_resnet38_imagenet(full_model, prefixed)
    loaded = full_model.state_dict()
    for name in ("conv1a.weight", "b4_3.conv_branch2a.weight", "bn7.running_var"):
        assert torch.equal(loaded[name], authors_state[name])


def test_load_from_file(tmp_path):
    model = ResNet38(width=0.0625)
    source = ResNet38(width=0.0625)
    state = {k: v + 1 for k, v in source.state_dict().items() if "num_batches" not in k}
    torch.save(state, tmp_path / "weights.pth")
    load_resnet38_imagenet(model, tmp_path / "weights.pth")
    assert torch.equal(model.conv1a.weight, state["conv1a.weight"])


def test_mismatched_checkpoint_lists_every_bad_key(full_model, authors_state):
    bad = dict(authors_state)
    del bad["b3.conv_branch1.weight"]
    bad["b9.conv_branch2a.weight"] = torch.zeros(1)
    bad["b4_1.conv_branch2a.weight"] = torch.zeros(512, 512, 1, 1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_resnet38_imagenet(full_model, bad)
    message = str(err.value)
    assert "missing (1): b3.conv_branch1.weight" in message
    assert "unexpected (1): b9.conv_branch2a.weight" in message
    assert "b4_1.conv_branch2a.weight: checkpoint (512, 512, 1, 1) vs model (512, 512, 3, 3)" in message


def test_full_width_shapes_on_meta_device():
    with torch.device("meta"):
        model = ResNet38().eval()
        features = model(torch.empty(2, 3, 321, 321))
    assert features["conv3"].shape == (2, 256, 81, 81)  # stride 4
    assert features["conv6"].shape == (2, 4096, 41, 41)  # stride 8


def test_small_width_forward_strides():
    model = ResNet38(width=0.0625).eval()
    features = model(torch.rand(1, 3, 65, 65))
    assert features["conv3"].shape == (1, 16, 17, 17)
    assert features["conv6"].shape == (1, 256, 9, 9)
    assert (features["conv6"] >= 0).all()  # relu(bn7)


def test_frozen_parameters_get_no_gradient():
    model = ResNet38(width=0.0625).train()
    features = model(torch.rand(2, 3, 33, 33))
    (features["conv3"].sum() + features["conv6"].sum()).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("conv1a.", "b2.", "b2_1.", "b2_2.")) or ".bn" in name or name.startswith("bn7")
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name


def test_batch_norms_stay_in_eval_and_dropout_stays_active():
    model = ResNet38(width=0.0625)
    model.train()
    assert all(not bn.training for bn in model.batch_norms())
    assert model.b6.dropout_2b1.training and model.b7.dropout_2b2.training
    assert model.b6.dropout_2b1.p == 0.3 and model.b7.dropout_2b1.p == 0.5
    before = model.b3.bn_branch2a.running_mean.clone()
    x = torch.rand(2, 3, 33, 33)
    torch.manual_seed(0)
    a = model(x)["conv6"]
    b = model(x)["conv6"]
    assert torch.equal(model.b3.bn_branch2a.running_mean, before)
    assert not torch.equal(a, b)  # dropout in b6/b7
    model.eval()
    assert torch.equal(model(x)["conv6"], model(x)["conv6"])


def test_command_line_check_reports_match_and_mismatch(tmp_path, capsys):
    from wsseg.models.resnet38 import ResNet38, main

    good = tmp_path / "good.pth"
    torch.save(ResNet38().state_dict(), good)
    assert main([str(good)]) == 0
    assert "sha256" in capsys.readouterr().out
    state = ResNet38().state_dict()
    del state["b3.conv_branch1.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main([str(bad)]) == 1
    assert "b3.conv_branch1.weight" in capsys.readouterr().err
