"""`wsseg check-data`: every problem of the configured dataset, found before any training.

Training refuses (or skips, `data.skip_bad_files`) the problems of the tiles its split uses
(`pipeline.data.prepare_run`); this check reports them all, over the whole dataset, the split
the config draws and a crop tag file, without stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsseg.core.typed import ConfigError
from wsseg.datasets.base import DataOptionError, DataProblem, DatasetError
from wsseg.datasets.check import check_crop_tag_file, check_split, check_tiles
from wsseg.datasets.splits import load_split
from wsseg.pipeline.config import Config
from wsseg.pipeline.config_checks import check_config
from wsseg.pipeline.data import checking_bar, listed_source, make_split_for


@dataclass(frozen=True)
class DataCheck:
    """What `check_data` found: every problem (warnings among them) and how many tiles it checked."""

    dataset: str
    tiles_checked: int
    problems: tuple[DataProblem, ...]

    @property
    def blocking(self) -> list[DataProblem]:
        return [p for p in self.problems if p.blocking]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if not p.blocking]

    def summary(self) -> str:
        bad_tiles = len({p.tile_id for p in self.blocking if p.tile_id is not None})
        found = (f"{len(self.blocking)} problem(s) in {bad_tiles} tile(s)" if bad_tiles
                 else f"{len(self.blocking)} problem(s)" if self.blocking else "no problems")
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        return f"checked {self.tiles_checked} tiles of {self.dataset!r}: {found}{warned}"


def check_data(cfg: Config, split_path: str | Path | None = None, tags_path: str | Path | None = None,
               progress: bool = True) -> DataCheck:
    """Every problem of the configured dataset, before any training (`wsseg check-data`): its
    layout, every tile's files (`datasets.check.check_tiles`), the split the config draws or the
    split file `split_path` names, and the crop tag file `tags_path`. A config that is wrong in
    itself, its data options included (`DataOptionError`), raises ConfigError; a wrong dataset is
    reported, not raised."""
    check_config(cfg)
    try:
        source, problems = listed_source(cfg)
    except DatasetError as error:  # nothing to list: no root, no image folder, no images
        if isinstance(error, (ConfigError, DataOptionError)):
            raise
        fix = error.fix or f"point data.root (now {cfg.data.root!r}) and data.options at a {cfg.data.kind!r} dataset"
        return DataCheck(cfg.data.kind, 0, (DataProblem("", str(error), fix),))
    check_config(cfg, source, weak=False)
    if split_path is not None:
        try:
            problems += check_split(load_split(split_path), source, str(split_path))
        except DatasetError as error:
            problems.append(DataProblem("", str(error), "write the split again, or leave --split out"))
    else:
        try:
            make_split_for(cfg, source)
        except DatasetError as error:
            if isinstance(error, (ConfigError, DataOptionError)):
                raise
            left_out = f" (without the {len(problems)} tile problem(s) above)" if problems else ""
            # The split's own errors say what mends them; a tags file's name its file and line.
            problems.append(DataProblem(f"split (kind {cfg.split.kind})", f"{error}{left_out}", error.fix))
    problems += check_tiles(source, [t.tile_id for t in source.tiles], checking_bar(progress))
    if tags_path is not None:
        problems += check_crop_tag_file(tags_path, source)
    checked = len(source.tiles) + len({p.tile_id for p in problems if p.tile_id is not None} - {
        t.tile_id for t in source.tiles})
    return DataCheck(source.name, checked, tuple(problems))
