"""What every dataset loader hands to the rest of wsseg: class definitions and a list of tiles.

A *tile* is one large labelled image (a Vaihingen mosaic, a Dubai image part, a VOC photo).
Loaders only list tiles and decode files; cropping, splitting and tagging work on any of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


IGNORE_INDEX = 255
# The parts a benchmark ships as separate folders or lists; loaders normalise their names to these.
OFFICIAL_PARTS = ("train", "val", "test")


class DatasetError(ValueError):
    """Bad input data: the message names the file, the key or the value; `fix`, where the cause
    says what would mend it, is what `wsseg check-data` prints after the problem."""

    def __init__(self, *args, fix: str = ""):
        super().__init__(*args)
        self.fix = fix


class DataOptionError(DatasetError):
    """A `data.*` or `split.*` setting that no files could satisfy (an option the loader lacks,
    a palette of another length than the class names, a negative count): a bad config, not bad
    data, so `wsseg check-data` refuses it as it refuses any config (exit code 2) instead of
    listing it among the problems of the data. The message names the key. (A DatasetError, not a
    `core` ConfigError: datasets sit below core; the pipeline treats both alike.)"""


def printable(text: str | Path) -> str:
    """`text` safe to print or log anywhere: a file name that is not UTF-8 (held by Python as
    surrogate escapes) shows its raw bytes as \\xNN instead of failing the output stream."""
    text = str(text)
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a dataset: where (a file, or a config key), what, and how to fix it.

    `tile_id` is the tile it makes unusable, if any (`data.skip_bad_files` leaves that tile out);
    `blocking=False` marks a warning, which is reported but stops nothing."""

    where: str
    problem: str
    # What would mend it, naming the config key, the command or the file; "" where nothing known does.
    fix: str
    tile_id: str | None = None
    blocking: bool = True

    def line(self) -> str:
        """One line: `where: problem; fix: fix` (printable whatever the file names hold)."""
        head = f"{self.where}: " if self.where else ""
        return printable(f"{head}{self.problem}" + (f"; fix: {self.fix}" if self.fix else ""))

    def as_dict(self) -> dict:
        return {"where": printable(self.where), "problem": printable(self.problem), "fix": self.fix,
                "tile_id": None if self.tile_id is None else printable(self.tile_id), "blocking": self.blocking}


class DataProblemsError(DatasetError):
    """Several problems found at once, each a `DataProblem`, so that one pass shows them all.

    `usable` is the dataset without the tiles the problems concern, where a loader could still
    list the rest (a caller that chose to skip bad tiles goes on with it); `hint` says what the
    caller can do about all of them at once."""

    def __init__(self, problems, usable: TileSource | None = None, hint: str = ""):
        self.problems = list(problems)
        self.usable = usable
        self.hint = hint
        first = self.problems[0].line() if self.problems else "no problem"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(f"{first}{more}{f'; {hint}' if hint else ''}")


def missing_file_problem(tile_id: str, present: Path, expected: Path, what: str) -> DataProblem:
    """A file (an image) whose partner (its mask: `what`) is not where the layout puts it."""
    return DataProblem(str(present), f"no {what} {expected}",
                       f"add {expected.name} to {expected.parent}, or remove {present.name}", tile_id)


@dataclass(frozen=True)
class ClassSpec:
    """Class names, their display/decoding colours, and which classes enter the mean scores."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    # Classes averaged into mIoU / mean F1 (ISPRS leaves clutter out of the mean).
    in_mean: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if len(self.names) != len(self.palette):
            raise DatasetError(f"{len(self.names)} class names but {len(self.palette)} palette colours")
        if not self.in_mean:
            object.__setattr__(self, "in_mean", tuple(self.names))
        unknown = set(self.in_mean) - set(self.names)
        if unknown:
            raise DatasetError(f"classes_in_mean names unknown classes {sorted(unknown)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Tile:
    tile_id: str
    image_path: Path
    label_path: Path | None
    eroded_label_path: Path | None = None
    # The official part the tile ships in ("train", "val", "test"); None where the dataset has none.
    part: str | None = None


def check_unique_ids(tiles: list[Tile]) -> list[Tile]:
    """`tiles`, unless two share an id (files of two parts with one name): then an error naming both."""
    seen: dict[str, Tile] = {}
    for tile in tiles:
        if tile.tile_id in seen:
            raise DatasetError(f"{tile.image_path}: tile id {tile.tile_id!r} also used by "
                               f"{seen[tile.tile_id].image_path}")
        seen[tile.tile_id] = tile
    return tiles


@dataclass
class TileSource:
    """A dataset on disk: its classes, its tiles, and how to decode one tile's files.

    `read_image` returns uint8 H×W×3 RGB; `read_label` returns uint8 H×W class indices with
    `classes.ignore_index` for unlabelled pixels. Both raise DatasetError naming the file.
    """

    name: str
    classes: ClassSpec
    tiles: list[Tile]
    read_image: callable = field(repr=False)
    read_label: callable = field(repr=False)

    def tile(self, tile_id: str) -> Tile:
        for tile in self.tiles:
            if tile.tile_id == tile_id:
                return tile
        raise DatasetError(f"dataset {self.name!r} has no tile {tile_id!r}")

    @property
    def has_eroded(self) -> bool:
        return any(t.eroded_label_path is not None for t in self.tiles)

    def image(self, tile_id: str) -> np.ndarray:
        return self.read_image(self.tile(tile_id).image_path)

    def label(self, tile_id: str, eroded: bool = False) -> np.ndarray:
        tile = self.tile(tile_id)
        path = tile.eroded_label_path if eroded else tile.label_path
        if path is None:
            raise DatasetError(f"tile {tile_id!r} of {self.name!r} has no {'eroded ' if eroded else ''}ground truth")
        return self.read_label(path)


def with_problems(source: TileSource, problems: list[DataProblem]) -> TileSource:
    """What a loader returns: `source`, unless listing found problems; then a DataProblemsError
    naming all of them and carrying `source`, which holds only the tiles listed without one."""
    if problems:
        raise DataProblemsError(problems, usable=source)
    return source


def rescaled(source: TileSource, scale: float) -> TileSource:
    """The same tiles decoded at `scale` × their size (area-averaged images, nearest-neighbour
    labels): large imagery at the resolution a CPU experiment can afford."""
    if scale == 1.0:
        return source
    if not 0.0 < scale <= 4.0:
        raise DataOptionError(f"data.scale must be in (0, 4], got {scale}")
    import cv2

    def size_of(shape):
        return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))

    def read_image(path):
        image = source.read_image(path)
        return cv2.resize(image, size_of(image.shape), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

    def read_label(path):
        label = source.read_label(path)
        return cv2.resize(label, size_of(label.shape), interpolation=cv2.INTER_NEAREST)

    return TileSource(f"{source.name}@{scale:g}", source.classes, source.tiles, read_image, read_label)
