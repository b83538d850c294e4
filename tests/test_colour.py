from unittest.mock import patch

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsseg.datasets.base import DatasetError
from wsseg.datasets.colour import decode_colour_mask, default_palette, encode_colour_mask, save_index_png, voc_palette
from wsseg.datasets.image_files import ImageHeader, image_header, image_size, read_index_png, read_rgb

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))


def _random_indices(shape=(37, 53), seed=0, with_ignore=True):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(PALETTE), size=shape).astype(np.uint8)
    if with_ignore:
        indices[rng.random(shape) < 0.1] = 255
    return indices


def test_encode_decode_round_trip_with_ignore_colour():
    indices = _random_indices()
    rgb = encode_colour_mask(indices, PALETTE)
    assert rgb.shape == indices.shape + (3,) and rgb.dtype == np.uint8
    assert (rgb[indices == 255] == 0).all()  # ignore → black
    assert tuple(rgb[indices == 1][0]) == (0, 0, 255)
    decoded = decode_colour_mask(rgb, PALETTE, "mask.tif", ignore_colours=((0, 0, 0),))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, indices)


def test_unknown_colour_names_file_colour_and_pixel():
    rgb = encode_colour_mask(_random_indices(with_ignore=False), PALETTE)
    rgb[5, 9] = (12, 34, 56)
    rgb[20, 3] = (12, 34, 56)
    with pytest.raises(DatasetError) as error:
        decode_colour_mask(rgb, PALETTE, "/data/gt/area7.tif")
    message = str(error.value)
    assert "/data/gt/area7.tif" in message and "(12, 34, 56)" in message
    assert "x=9, y=5" in message  # the first pixel in row-major order
    assert "2 pixels" in message


def test_black_is_an_error_unless_declared_ignore():
    rgb = encode_colour_mask(_random_indices(), PALETTE)
    with pytest.raises(DatasetError, match=r"\(0, 0, 0\)"):
        decode_colour_mask(rgb, PALETTE, "full_gt.tif")


def test_tolerance_maps_near_colours_and_rejects_far_ones():
    indices = _random_indices(with_ignore=False)
    rgb = encode_colour_mask(indices, PALETTE).astype(np.int16)
    rgb[0, 0] = (253, 255, 254)  # near white
    rgb[1, 1] = (2, 1, 250)  # near blue
    rgb = rgb.astype(np.uint8)
    expected = indices.copy()
    expected[0, 0], expected[1, 1] = 0, 1
    np.testing.assert_array_equal(decode_colour_mask(rgb, PALETTE, "m.png", tolerance=6), expected)
    with pytest.raises(DatasetError):
        decode_colour_mask(rgb, PALETTE, "m.png")  # exact by default
    rgb[2, 2] = (128, 128, 128)
    with pytest.raises(DatasetError, match=r"\(128, 128, 128\).*x=2, y=2"):
        decode_colour_mask(rgb, PALETTE, "m.png", tolerance=6)


def test_encode_rejects_out_of_range_index():
    with pytest.raises(DatasetError, match="class index 9"):
        encode_colour_mask(np.array([[0, 9]], dtype=np.uint8), PALETTE)


def test_index_png_round_trip_is_palette_mode_and_keeps_ignore(tmp_path):
    indices = _random_indices()
    path = tmp_path / "sub" / "pseudo.png"
    save_index_png(path, indices, PALETTE)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()[: 3 * len(PALETTE)]).reshape(-1, 3)
    np.testing.assert_array_equal(palette, np.array(PALETTE))
    np.testing.assert_array_equal(read_index_png(path), indices)
    # Viewers see the colours.
    np.testing.assert_array_equal(read_rgb(path), encode_colour_mask(indices, PALETTE))


def test_read_index_png_rejects_rgb(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png"):
        read_index_png(tmp_path / "rgb.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_images_raise_naming_the_file(tmp_path, suffix):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    path = tmp_path / f"full{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array, photometric="rgb")
    else:
        Image.fromarray(array).save(path)
    if suffix != ".jpg":
        np.testing.assert_array_equal(read_rgb(path), array)
    data = path.read_bytes()
    truncated = tmp_path / f"cut{suffix}"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match=str(truncated)):
        read_rgb(truncated)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_rgb(tmp_path / "nope.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="garbage.png"):
        read_rgb(garbage)


def test_read_rgb_converts_grey_and_palette(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgb = read_rgb(tmp_path / "grey.png")
    assert rgb.shape == (3, 4, 3) and (rgb[..., 2] == grey).all()
    save_index_png(tmp_path / "p.png", np.array([[0, 1], [2, 255]], np.uint8), PALETTE)
    assert read_rgb(tmp_path / "p.png").tolist() == [[[255, 255, 255], [0, 0, 255]], [[0, 255, 255], [0, 0, 0]]]


def test_image_size_from_header(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((31, 17, 3), np.uint8), photometric="rgb")
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "b.png")
    assert image_size(tmp_path / "a.tif") == (31, 17)
    assert image_size(tmp_path / "b.png") == (5, 8)


def test_voc_palette_and_a_default_palette_without_the_ignore_black():
    palette = voc_palette(21)
    assert palette[0] == (0, 0, 0) and palette[1] == (128, 0, 0) and palette[15] == (192, 128, 128)
    assert len(set(palette)) == 21
    # Ignore is drawn black in every figure and mask file: no class of a dataset without a palette of
    # its own may be (class 0, sky say, would look unlabelled).
    for count in (1, 8, 9, 150):
        palette = default_palette(count)
        assert len(set(palette)) == count and (0, 0, 0) not in palette
    assert default_palette(3) == voc_palette(4)[1:]


def test_png_orientation_is_read_from_the_header_without_decoding(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "turned.png", exif=exif.tobytes())
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "plain.png")
    assert image_header(tmp_path / "turned.png").orientation == 6
    # No eXIf chunk before the pixels: orientation 1, found without decoding them (Pillow's
    # getexif() would decode the whole mask to look after them: 12 s to list LabelMeFacade).
    with patch("PIL.ImageFile.ImageFile.load", side_effect=AssertionError("decoded")):
        assert image_header(tmp_path / "plain.png") == ImageHeader(4, 6, 3, 1)
