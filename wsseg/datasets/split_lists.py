"""The list files in which a dataset ships its official parts, one image a line.

Each dataset writes its lines its own way: a bare stem (PASCAL VOC's `ImageSets/Segmentation`,
Stanford Background's `splits/train.txt` as MMSegmentation's tutorial writes them), a file name,
or a path relative to the dataset root (LabelMeFacade's `images/<stem>.jpg`). A line naming no
image is a problem that names the list file and the line, so that a stale list is fixed where it
is wrong instead of surfacing as a missing tile deep inside a split.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from wsseg.datasets.base import OFFICIAL_PARTS, DataOptionError, DataProblem, DatasetError


@dataclass(frozen=True)
class ListLine:
    """One entry of a list file, with where it stands."""

    path: Path
    line: int
    entry: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_list_file(path: str | Path) -> list[ListLine]:
    """The non-blank lines of a list file, each reduced to its first field (VOC's per-class
    lists follow the id with a flag)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the list file ({type(error).__name__}: {error})") from error
    return [ListLine(path, number, line.split()[0]) for number, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def check_split_files(split_files, key: str = "data.options.split_files") -> dict[str, str]:
    """`split_files` as {part: list path}, or an error naming `key` and what it takes."""
    example = "{train: splits/train.txt, val: splits/val.txt}"
    if not isinstance(split_files, Mapping) or not split_files:
        raise DataOptionError(f"{key} must map official parts to list files, e.g. {example}; got {split_files!r}")
    unknown = [part for part in split_files if part not in OFFICIAL_PARTS]
    if unknown:
        raise DataOptionError(f"{key}: part {unknown[0]!r} is not among {', '.join(OFFICIAL_PARTS)} (e.g. {example})")
    for part, path in split_files.items():
        if not isinstance(path, (str, os.PathLike)):
            raise DataOptionError(f"{key}.{part} must be the path of a list file relative to the dataset root, "
                               f"got {path!r}")
    return {part: str(path) for part, path in split_files.items()}


def listed_parts(root: Path, split_files: Mapping[str, str], image_folder: Path, images_by_stem: Mapping[str, Path],
                 image_suffixes: Collection[str], problems: list[DataProblem],
                 key: str = "data.options.split_files") -> dict[str, str]:
    """Image stem → official part, for every image the lists of `split_files` (part → list file,
    relative to `root`) name, in the order of OFFICIAL_PARTS.

    `images_by_stem` holds the images of `image_folder`. A line naming none of them, and an image
    listed in two parts, go to `problems` (tile id: the stem the line names), as does, as a
    warning, an image listed twice in one part.
    """
    part_of: dict[str, str] = {}
    first_line: dict[str, ListLine] = {}
    for part in (p for p in OFFICIAL_PARTS if p in split_files):
        list_path = root / split_files[part]
        if not list_path.is_file():
            raise DatasetError(f"{list_path}: list file of part {part!r} not found ({key}.{part} is "
                               f"{split_files[part]!r}, relative to {root})")
        for listed in read_list_file(list_path):
            stem = _listed_stem(root, listed.entry, image_folder, images_by_stem, image_suffixes)
            if stem is None:
                problems.append(DataProblem(
                    listed.where, f"lists {listed.entry!r}, but {image_folder} holds no such image",
                    f"correct or delete line {listed.line} of {list_path.name}, or restore the image",
                    _stem_of(listed.entry, image_suffixes)))
                continue
            if stem in part_of:
                earlier = first_line[stem]
                same = part_of[stem] == part
                problems.append(DataProblem(
                    listed.where, f"lists {listed.entry!r}, already listed at {earlier.where}"
                                  + ("" if same else f" for part {part_of[stem]!r}"),
                    f"delete line {listed.line} of {list_path.name}" if same else
                    "list each image in one part only", stem, blocking=not same))
                continue
            part_of[stem], first_line[stem] = part, listed
    return part_of


def _stem_of(entry: str, image_suffixes: Collection[str]) -> str:
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    base, dot, suffix = name.rpartition(".")
    return base if dot and f".{suffix.lower()}" in image_suffixes else name


def _listed_stem(root: Path, entry: str, image_folder: Path, images_by_stem: Mapping[str, Path],
                 image_suffixes: Collection[str]) -> str | None:
    """The stem of the image of `image_folder` that a list entry names (a stem, a file name, or a
    path relative to `root`), or None where it names none."""
    entry = entry.replace("\\", "/")
    stem = _stem_of(entry, image_suffixes)
    image = images_by_stem.get(stem)
    if image is None:
        return None
    if "/" in entry:
        # A path names its folder too: the image must be that file, not a namesake elsewhere.
        listed = Path(os.path.normpath(root / entry))
        if listed.parent != Path(os.path.normpath(image_folder)):
            return None
        return stem if listed.name == image.name or listed.name == stem else None
    # A file name must be the file (x.png listed while x.jpg is there is a stale list).
    return stem if entry in (stem, image.name) else None
