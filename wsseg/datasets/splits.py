"""Which tiles have pixel labels, which only crop tags, which choose checkpoints, which are test.

A split is made from the *sorted* tile ids and a seed, so the same seed gives the same split on
any machine and any directory listing order; it is written to JSON and printed with the results.
Validation tiles come out of the training side and never overlap the test tiles. A seeded split
(`make_split`) draws from every tile; an official one (`official_split`) keeps within the
train / val / test parts the dataset ships.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wsseg.datasets.base import OFFICIAL_PARTS, DataOptionError, DatasetError, Tile
from wsseg.datasets.isprs import OFFICIAL_TEST_AREAS, OFFICIAL_TRAIN_AREAS

log = logging.getLogger(__name__)

_PARTS = ("labelled", "tagged", "val", "test")
# The fix of a split that asks for more tiles than the data holds.
FEWER_TILES = "ask for fewer tiles (split.n_labelled, split.n_tagged, split.n_val), or add tiles"


def natural_key(tile_id: str):
    """"area2" < "area10": digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", tile_id)]


def sort_tile_ids(tile_ids: Sequence[str]) -> list[str]:
    return sorted(tile_ids, key=natural_key)


@dataclass
class Split:
    labelled: list[str]
    tagged: list[str]
    val: list[str]
    test: list[str]
    seed: int
    kind: str = "random"
    # Free-form provenance, e.g. the counts asked for; saved with the split.
    info: dict = field(default_factory=dict)

    def all_tiles(self) -> list[str]:
        return [t for part in _PARTS for t in getattr(self, part)]

    def check(self, source_for_errors: str = "split") -> "Split":
        seen: dict[str, str] = {}
        for part in _PARTS:
            for tile_id in getattr(self, part):
                if tile_id in seen:
                    raise DatasetError(f"{source_for_errors}: tile {tile_id!r} is in both {seen[tile_id]!r} and {part!r}")
                seen[tile_id] = part
        if not self.labelled and not self.tagged:
            raise DatasetError(f"{source_for_errors}: no training tiles (labelled and tagged are empty)")
        return self


def _check_ids(tile_ids: Sequence[str]) -> list[str]:
    ids = [str(t) for t in tile_ids]
    duplicates = sorted({t for t in ids if ids.count(t) > 1})
    if duplicates:
        raise DatasetError(f"duplicate tile ids {duplicates}")
    return sort_tile_ids(ids)


def _check_count(name: str, value: int) -> int:
    if int(value) != value or value < 0:
        raise DataOptionError(f"split.{name} must be a non-negative integer, got {value!r}")
    return int(value)


def make_split(tile_ids: Sequence[str], n_labelled: int = 3, n_tagged: int = 21, n_val: int = 2,
               seed: int = 0, n_test: int | None = None) -> Split:
    """Sorted ids permuted by `seed`: the first n_labelled labelled, then tagged, then val; rest test.

    `n_test` caps the test tiles (None: all the rest), for datasets with many more images than needed.
    Asking for more tiles than there are is an error, where `official_split` takes all and warns:
    here the test tiles are what the other parts leave.

    With the 33 Vaihingen tiles the defaults give the seed task: 3 labelled + 21 tagged + 2 val
    (the 23 N2 tiles minus the 2 that choose checkpoints) and 7 test tiles.
    """
    ids = _check_ids(tile_ids)
    counts = {name: _check_count(name, v) for name, v in
              (("n_labelled", n_labelled), ("n_tagged", n_tagged), ("n_val", n_val))}
    needed = sum(counts.values())
    if needed > len(ids):
        raise DatasetError(f"split asks for {counts['n_labelled']} labelled + {counts['n_tagged']} tagged + "
                           f"{counts['n_val']} val = {needed} tiles, but there are only {len(ids)}",
                           fix=FEWER_TILES)
    if n_test is not None and _check_count("n_test", n_test) == 0:
        raise DataOptionError("split.n_test is 0: a split needs at least one test tile (null: all the tiles left)")
    order = np.random.default_rng(seed).permutation(len(ids))
    permuted = [ids[i] for i in order]
    a, b, c = counts["n_labelled"], counts["n_labelled"] + counts["n_tagged"], needed
    end = len(ids) if n_test is None else c + n_test
    if end > len(ids) or end == c:
        left = len(ids) - c
        raise DatasetError(f"split leaves {left} test tiles, but n_test is {n_test}",
                           fix=f"set split.n_test to at most {left} (null: all of them)" if left else FEWER_TILES)
    return Split(labelled=sort_tile_ids(permuted[:a]), tagged=sort_tile_ids(permuted[a:b]),
                 val=sort_tile_ids(permuted[b:c]), test=sort_tile_ids(permuted[c:end]), seed=int(seed),
                 kind="random", info=counts).check()


def group_by_part(tiles: Sequence[Tile]) -> dict[str | None, list[str]]:
    """Tile ids grouped by the official part their loader gave them (None: no part)."""
    groups: dict[str | None, list[str]] = {}
    for tile in tiles:
        groups.setdefault(tile.part, []).append(tile.tile_id)
    return groups


def official_split(tiles_by_part: Mapping[str | None, Sequence[str]], n_labelled: int = 3,
                   n_tagged: int | None = None, n_val: int = 2, seed: int = 0, n_test: int | None = None, *,
                   without_labels: Collection[str] = (), dataset: str = "dataset") -> Split:
    """A split inside a benchmark's official parts ("train", "val", "test"), which it never mixes.

    The official train tiles, permuted by `seed`, give the `n_labelled` labelled tiles (N1), then
    the `n_val` validation tiles where validation comes from train, then `n_tagged` tagged tiles
    (None, or more than are left: all the rest, noted in the log).

    Defaults and checkpoints are chosen on validation, never on a benchmark's test split, so:

    - with a labelled test part (ISPRS Vaihingen; CamVid; Cityscapes with real test ground
      truth), the test tiles are that part, and validation is `n_val` tiles of the official val
      part, or of train where there is none (Vaihingen);
    - without one (ADE20K, PASCAL VOC, Cityscapes as released: their test labels are not
      public), the official val part becomes the test part of the report, and validation is
      drawn from train.

    `n_test` caps the test tiles (a seeded draw; None: all of them). Tiles in `without_labels`
    (a test part shipped without ground truth) can be neither scored nor tagged, and tiles of no
    official part belong nowhere: both are left out, noted in the log and in the split's `info`,
    with each part's size and the counts asked for.
    """
    if not any(ids for part, ids in tiles_by_part.items() if part in OFFICIAL_PARTS):
        raise DatasetError(f"dataset {dataset!r} has no official parts",
                           fix="set split.kind: seeded, or give the data its parts (for a folder dataset: {part} in "
                               "data.options.image_dir, or data.options.split_files)")
    _check_ids([t for ids in tiles_by_part.values() for t in ids])
    n_labelled, n_val = _check_count("n_labelled", n_labelled), _check_count("n_val", n_val)
    if n_tagged is not None:
        n_tagged = _check_count("n_tagged", n_tagged)
    if n_test is not None and _check_count("n_test", n_test) == 0:
        raise DataOptionError("split.n_test is 0: an official split needs at least one test tile (null: all of them)")

    unlabelled, parts, left_out = set(without_labels), {}, {}
    for part, ids in tiles_by_part.items():
        if part not in OFFICIAL_PARTS:
            if ids:
                left_out["no official part"] = left_out.get("no official part", 0) + len(ids)
            continue
        parts[part] = sort_tile_ids([t for t in ids if t not in unlabelled])
        if len(parts[part]) < len(ids):
            left_out[f"{part} without labels"] = len(ids) - len(parts[part])
    sizes = {part: len(tiles_by_part[part]) for part in OFFICIAL_PARTS if tiles_by_part.get(part)}
    for reason, count in left_out.items():
        log.info("official split of %r leaves out %d tiles (%s)", dataset, count, reason)

    train, val_part, test_part = parts.get("train", []), parts.get("val", []), parts.get("test", [])
    described = ", ".join(f"{part} {size}" for part, size in sizes.items())
    if not train:
        raise DatasetError(f"dataset {dataset!r} has no labelled official train tiles (parts: {described})",
                           fix="add the train part's masks, or set split.kind: seeded")
    if not test_part:
        val_part, test_part = [], val_part
    if not test_part:
        raise DatasetError(f"dataset {dataset!r} has no labelled official val or test tiles to test on "
                           f"(parts: {described})", fix="set split.kind: seeded")
    val_from_train = n_val if not val_part else 0
    if n_labelled + val_from_train > len(train):
        asked = f"{n_labelled} labelled + {n_val} val tiles" if val_from_train else f"{n_labelled} labelled tiles"
        raise DatasetError(f"official split of {dataset!r} asks for {asked}, but only {len(train)} official train "
                           f"tiles are present", fix=FEWER_TILES)
    if val_part and n_val > len(val_part):
        raise DatasetError(f"official split of {dataset!r} asks for {n_val} val tiles, but the official val part "
                           f"has only {len(val_part)}", fix=f"set split.n_val to at most {len(val_part)}")

    # One generator, drawn in a fixed order (train, val, test), so the same seed gives the same split.
    rng = np.random.default_rng(seed)
    permuted = [train[i] for i in rng.permutation(len(train))]
    labelled, val = permuted[:n_labelled], permuted[n_labelled:n_labelled + val_from_train]
    rest = permuted[n_labelled + val_from_train:]
    # More tagged (or test) tiles than the official part holds: all of them, with a warning that
    # names both numbers. An official part is a fixed list that mmsegmentation (`ann_file`) and
    # torchgeo (`split="train"`) read whole, and configs ask "all of train" that way
    # (kitti_semantic.yaml's n_tagged 1000, above its train frames). A seeded split refuses
    # instead (`make_split`): its test tiles are those its other parts leave, so a clamp there
    # would shrink the test set.
    _warn_if_clamped(dataset, "split.n_tagged", n_tagged, len(rest),
                     f"train tiles left after {n_labelled} labelled + {val_from_train} val", "tagged")
    _warn_if_clamped(dataset, "split.n_test", n_test, len(test_part),
                     f"tiles in the official {'test' if parts.get('test') else 'val'} part it tests on "
                     f"(null: all of them, unwarned)", "tested on")
    tagged = rest if n_tagged is None else rest[:n_tagged]
    if val_part:
        val = [val_part[i] for i in rng.permutation(len(val_part))[:n_val]]
    test = [test_part[i] for i in rng.permutation(len(test_part))[:n_test]]

    info = {"n_labelled": n_labelled, "n_tagged": n_tagged, "n_val": n_val, "n_test": n_test, "parts": sizes,
            "val_from": "val" if val_part else "train", "test_from": "test" if parts.get("test") else "val"}
    if left_out:
        info["left_out"] = left_out
    split = Split(labelled=sort_tile_ids(labelled), tagged=sort_tile_ids(tagged), val=sort_tile_ids(val),
                  test=sort_tile_ids(test), seed=int(seed), kind="official", info=info)
    return split.check(f"official split of {dataset!r}")


def _warn_if_clamped(dataset: str, key: str, asked: int | None, present: int, what: str, role: str) -> None:
    if asked is not None and asked > present:
        log.warning("official split of %r: %s is %d, but there are only %d %s; all %d are %s", dataset, key, asked,
                    present, what, present, role)


_AREA = re.compile(r"^area(\d+)$")


def official_vaihingen_split(tile_ids: Sequence[str], n_labelled: int = 3, n_val: int = 2, seed: int = 0) -> Split:
    """`official_split` of bare ISPRS Vaihingen tile ids, their parts read from the area numbers:
    test = the official test tiles; labelled, val and tagged (all the rest) from the train tiles.

    Works on any subset of the 33 tiles (e.g. a synthetic set with fewer tiles), as long as both
    sides keep at least one tile.
    """
    by_part: dict[str, list[str]] = {"train": [], "test": []}
    for tile_id in _check_ids(tile_ids):
        match = _AREA.match(tile_id)
        if not match or int(match.group(1)) not in OFFICIAL_TRAIN_AREAS + OFFICIAL_TEST_AREAS:
            raise DatasetError(f"tile {tile_id!r} is not an ISPRS Vaihingen tile id 'area<N>'; the official split "
                               f"needs the original tiles (use make_split for other datasets)")
        by_part["train" if int(match.group(1)) in OFFICIAL_TRAIN_AREAS else "test"].append(tile_id)
    if not by_part["test"]:
        raise DatasetError("none of the tiles is an official Vaihingen test tile")
    return official_split(by_part, n_labelled=n_labelled, n_tagged=None, n_val=n_val, seed=seed, dataset="vaihingen")


def save_split(path: str | Path, split: Split) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(asdict(split), indent=2) + "\n")
    temporary.replace(path)


def load_split(path: str | Path) -> Split:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with keys {list(_PARTS) + ['seed']}")
    for key in _PARTS + ("seed",):
        if key not in data:
            raise DatasetError(f"{path}: missing key {key!r}")
    for key in _PARTS:
        if not isinstance(data[key], list) or not all(isinstance(t, str) for t in data[key]):
            raise DatasetError(f"{path}: {key!r} must be a list of tile id strings")
    unknown = set(data) - set(_PARTS) - {"seed", "kind", "info"}
    if unknown:
        raise DatasetError(f"{path}: unknown keys {sorted(unknown)}")
    split = Split(labelled=data["labelled"], tagged=data["tagged"], val=data["val"], test=data["test"],
                  seed=int(data["seed"]), kind=str(data.get("kind", "random")), info=dict(data.get("info", {})))
    return split.check(str(path))


def abbreviated(items: Sequence, limit: int = 5) -> str:
    """The first `limit` of `items`, comma-separated, then how many more: a log line or a report
    cell stays short however many tiles a dataset has (the full list is in the JSON beside it)."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"


def format_split(split: Split, ids_per_part: int = 5) -> str:
    """A few short lines for logs and reports: each part's size and its first few tile ids
    (split.json holds them all)."""
    lines = [f"split ({split.kind}, seed {split.seed}): {len(split.labelled)} labelled, {len(split.tagged)} tagged, "
             f"{len(split.val)} val, {len(split.test)} test"]
    for part in _PARTS:
        tiles = getattr(split, part)
        lines.append(f"  {part:<9}({len(tiles):>2}): {abbreviated(tiles, ids_per_part) if tiles else '-'}")
    return "\n".join(lines)
