"""A procedural stand-in for ISPRS Vaihingen, written in exactly the original on-disk layout.

For tests, benchmarks and CPU-sized experiments where the real tiles are not available. Each tile
is a small suburb seen from above, in false colour (near infrared, red, green as R, G, B):
roads with sidewalks and markings, parking lots, buildings with lit and shaded roof halves,
driveways, lawns, textured tree crowns, a few cars, clutter patches, and the shadows of
buildings, trees and cars. It is built to be *hard in the same ways* as the real data:

- grey roofs and grey asphalt share colours, and red-tile roofs resemble bare soil (clutter), so
  building vs impervious vs clutter needs shape and context, not colour;
- lawns and tree crowns are drawn from one colour distribution; trees differ by texture,
  crown shading and the shadow they cast;
- shadows darken whatever lies below without changing its label.

A per-pixel nearest-class-mean-colour classifier fitted on the labels reaches a 5-class mIoU of
only ~0.23 on the default set (the tests require < 0.6).

Geometry is in pixels at roughly 25–30 cm per pixel (a car ~15 px long, a road ~20–30 px wide),
so a 384×384 tile holds a street or two and a handful of houses. Everything is drawn from a
numpy Generator seeded per tile with (seed, area number): the same seed gives byte-identical
files, and tile N is the same whatever `num_tiles` is.

    wsseg synth OUT [--tiles N] [--size H W] [--seed S]

or as `data.kind: synthetic_vaihingen` in a config, generated on first use.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from wsseg.datasets.base import IGNORE_INDEX, DataOptionError, TileSource
from wsseg.datasets.colour import encode_colour_mask
from wsseg.datasets.isprs import ALL_AREAS, VAIHINGEN_CLASSES, eroded_name, image_name, vaihingen_source

log = logging.getLogger(__name__)

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)

IMAGE_DIR, LABEL_DIR, ERODED_DIR = "top", "gts_for_participants", "gts_eroded_for_participants"


# ------------------------------------------------------------------------------------- helpers
def smooth_noise(rng: np.random.Generator, height: int, width: int, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std noise varying over about `scale_px` pixels (bicubic-upsampled grid)."""
    gh, gw = int(math.ceil(height / scale_px)) + 3, int(math.ceil(width / scale_px)) + 3
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * scale_px), int(gh * scale_px)), interpolation=cv2.INTER_CUBIC)
    out = big[int(scale_px):int(scale_px) + height, int(scale_px):int(scale_px) + width]
    return (out - out.mean()) / (out.std() + 1e-6)


def rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """Corners (4×2, x/y) of a rectangle centred at (cx, cy) whose long side points along `angle`."""
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-u[1], u[0]])
    c = np.array([cx, cy])
    return np.stack([c + a * u * length / 2 + b * v * width / 2 for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


@dataclass
class Shape:
    """A rasterised polygon: its bounding-box slices in the tile and the mask inside that box.

    Objects are small next to a tile; painting inside their box keeps generation fast.
    """

    rows: slice
    cols: slice
    mask: np.ndarray

    @property
    def box(self) -> tuple[slice, slice]:
        return self.rows, self.cols

    def any(self) -> bool:
        return bool(self.mask.any())

    def area(self) -> int:
        return int(self.mask.sum())

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.mask
        return out


def fill(shape: tuple[int, int], polygon: np.ndarray, grow_px: int = 0) -> Shape:
    """Rasterise `polygon` (x, y corners) clipped to the tile; `grow_px` widens the box (for dilation)."""
    height, width = shape
    x0 = max(int(math.floor(polygon[:, 0].min())) - 1 - grow_px, 0)
    y0 = max(int(math.floor(polygon[:, 1].min())) - 1 - grow_px, 0)
    x1 = min(int(math.ceil(polygon[:, 0].max())) + 2 + grow_px, width)
    y1 = min(int(math.ceil(polygon[:, 1].max())) + 2 + grow_px, height)
    if x1 <= x0 or y1 <= y0:
        return Shape(slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool))
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    local = (polygon - np.array([x0, y0])[None, :]) * 16
    # Sub-pixel precision (shift=4) keeps small shapes (cars) from snapping to the pixel grid.
    cv2.fillPoly(mask, [np.round(local).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return Shape(slice(y0, y1), slice(x0, x1), mask.astype(bool))


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)


def blob(cx: float, cy: float, radius: float, rng: np.random.Generator, roughness: float = 0.12,
         points: int = 40) -> np.ndarray:
    """An irregular round outline: radius modulated by a few random harmonics."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.normal(0, roughness / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.6, 1.4)
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def _shifted(polygon: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return polygon + offset[None, :]


def _prism_shadow(shape, polygon: np.ndarray, offset: np.ndarray) -> Shape:
    """Ground shadow of a vertical prism on a convex footprint: hull of the footprint and its shift."""
    hull = cv2.convexHull(np.concatenate([polygon, _shifted(polygon, offset)]).astype(np.float32))
    return fill(shape, hull.reshape(-1, 2))


# ----------------------------------------------------------------------------------- materials
# Colours are false-colour display values (NIR, red, green) in 0..255 before shading and noise.
def _grey(rng, low, high, tint=0.04):
    g = rng.uniform(low, high)
    return np.array([g * rng.uniform(1 - tint, 1 + tint), g, g * rng.uniform(1, 1 + 2 * tint)])


def vegetation_colour(rng) -> np.ndarray:
    """Lawns and tree crowns share this distribution: only texture and context tell them apart."""
    if rng.random() < 0.2:  # dry lawn / dark conifer: less infrared, less red in false colour
        return np.array([rng.uniform(95, 125), rng.uniform(65, 85), rng.uniform(65, 85)])
    return np.array([rng.uniform(135, 200), rng.uniform(55, 80), rng.uniform(60, 85)])


def asphalt_colour(rng) -> np.ndarray:
    return _grey(rng, 70, 135)


def roof_material(rng) -> tuple[str, np.ndarray]:
    kind = rng.choice(["grey", "red", "dark", "light"], p=[0.4, 0.35, 0.15, 0.1])
    if kind == "grey":  # concrete, gravel, grey tiles: the asphalt range on purpose
        return kind, _grey(rng, 80, 145)
    if kind == "dark":  # slate, tar: the dark asphalt range
        return kind, _grey(rng, 50, 80)
    if kind == "light":
        return kind, _grey(rng, 160, 205)
    # Terracotta: bright in red, fairly bright in NIR, low in green.
    return kind, np.array([rng.uniform(120, 160), rng.uniform(95, 125), rng.uniform(78, 100)])


def car_colour(rng) -> np.ndarray:
    options = [
        (205, 205, 210), (155, 155, 160), (35, 35, 42), (75, 75, 80),  # white, silver, black, grey
        (130, 165, 55), (60, 42, 70), (150, 150, 120), (90, 60, 60),  # red, blue, beige, green
    ]
    base = np.array(options[int(rng.integers(len(options)))], dtype=np.float64)
    return base * rng.uniform(0.9, 1.1)


# ---------------------------------------------------------------------------------------- scene
@dataclass
class _Caster:
    polygons: list  # convex pieces of the footprint (x, y corners)
    height_px: float  # shadow length
    kind: str  # "building" | "tree" | "car"
    footprint: Shape


@dataclass
class _Scene:
    height: int
    width: int
    rng: np.random.Generator
    sun: np.ndarray  # unit vector along which shadows fall (image x, y)

    def __post_init__(self):
        shape = (self.height, self.width)
        rng = self.rng
        self.label = np.full(shape, LOW_VEGETATION, dtype=np.uint8)
        self.colour = np.zeros(shape + (3,), dtype=np.float32)
        self.occupied = np.zeros(shape, dtype=bool)  # where buildings and lots may not go
        self.asphalt = np.zeros(shape, dtype=bool)  # drivable surface, where cars may go
        self.casters: list[_Caster] = []
        self.roads: list = []  # (p0, p1, width, angle)
        # Shared texture fields: objects take the part under them, so each object need not
        # draw its own full-tile noise.
        self.grain = rng.standard_normal(shape).astype(np.float32)
        self.clumps = smooth_noise(rng, *shape, 2.6)
        self.mottle = smooth_noise(rng, *shape, 6)
        self.yy, self.xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def paint(self, shape: Shape, label: int, colour: np.ndarray, texture: np.ndarray | float = 1.0,
              where: np.ndarray | None = None):
        """Set label and colour under the shape (and `where`, a mask of the shape's box);
        `texture` (full-tile array or scalar) multiplies the colour per pixel."""
        mask = shape.mask if where is None else shape.mask & where
        if not mask.any():
            return
        labels, colours = self.label[shape.box], self.colour[shape.box]
        labels[mask] = label
        shade = texture[shape.box][mask][:, None] if isinstance(texture, np.ndarray) else texture
        colours[mask] = (np.asarray(colour, dtype=np.float32)[None, :] * shade).astype(np.float32)


def _lawn(scene: _Scene):
    rng, (h, w) = scene.rng, scene.shape
    base = vegetation_colour(rng)
    dry = np.array([rng.uniform(100, 125), rng.uniform(75, 95), rng.uniform(70, 90)])
    patches = smooth_noise(rng, h, w, rng.uniform(30, 60))
    # Dry or worn patches blend towards a less infrared colour (still low vegetation).
    weight = np.clip((patches - 0.6) * 0.8, 0, 1)[..., None]
    texture = 1 + 0.06 * smooth_noise(rng, h, w, 12) + 0.025 * scene.grain
    scene.colour[:] = ((1 - weight) * base[None, None] + weight * dry[None, None]) * texture[..., None]


def _road_line(scene: _Scene) -> tuple[np.ndarray, np.ndarray, float]:
    rng, (h, w) = scene.rng, scene.shape
    if scene.roads and rng.random() < 0.7:
        # Side streets branch off at right angles, like a real street grid.
        angle = scene.roads[0][3] + np.pi / 2 + rng.normal(0, 0.05)
    elif rng.random() < 0.6:
        angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.04)
    else:
        angle = rng.uniform(0, np.pi)
    centre = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    direction = np.array([math.cos(angle), math.sin(angle)])
    reach = 2 * (h + w)
    return centre - reach * direction, centre + reach * direction, angle


def _band(scene: _Scene, p0, p1, half_width: float) -> Shape:
    direction = (p1 - p0) / np.linalg.norm(p1 - p0)
    normal = np.array([-direction[1], direction[0]]) * half_width
    return fill(scene.shape, np.stack([p0 - normal, p1 - normal, p1 + normal, p0 + normal]))


def _roads(scene: _Scene):
    rng = scene.rng
    n_roads = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
    for _ in range(n_roads):
        p0, p1, angle = _road_line(scene)
        width = rng.uniform(20, 36)
        sidewalk = rng.uniform(3, 7) if rng.random() < 0.8 else 0.0
        if sidewalk:
            walk = _band(scene, p0, p1, width / 2 + sidewalk)
            reddish = np.array([rng.uniform(110, 140), rng.uniform(100, 125), rng.uniform(75, 90)])
            scene.paint(walk, IMPERVIOUS, _grey(rng, 120, 170) if rng.random() < 0.7 else reddish,
                        1 + 0.05 * scene.grain)
            scene.occupied[walk.box] |= walk.mask
        road = _band(scene, p0, p1, width / 2)
        scene.paint(road, IMPERVIOUS, asphalt_colour(rng), 1 + 0.04 * scene.grain + 0.05 * scene.mottle)
        scene.occupied[road.box] |= road.mask
        scene.asphalt[road.box] |= road.mask
        if rng.random() < 0.6:  # dashed centre line
            direction = (p1 - p0) / np.linalg.norm(p1 - p0)
            length = np.linalg.norm(p1 - p0)
            dash, gap = rng.uniform(8, 14), rng.uniform(8, 16)
            t = rng.uniform(0, dash + gap)
            paint_colour = _grey(rng, 185, 215)
            while t < length:
                a, b = p0 + direction * t, p0 + direction * min(t + dash, length)
                if -20 < a[0] < scene.width + 20 and -20 < a[1] < scene.height + 20:
                    scene.paint(_band(scene, a, b, 1.0), IMPERVIOUS, paint_colour)
                t += dash + gap
        scene.roads.append((p0, p1, width, angle))


def _car(scene: _Scene, cx: float, cy: float, angle: float, within: np.ndarray) -> bool:
    rng = scene.rng
    length, width = rng.uniform(12, 16), rng.uniform(5.5, 7)
    body_polygon = rotated_rect(cx, cy, length, width, angle)
    body = fill(scene.shape, body_polygon)
    if not body.any() or (body.mask & ~within[body.box]).any() or (scene.label[body.box][body.mask] == CAR).any():
        return False
    colour = car_colour(rng)
    scene.paint(body, CAR, colour, 1 + 0.03 * scene.grain)
    # Windscreen and rear window: dark glass bands across the body.
    u = np.array([math.cos(angle), math.sin(angle)])
    for offset, size in ((0.22, 0.16), (-0.3, 0.1)):
        glass = fill(scene.shape, rotated_rect(cx + u[0] * offset * length, cy + u[1] * offset * length,
                                                size * length, width * 0.8, angle))
        scene.paint(glass, CAR, colour * 0.35 + 10, where=body.full(scene.shape)[glass.box])
    scene.casters.append(_Caster([body_polygon], rng.uniform(1.5, 2.5), "car", body))
    return True


def _cars_on_roads(scene: _Scene):
    rng = scene.rng
    for p0, p1, width, angle in scene.roads:
        direction = (p1 - p0) / np.linalg.norm(p1 - p0)
        normal = np.array([-direction[1], direction[0]])
        centre = (p0 + p1) / 2
        for _ in range(int(rng.integers(1, 7))):
            t = rng.uniform(-0.6, 0.6) * max(scene.shape)
            lane = rng.choice([-1, 1]) * width * rng.uniform(0.15, 0.3)
            cx, cy = centre + direction * t + normal * lane
            _car(scene, cx, cy, angle + rng.normal(0, 0.03), scene.asphalt)


def _parking_lot(scene: _Scene):
    rng, (h, w) = scene.rng, scene.shape
    for _ in range(20):
        lh, lw = rng.uniform(35, 70), rng.uniform(45, 100)
        angle = scene.roads[0][3] if scene.roads else 0.0
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        lot = fill(scene.shape, rotated_rect(cx, cy, lw, lh, angle), grow_px=5)
        # A lot touches a road (its access) but does not cover one.
        touching = dilate(lot.mask, 9)
        if lot.area() < 800 or (lot.mask & scene.occupied[lot.box]).any() or not (touching & scene.asphalt[lot.box]).any():
            continue
        scene.paint(lot, IMPERVIOUS, asphalt_colour(rng), 1 + 0.04 * scene.grain)
        scene.occupied[lot.box] |= lot.mask
        scene.asphalt[lot.box] |= lot.mask
        lot_full = lot.full(scene.shape)
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        stripe = _grey(rng, 180, 210)
        spacing = rng.uniform(8.5, 10)
        n_slots = int(lw // spacing)
        occupancy = rng.uniform(0.2, 0.8)
        for row in (-1, 1):
            row_centre = np.array([cx, cy]) + v * row * lh / 4
            for k in range(n_slots + 1):
                s = row_centre + u * (k - n_slots / 2) * spacing
                line = fill(scene.shape, rotated_rect(s[0], s[1], 1.4, lh / 2 - 2, angle + np.pi / 2))
                scene.paint(line, IMPERVIOUS, stripe, where=lot_full[line.box])
            for k in range(n_slots):
                if rng.random() < occupancy:
                    s = row_centre + u * (k + 0.5 - n_slots / 2) * spacing
                    _car(scene, s[0], s[1], angle + np.pi / 2 + rng.normal(0, 0.05), lot_full)
        return


def _building(scene: _Scene) -> bool:
    rng, (h, w) = scene.rng, scene.shape
    length, width = rng.uniform(35, 100), rng.uniform(26, 58)
    if scene.roads and rng.random() < 0.8:
        angle = scene.roads[int(rng.integers(len(scene.roads)))][3] + rng.choice([0, np.pi / 2]) + rng.normal(0, 0.03)
    else:
        angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
    pieces = [rotated_rect(cx, cy, length, width, angle)]
    angles = [angle]
    if rng.random() < 0.35:  # L-shape: a wing at one end, perpendicular to the main block
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        wing_length, wing_width = rng.uniform(0.6, 1.2) * width + width / 2, rng.uniform(0.5, 0.9) * width
        end = rng.choice([-1, 1]) * (length / 2 - wing_width / 2)
        side = rng.choice([-1, 1]) * wing_length / 2
        wc = np.array([cx, cy]) + u * end + v * side
        pieces.append(rotated_rect(wc[0], wc[1], wing_length, wing_width, angle + np.pi / 2))
        angles.append(angle + np.pi / 2)
    footprint = fill(scene.shape, np.concatenate(pieces), grow_px=16)  # box of all pieces, room for a yard
    footprint.mask[:] = False
    piece_masks = []
    for piece in pieces:
        part = fill(scene.shape, piece)
        local = np.zeros_like(footprint.mask)
        local[part.rows.start - footprint.rows.start:part.rows.stop - footprint.rows.start,
              part.cols.start - footprint.cols.start:part.cols.stop - footprint.cols.start] = part.mask
        piece_masks.append(local & ~footprint.mask)  # the wing does not repaint the main block
        footprint.mask |= local
    if footprint.area() < 300 or (dilate(footprint.mask, 5) & scene.occupied[footprint.box]).any():
        return False

    kind, colour = roof_material(rng)
    gable = kind != "dark" and rng.random() < (0.8 if kind == "red" else 0.45)
    box = footprint.box
    yy, xx = scene.yy[box], scene.xx[box]
    texture = 1 + 0.04 * scene.grain[box]
    if kind == "red":  # rows of tiles
        texture = texture * (1 + 0.05 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 1.9))
    else:
        texture = texture * (1 + 0.05 * scene.mottle[box])
    for piece, piece_angle, mask in zip(pieces, angles, piece_masks):
        gain = np.ones_like(texture)
        if gable:
            # Two roof halves either side of the ridge: one faces the sun, the other away.
            centre = piece.mean(axis=0)
            long_axis = np.array([math.cos(piece_angle), math.sin(piece_angle)])
            normal = np.array([-long_axis[1], long_axis[0]])
            distance = (xx - centre[0]) * normal[0] + (yy - centre[1]) * normal[1]
            facing = float(np.dot(normal, -scene.sun))
            lit, dark = 1 + 0.25 * abs(facing) + 0.08, 1 - 0.3 * abs(facing) - 0.08
            gain = np.where(distance > 0, lit if facing > 0 else dark, dark if facing > 0 else lit)
            gain = np.where(np.abs(distance) < 0.8, 1.15, gain)  # ridge
        region = Shape(footprint.rows, footprint.cols, mask)
        full_texture = np.zeros(scene.shape, dtype=np.float32)
        full_texture[box] = texture * gain
        scene.paint(region, BUILDING, colour, full_texture)
    if not gable:
        # Flat roof: parapet rim and rooftop structures (vents, skylights, machinery).
        inner = cv2.erode(footprint.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        scene.paint(Shape(footprint.rows, footprint.cols, footprint.mask & ~inner), BUILDING,
                    colour * rng.uniform(1.1, 1.3))
        inner_full = np.zeros(scene.shape, dtype=bool)
        inner_full[box] = inner
        for _ in range(int(rng.integers(0, 5))):
            px, py = pieces[0].mean(axis=0) + rng.uniform(-0.3, 0.3, 2) * np.array([length, width])
            structure = fill(scene.shape, rotated_rect(px, py, rng.uniform(3, 9), rng.uniform(3, 8), angle))
            scene.paint(structure, BUILDING, colour * rng.choice([0.6, 1.35]), where=inner_full[structure.box])
    scene.occupied[box] |= dilate(footprint.mask, 5)
    scene.casters.append(_Caster(pieces, rng.uniform(8, 22), "building", footprint))
    if rng.random() < 0.5:
        # Paved yard or terrace around the house, often the same grey as a grey roof.
        ring = dilate(footprint.mask, 2 * int(rng.integers(4, 15)) + 1) & ~footprint.mask
        ring &= smooth_noise(rng, *ring.shape, 10) > rng.uniform(-0.5, 0.5)  # not all the way round
        free = ring & (scene.label[box] == LOW_VEGETATION)
        yard = colour * rng.uniform(0.9, 1.1) if kind in ("grey", "dark") and rng.random() < 0.6 else _grey(rng, 85, 160)
        scene.paint(Shape(footprint.rows, footprint.cols, free), IMPERVIOUS, yard, 1 + 0.05 * scene.grain)
        scene.occupied[box] |= free
    _driveway(scene, footprint, colour if kind in ("grey", "dark") else None)
    return True


def _driveway(scene: _Scene, footprint: Shape, roof_colour):
    """Paved path from a building to the nearest road, often in the roof's own grey."""
    rng = scene.rng
    if not scene.roads or rng.random() < 0.3:
        return
    ys, xs = np.nonzero(footprint.mask)
    start = np.array([xs.mean() + footprint.cols.start, ys.mean() + footprint.rows.start])
    p0, p1, width, angle = min(scene.roads, key=lambda r: _distance_to_line(start, r[0], r[1]))
    direction = (p1 - p0) / np.linalg.norm(p1 - p0)
    foot = p0 + direction * np.dot(start - p0, direction)
    if np.linalg.norm(foot - start) < 1:
        return
    path = _band(scene, start, foot, rng.uniform(3, 5.5))
    free = ~np.isin(scene.label[path.box], (BUILDING, CAR)) & ~scene.asphalt[path.box]
    use_roof = roof_colour is not None and rng.random() < 0.6
    colour = roof_colour * rng.uniform(0.95, 1.05) if use_roof else _grey(rng, 90, 150)
    scene.paint(path, IMPERVIOUS, colour, 1 + 0.05 * scene.grain, where=free)
    scene.occupied[path.box] |= path.mask & free


def _distance_to_line(p, a, b) -> float:
    d = (b - a) / np.linalg.norm(b - a)
    return float(abs((p - a)[0] * d[1] - (p - a)[1] * d[0]))


def _clutter(scene: _Scene):
    rng, (h, w) = scene.rng, scene.shape
    for _ in range(15):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        radius = rng.uniform(10, 28)
        patch = fill(scene.shape, blob(cx, cy, radius, rng, roughness=0.25))
        free = ~np.isin(scene.label[patch.box], (BUILDING, CAR))
        if (patch.mask & free).sum() < 80 or (patch.mask & scene.asphalt[patch.box]).mean() > 0.3:
            continue
        kind = rng.choice(["soil", "debris", "containers"])
        if kind == "soil":  # brownish like terracotta roofs in false colour
            colour = np.array([rng.uniform(105, 140), rng.uniform(95, 125), rng.uniform(70, 90)])
            scene.paint(patch, CLUTTER, colour, 1 + 0.12 * scene.grain + 0.1 * scene.clumps, where=free)
        elif kind == "debris":
            scene.paint(patch, CLUTTER, _grey(rng, 90, 160), 1 + 0.25 * scene.clumps, where=free)
        else:
            scene.paint(patch, CLUTTER, _grey(rng, 80, 120), 1 + 0.05 * scene.grain, where=free)
            inside = patch.full(scene.shape) & ~np.isin(scene.label, (BUILDING, CAR))
            for _ in range(int(rng.integers(2, 6))):
                bx, by = cx + rng.uniform(-radius, radius) * 0.6, cy + rng.uniform(-radius, radius) * 0.6
                box = fill(scene.shape, rotated_rect(bx, by, rng.uniform(6, 12), rng.uniform(3, 5), rng.uniform(0, np.pi)))
                scene.paint(box, CLUTTER, car_colour(rng), where=inside[box.box])
        scene.occupied[patch.box] |= patch.mask
        return


def _tree(scene: _Scene, cx: float, cy: float, radius: float):
    rng = scene.rng
    polygon = blob(cx, cy, radius, rng, roughness=0.15)
    crown = fill(scene.shape, polygon)
    if not crown.any():
        return
    box = crown.box
    # Sunlit side brighter, far side darker: crowns are domes, lawns are flat.
    towards_sun = -((scene.xx[box] - cx) * scene.sun[0] + (scene.yy[box] - cy) * scene.sun[1]) / radius
    texture = np.zeros(scene.shape, dtype=np.float32)
    texture[box] = np.clip((1 + 0.22 * np.clip(towards_sun, -1, 1))
                           * (1 + 0.2 * scene.clumps[box] + 0.08 * scene.grain[box]), 0.35, 1.8)
    scene.paint(crown, TREE, vegetation_colour(rng), texture)
    scene.casters.append(_Caster([polygon], rng.uniform(6, 16), "tree", crown))


def _trees(scene: _Scene):
    rng, (h, w) = scene.rng, scene.shape
    # Street trees along some roads, crowns overhanging the sidewalk and road.
    for p0, p1, width, angle in scene.roads:
        if rng.random() < 0.3:
            continue
        direction = (p1 - p0) / np.linalg.norm(p1 - p0)
        normal = np.array([-direction[1], direction[0]])
        centre = (p0 + p1) / 2
        spacing = rng.uniform(22, 40)
        side = rng.choice([-1, 1])
        radius = rng.uniform(8, 16)
        for k in range(-int(max(h, w) / spacing), int(max(h, w) / spacing) + 1):
            c = centre + direction * (k * spacing + rng.normal(0, 2)) + normal * side * (width / 2 + rng.uniform(2, 6))
            if -radius < c[0] < w + radius and -radius < c[1] < h + radius and rng.random() < 0.8:
                _tree(scene, c[0], c[1], radius * rng.uniform(0.85, 1.15))
    # Groups of garden trees on open ground.
    for _ in range(int(rng.integers(3, 11))):
        for _ in range(20):
            gx, gy = rng.uniform(0, w), rng.uniform(0, h)
            if scene.label[int(gy), int(gx)] == LOW_VEGETATION:
                break
        spread = rng.uniform(8, 22)
        for _ in range(int(rng.integers(2, 12))):
            tx, ty = gx + rng.normal(0, spread), gy + rng.normal(0, spread)
            if 0 <= tx < w and 0 <= ty < h and scene.label[int(ty), int(tx)] in (LOW_VEGETATION, TREE):
                _tree(scene, tx, ty, rng.uniform(7, 22))


def _shadows(scene: _Scene) -> np.ndarray:
    """Per-pixel darkening from every caster onto what lies below; labels stay as they are."""
    shadow = np.zeros(scene.shape, dtype=np.float32)
    for caster in scene.casters:
        offset = scene.sun * caster.height_px
        if caster.kind == "tree":
            # The crown sits on a thin trunk: its shadow is the crown shape, displaced.
            cast = [fill(scene.shape, _shifted(caster.polygons[0], offset * f)) for f in (0.6, 1.0)]
        else:
            cast = [_prism_shadow(scene.shape, polygon, offset) for polygon in caster.polygons]
        own = caster.footprint.full(scene.shape)
        for part in cast:
            shadow[part.box][part.mask & ~own[part.box]] = 1.0
    return cv2.GaussianBlur(shadow, (0, 0), 1.0)


def _render(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    shadow = _shadows(scene)[..., None]
    strength = rng.uniform(0.35, 0.5)
    # Shadows are lit by blue skylight only: NIR drops most, green least (in false colour).
    ambient = np.array([strength * 0.8, strength, strength * 1.2], dtype=np.float32)
    image = scene.colour * (1 - shadow + shadow * ambient[None, None, :])
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    image = image * gain[None, None, :]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 0.9))
    image = image + rng.normal(0, 3.0, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def synthetic_tile(height: int, width: int, rng: np.random.Generator, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One tile: (false-colour uint8 H×W×3, class indices uint8 H×W)."""
    scene = _Scene(height, width, rng, sun)
    _lawn(scene)
    _roads(scene)
    if rng.random() < 0.7:
        _parking_lot(scene)
    target = max(2, int(round(height * width / 384 ** 2 * rng.uniform(8, 15))))
    placed = 0
    for _ in range(target * 12):
        placed += _building(scene)
        if placed >= target:
            break
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2]))):
        _clutter(scene)
    _trees(scene)
    _cars_on_roads(scene)
    return _render(scene, rng), scene.label


def boundary_mask(label: np.ndarray, radius_px: int = 1) -> np.ndarray:
    """Pixels within `radius_px` of another class: what the eroded ground truth blacks out."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(label, kernel) != cv2.erode(label, kernel)


def _area_numbers(num_tiles: int) -> list[int]:
    if num_tiles <= len(ALL_AREAS):
        return list(ALL_AREAS[:num_tiles])
    # Beyond the 33 real tiles, continue after the last real area number.
    return list(ALL_AREAS) + list(range(ALL_AREAS[-1] + 1, ALL_AREAS[-1] + 1 + num_tiles - len(ALL_AREAS)))


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    # Uncompressed RGB, like the ISPRS release; no timestamps, so output is byte-identical.
    tifffile.imwrite(path, array, photometric="rgb", metadata=None)


def generate_synthetic_vaihingen(root: str | Path, num_tiles: int = 33, tile_px: tuple[int, int] = (384, 384),
                                 seed: int = 0, boundary_radius_px: int = 1) -> Path:
    """Write `num_tiles` tiles under `root`, numbered like the real areas (1..8, 10..17, 20..24, ...).

    Returns `root`. Earlier `top_mosaic_09cm_area*.tif` files in the three folders are removed first,
    so a smaller regeneration does not leave stale tiles behind.
    """
    if num_tiles <= 0:
        raise DataOptionError(f"num_tiles must be positive, got {num_tiles}")
    height, width = (int(tile_px), int(tile_px)) if np.isscalar(tile_px) else (int(tile_px[0]), int(tile_px[1]))
    if height < 64 or width < 64:
        raise DataOptionError(f"tile_px {tile_px} is too small for the scene generator (minimum 64×64)")
    root = Path(root)
    folders = [root / IMAGE_DIR, root / LABEL_DIR, root / ERODED_DIR]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("top_mosaic_09cm_area*.tif"):
            old.unlink()
    # One sun for the whole set, as in a single flight.
    azimuth = np.random.default_rng([seed, 0]).uniform(0, 2 * np.pi)
    sun = np.array([math.cos(azimuth), math.sin(azimuth)])
    palette = VAIHINGEN_CLASSES.palette
    for area in _area_numbers(num_tiles):
        rng = np.random.default_rng([seed, area])
        image, label = synthetic_tile(height, width, rng, sun)
        eroded = label.copy()
        eroded[boundary_mask(label, boundary_radius_px)] = IGNORE_INDEX
        _write_tiff(root / IMAGE_DIR / image_name(area), image)
        _write_tiff(root / LABEL_DIR / image_name(area), encode_colour_mask(label, palette))
        _write_tiff(root / ERODED_DIR / eroded_name(area), encode_colour_mask(eroded, palette))
    return root


def synthetic_vaihingen_source(root: str | Path, num_tiles: int = 33, tile_px: Sequence[int] = (384, 384),
                               seed: int = 0) -> TileSource:
    """The procedural dataset at `root` as a Vaihingen `TileSource`, generated first when `root`
    does not hold exactly these parameters (recorded in `synthetic.json`), as torchvision's
    datasets download on first use."""
    root = Path(root)
    marker = root / "synthetic.json"
    wanted = {"num_tiles": num_tiles, "tile_px": [int(v) for v in tile_px], "seed": seed}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        log.info(f"generating the synthetic aerial dataset into {root} ({wanted})")
        generate_synthetic_vaihingen(root, num_tiles=num_tiles, tile_px=tuple(wanted["tile_px"]), seed=seed)
        # Written last and by rename: an interrupted generation is redone, never taken as complete.
        temporary = marker.with_name(marker.name + ".tmp")
        temporary.write_text(json.dumps(wanted) + "\n")
        temporary.replace(marker)
    return vaihingen_source(root)
