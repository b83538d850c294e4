"""`wsseg weights fetch`: ImageNet weights downloaded once (from a server on 127.0.0.1 standing in
for the publishers: $WSSEG_WEIGHTS_URL), checked, kept where configs find them; a broken download
leaves nothing behind; a config whose weights are missing says which fetch line to run before
anything trains."""

import hashlib
import io
from pathlib import Path

import pytest
import torch

from wsseg.cli import main
from wsseg.core.hub import DownloadError
from wsseg.core.typed import ConfigError
from wsseg.models.resnet38 import ResNet38
from wsseg.pipeline import weights
from wsseg.pipeline.config_checks import check_config, check_weight_files, encoder_weights_file, single_stage_weights
from wsseg.pipeline.config_files import config_from_dict
from test_release import Routes, server  # noqa: F401 (the local server fixture)
from test_run_training import tiny_config

RESNET38_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"


@pytest.fixture(autouse=True)
def private_caches_and_mirror(tmp_path, monkeypatch, server):  # noqa: F811
    """Every download from the local server, into this test's own caches, straight to 127.0.0.1."""
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("WSSEG_WEIGHTS_URL", f"{server.url}/mirror")
    for name in ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE", "http_proxy", "https_proxy", "all_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def resnet38_layout(drop: str | None = None) -> bytes:
    """A file with every key and shape of the authors' ResNet-38 (the real one is 402 MB): zero
    tensors expanded to their shapes, which torch.save keeps as one number each."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ResNet38().state_dict().items() if not k.endswith("num_batches_tracked")}
    return saved({k: torch.zeros(()).expand(shape) for k, shape in shapes.items() if k != drop})


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_resnet38_downloads_once_checks_its_layout_and_lands_where_configs_look(server, tmp_path, capsys):  # noqa: F811
    server.routes[f"/mirror/{RESNET38_FILE}"] = (resnet38_layout(), "ok")
    assert main(["weights", "fetch", "resnet38"]) == 0
    target = tmp_path / "cache" / RESNET38_FILE
    assert capsys.readouterr().out.strip() == f"resnet38: downloaded to {target}"
    assert files_in(tmp_path / "cache") == [target]  # the download folder is gone, the file kept by name
    server.stop()
    assert main(["weights", "fetch", "resnet38"]) == 0  # offline now: it is there, and still checked
    assert capsys.readouterr().out.strip() == f"resnet38: already there: {target}"
    # A config naming the file where it is not finds it in the cache.
    cfg = config_from_dict({"weak": {"single_stage": {"pretrained": f"resnet_weights/{RESNET38_FILE}"}}})
    check_weight_files(cfg)
    assert single_stage_weights(cfg) == target


def test_torchvision_weights_are_checked_against_the_hash_in_their_name(server, tmp_path, monkeypatch, capsys):  # noqa: F811
    body = b"VGG weights, as torchvision names them"
    name = f"tinyvgg-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    monkeypatch.setitem(weights.WEIGHTS, "tinyvgg", weights.WeightsFile(name, "https://example.org/" + name,
                                                                         "tests", weights.check_hash_prefix))
    server.routes[f"/mirror/{name}"] = (body, "ok")
    path, downloaded = weights.fetch_weights("tinyvgg")
    assert downloaded and path == tmp_path / "cache" / name and path.read_bytes() == body
    assert encoder_weights_file(f"resnet_weights/{name}") == path
    # The real names: a file served under vgg16's name whose sha256 does not start as the name says.
    server.routes["/mirror/vgg16-397923af.pth"] = (body, "ok")
    assert main(["weights", "fetch", "vgg16"]) == 2
    err = capsys.readouterr().err
    assert f"{server.url}/mirror/vgg16-397923af.pth: not the vgg16 weights (ValueError: sha256 " in err
    assert "does not start with 397923af" in err and "the download was deleted" in err
    assert not (tmp_path / "cache" / "vgg16-397923af.pth").exists()


@pytest.mark.parametrize("how", ["truncated", "tampered", "missing"])
def test_a_broken_download_is_one_clear_error_and_leaves_nothing(server, tmp_path, capsys, how):  # noqa: F811
    route = f"/mirror/{RESNET38_FILE}"
    if how == "truncated":  # the connection closes halfway through the announced length
        server.routes[route] = (resnet38_layout(), "truncated")
        message = "the transfer broke off"
    elif how == "tampered":  # a whole file, but not the network's: a tensor missing
        server.routes[route] = (resnet38_layout(drop="b7.conv_branch2b1.weight"), "ok")
        message = "not the resnet38 weights (CheckpointMismatchError: ResNet-38 checkpoint does not fit"
    else:
        message = "HTTP 404"
    assert main(["weights", "fetch", "resnet38"]) == 2
    # The last line: pooch logs the download it starts above it.
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and message in error
    assert files_in(tmp_path / "cache") == []


def test_a_timm_encoder_fetches_through_timm_and_then_loads_offline(server, tmp_path, capsys):  # noqa: F811
    import timm

    from wsseg.models import build_segmenter

    torch.manual_seed(3)
    served = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    server.routes["/mirror/timm/test_efficientnet.r160_in1k.pth"] = (saved(served), "ok")
    cfg = config_from_dict({"model": {"name": "timm_unet", "options": {"encoder": "test_efficientnet"}}})
    with pytest.raises(ConfigError, match=r"model.options.pretrained: the ImageNet weights of timm model "
                                          r"'test_efficientnet' are not downloaded .*; run `wsseg weights fetch "
                                          r"timm:test_efficientnet` first"):
        check_weight_files(cfg)
    assert main(["weights", "fetch", "timm:test_efficientnet"]) == 0
    target = tmp_path / "cache" / "timm" / "test_efficientnet.r160_in1k.pth"
    # The last line: torch.hub, which timm downloads with, says where it downloads to above it.
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"timm:test_efficientnet: downloaded to {target}"
    server.stop()
    check_weight_files(cfg)
    model = build_segmenter("timm_unet", 3, encoder="test_efficientnet", pretrained=True)
    body = model.encoder.body.state_dict()
    assert body and all(torch.equal(body[k], served[k]) for k in body)
    with pytest.raises(DownloadError, match=r"timm:test_byobnet: cannot fetch its ImageNet weights through timm "
                                            r"\(URLError: "):
        weights.fetch_weights("timm:test_byobnet")  # the server is gone
    with pytest.raises(ValueError, match="no pretrained weights for 'test_vit4'"):
        weights.fetch_weights("timm:test_vit4")


def test_a_run_whose_weights_are_missing_says_what_to_fetch_before_anything_trains(tmp_path, capsys):
    config = tiny_config(tmp_path, tmp_path / "data",
                         weak={"single_stage": {"backbone": "resnet38", "pretrained": f"resnet_weights/{RESNET38_FILE}"}})
    run = tmp_path / "run"
    assert main(["train", "--task", "ii", "--config", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"weak.single_stage.pretrained 'resnet_weights/{RESNET38_FILE}': no such file" in err
    assert f"run `wsseg weights fetch resnet38` to download it into {tmp_path / 'cache'}" in err
    assert not (run / "split.json").exists() and not (run / "task_i").exists()
    # Task i alone needs no single-stage weights; a VGG encoder's say which line brings them.
    cfg = config_from_dict({"model": {"name": "fcn8s", "encoder_weights": "resnet_weights/vgg16-397923af.pth"},
                            "weak": {"single_stage": {"pretrained": "nowhere.pth"}}})
    with pytest.raises(ConfigError, match=r"model.encoder_weights .* run `wsseg weights fetch vgg16`"):
        check_weight_files(cfg, weak=False)
    # A backbone that is no model is a config error too, before task i: the weak stage starts hours later.
    with pytest.raises(ConfigError, match=r"weak.single_stage.backbone 'resnet5' is none of .*timm:<a timm model"):
        check_config(config_from_dict({"weak": {"single_stage": {"backbone": "resnet5"}}}))
    with pytest.raises(ConfigError, match=r"weak.single_stage.backbone: timm .* has no model 'resnet5'"):
        check_config(config_from_dict({"weak": {"single_stage": {"backbone": "timm:resnet5"}}}))


def test_the_weights_are_listed_with_their_files_and_sources(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name, spec in weights.WEIGHTS.items():
        assert f"{name} " in out and spec.file in out
    assert "/mirror/vgg16-397923af.pth" in out  # the mirror in place of download.pytorch.org
    assert main(["weights", "fetch", "vgg17"]) == 2
    assert "no weights called 'vgg17'; wsseg fetches resnet38, vgg16" in capsys.readouterr().err
