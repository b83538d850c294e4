"""Vector labels → label rasters: the one rasteriser of every polygon format (xView2's WKT in
pixel coordinates, GeoJSON in a raster's map coordinates)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from rasterio import features
from rasterio.transform import Affine
from shapely import wkt
from shapely.errors import ShapelyError
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsseg.datasets.base import DatasetError


def rasterise(shapes: Iterable[tuple[BaseGeometry, int]], out_shape: tuple[int, int], fill: int = 0,
              transform: Affine | None = None) -> np.ndarray:
    """uint8 H×W raster of (geometry, value) pairs, later pairs painted over earlier ones.

    `transform` maps pixel (col, row) to the geometries' coordinates (a GeoTIFF's); None: the
    geometries are already in pixel coordinates, x to the right and y down. A pixel belongs to a
    polygon when its centre does (GDAL's rule), so touching polygons never share pixels."""
    pairs = [(geometry, int(value)) for geometry, value in shapes if not geometry.is_empty]
    if not pairs:
        return np.full(out_shape, fill, dtype=np.uint8)
    return features.rasterize(pairs, out_shape=out_shape, fill=fill, dtype="uint8",
                              transform=transform if transform is not None else Affine.identity())


def wkt_polygon(text: str, where: str) -> BaseGeometry:
    try:
        return wkt.loads(text)
    except (ShapelyError, TypeError, ValueError) as err:
        raise DatasetError(f"{where}: unreadable WKT polygon ({str(err).splitlines()[0]}): {str(text)[:60]!r}") from None


def geojson_shapes(collection: dict, where: str) -> list[BaseGeometry]:
    """The geometries of a GeoJSON FeatureCollection (as read by `json.load`)."""
    try:
        return [shape(feature["geometry"]) for feature in collection["features"] if feature.get("geometry")]
    except (KeyError, TypeError, ValueError, ShapelyError) as err:
        raise DatasetError(f"{where}: not a GeoJSON FeatureCollection of geometries ({err})") from None
