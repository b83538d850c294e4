"""`wsseg predict`: GeoTIFFs block by block equal the whole-image sliding window, the georeference
is kept, folders, probabilities, TTA, and bad input as one line naming the file."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import Affine

from wsseg.cli import main
from wsseg.core.checkpoint import save_checkpoint
from wsseg.core.evaluate import sliding_window_logits
from wsseg.datasets.isprs import VAIHINGEN_CLASSES
from wsseg.datasets.tensors import image_to_tensor
from wsseg.models import build_segmenter
from wsseg.pipeline.config import config_to_dict
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pipeline.release import resolve_checkpoint

# A 6-class U-Net small enough for two shared cores; windows that overlap (stride < window).
TINY = {"data": {"kind": "synthetic_vaihingen"},
        "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "eval": {"window_px": 32, "stride_px": 24, "batch_size": 3}}


def make_checkpoint(path: Path, values: dict = TINY, seed: int = 0) -> Path:
    """A run checkpoint as `core.train.fit` writes it: weights and the merged config."""
    cfg = config_from_dict(values)
    torch.manual_seed(seed)
    model = build_segmenter(cfg.model.name, VAIHINGEN_CLASSES.num_classes, **cfg.model.options)
    with torch.no_grad():  # BatchNorm statistics away from the identity, so classes vary over the image
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg), "epoch": 0})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 H×W×3 in 1..255 with structure at several scales (0 is left for nodata)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (3, height // 8 + 2, width // 8 + 2)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(height, width), mode="bilinear")[0]
    noisy = up.numpy() + rng.normal(0, 20, (3, height, width))
    return np.clip(noisy, 1, 255).astype(np.uint8).transpose(1, 2, 0)


TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_200_000.0)


def write_geotiff(path: Path, image_hwc: np.ndarray, nodata=0) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=image_hwc.shape[1], height=image_hwc.shape[0], count=3,
                       dtype="uint8", crs="EPSG:32633", transform=TRANSFORM, nodata=nodata) as dst:
        dst.write(image_hwc.transpose(2, 0, 1))
    return path


def predict(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args)])
    return code, capsys.readouterr().err


def test_geotiff_blockwise_equals_whole_image_and_keeps_the_georeference(checkpoint, tmp_path, capsys):
    # 283 × 331: a multiple of neither window (32), stride (24), block (160) nor the output's 256 px
    # tiles, which the blocks straddle.
    image = smooth_image(283, 331)
    image[:20, :30] = 0  # nodata in every band
    tif = write_geotiff(tmp_path / "scene.tif", image)
    code, err = predict(capsys, "--checkpoint", checkpoint, tif, "--out", tmp_path / "out", "--block", 160,
                        "--probabilities", "--precision", "fp32")
    assert code == 0, err

    # The in-memory prediction of evaluation (`predict_tile` is the argmax of these logits).
    logits = sliding_window_logits(resolve_checkpoint(checkpoint).model, image_to_tensor(image), 6, 32, 24,
                                   batch_size=3)
    expected = logits.argmax(0).to(torch.uint8).numpy()
    expected[:20, :30] = 255
    with rasterio.open(tmp_path / "out" / "scene_mask.tif") as mask_src:
        assert (mask_src.crs.to_epsg(), mask_src.transform, mask_src.width, mask_src.height) == (32633, TRANSFORM,
                                                                                                  331, 283)
        assert mask_src.dtypes == ("uint8",) and mask_src.nodata == 255
        colormap = mask_src.colormap(1)
        assert [colormap[i][:3] for i in range(6)] == [tuple(c) for c in VAIHINGEN_CLASSES.palette]
        assert colormap[255][3] == 0
        assert json.loads(mask_src.tags()["classes"]) == list(VAIHINGEN_CLASSES.names)
        mask = mask_src.read(1)
    assert len(np.unique(expected)) > 2
    np.testing.assert_array_equal(mask, expected)
    with rasterio.open(tmp_path / "out" / "scene_probabilities.tif") as prob_src:
        assert prob_src.count == 6 and prob_src.dtypes[0] == "float32" and prob_src.transform == TRANSFORM
        probs = prob_src.read()
    assert np.isnan(probs[:, :20, :30]).all()
    want = logits.softmax(0).numpy()
    want[:, :20, :30] = np.nan
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-6)
    overlay = np.asarray(Image.open(tmp_path / "out" / "scene_overlay.png"))
    assert overlay.shape == (283, 331, 3)


def test_spacenet_geotiffs_keep_crs_transform_size_and_nodata(shared_data, tmp_path, capsys):
    # 2.5 Mpx in all: a still smaller U-Net keeps it quick on two shared cores.
    checkpoint = make_checkpoint(tmp_path / "best.pt", {**TINY, "model": {"name": "unet", "options": {
        "base_channels": 2, "depth": 1}}})
    spacenet = shared_data / "spacenet"
    inputs = [spacenet / "sample_geotiff.tif", spacenet / "road_mask_input.tif"]  # 16-bit, one band
    code, err = predict(capsys, "--checkpoint", checkpoint, *inputs, "--out", tmp_path / "out", "--window", 128,
                        "--stride", 128, "--batch-size", 8, "--block", 512)
    assert code == 0, err
    for path in inputs:
        with rasterio.open(path) as src, rasterio.open(tmp_path / "out" / f"{path.stem}_mask.tif") as out:
            assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
            mask = out.read(1)
            if src.nodata is not None:
                np.testing.assert_array_equal(mask == 255, src.read(1) == src.nodata)
            assert mask[mask != 255].max() < 6
        assert (tmp_path / "out" / f"{path.stem}_overlay.png").is_file()


def test_folder_recursive_with_glob(checkpoint, tmp_path, capsys):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(smooth_image(40, 50, 1)).save(root / "a.png")
    Image.fromarray(smooth_image(41, 37, 2)).save(root / "sub" / "deeper" / "b.png")
    Image.fromarray(smooth_image(30, 30, 3)).save(root / "sub" / "c.jpg")
    out = tmp_path / "out"
    assert predict(capsys, "--checkpoint", checkpoint, root, "--out", out, "--glob", "*.png")[0] == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_mask.png")) == ["a_mask.png",
                                                                                      "sub/deeper/b_mask.png"]
    mask = Image.open(out / "sub" / "deeper" / "b_mask.png")
    assert mask.mode == "P" and mask.size == (37, 41)
    assert predict(capsys, "--checkpoint", checkpoint, root, "--out", out, "--force")[0] == 0
    assert (out / "sub" / "c_mask.png").is_file()  # default: every image suffix


def test_probabilities_sum_to_one_and_tta_flip_is_the_manual_average(checkpoint, tmp_path, capsys):
    image = smooth_image(45, 70, 4)
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert predict(capsys, "--checkpoint", checkpoint, tmp_path / "photo.png", "--out", tmp_path / "plain",
                   "--probabilities")[0] == 0
    probs = np.load(tmp_path / "plain" / "photo_probabilities.npy")
    assert probs.shape == (6, 45, 70) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    mask = np.asarray(Image.open(tmp_path / "plain" / "photo_mask.png"))
    np.testing.assert_array_equal(mask, probs.argmax(axis=0))

    assert predict(capsys, "--checkpoint", checkpoint, tmp_path / "photo.png", "--out", tmp_path / "tta",
                   "--probabilities", "--tta", "flip", "--precision", "fp32")[0] == 0
    model = resolve_checkpoint(checkpoint).model
    x = image_to_tensor(image)
    plain = sliding_window_logits(model, x, 6, 32, 24, 3).softmax(0)
    flipped = sliding_window_logits(model, x.flip(2), 6, 32, 24, 3).softmax(0).flip(2)
    tta = np.load(tmp_path / "tta" / "photo_probabilities.npy")
    np.testing.assert_allclose(tta, ((plain + flipped) / 2).numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(tta, probs, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tta" / "photo_mask.png")), tta.argmax(0))


def test_bf16_prediction_is_fp32_to_bf16_rounding_and_auto_says_what_it_chose(checkpoint, tmp_path, capsys):
    image = smooth_image(45, 70, 5)
    Image.fromarray(image).save(tmp_path / "photo.png")
    for precision in ("fp32", "bf16"):
        assert predict(capsys, "--checkpoint", checkpoint, tmp_path / "photo.png", "--out", tmp_path / precision,
                       "--probabilities", "--precision", precision)[0] == 0
    fp32, bf16 = (np.load(tmp_path / p / "photo_probabilities.npy") for p in ("fp32", "bf16"))
    # bf16 keeps 8 bits of mantissa: probabilities move by a few 1e-3, never by a class's worth.
    assert 0 < np.abs(bf16 - fp32).max() < 0.05
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-5)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "photo.png"), "--out",
                 str(tmp_path / "auto")]) == 0
    assert "precision auto for prediction: " in capsys.readouterr().out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_one_line_naming_the_file(checkpoint, tmp_path, capsys):
    Image.fromarray(smooth_image(40, 40)).save(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    tif = write_geotiff(tmp_path / "scene.tif", smooth_image(40, 40))
    base = ["--checkpoint", checkpoint, "--out", tmp_path / "out"]
    cases = [
        ([tmp_path / "missing.png"], "missing.png: input not found"),
        ([tmp_path / "broken.png"], "broken.png: cannot read image"),
        ([tmp_path / "rgb.png", "--bands", "1,x"], "--bands must be three"),
        ([tif, "--bands", "1,2,5"], "scene.tif: has 3 band(s); --bands asks for band 5"),
        ([tmp_path / "rgb.png", "--tta", "flop"], "--tta: unknown item 'flop'"),
        ([tmp_path / "rgb.png", "--tta", "scales=0.5,zero"], "--tta: scale 'zero'"),
        ([tmp_path / "rgb.png", "--window", 2], "--window 2 px is smaller than 4 px"),
        ([tmp_path / "rgb.png", "--value-range", "9,1"], "--value-range"),
    ]
    for extra, needle in cases:
        code, err = predict(capsys, *base[:2], *extra, *base[2:])
        assert code == 2 and needle in one_error_line(err), (extra, err)
    assert not (tmp_path / "out").exists()  # every check comes before anything is written

    assert predict(capsys, *base[:2], tmp_path / "rgb.png", *base[2:])[0] == 0
    code, err = predict(capsys, *base[:2], tmp_path / "rgb.png", *base[2:])
    assert code == 2 and "rgb_mask.png exists" in one_error_line(err) and "--force" in err
    code, err = predict(capsys, "--checkpoint", tmp_path / "nope.pt", tmp_path / "rgb.png", "--out", tmp_path)
    assert code == 2 and "nope.pt" in one_error_line(err)


def test_the_masks_come_with_the_list_of_their_classes(checkpoint, tmp_path, capsys):
    Image.fromarray(smooth_image(40, 50, 1)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        assert predict(capsys, "--checkpoint", checkpoint, tmp_path / "a.png", "--out", out)[0] == 0
    finally:
        os.umask(previous)
    # Readable by a colleague as the overlay always was: the mask's atomic write no longer leaves 0o600.
    written = ("a_mask.png", "a_overlay.png", "classes.json")
    assert {name: stat.S_IMODE((out / name).stat().st_mode) for name in written} == dict.fromkeys(written, 0o644)
    listed = json.loads((out / "classes.json").read_text())
    assert [(c["index"], c["name"], tuple(c["colour"])) for c in listed["classes"]] == [
        (k, name, colour) for k, (name, colour) in enumerate(zip(VAIHINGEN_CLASSES.names, VAIHINGEN_CLASSES.palette))]
    # The list reads the mask: its palette is the colours listed, its values the indices listed.
    mask = Image.open(out / "a_mask.png")
    colours = np.array(mask.getpalette()[:3 * len(listed["classes"])]).reshape(-1, 3)
    assert [list(c) for c in colours] == [c["colour"] for c in listed["classes"]]
    assert set(np.unique(np.array(mask))) <= {c["index"] for c in listed["classes"]}
    # Another model's masks in the same folder would be mislabelled by the list: refused first.
    other = make_checkpoint(tmp_path / "other.pt", {**TINY, "data": {"kind": "dubai"}})
    Image.fromarray(smooth_image(40, 50, 2)).save(tmp_path / "b.png")
    code, err = predict(capsys, "--checkpoint", other, tmp_path / "b.png", "--out", out)
    assert code == 2 and "classes.json lists other classes" in one_error_line(err) and "--force" in err
    assert not (out / "b_mask.png").exists()
    assert predict(capsys, "--checkpoint", checkpoint, tmp_path / "b.png", "--out", out)[0] == 0  # same model: fine
