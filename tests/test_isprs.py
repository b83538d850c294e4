import numpy as np
import pytest
import tifffile
from PIL import Image

from wsseg.datasets.base import DatasetError
from wsseg.datasets.colour import encode_colour_mask
from wsseg.datasets.isprs import VAIHINGEN_CLASSES, isprs_mmseg_source, vaihingen_source

PALETTE = VAIHINGEN_CLASSES.palette


def _write_tile(root, area, label, eroded=True, image=None):
    h, w = label.shape
    rng = np.random.default_rng(area)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if image is None else image
    for folder in ("top", "gts_for_participants", "gts_eroded_for_participants"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "top" / f"top_mosaic_09cm_area{area}.tif", image, photometric="rgb")
    tifffile.imwrite(root / "gts_for_participants" / f"top_mosaic_09cm_area{area}.tif",
                     encode_colour_mask(label, PALETTE), photometric="rgb")
    if eroded:
        boundary = label.copy()
        boundary[:, w // 2] = 255
        tifffile.imwrite(root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{area}_noBoundary.tif",
                         encode_colour_mask(boundary, PALETTE), photometric="rgb")


def _label(area, shape=(24, 30)):
    return np.random.default_rng(100 + area).integers(0, 6, shape).astype(np.uint8)


@pytest.fixture
def vaihingen(tmp_path):
    for area in (10, 2, 1):
        _write_tile(tmp_path, area, _label(area))
    return tmp_path


def test_vaihingen_layout_ids_labels_and_eroded(vaihingen):
    source = vaihingen_source(vaihingen)
    assert [t.tile_id for t in source.tiles] == ["area1", "area2", "area10"]  # numeric order
    assert source.has_eroded and source.classes.num_classes == 6
    assert source.classes.in_mean == ("impervious_surfaces", "building", "low_vegetation", "tree", "car")
    np.testing.assert_array_equal(source.label("area2"), _label(2))
    eroded = source.label("area2", eroded=True)
    assert (eroded[:, 15] == 255).all()
    np.testing.assert_array_equal(np.delete(eroded, 15, axis=1), np.delete(_label(2), 15, axis=1))
    image = source.image("area10")
    assert image.shape == (24, 30, 3) and image.dtype == np.uint8


def test_missing_root_and_missing_ground_truth(tmp_path, vaihingen):
    with pytest.raises(DatasetError, match="root folder not found"):
        vaihingen_source(tmp_path / "nowhere")
    (vaihingen / "gts_for_participants" / "top_mosaic_09cm_area2.tif").unlink()
    with pytest.raises(DatasetError, match=r"top_mosaic_09cm_area2.tif: no ground truth"):
        vaihingen_source(vaihingen)
    source = vaihingen_source(vaihingen, require_labels=False, eroded_dir=None)
    assert source.tile("area2").label_path is None
    with pytest.raises(DatasetError, match="no ground truth"):
        source.label("area2")


def test_partial_eroded_folder_is_an_error(vaihingen):
    (vaihingen / "gts_eroded_for_participants" / "top_mosaic_09cm_area10_noBoundary.tif").unlink()
    with pytest.raises(DatasetError, match="area10_noBoundary.tif"):
        vaihingen_source(vaihingen)
    assert not vaihingen_source(vaihingen, eroded_dir=None).has_eroded


def test_mask_size_mismatch(tmp_path):
    _write_tile(tmp_path, 1, _label(1), eroded=False,
                image=np.zeros((24, 31, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"mask is 24×30 .* is 24×31"):
        vaihingen_source(tmp_path)


def test_unknown_colour_in_full_ground_truth(tmp_path):
    _write_tile(tmp_path, 3, _label(3), eroded=False)
    rgb = encode_colour_mask(_label(3), PALETTE)
    rgb[4, 7] = (0, 0, 0)  # black only means "ignore" in the eroded files
    tifffile.imwrite(tmp_path / "gts_for_participants" / "top_mosaic_09cm_area3.tif", rgb, photometric="rgb")
    source = vaihingen_source(tmp_path)
    with pytest.raises(DatasetError, match=r"area3.tif: unknown colour \(0, 0, 0\) at pixel \(x=7, y=4\)"):
        source.label("area3")


def test_truncated_tiff(vaihingen):
    path = vaihingen / "top" / "top_mosaic_09cm_area2.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = vaihingen_source(vaihingen)  # header is intact
    with pytest.raises(DatasetError, match="top_mosaic_09cm_area2.tif"):
        source.image("area2")


def test_mmseg_layout_written_like_the_converter(tmp_path):
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 1]], dtype=np.uint8)
    for sub in ("train", "val"):
        (tmp_path / "img_dir" / sub).mkdir(parents=True)
        (tmp_path / "ann_dir" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "img_dir" / "train" / "area1_0_0_4_2.png")
    Image.fromarray(stored).save(tmp_path / "ann_dir" / "train" / "area1_0_0_4_2.png")
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "img_dir" / "val" / "area2_0_0_4_2.png")
    Image.fromarray(stored + 1).save(tmp_path / "ann_dir" / "val" / "area2_0_0_4_2.png")
    source = isprs_mmseg_source(tmp_path)
    assert [t.tile_id for t in source.tiles] == ["area1_0_0_4_2", "area2_0_0_4_2"]
    assert source.label("area1_0_0_4_2").tolist() == [[255, 0, 1, 2], [3, 4, 5, 0]]
    with pytest.raises(DatasetError, match=r"value 7 at pixel \(x=2, y=1\)"):
        source.label("area2_0_0_4_2")
    assert [t.tile_id for t in isprs_mmseg_source(tmp_path, split="train").tiles] == ["area1_0_0_4_2"]


def test_real_vaihingen_mmseg_crop(shared_data):
    source = isprs_mmseg_source(shared_data / "isprs" / "vaihingen_mmseg")
    assert [t.tile_id for t in source.tiles] == ["area1_0_0_512_512"]
    label = source.label("area1_0_0_512_512")
    stored = np.asarray(Image.open(source.tiles[0].label_path))
    assert label.shape == (512, 512)
    np.testing.assert_array_equal(label == 255, stored == 0)
    np.testing.assert_array_equal(label[stored > 0], stored[stored > 0] - 1)
    counts = np.bincount(label.ravel(), minlength=256)
    # The crop is mostly road and one large building; car (4) is present, clutter (5) is not.
    assert counts[0] > counts[1] > counts[2] > 0 and counts[4] > 0 and counts[5] == 0
    image = source.image("area1_0_0_512_512")
    # False colour: vegetation is bright in the first (near-infrared) channel.
    vegetation = (label == 2) | (label == 3)
    assert image[vegetation, 0].mean() > image[vegetation, 1].mean() + 20


def test_tiles_know_their_official_part(vaihingen, tmp_path):
    assert [(t.tile_id, t.part) for t in vaihingen_source(vaihingen).tiles] == [
        ("area1", "train"), ("area2", "test"), ("area10", "test")]
    mmseg = tmp_path / "mmseg"
    for sub in ("train", "val"):
        (mmseg / "img_dir" / sub).mkdir(parents=True)
        (mmseg / "ann_dir" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(mmseg / "img_dir" / sub / f"{sub}_crop.png")
        Image.fromarray(np.ones((2, 4), np.uint8)).save(mmseg / "ann_dir" / sub / f"{sub}_crop.png")
    assert [(t.tile_id, t.part) for t in isprs_mmseg_source(mmseg).tiles] == [("train_crop", "train"),
                                                                            ("val_crop", "val")]
    assert [t.part for t in isprs_mmseg_source(mmseg, split="val").tiles] == ["val"]
