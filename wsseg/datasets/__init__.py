"""Dataset loaders: each turns an on-disk layout into a `TileSource` (classes + tiles + decoders).

`build_source(kind, root, **options)` is the one entry point the rest of wsseg uses; the
options are the keyword arguments of the loader named by `kind`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from wsseg.datasets.base import ClassSpec, DatasetError, Tile, TileSource


def _loaders() -> dict[str, Callable[..., TileSource]]:
    # Imported here so that importing wsseg.datasets stays cheap and free of optional imports.
    from wsseg.datasets.ade20k import ade20k_challenge_source, ade20k_full_source
    from wsseg.datasets.camvid import camvid_source
    from wsseg.datasets.cityscapes import cityscapes_source
    from wsseg.datasets.dubai import dubai_source
    from wsseg.datasets.folder import folder_source
    from wsseg.datasets.isprs import isprs_mmseg_source, vaihingen_source
    from wsseg.datasets.synthetic_aerial import synthetic_vaihingen_source
    from wsseg.datasets.voc import voc_source

    def potsdam_mmseg(root, split: str | None = None, check_sizes: bool = True) -> TileSource:
        return isprs_mmseg_source(root, split=split, name="potsdam_mmseg", check_sizes=check_sizes)

    return {
        "vaihingen": vaihingen_source,
        "synthetic_vaihingen": synthetic_vaihingen_source,
        "vaihingen_mmseg": isprs_mmseg_source,
        "potsdam_mmseg": potsdam_mmseg,
        "dubai": dubai_source,
        "folder": folder_source,
        "voc": voc_source,
        "cityscapes": cityscapes_source,
        "ade20k": ade20k_challenge_source,
        "ade20k_full": ade20k_full_source,
        "camvid": camvid_source,
    }


def known_kinds() -> list[str]:
    return sorted(_loaders())


def build_source(kind: str, root: str | Path, **options) -> TileSource:
    """The dataset of layout `kind` at `root`; unknown kinds and options are errors that list the valid ones."""
    loaders = _loaders()
    if kind not in loaders:
        raise DatasetError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(loaders))}")
    loader = loaders[kind]
    parameters = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = [name for name in parameters if name != "root"]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise DatasetError(f"dataset kind {kind!r} has no option(s) {unknown}; its options: {accepted}")
    return loader(root, **options)


__all__ = ["ClassSpec", "DatasetError", "Tile", "TileSource", "build_source", "known_kinds"]
