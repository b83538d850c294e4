"""Which tiles have pixel labels, which only crop tags, which choose checkpoints, which are test.

A split is made from the *sorted* tile ids and a seed, so the same seed gives the same split on
any machine and any directory listing order; it is written to JSON and printed with the results.
Validation tiles come out of the training side and never overlap the test tiles.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from wsseg.datasets.base import DatasetError
from wsseg.datasets.isprs import OFFICIAL_TEST_AREAS, OFFICIAL_TRAIN_AREAS

_PARTS = ("labelled", "tagged", "val", "test")


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
        raise DatasetError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def make_split(tile_ids: Sequence[str], n_labelled: int = 3, n_tagged: int = 21, n_val: int = 2,
               seed: int = 0, n_test: int | None = None) -> Split:
    """Sorted ids permuted by `seed`: the first n_labelled labelled, then tagged, then val; rest test.

    `n_test` caps the test tiles (None: all the rest), for datasets with many more images than needed.

    With the 33 Vaihingen tiles the defaults give the seed task: 3 labelled + 21 tagged + 2 val
    (the 23 N2 tiles minus the 2 that choose checkpoints) and 7 test tiles.
    """
    ids = _check_ids(tile_ids)
    counts = {name: _check_count(name, v) for name, v in
              (("n_labelled", n_labelled), ("n_tagged", n_tagged), ("n_val", n_val))}
    needed = sum(counts.values())
    if needed > len(ids):
        raise DatasetError(f"split asks for {counts['n_labelled']} labelled + {counts['n_tagged']} tagged + "
                           f"{counts['n_val']} val = {needed} tiles, but there are only {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    permuted = [ids[i] for i in order]
    a, b, c = counts["n_labelled"], counts["n_labelled"] + counts["n_tagged"], needed
    end = len(ids) if n_test is None else c + _check_count("n_test", n_test)
    if end > len(ids) or end == c:
        raise DatasetError(f"split leaves {len(ids) - c} test tiles, but n_test is {n_test}")
    return Split(labelled=sort_tile_ids(permuted[:a]), tagged=sort_tile_ids(permuted[a:b]),
                 val=sort_tile_ids(permuted[b:c]), test=sort_tile_ids(permuted[c:end]), seed=int(seed),
                 kind="random", info=counts).check()


_AREA = re.compile(r"^area(\d+)$")


def official_vaihingen_split(tile_ids: Sequence[str], n_labelled: int = 3, n_val: int = 2, seed: int = 0) -> Split:
    """Test = the official test tiles; labelled, val and tagged (the rest) from the official train tiles.

    Works on any subset of the 33 tiles (e.g. a synthetic set with fewer tiles), as long as both
    sides keep at least one tile.
    """
    ids = _check_ids(tile_ids)
    n_labelled, n_val = _check_count("n_labelled", n_labelled), _check_count("n_val", n_val)
    areas = {}
    for tile_id in ids:
        match = _AREA.match(tile_id)
        if not match or int(match.group(1)) not in OFFICIAL_TRAIN_AREAS + OFFICIAL_TEST_AREAS:
            raise DatasetError(f"tile {tile_id!r} is not an ISPRS Vaihingen tile id 'area<N>'; the official split "
                               f"needs the original tiles (use make_split for other datasets)")
        areas[tile_id] = int(match.group(1))
    train = [t for t in ids if areas[t] in OFFICIAL_TRAIN_AREAS]
    test = [t for t in ids if areas[t] in OFFICIAL_TEST_AREAS]
    if not test:
        raise DatasetError("none of the tiles is an official Vaihingen test tile")
    if n_labelled + n_val > len(train):
        raise DatasetError(f"official split asks for {n_labelled} labelled + {n_val} val tiles, but only "
                           f"{len(train)} official train tiles are present")
    order = np.random.default_rng(seed).permutation(len(train))
    permuted = [train[i] for i in order]
    return Split(labelled=sort_tile_ids(permuted[:n_labelled]),
                 val=sort_tile_ids(permuted[n_labelled:n_labelled + n_val]),
                 tagged=sort_tile_ids(permuted[n_labelled + n_val:]), test=test, seed=int(seed),
                 kind="official", info={"n_labelled": n_labelled, "n_val": n_val}).check()


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


def format_split(split: Split) -> str:
    """A few lines for logs and reports."""
    lines = [f"split ({split.kind}, seed {split.seed}): {len(split.labelled)} labelled, {len(split.tagged)} tagged, "
             f"{len(split.val)} val, {len(split.test)} test"]
    for part in _PARTS:
        tiles = getattr(split, part)
        lines.append(f"  {part:<9}({len(tiles):>2}): {', '.join(tiles) if tiles else '-'}")
    return "\n".join(lines)
