import numpy as np
import pytest

from wsseg.cli import main
from wsseg.datasets.base import DatasetError
from wsseg.datasets.isprs import ALL_AREAS, vaihingen_source
from wsseg.datasets.synthetic_aerial import CAR, boundary_mask, generate_synthetic_vaihingen

TILE_PX = (256, 256)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_vaihingen(root, num_tiles=33, tile_px=TILE_PX, seed=0)
    return vaihingen_source(root)


@pytest.fixture(scope="module")
def pixels(dataset):
    images = np.concatenate([dataset.image(t.tile_id).reshape(-1, 3) for t in dataset.tiles]).astype(np.float32)
    labels = np.concatenate([dataset.label(t.tile_id).ravel() for t in dataset.tiles])
    return images, labels


def test_layout_is_read_by_vaihingen_source(dataset):
    assert [t.tile_id for t in dataset.tiles] == [f"area{n}" for n in ALL_AREAS]
    assert dataset.has_eroded
    tile = dataset.tiles[0]
    assert tile.image_path.name == "top_mosaic_09cm_area1.tif"
    assert tile.eroded_label_path.name == "top_mosaic_09cm_area1_noBoundary.tif"
    assert dataset.image("area5").shape == TILE_PX + (3,)


def test_eroded_ground_truth_blacks_out_only_boundaries(dataset):
    full, eroded = dataset.label("area3"), dataset.label("area3", eroded=True)
    ignored = eroded == 255
    np.testing.assert_array_equal(eroded[~ignored], full[~ignored])
    np.testing.assert_array_equal(ignored, boundary_mask(full, 1))
    assert 0.01 < ignored.mean() < 0.2
    # Every class change is at least partly blacked out on both sides (a band ~2 px wide).
    change = np.nonzero(full[:, 1:] != full[:, :-1])
    assert ignored[:, 1:][change].all() and ignored[:, :-1][change].all()


def test_every_class_present_and_cars_rare(pixels):
    _, labels = pixels
    fractions = np.bincount(labels, minlength=6)[:6] / labels.size
    assert (fractions > 0.001).all(), fractions
    assert fractions[CAR] < 0.03
    assert fractions.max() < 0.6  # no class swamps the rest


def test_false_colour_vegetation_is_bright_in_infrared(pixels):
    images, labels = pixels
    vegetation = images[(labels == 2) | (labels == 3)]
    assert vegetation[:, 0].mean() > vegetation[:, 1].mean() + 40


def test_not_separable_by_colour(pixels):
    """A nearest-class-mean-colour classifier, fitted on the labels themselves, stays far below a CNN."""
    images, labels = pixels
    means = np.stack([images[labels == k].mean(axis=0) for k in range(6)])
    predicted = ((images[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    confusion = np.bincount(labels * 6 + predicted, minlength=36).reshape(6, 6)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    assert iou[:5].mean() < 0.6, iou
    # Grey and dark roofs share colours with asphalt and cars: most building pixels are misread.
    assert confusion[1, 1] < 0.6 * confusion[1].sum()
    # Lawn and tree crowns share colours: their class means are close.
    assert np.linalg.norm(means[2] - means[3]) < 25


def test_deterministic_and_seed_dependent(tmp_path):
    a = generate_synthetic_vaihingen(tmp_path / "a", num_tiles=3, tile_px=(96, 128), seed=1)
    b = generate_synthetic_vaihingen(tmp_path / "b", num_tiles=3, tile_px=(96, 128), seed=1)
    c = generate_synthetic_vaihingen(tmp_path / "c", num_tiles=3, tile_px=(96, 128), seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    assert len(files) == 9
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    image = "top/top_mosaic_09cm_area1.tif"
    assert (a / image).read_bytes() != (c / image).read_bytes()
    assert vaihingen_source(a).image("area3").shape == (96, 128, 3)


def test_regeneration_removes_stale_tiles_and_cli(tmp_path):
    assert main(["synth", str(tmp_path), "--tiles", "4", "--size", "80", "72", "--seed", "3"]) == 0
    assert [t.tile_id for t in vaihingen_source(tmp_path).tiles] == ["area1", "area2", "area3", "area4"]
    generate_synthetic_vaihingen(tmp_path, num_tiles=2, tile_px=(80, 72))
    assert len(vaihingen_source(tmp_path).tiles) == 2
    with pytest.raises(DatasetError, match="too small"):
        generate_synthetic_vaihingen(tmp_path, num_tiles=1, tile_px=(32, 32))
