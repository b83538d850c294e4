"""`wsseg export`: ONNX (dynamic H, W) and TorchScript give the PyTorch logits; safetensors keeps the
weights; each carries the classes and the input convention."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from wsseg.cli import main
from wsseg.datasets.isprs import VAIHINGEN_CLASSES
from wsseg.datasets.tensors import image_to_tensor
from wsseg.pipeline.release import resolve_checkpoint
from test_predict import TINY, make_checkpoint, smooth_image

EFFNET = {**TINY, "model": {"name": "effnet_lite0_unet", "options": {"pretrained": False}}}


def real_or_synthetic_image() -> np.ndarray:
    """A real aerial crop (ISPRS Potsdam) when WSSEG_SHARED is set, a synthetic one otherwise."""
    root = os.environ.get("WSSEG_SHARED")
    if root:
        path = Path(root) / "data" / "isprs" / "potsdam_mmseg" / "img_dir" / "2_10_0_0_512_512.png"
        return np.asarray(Image.open(path).convert("RGB"))[:160, :192]
    return smooth_image(160, 192, seed=5)


def export(tmp_path: Path, checkpoint: Path, fmt: str, name: str) -> Path:
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("values", [TINY, EFFNET], ids=["unet", "effnet_lite0_unet"])
def test_onnx_matches_pytorch_at_two_sizes(values, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "best.pt", values)
    path = export(tmp_path, checkpoint, "onnx", "model.onnx")
    model = resolve_checkpoint(checkpoint).model
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = image_to_tensor(real_or_synthetic_image())
    for height, width in ((160, 192), (77, 101)):  # the second proves dynamic H and W
        x = image[None, :, :height, :width].contiguous()
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (1, 6, height, width)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == list(VAIHINGEN_CLASSES.names)
    expected_mean = [127 / 255] * 3 if values is EFFNET else [0.485, 0.456, 0.406]
    np.testing.assert_allclose(json.loads(meta["mean"]), expected_mean, rtol=1e-6)
    assert len(json.loads(meta["std"])) == 3 and "inside" in meta["normalisation"]
    assert meta["model_name"] == values["model"]["name"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_pytorch(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "best.pt")
    path = export(tmp_path, checkpoint, "torchscript", "model.pt")
    extra = {"wsseg.json": ""}
    traced = torch.jit.load(str(path), _extra_files=extra)
    model = resolve_checkpoint(checkpoint).model
    x = image_to_tensor(smooth_image(53, 70))[None]
    with torch.inference_mode():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-5)
    assert json.loads(json.loads(extra["wsseg.json"])["class_names"]) == list(VAIHINGEN_CLASSES.names)


def test_safetensors_holds_the_weights_and_json_metadata(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    checkpoint = make_checkpoint(tmp_path / "best.pt")
    path = export(tmp_path, checkpoint, "safetensors", "model.safetensors")
    state = torch.load(checkpoint, weights_only=True)["model"]
    loaded = load_file(str(path))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["class_names"]) == list(VAIHINGEN_CLASSES.names)
    assert json.loads(meta["config"])["model"]["options"] == TINY["model"]["options"]


def test_export_refuses_to_overwrite(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "best.pt")
    (tmp_path / "model.onnx").write_bytes(b"keep me")
    code = main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
    assert code == 2 and "model.onnx exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "model.onnx").read_bytes() == b"keep me"


def test_the_export_check_scales_with_the_logits(tmp_path):
    # A trained model's logits reach 10–20; float32 reordering then differs by more than 1e-4 in
    # absolute terms, which must not fail the export (it did, on the demo's trained model).
    from wsseg.core.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = make_checkpoint(tmp_path / "best.pt", TINY)
    state = load_checkpoint(checkpoint)
    state["model"] = {k: v * 3.0 if v.is_floating_point() and "running" not in k else v
                      for k, v in state["model"].items()}
    save_checkpoint(checkpoint, state)
    model = resolve_checkpoint(checkpoint).model
    with torch.inference_mode():
        scale = model(torch.rand(1, 3, 64, 64)).abs().max().item()
    assert scale > 10
    export(tmp_path, checkpoint, "onnx", "model.onnx")
