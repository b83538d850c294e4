"""Dataset loaders: each turns an on-disk layout into a `TileSource` (classes + tiles + decoders).

`build_source(kind, root, **options)` is the one entry point the rest of wsseg uses; the
options are the keyword arguments of the loader named by `kind`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from wsseg.datasets.base import ClassSpec, DataOptionError, DatasetError, Tile, TileSource


def _loaders() -> dict[str, Callable[..., TileSource]]:
    # Imported here so that importing wsseg.datasets stays cheap and free of optional imports.
    from wsseg.datasets.ade20k import ade20k_challenge_source, ade20k_full_source
    from wsseg.datasets.camvid import camvid_source
    from wsseg.datasets.cityscapes import cityscapes_source
    from wsseg.datasets.dubai import dubai_source
    from wsseg.datasets.folder import folder_source
    from wsseg.datasets.isprs import isprs_mmseg_source, vaihingen_source
    from wsseg.datasets.kitti_road import kitti_road_source
    from wsseg.datasets.labelmefacade import labelmefacade_source
    from wsseg.datasets.stanford_background import stanford_background_source
    from wsseg.datasets.synthetic_aerial import synthetic_vaihingen_source
    from wsseg.datasets.voc import voc_source
    from wsseg.datasets.xview2 import xview2_source

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
        "kitti_road": kitti_road_source,
        "xview2": xview2_source,
        "stanford_background": stanford_background_source,
        "labelmefacade": labelmefacade_source,
    }


def known_kinds() -> list[str]:
    return sorted(_loaders())


def _loader(kind: str) -> Callable[..., TileSource]:
    loaders = _loaders()
    if kind not in loaders:
        raise DataOptionError(f"data.kind: unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(loaders))}")
    return loaders[kind]


def loader_options(kind: str) -> list[str] | None:
    """The `data.options` keys dataset kind `kind` takes, in its loader's order (None: any)."""
    parameters = inspect.signature(_loader(kind)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [name for name in parameters if name != "root"]


def build_source(kind: str, root: str | Path, **options) -> TileSource:
    """The dataset of layout `kind` at `root`; unknown kinds and options are errors that list the valid ones."""
    accepted = loader_options(kind)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise DataOptionError(f"data.options: dataset kind {kind!r} has no option(s) {unknown}; its options: "
                              f"{', '.join(accepted)}")
    return _loader(kind)(root, **options)


def fixed_classes(kind: str, options: dict | None = None) -> ClassSpec | None:
    """The classes of dataset kind `kind` with `options`, known without reading its files: the
    benchmark's own for a benchmark layout, the options' for `folder`; None where only the data
    says (ade20k_full names its classes from its index file)."""
    from wsseg.datasets.ade20k import ADE20K_CLASSES
    from wsseg.datasets.camvid import CAMVID_NAMES, CAMVID_PALETTE
    from wsseg.datasets.cityscapes import CITYSCAPES_CLASSES
    from wsseg.datasets.colour import default_palette
    from wsseg.datasets.dubai import DUBAI_CLASSES
    from wsseg.datasets.isprs import VAIHINGEN_CLASSES
    from wsseg.datasets.kitti_road import KITTI_ROAD_CLASSES
    from wsseg.datasets.labelmefacade import LABELMEFACADE_CLASSES
    from wsseg.datasets.stanford_background import STANFORD_BACKGROUND_CLASSES
    from wsseg.datasets.voc import VOC_CLASSES

    fixed = {"vaihingen": VAIHINGEN_CLASSES, "synthetic_vaihingen": VAIHINGEN_CLASSES,
             "vaihingen_mmseg": VAIHINGEN_CLASSES, "potsdam_mmseg": VAIHINGEN_CLASSES, "dubai": DUBAI_CLASSES,
             "voc": VOC_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES,
             "camvid": ClassSpec(CAMVID_NAMES, CAMVID_PALETTE), "kitti_road": KITTI_ROAD_CLASSES,
             "stanford_background": STANFORD_BACKGROUND_CLASSES, "labelmefacade": LABELMEFACADE_CLASSES}
    if kind in fixed:
        return fixed[kind]
    options = options or {}
    if kind == "xview2":
        from wsseg.datasets.xview2 import DAMAGE_CLASSES, LOCALISATION_CLASSES

        return LOCALISATION_CLASSES if options.get("target") == "localisation" else DAMAGE_CLASSES
    if kind == "folder" and "class_names" in options:
        names = tuple(options["class_names"])
        palette = options.get("palette")
        palette = (tuple(tuple(int(v) for v in c) for c in palette) if palette is not None
                   else default_palette(len(names)))
        return ClassSpec(names, palette, tuple(options.get("in_mean") or ()))
    return None


# What the three input channels of each layout hold: ISPRS Vaihingen ships false-colour IRRG
# (the synthetic dataset imitates it); everything else here is plain RGB (mmsegmentation's
# Potsdam converter reads the RGB orthophotos).
_IRRG_KINDS = ("vaihingen", "synthetic_vaihingen", "vaihingen_mmseg")


def input_bands(kind: str) -> tuple[str, str, str]:
    """The bands a model trained on dataset kind `kind` takes as its channels 0, 1, 2."""
    return ("nir", "red", "green") if kind in _IRRG_KINDS else ("red", "green", "blue")


__all__ = ["ClassSpec", "DataOptionError", "DatasetError", "Tile", "TileSource", "build_source", "fixed_classes",
           "input_bands", "known_kinds", "loader_options"]
