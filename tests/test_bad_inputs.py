"""The bad-input corpus: broken files, configs and checkpoints, each through the command line.

Every case writes its own small files and asserts one clear line naming the file, key or value
(or the documented handling) and a non-zero exit, never a traceback, never a silent wrong result.
`wsseg check-data` prints one line per problem and exits 1; every other refusal is one
`error: ...` line and exit code 2. Cases already covered elsewhere are not repeated: training on a
missing root, a missing, mis-sized or unknown-colour Vaihingen mask, a truncated Vaihingen TIFF and
a misspelt key (tests/test_cli_errors.py), bad predict options (tests/test_predict.py), a pickle
payload and tampered release weights (tests/test_release.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from wsseg.cli import main
from wsseg.core.checkpoint import save_checkpoint
from wsseg.datasets import loader_options
from wsseg.datasets.colour import encode_colour_mask, save_index_png
from wsseg.datasets.splits import Split, save_split
from wsseg.datasets.tags import save_crop_tags
from wsseg.models import build_segmenter
from wsseg.pipeline.config import Config, DataConfig, config_to_dict
from wsseg.pipeline.config_files import config_from_dict

CLASSES = ["road", "grass", "roof"]
PALETTE = [(128, 128, 128), (0, 200, 0), (200, 0, 0)]
HEIGHT, WIDTH = 24, 32
TILES = [f"t{i}" for i in range(8)]
TINY_MODEL = {"name": "unet", "options": {"base_channels": 4, "depth": 2}}  # takes inputs of 4 px and more


def image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def label(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(CLASSES), (height, width), dtype=np.uint8)


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A folder dataset of eight RGB PNG tiles with palette-PNG index masks, all valid."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, tile_id in enumerate(TILES):
        Image.fromarray(image(seed)).save(root / "images" / f"{tile_id}.png")
        save_index_png(root / "masks" / f"{tile_id}.png", label(seed), PALETTE)
    return root


def config(tmp_path: Path, root: Path, mask_format: str = "index", **sections) -> Path:
    values = {"data": {"kind": "folder", "root": str(root),
                       "options": {"image_dir": "images", "mask_dir": "masks", "class_names": CLASSES,
                                   "palette": [list(c) for c in PALETTE], "mask_format": mask_format}},
              "split": {"n_labelled": 2, "n_tagged": 2, "n_val": 1},
              "model": TINY_MODEL,
              "train": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 2, "crop_px": 16, "workers": 0},
              "eval": {"window_px": 16, "stride_px": 16}}
    for section, settings in sections.items():
        values[section] = {**values.get(section, {}), **settings}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def problem_lines(out: str) -> list[str]:
    """`wsseg check-data`'s problem lines: all but warnings and the closing summary."""
    return [line for line in out.splitlines() if not line.startswith(("warning: ", "checked "))]


# What a fix or an error names: config keys (`split.n_val`, `data.options.image_dir`) and commands
# (`wsseg check-data`); a dotted word ending in a file suffix (`split.json`) is a file, not a key.
KEY_LIKE = re.compile(r"\b(?:data|split|model|train|eval|weak|semi|zoomout)(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = {"json", "txt", "yaml", "yml", "csv", "png", "jpg", "tif", "pt"}
COMMAND = re.compile(r"\bwsseg ([a-z][a-z-]*)")


def keys_named(text: str) -> list[str]:
    return [key for key in KEY_LIKE.findall(text) if key.rsplit(".", 1)[-1] not in FILE_SUFFIXES]


def is_config_key(key: str, kind: str = "folder") -> bool:
    """`key` is a field of the config's dataclasses, or under `data.options` an option of dataset `kind`."""
    section = Config
    names = key.split(".")
    for depth, name in enumerate(names):
        if name not in {f.name for f in dataclasses.fields(section)}:
            return False
        hint, rest = typing.get_type_hints(section)[name], names[depth + 1:]
        if dataclasses.is_dataclass(hint):
            section = hint
            continue
        if (section, name) == (DataConfig, "options") and rest:
            options = loader_options(kind)
            return options is None or rest[0] in options
        return not rest
    return True


def is_command(name: str, capsys) -> bool:
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    capsys.readouterr()
    return stop.value.code == 0


def assert_fix_names_the_config(line: str, capsys, kind: str = "folder", required: bool = True) -> None:
    """The `fix:` of a problem line names only config keys and commands that exist (`required`:
    and at least one of them), so that following it cannot lead to another error."""
    assert "; fix: " in line, line
    fix = line.split("; fix: ", 1)[1]
    keys, commands = keys_named(fix), COMMAND.findall(fix)
    assert not required or keys or commands, f"the fix names no config key and no command: {line}"
    for key in keys:
        assert is_config_key(key, kind), f"no config key {key!r} (for data.kind {kind!r}): {line}"
    for command in commands:
        assert is_command(command, capsys), f"no command wsseg {command}: {line}"


def test_the_fix_checker_knows_the_config_and_the_commands(capsys):
    assert is_config_key("weak.single_stage.crop_px") and is_config_key("data.options.split_files")
    assert is_config_key("split") and is_config_key("data.options")
    assert not is_config_key("split.n_tagd") and not is_config_key("data.options.imagedir")
    assert not is_config_key("train.epochs.max") and not is_config_key("data.options.image_dir", kind="voc")
    named = keys_named("rename it: names go into split.json; or set data.skip_bad_files: true")
    assert named == ["data.skip_bad_files"]
    assert is_command("check-data", capsys) and not is_command("check", capsys)


def assert_one_problem(code: int, out: str, *needles: str) -> str:
    lines = problem_lines(out)
    assert code == 1 and len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "; fix: " in lines[0] and "1 problem(s)" in out.splitlines()[-1]
    # A fix about a file may name no key; any key it names must exist.
    keys = keys_named(lines[0].split("; fix: ", 1)[1])
    assert all(is_config_key(key) for key in keys), (keys, lines[0])
    return lines[0]


def assert_one_error(code: int, err: str, *needles: str) -> str:
    # Progress bars may share stderr; the error itself is one line.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- broken tiles
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def replace_image(root: Path, tile_id: str, suffix: str, array: np.ndarray, **save) -> Path:
    """Tile `tile_id`'s image in another format: the PNG goes, `<tile_id><suffix>` takes its place."""
    (root / "images" / f"{tile_id}.png").unlink()
    path = root / "images" / f"{tile_id}{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path, **save)
    return path


def truncated_png(root):
    truncate(root / "images" / "t3.png")
    return "images/t3.png", "truncated"


def truncated_jpeg(root):
    truncate(replace_image(root, "t3", ".jpg", image(3), quality=95))
    return "images/t3.jpg", "truncated"


def truncated_tiff(root):
    # Half the strips are gone: tifffile only warns about it, here it is an error.
    truncate(replace_image(root, "t3", ".tif", image(3, 96, 128)[:HEIGHT, :WIDTH].copy()))
    return "images/t3.tif", "cannot read TIFF"


def zero_byte_image(root):
    (root / "images" / "t3.png").write_bytes(b"")
    return "images/t3.png", "cannot"


def zero_byte_mask(root):
    (root / "masks" / "t3.png").write_bytes(b"")
    return "masks/t3.png", "cannot read image"


def image_without_mask(root):
    (root / "masks" / "t3.png").unlink()
    return "images/t3.png", "no mask"


def mask_of_another_size(root):
    save_index_png(root / "masks" / "t3.png", label(3, HEIGHT - 4), PALETTE)
    return "masks/t3.png", f"mask is {HEIGHT - 4}×{WIDTH} (H×W)"


def palette_png_with_an_unknown_index(root):
    mask = label(3)
    mask[5, 7] = 9
    save_index_png(root / "masks" / "t3.png", mask, PALETTE)
    return "masks/t3.png", "class index 9 at pixel (x=7, y=5)"


def sixteen_bit_image(root):
    (root / "images" / "t3.png").unlink()
    Image.fromarray(image(3)[..., 0].astype(np.uint16) * 257).save(root / "images" / "t3.png")
    return "images/t3.png", "dtype uint16"


def single_band_image_among_rgb(root):
    Image.fromarray(image(3)[..., 0]).save(root / "images" / "t3.png")
    return "images/t3.png", "has 1 band(s) (grey), but 7 of the 8 images have 3"


def image_with_alpha_among_rgb(root):
    rgba = np.concatenate([image(3), np.full((HEIGHT, WIDTH, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(root / "images" / "t3.png")
    return "images/t3.png", "has 4 band(s)"


def non_utf8_file_name(root):
    # A name of raw bytes that are not UTF-8 (Latin-1 "é"), as an old archive may hold.
    name = os.fsdecode(b"caf\xe9.png")
    for folder in ("images", "masks"):
        (root / folder / "t3.png").rename(root / folder / name)
    return "caf\\xe9.png", "not valid UTF-8"


TILE_CASES = [truncated_png, truncated_jpeg, truncated_tiff, zero_byte_image, zero_byte_mask, image_without_mask,
              mask_of_another_size, palette_png_with_an_unknown_index, sixteen_bit_image,
              single_band_image_among_rgb, image_with_alpha_among_rgb, non_utf8_file_name]


@pytest.mark.parametrize("breakage", TILE_CASES, ids=lambda case: case.__name__)
def test_check_data_reports_the_broken_tile_in_one_line(breakage, dataset, tmp_path, capsys):
    needles = breakage(dataset)
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset))
    assert_one_problem(code, out, *needles)


@pytest.mark.parametrize("breakage", [truncated_jpeg, palette_png_with_an_unknown_index, non_utf8_file_name],
                         ids=lambda case: case.__name__)
def test_training_refuses_the_broken_tile_before_anything_is_written(breakage, dataset, tmp_path, capsys):
    needles = breakage(dataset)
    code, _, err = run_cli(capsys, "train", "--config", config(tmp_path, dataset), "--out", tmp_path / "run")
    line = assert_one_error(code, err, *needles)
    assert "data.skip_bad_files" in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_colour_mask_with_an_unknown_colour(dataset, tmp_path, capsys):
    for seed, tile_id in enumerate(TILES):
        mask = encode_colour_mask(label(seed), PALETTE)
        if tile_id == "t5":
            mask[2, 3] = (12, 34, 56)
        Image.fromarray(mask).save(dataset / "masks" / f"{tile_id}.png")
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset, mask_format="colour"))
    assert_one_problem(code, out, "masks/t5.png", "unknown colour (12, 34, 56) at pixel (x=3, y=2)")


def exif_rotated_jpeg(path: Path, array: np.ndarray) -> None:
    """A JPEG whose EXIF orientation 6 asks viewers to show it turned 90° clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)


def test_an_exif_rotated_jpeg_is_read_as_stored_with_a_warning(dataset, tmp_path, capsys):
    """Documented handling: pixels are read as stored (masks carry no orientation, so image and
    mask stay on one grid); check-data warns, and the data passes."""
    (dataset / "images" / "t3.png").unlink()
    exif_rotated_jpeg(dataset / "images" / "t3.jpg", image(3))
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset))
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert code == 0 and problem_lines(out) == [] and len(warnings) == 1, out
    assert "images/t3.jpg: EXIF orientation 6" in warnings[0] and "exif_transpose" in warnings[0]
    assert out.splitlines()[-1] == "checked 8 tiles of 'folder': no problems, 1 warning(s)"


def test_an_exif_rotated_jpeg_whose_mask_was_drawn_on_the_turned_view(dataset, tmp_path, capsys):
    (dataset / "images" / "t3.png").unlink()
    exif_rotated_jpeg(dataset / "images" / "t3.jpg", image(3, WIDTH, HEIGHT))  # stored 32×24, shown 24×32
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset))
    line = assert_one_problem(code, out, "masks/t3.png", "EXIF orientation 6")
    assert "PIL.ImageOps.exif_transpose" in line


def test_a_config_pointing_at_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, tmp_path / "empty"))
    assert_one_problem(code, out, "empty/images: image folder not found", "point data.root")
    code, _, err = run_cli(capsys, "train", "--config", config(tmp_path, tmp_path / "empty"), "--out",
                           tmp_path / "run")
    assert_one_error(code, err, "empty/images: image folder not found")


# ------------------------------------------------------------------- tag and split files
def test_a_missing_tag_file(dataset, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), "--tags",
                           tmp_path / "crop_tags.json")
    assert_one_problem(code, out, "crop_tags.json", "crop tag file not found")


def test_a_tag_naming_an_unknown_class(dataset, tmp_path, capsys):
    from wsseg.datasets.tags import CropTag

    tags = tmp_path / "crop_tags.json"
    save_crop_tags(tags, [CropTag("t0", 0, 0, HEIGHT, WIDTH, (0, 2))], None, ["road", "grass", "sky"])
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), "--tags", tags)
    assert_one_problem(code, out, "crop_tags.json", "classes ['sky'] that the dataset does not have")


def test_a_tag_file_for_an_image_that_is_not_there(dataset, tmp_path, capsys):
    from wsseg.datasets.tags import CropTag

    tags = tmp_path / "crop_tags.json"
    save_crop_tags(tags, [CropTag("t0", 0, 0, HEIGHT, WIDTH, (0,)), CropTag("ghost", 0, 0, HEIGHT, WIDTH, (1,))],
                   None, CLASSES)
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), "--tags", tags)
    assert_one_problem(code, out, "crop_tags.json", "tags tile 'ghost'")


def test_a_split_naming_a_tile_that_is_not_there(dataset, tmp_path, capsys):
    split = tmp_path / "split.json"
    save_split(split, Split(labelled=["t0"], tagged=["t1", "ghost"], val=["t2"], test=["t3"], seed=0))
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), "--split", split)
    assert_one_problem(code, out, "split.json", "tagged tile 'ghost' is not in the dataset")


# ------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("overrides, needles", [
    ({"dataa": {"root": "x"}}, ("dataa",)),                                         # a misspelt key
    ({"train": {"crop_px": "big"}}, ("train.crop_px", "'big'")),                     # a wrong type
    ({"train": {"crop_px": -16}}, ("train.crop_px must be at least 1, got -16",)),   # a negative crop size
    ({"eval": {"window_px": 2}}, ("eval.window_px 2 is smaller than 4 px", "unet")),  # below what the model takes
    ({"eval": {"stride_px": 32}}, ("eval.stride_px 32 is larger than eval.window_px 16",)),  # gaps between windows
    ({"train": {"max_minutes": 0}}, ("train.max_minutes must be positive", "got 0")),  # a budget of nothing
], ids=["misspelt key", "wrong type", "negative crop", "window below the model's least input", "stride > window",
        "zero time budget"])
def test_a_bad_config_is_one_error_line_naming_the_key(overrides, needles, dataset, tmp_path, capsys):
    path = config(tmp_path, dataset, **overrides)
    code, _, err = run_cli(capsys, "check-data", "--config", path)
    assert_one_error(code, err, *needles)
    # Training meets the same check before it writes anything.
    code, _, err = run_cli(capsys, "train", "--config", path, "--out", tmp_path / "run")
    assert_one_error(code, err, *needles)
    assert not (tmp_path / "run" / "config.yaml").exists()


# -------------------------------------------------- dataset options and splits, through --set
# Settings no files could satisfy: a bad config, refused as one like it by every command (exit
# code 2, check-data included), the error line naming the key.
BAD_OPTIONS = {
    "unknown option": (["data.options.imagedir=images"], ("data.options", "['imagedir']", "image_dir")),
    "palette of another length": (["data.options.palette=[[128, 128, 128], [0, 200, 0]]"],
                                  ("data.options.palette has 2 colours for the 3 classes",)),
    "palette entry that is no colour": (["data.options.palette=[[1, 2], [3, 4, 5], [6, 7, 8]]"],
                                        ("data.options.palette: [1, 2] is no [r, g, b]",)),
    "unknown mask format": (["data.options.mask_format=rgb"], ("data.options.mask_format", "'rgb'")),
    "unquoted {part}": (["data.options.image_dir={part}"], ("data.options.image_dir", "{'part': None}", "quote")),
    "in_mean naming no class": (["data.options.in_mean=[road, sky]"], ("data.options.in_mean", "['sky']")),
    "unknown kind": (["data.kind=foldr"], ("data.kind", "'foldr'")),
    "scale out of range": (["data.scale=9"], ("data.scale must be in (0, 4], got 9",)),
    "no test tile": (["split.n_test=0"], ("split.n_test is 0",)),
    "negative count": (["split.n_val=-1"], ("split.n_val must be a non-negative integer, got -1",)),
}


@pytest.mark.parametrize("overrides, needles", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_a_bad_data_option_is_a_config_error_of_every_command(overrides, needles, dataset, tmp_path, capsys):
    settings = [w for o in overrides for w in ("--set", o)]
    code, out, err = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), *settings)
    line = assert_one_error(code, err, *needles)
    assert out == "" and "fix:" not in line
    assert any(is_config_key(key) for key in keys_named(line)), line
    code, _, err = run_cli(capsys, "train", "--config", config(tmp_path, dataset), "--out", tmp_path / "run",
                           *settings)
    assert assert_one_error(code, err, *needles) == line
    assert not (tmp_path / "run" / "config.yaml").exists()


# What the data at hand cannot give: a problem of the data (check-data's exit code 1) whose fix
# fits its cause and names the keys to change.
SPLIT_PROBLEMS = {
    "official split of a dataset without parts": (["split.kind=official"], "has no official parts",
                                                   ("split.kind: seeded", "data.options.split_files")),
    "more tiles than there are": (["split.n_tagged=10"], "= 13 tiles, but there are only 8",
                                  ("ask for fewer tiles", "split.n_tagged")),
    "more test tiles than are left": (["split.n_test=9"], "split leaves 3 test tiles, but n_test is 9",
                                      ("split.n_test to at most 3",)),
}


@pytest.mark.parametrize("overrides, needle, fix_needles", SPLIT_PROBLEMS.values(), ids=SPLIT_PROBLEMS.keys())
def test_a_split_the_data_cannot_give_has_a_fix_naming_the_keys(overrides, needle, fix_needles, dataset, tmp_path,
                                                                capsys):
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset),
                           *[w for o in overrides for w in ("--set", o)])
    line = assert_one_problem(code, out, needle, *fix_needles)
    assert_fix_names_the_config(line, capsys)
    assert "ask for fewer tiles" not in line or "split asks for" in line


def test_a_root_without_the_dataset_has_a_fix_naming_the_keys(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, tmp_path / "nowhere"))
    line = assert_one_problem(code, out, "nowhere: dataset root folder not found", "point data.root")
    assert_fix_names_the_config(line, capsys)


def test_training_ends_its_error_with_the_fix(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--config", config(tmp_path, dataset), "--out", tmp_path / "run",
                           "--set", "split.kind=official")
    line = assert_one_error(code, err, "has no official parts", "; fix: set split.kind: seeded")
    assert_fix_names_the_config(line, capsys)


def test_a_parts_layout_set_on_the_command_line(dataset, tmp_path, capsys):
    """`--set data.options.image_dir={part}/images` as a newcomer types it: the text, not a YAML error."""
    for part, tiles in (("train", TILES[:6]), ("val", TILES[6:])):
        for folder in ("images", "masks"):
            (dataset / part / folder).mkdir(parents=True)
            for tile_id in tiles:
                shutil.move(dataset / folder / f"{tile_id}.png", dataset / part / folder / f"{tile_id}.png")
    settings = ["--set", "data.options.image_dir={part}/images", "--set", "data.options.mask_dir={part}/masks",
                "--set", "split.kind=official"]
    code, out, err = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), *settings)
    assert (code, out) == (0, "checked 8 tiles of 'folder': no problems\n"), err
    # The val part (2 photos) is the test part: validation comes from train's 6, which hold no 2 + 5.
    code, out, _ = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), *settings,
                           "--set", "split.n_val=5")
    line = assert_one_problem(code, out, "asks for 2 labelled + 5 val tiles, but only 6 official train tiles")
    assert_fix_names_the_config(line, capsys)


# --------------------------------------------------------------------------- checkpoints
def checkpoint(path: Path, model: dict = TINY_MODEL, weights_of: dict | None = None, classes=CLASSES) -> Path:
    """A run checkpoint of a `model` for `classes`, holding the weights of `weights_of` (default: its own)."""
    built = weights_of or model
    torch.manual_seed(0)
    weights = build_segmenter(built["name"], len(classes), **built["options"]).state_dict()
    cfg = config_from_dict({"data": {"kind": "folder", "root": "elsewhere"}, "model": model,
                            "eval": {"window_px": 16, "stride_px": 16}})
    save_checkpoint(path, {"model": weights, "config": config_to_dict(cfg), "epoch": 0,
                           "classes": {"names": list(classes), "palette": [[40 * i, 0, 0] for i in range(len(classes))],
                                       "in_mean": list(classes), "ignore_index": 255}})
    return path


def flip_a_weight_byte(path: Path) -> None:
    """Change one byte inside a tensor of a torch zip checkpoint, leaving the archive well formed."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = max((m for m in archive.infolist() if "/data/" in m.filename), key=lambda m: m.file_size)
    name_length, extra_length = (int.from_bytes(data[member.header_offset + at:member.header_offset + at + 2],
                                                "little") for at in (26, 28))
    start = member.header_offset + 30 + name_length + extra_length
    data[start + member.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def predict_on(capsys, tmp_path, checkpoint_path) -> tuple[int, str]:
    Image.fromarray(image(0)).save(tmp_path / "photo.png")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", checkpoint_path, tmp_path / "photo.png", "--out",
                           tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return code, err


def test_a_truncated_checkpoint(tmp_path, capsys):
    truncate(checkpoint(tmp_path / "best.pt"))
    assert_one_error(*predict_on(capsys, tmp_path, tmp_path / "best.pt"), "cannot load checkpoint", "best.pt")


def test_a_checkpoint_with_a_changed_byte(tmp_path, capsys):
    """torch.load would take it, one weight silently different; the zip's checksums refuse it."""
    path = checkpoint(tmp_path / "best.pt")
    Image.fromarray(image(0)).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "photo.png"), "--out", str(tmp_path / "before")]) == 0
    flip_a_weight_byte(path)
    assert torch.load(path, weights_only=True)["model"]  # the weights still unpickle: nothing else would notice
    assert_one_error(*predict_on(capsys, tmp_path, path), "best.pt", "does not match the checksum")


def test_a_checkpoint_of_another_model(tmp_path, capsys):
    path = checkpoint(tmp_path / "best.pt", weights_of={"name": "fcn8s", "options": {"width": 0.0625}})
    assert_one_error(*predict_on(capsys, tmp_path, path), "best.pt", "do not fit the model", "missing:")


def test_init_from_a_checkpoint_for_another_number_of_classes(dataset, tmp_path, capsys):
    path = checkpoint(tmp_path / "six.pt", classes=["a", "b", "c", "d", "e", "f"])
    code, _, err = run_cli(capsys, "train", "--config", config(tmp_path, dataset), "--out", tmp_path / "run",
                           "--init-from", path)
    assert_one_error(code, err, "six.pt", "a, b, c, d, e, f", "road, grass, roof", "--reset-head")
    assert not (tmp_path / "run" / "task_i").exists()


def test_a_valid_dataset_passes_with_a_summary(dataset, tmp_path, capsys):
    """The control every case above breaks: the same files, untouched, give exit code 0."""
    split, tags = tmp_path / "split.json", tmp_path / "crop_tags.json"
    save_split(split, Split(labelled=["t0"], tagged=["t1"], val=["t2"], test=["t3"], seed=0))
    from wsseg.datasets.tags import CropTag

    save_crop_tags(tags, [CropTag("t0", 0, 0, HEIGHT, WIDTH, (0, 1))], None, CLASSES)
    code, out, err = run_cli(capsys, "check-data", "--config", config(tmp_path, dataset), "--split", split,
                             "--tags", tags)
    assert (code, out) == (0, "checked 8 tiles of 'folder': no problems\n"), err
