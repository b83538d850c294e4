import numpy as np
import pytest
from PIL import Image

from wsseg.datasets.base import DatasetError
from wsseg.datasets.colour import encode_colour_mask
from wsseg.datasets.dubai import DUBAI_CLASSES, dubai_source


def _fake_dubai(root, palette_mode_tile=2):
    """Two tiles in the distributed layout; one tile's masks stored as palette PNGs like Tiles 2 and 4."""
    rng = np.random.default_rng(0)
    base = root / "Semantic segmentation dataset"
    labels = {}
    for k in (1, palette_mode_tile):
        for n in (1, 2, 10):
            (base / f"Tile {k}" / "images").mkdir(parents=True, exist_ok=True)
            (base / f"Tile {k}" / "masks").mkdir(parents=True, exist_ok=True)
            label = rng.integers(0, 6, (20, 26)).astype(np.uint8)
            label[0, :3] = 255
            labels[f"tile{k}_part{n:03d}"] = label
            Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(
                base / f"Tile {k}" / "images" / f"image_part_{n:03d}.jpg")
            rgb = Image.fromarray(encode_colour_mask(label, DUBAI_CLASSES.palette))
            if k == palette_mode_tile:
                rgb = rgb.quantize(palette=_palette_image(), dither=Image.Dither.NONE)
                assert rgb.mode == "P"
            rgb.save(base / f"Tile {k}" / "masks" / f"image_part_{n:03d}.png")
    return labels


def _palette_image():
    colours = [(0, 0, 0)] + list(DUBAI_CLASSES.palette)
    image = Image.new("P", (1, 1))
    image.putpalette([v for c in colours for v in c] + [0] * (768 - 3 * len(colours)))
    return image


def test_fake_layout_ids_and_palette_masks(tmp_path):
    labels = _fake_dubai(tmp_path)
    for root in (tmp_path, tmp_path / "Semantic segmentation dataset"):
        source = dubai_source(root)
        assert [t.tile_id for t in source.tiles] == list(labels)
    for tile_id, label in labels.items():
        np.testing.assert_array_equal(source.label(tile_id), label)


def test_unknown_colour_and_missing_mask(tmp_path):
    _fake_dubai(tmp_path)
    mask = tmp_path / "Semantic segmentation dataset" / "Tile 1" / "masks" / "image_part_002.png"
    rgb = np.asarray(Image.open(mask).convert("RGB")).copy()
    rgb[3, 4] = (0x50, 0xE3, 0xC2)  # the "Water" colour of classes.json, never used in the masks
    Image.fromarray(rgb).save(mask)
    with pytest.raises(DatasetError, match=r"image_part_002.png: unknown colour \(80, 227, 194\) at pixel \(x=4, y=3\)"):
        dubai_source(tmp_path).label("tile1_part002")
    mask.unlink()
    with pytest.raises(DatasetError, match="image_part_002.jpg: no mask"):
        dubai_source(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        dubai_source(tmp_path / "missing")


def test_real_dubai_dataset(shared_data):
    source = dubai_source(shared_data / "dubai_aerial")
    ids = [t.tile_id for t in source.tiles]
    assert len(ids) == 72 and ids[0] == "tile1_part001" and ids[-1] == "tile8_part009"
    assert source.classes.names == ("building", "land", "road", "vegetation", "water", "unlabeled")
    # Palette-mode masks (Tiles 2 and 4) and RGB ones; the exact README colours decode every pixel.
    total = np.zeros(256, dtype=np.int64)
    for tile_id in ("tile2_part001", "tile4_part003", "tile1_part001", "tile6_part001"):
        label = source.label(tile_id)
        image = source.image(tile_id)
        assert label.shape == image.shape[:2] and label.dtype == np.uint8
        total += np.bincount(label.ravel(), minlength=256)
    assert total[6:255].sum() == 0
    assert (total[:6] > 0).sum() >= 5
    assert total[255] / total.sum() < 0.05  # black = ignore is rare
