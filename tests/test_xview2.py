"""xView2: label files written here in the challenge's layout, polygons rasterised, the challenge
score; the same rasteriser against SpaceNet's shipped mask of its GeoJSON."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsseg.cli import main
from wsseg.core.metrics import xview2_score
from wsseg.datasets import build_source
from wsseg.datasets.base import IGNORE_INDEX, DatasetError

REPO = Path(__file__).resolve().parents[1]


def box(x0, y0, x1, y1):
    return f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"


def write_scene(root: Path, part: str, scene: str, buildings, size=64, with_labels=True):
    """Pre- and post-disaster images and label files; `buildings` = [(wkt, subtype)]."""
    (root / part / "images").mkdir(parents=True, exist_ok=True)
    (root / part / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(scene))
    for when in ("pre", "post"):
        stem = f"{scene}_{when}_disaster"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / part / "images" / f"{stem}.png")
        if not with_labels:
            continue
        xy = [{"properties": {"feature_type": "building", "uid": str(i),
                              **({"subtype": subtype} if when == "post" else {})}, "wkt": polygon}
              for i, (polygon, subtype) in enumerate(buildings)]
        record = {"features": {"lng_lat": [], "xy": xy},
                  "metadata": {"width": size, "height": size, "disaster": scene.rsplit("_", 1)[0]}}
        (root / part / "labels" / f"{stem}.json").write_text(json.dumps(record))


@pytest.fixture
def xview2_root(tmp_path):
    root = tmp_path / "xview2"
    write_scene(root, "train", "hurricane-harvey_00000001",
                [(box(4, 4, 20, 20), "no-damage"), (box(30, 4, 40, 14), "destroyed"),
                 (box(4, 40, 14, 50), "un-classified")])
    write_scene(root, "train", "hurricane-harvey_00000002", [(box(10, 10, 30, 30), "minor-damage")])
    write_scene(root, "hold", "palu-tsunami_00000003", [(box(0, 0, 16, 16), "major-damage")])
    write_scene(root, "test", "palu-tsunami_00000009", [], with_labels=False)
    return root


def test_damage_masks_rasterise_each_grade_and_ignore_unclassified(xview2_root):
    source = build_source("xview2", xview2_root)
    assert [(t.tile_id, t.part) for t in source.tiles] == [
        ("train_hurricane-harvey_00000001", "train"), ("train_hurricane-harvey_00000002", "train"),
        ("hold_palu-tsunami_00000003", "val"), ("test_palu-tsunami_00000009", "test")]
    assert source.tile("train_hurricane-harvey_00000001").image_path.name.endswith("_post_disaster.png")
    mask = source.label("train_hurricane-harvey_00000001")
    assert mask.shape == (64, 64)
    # Pixel centres inside the polygon: the 16×16 box from (4, 4) to (20, 20) covers rows and columns 4..19.
    assert (mask[4:20, 4:20] == 1).all() and mask[3, 4] == 0 and mask[20, 4] == 0
    assert (mask[4:14, 30:40] == 4).all()
    assert (mask[40:50, 4:14] == IGNORE_INDEX).all()
    assert (mask == 0).sum() == 64 * 64 - 256 - 100 - 100


def test_localisation_reads_the_pre_disaster_images_and_every_building(xview2_root):
    source = build_source("xview2", xview2_root, target="localisation", parts=["train"])
    assert source.classes.names == ("background", "building")
    assert source.tile("train_hurricane-harvey_00000001").image_path.name.endswith("_pre_disaster.png")
    mask = source.label("train_hurricane-harvey_00000001")
    assert set(np.unique(mask)) == {0, 1} and (mask == 1).sum() == 256 + 100 + 100


def test_bad_label_files_are_errors_naming_the_file(xview2_root):
    labels = xview2_root / "train" / "labels"
    (labels / "hurricane-harvey_00000002_post_disaster.json").write_text('{"features": {"xy": [{"wkt": "POLYGON ((1 2"}]}}')
    with pytest.raises(DatasetError, match=r"00000002_post_disaster.json, building 0: unreadable WKT"):
        build_source("xview2", xview2_root).label("train_hurricane-harvey_00000002")
    record = {"features": {"xy": [{"properties": {"subtype": "flooded"}, "wkt": box(0, 0, 4, 4)}]},
              "metadata": {"width": 64, "height": 64}}
    (labels / "hurricane-harvey_00000002_post_disaster.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match=r"damage subtype 'flooded' is none of no-damage"):
        build_source("xview2", xview2_root).label("train_hurricane-harvey_00000002")
    (labels / "hurricane-harvey_00000001_post_disaster.json").unlink()
    with pytest.raises(DatasetError, match=r"00000001_post_disaster.png: no label file"):
        build_source("xview2", xview2_root)
    with pytest.raises(DatasetError, match="target"):
        build_source("xview2", xview2_root, target="roads")


def test_challenge_score_from_a_known_confusion_matrix():
    # Rows: ground truth background, no, minor, major, destroyed; columns: prediction.
    cm = np.array([[90, 10, 0, 0, 0],
                   [5, 20, 0, 0, 0],
                   [0, 5, 10, 0, 0],
                   [0, 0, 0, 10, 0],
                   [0, 0, 0, 0, 10]])
    score = xview2_score(cm)
    # Localisation: TP 55 (building called any grade), FP 10, FN 5 → F1 110 / 125.
    assert score["localisation_f1"] == pytest.approx(110 / 125)
    # Grades over building pixels only: no-damage TP 20, FP 5 (minor called no), FN 5 (called background).
    assert score["grade_f1"]["no_damage"] == pytest.approx(40 / 50)
    assert score["grade_f1"]["minor_damage"] == pytest.approx(20 / 25)
    assert score["grade_f1"]["destroyed"] == 1.0
    harmonic = 4 / (1 / 0.8 + 1 / 0.8 + 1 + 1)
    assert score["damage_f1"] == pytest.approx(harmonic)
    assert score["score"] == pytest.approx(0.3 * 110 / 125 + 0.7 * harmonic)
    assert xview2_score(np.diag([5, 5, 0, 5, 5]))["damage_f1"] == 0.0  # a grade never right: harmonic mean 0


def test_the_rasteriser_reproduces_spacenets_mask_of_its_geojson(shared_data):
    import rasterio

    from wsseg.datasets.polygons import geojson_shapes, rasterise

    spacenet = shared_data / "spacenet"
    collection = json.loads((spacenet / "geotiff_labels.geojson").read_text())
    with rasterio.open(spacenet / "sample_geotiff.tif") as image:
        mask = rasterise([(g, 1) for g in geojson_shapes(collection, "geotiff_labels.geojson")], image.shape,
                         transform=image.transform)
    with rasterio.open(spacenet / "sample_fp_mask_from_geojson.tif") as shipped:
        reference = shipped.read(1) > 0
    ours = mask > 0
    iou = (ours & reference).sum() / (ours | reference).sum()
    assert iou >= 0.98, iou


def test_an_xview2_damage_run_reports_the_challenge_score(xview2_root, tmp_path):
    for n in range(4, 8):  # enough tiles for a split
        write_scene(xview2_root, "train", f"hurricane-harvey_0000000{n}", [(box(8, 8, 30, 30), "no-damage")])
    config = tmp_path / "xview2.yaml"
    config.write_text(f"""
name: xview2_tiny
data: {{kind: xview2, root: {xview2_root}}}
split: {{kind: seeded, n_labelled: 3, n_tagged: 1, n_val: 1, n_test: 2}}
model: {{name: unet, options: {{base_channels: 4, depth: 2}}}}
train: {{epochs: 1, iters_per_epoch: 2, batch_size: 2, crop_px: 32, workers: 0}}
eval: {{window_px: 64, stride_px: 32}}
""")
    out = tmp_path / "run"
    assert main(["train", "--task", "i", "--config", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "task_i" / "metrics.json").read_text())
    assert set(metrics["xview2"]) == {"score", "localisation_f1", "damage_f1", "grade_f1"}
    assert "xView2 score" in (out / "task_i" / "report.md").read_text()
