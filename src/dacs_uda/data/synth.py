"""The embedded benchmark: seeded street scenes in two domains, written in official layouts.

A *source* domain looks like a game engine (flat saturated colours, hard light, no sensor noise,
lower horizon, large vehicles) and a *target* domain like camera footage (another palette, texture,
exposure and white balance per frame, haze, vignetting, noise, blur, an ego-vehicle hood, more
pedestrians and cyclists). Both cover the 19 Cityscapes training classes with long-tailed frequencies.

Every frame is drawn from its own ``numpy`` generator seeded by (seed, domain, split, index), so the
output does not depend on the number of worker processes or on the order of generation.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dacs_uda import labels as L

log = logging.getLogger(__name__)

# Training ids, named for readability of the scene grammar below.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)
EGO = 250  # internal marker for the ego-vehicle hood (Cityscapes labelId 1, ignored in training)
VOID = 251  # internal marker for unlabeled clutter (labelId 0)

CITYSCAPES_CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}
DOMAIN_IDS = {"source": 0, "target": 1}
SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Style:
    """Layout statistics and rendering of one domain."""

    horizon: tuple[float, float]  # horizon row as a fraction of the height
    object_scale: float  # multiplies every object's size
    counts: dict[int, float]  # expected number of instances per frame
    palette: dict[int, tuple[int, int, int]]
    saturation: float  # 1 keeps the palette, < 1 pulls colours towards grey
    texture: float  # amplitude of the per-class texture
    noise: float  # sensor noise (std, 0-255 scale)
    blur: float  # Gaussian blur radius in pixels
    haze: float  # strength of the haze towards the horizon
    exposure: tuple[float, float]  # per-frame exposure range
    white_balance: float  # per-frame per-channel gain spread
    vignette: float
    ego_hood: bool


_BASE_PALETTE = {
    ROAD: (90, 80, 95), SIDEWALK: (200, 170, 190), BUILDING: (110, 110, 115), WALL: (150, 140, 170),
    FENCE: (180, 150, 120), POLE: (160, 160, 160), LIGHT: (240, 170, 40), SIGN: (230, 230, 20),
    VEGETATION: (60, 150, 40), TERRAIN: (150, 220, 120), SKY: (90, 150, 230), PERSON: (200, 40, 60),
    RIDER: (240, 60, 30), CAR: (30, 50, 170), TRUCK: (40, 40, 90), BUS: (30, 90, 130),
    TRAIN: (30, 110, 120), MOTORCYCLE: (60, 30, 200), BICYCLE: (140, 30, 50), VOID: (120, 100, 80),
    EGO: (40, 40, 40),
}  # fmt: skip

# How the camera domain sees each class's material and light; the target palette lies halfway
# between this and the game palette, so colour still carries some (but unreliable) information.
_CAMERA_LOOK = {
    ROAD: (120, 118, 112), SIDEWALK: (165, 150, 140), BUILDING: (150, 130, 105), WALL: (120, 125, 120),
    FENCE: (140, 135, 110), POLE: (95, 95, 100), LIGHT: (60, 60, 50), SIGN: (200, 205, 215),
    VEGETATION: (85, 110, 55), TERRAIN: (135, 140, 80), SKY: (200, 210, 215), PERSON: (70, 60, 75),
    RIDER: (80, 70, 60), CAR: (110, 110, 120), TRUCK: (170, 160, 150), BUS: (190, 170, 60),
    TRAIN: (180, 60, 50), MOTORCYCLE: (50, 50, 55), BICYCLE: (60, 60, 70), VOID: (100, 95, 90),
    EGO: (25, 25, 30),
}  # fmt: skip


def _halfway(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2, (a[2] + b[2]) // 2)


_TARGET_PALETTE = {cls: _halfway(_BASE_PALETTE[cls], look) for cls, look in _CAMERA_LOOK.items()}

SOURCE_STYLE = Style(
    horizon=(0.40, 0.50),
    object_scale=1.2,
    counts={CAR: 4.0, TRUCK: 0.5, BUS: 0.15, TRAIN: 0.03, PERSON: 1.5, RIDER: 0.25, MOTORCYCLE: 0.2,
            BICYCLE: 0.1, POLE: 3.0, LIGHT: 0.8, SIGN: 1.2, WALL: 0.8, FENCE: 0.6, VEGETATION: 2.0,
            TERRAIN: 0.6, VOID: 0.6},
    palette=_BASE_PALETTE,
    saturation=1.0,
    texture=6.0,
    noise=1.5,
    blur=0.0,
    haze=0.0,
    exposure=(0.95, 1.05),
    white_balance=0.02,
    vignette=0.0,
    ego_hood=False,
)  # fmt: skip

TARGET_STYLE = Style(
    horizon=(0.33, 0.43),
    object_scale=0.9,
    counts={CAR: 3.0, TRUCK: 0.2, BUS: 0.12, TRAIN: 0.03, PERSON: 3.5, RIDER: 0.5, MOTORCYCLE: 0.15,
            BICYCLE: 0.6, POLE: 4.0, LIGHT: 1.2, SIGN: 1.6, WALL: 0.5, FENCE: 0.8, VEGETATION: 3.0,
            TERRAIN: 1.0, VOID: 0.4},
    palette=_TARGET_PALETTE,
    saturation=0.8,
    texture=18.0,
    noise=5.0,
    blur=0.7,
    haze=0.25,
    exposure=(0.75, 1.2),
    white_balance=0.1,
    vignette=0.3,
    ego_hood=True,
)  # fmt: skip

STYLES = {"source": SOURCE_STYLE, "target": TARGET_STYLE}


class Canvas:
    """A label map and a colour image painted together, back to front."""

    def __init__(self, height: int, width: int, style: Style, rng: np.random.Generator) -> None:
        self.h, self.w, self.style, self.rng = height, width, style, rng
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.label = np.full((height, width), SKY, dtype=np.uint8)
        self.rgb = np.zeros((height, width, 3), dtype=np.float32)
        # Two noise fields give every class a texture: fine grain and smooth blotches.
        self.fine = rng.standard_normal((height, width)).astype(np.float32)
        coarse = rng.standard_normal((height // 8 + 2, width // 8 + 2)).astype(np.float32)
        self.coarse = np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
        )

    def colour(self, cls: int, jitter: float = 12.0) -> np.ndarray:
        """The domain's colour for ``cls``, varied per instance."""
        base = np.asarray(self.style.palette[cls], dtype=np.float32)
        return np.clip(base + self.rng.normal(0.0, jitter, 3), 0, 255)

    def paint(self, mask: np.ndarray, cls: int, rgb: np.ndarray | None = None, grain: float = 1.0) -> None:
        """Paint ``mask`` with class ``cls`` and a textured colour."""
        if not mask.any():
            return
        rgb = self.colour(cls) if rgb is None else rgb
        tex = self.style.texture * grain * (0.6 * self.fine[mask] + 0.8 * self.coarse[mask])
        self.label[mask] = cls
        self.rgb[mask] = rgb[None, :] + tex[:, None]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xx - cx) / max(rx, 0.5)) ** 2 + ((self.yy - cy) / max(ry, 0.5)) ** 2 <= 1.0

    def box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < max(x1, x0 + 1)) & (self.yy >= y0) & (self.yy < max(y1, y0 + 1))


@dataclass(frozen=True)
class Street:
    """Ground-plane geometry: a road and sidewalks converging on a vanishing point."""

    horizon: float
    vx: float
    road: tuple[float, float]  # road edges at the bottom row (x)
    curb: float  # sidewalk width at the bottom row (px)
    height: int

    def depth(self, y: np.ndarray | float) -> np.ndarray | float:
        """0 at the horizon, 1 at the bottom row: the perspective scale of a ground point."""
        return np.clip((np.asarray(y) - self.horizon) / (self.height - self.horizon), 0.0, 1.0)

    def edges(self, y: np.ndarray | float) -> tuple:
        """Road edges and sidewalk outer edges at row ``y``."""
        d = self.depth(y)
        left = self.vx + (self.road[0] - self.vx) * d
        right = self.vx + (self.road[1] - self.vx) * d
        return left, right, left - self.curb * d, right + self.curb * d


def _expected_count(rng: np.random.Generator, mean: float) -> int:
    return int(rng.poisson(mean))


def _draw_background(c: Canvas, s: Street) -> None:
    """Sky, street canyon (buildings, gaps with terrain, vegetation, walls, fences), road, sidewalks."""
    h, w, rng = c.h, c.w, c.rng
    sky = np.clip(c.yy / max(s.horizon, 1.0), 0, 1)[..., None]
    top, bottom = np.asarray(c.colour(SKY, 8.0)), np.asarray(c.style.palette[SKY], dtype=np.float32) + 25
    c.rgb[:] = top * (1 - sky) + bottom * sky + c.style.texture * 0.3 * c.coarse[..., None]
    left, right, left_out, right_out = s.edges(c.yy)
    side = (c.yy >= s.horizon) & ((c.xx < left_out) | (c.xx > right_out))
    # Facades: segments along x, taller near the image borders (closer to the camera).
    x = 0
    while x < w:
        seg = int(rng.integers(max(4, w // 14), max(8, w // 4)))
        near = abs(x + seg / 2 - s.vx) / max(s.vx, w - s.vx)
        col = c.box(x, 0, x + seg, h)
        kind = rng.choice([BUILDING, VEGETATION, TERRAIN], p=[0.72, 0.18, 0.10])
        if kind == BUILDING:
            roof = s.horizon - s.horizon * near * rng.uniform(0.55, 1.15)
            mask = col & (c.yy >= roof) & ((c.yy < s.horizon) | side)
            c.paint(mask, BUILDING, grain=0.7)
            _windows(c, mask, x, roof)
        else:
            crown = s.horizon - s.horizon * near * rng.uniform(0.2, 0.5)
            c.paint(col & (c.yy >= crown) & (c.yy < s.horizon) & (kind == VEGETATION), VEGETATION, grain=1.6)
            c.paint(col & side, TERRAIN if kind == TERRAIN else VEGETATION, grain=1.3)
        x += seg
    c.paint((c.yy >= s.horizon) & (c.xx >= left) & (c.xx <= right), ROAD, grain=0.8)
    walk = (
        (c.yy >= s.horizon) & ~((c.xx >= left) & (c.xx <= right)) & (c.xx >= left_out) & (c.xx <= right_out)
    )
    c.paint(walk, SIDEWALK, grain=0.8)
    lane = (c.yy >= s.horizon + 2) & (np.abs(c.xx - (left + right) / 2) < 0.5 + 2.0 * s.depth(c.yy))
    dashes = (np.floor(np.clip(c.yy - s.horizon, 0, None) ** 0.6 * 1.5) % 2) == 0
    c.rgb[lane & dashes] = c.rgb[lane & dashes] * 0.3 + 200  # markings are road, only brighter


def _windows(c: Canvas, mask: np.ndarray, x0: int, roof: float) -> None:
    period = c.rng.integers(5, 10)
    grid = (((c.xx - x0) % period) < period * 0.5) & (((c.yy - roof) % (period + 2)) < period * 0.5)
    win = mask & grid & (c.yy < roof + (c.h - roof) * 0.9)
    c.rgb[win] = c.rgb[win] * 0.45 + c.rng.uniform(10, 60)


def _ground_spot(c: Canvas, s: Street, where: str) -> tuple[float, float, float]:
    """A random ground point (x, y, perspective scale) on the road, sidewalk or curb line."""
    y = c.rng.uniform(s.horizon + 0.08 * (c.h - s.horizon), c.h * 1.02)
    left, right, left_out, right_out = (float(v) for v in s.edges(y))
    side = c.rng.random() < 0.5
    if where == "road":
        x = c.rng.uniform(left, right)
    elif where == "sidewalk":
        x = c.rng.uniform(left_out, left) if side else c.rng.uniform(right, right_out)
    else:  # curb: the outer sidewalk edge, where poles, trees and walls stand
        x = left_out if side else right_out
    return x, y, float(s.depth(y))


def _vehicle(c: Canvas, x: float, y: float, k: float, cls: int) -> None:
    """Box-shaped vehicles: body, darker windows, wheels; the whole silhouette carries the class."""
    sizes = {CAR: (0.55, 0.30), TRUCK: (0.75, 0.60), BUS: (1.1, 0.65), TRAIN: (1.8, 0.70)}
    bw, bh = (v * k * c.h for v in sizes[cls])
    body = c.box(x - bw / 2, y - bh, x + bw / 2, y - 0.12 * bh)
    colour = c.colour(cls, 35.0 if cls == CAR else 15.0)
    c.paint(body, cls, colour)
    glass = c.box(x - bw * 0.42, y - bh * 0.92, x + bw * 0.42, y - bh * (0.62 if cls == CAR else 0.75))
    c.rgb[glass & body] = c.rgb[glass & body] * 0.35 + 15
    for wx in (x - bw * 0.32, x + bw * 0.32):
        c.paint(c.ellipse(wx, y - 0.12 * bh, bw * 0.11, bh * 0.13), cls, np.array([20.0, 20.0, 22.0]))


def _person(c: Canvas, x: float, y: float, k: float, cls: int = PERSON) -> None:
    ph = 0.45 * k * c.h
    c.paint(c.ellipse(x, y - ph * 0.5, ph * 0.13, ph * 0.42), cls)
    c.paint(c.ellipse(x, y - ph * 0.92, ph * 0.08, ph * 0.08), cls, np.array([200.0, 160.0, 130.0]))


def _two_wheeler(c: Canvas, x: float, y: float, k: float, cls: int) -> None:
    """A bicycle or motorcycle with a rider on top."""
    r = 0.07 * k * c.h
    dark = np.array([25.0, 25.0, 28.0]) if cls == MOTORCYCLE else c.colour(cls)
    for wx in (x - 1.3 * r, x + 1.3 * r):
        ring = c.ellipse(wx, y - r, r, r)
        if cls == BICYCLE:
            ring &= ~c.ellipse(wx, y - r, 0.6 * r, 0.6 * r)
        c.paint(ring, cls, dark)
    c.paint(
        c.box(x - 1.3 * r, y - 2.2 * r, x + 1.3 * r, y - (1.0 if cls == MOTORCYCLE else 1.7) * r), cls, dark
    )
    _person(c, x, y - 1.6 * r, k * 0.85, RIDER)


def _pole(c: Canvas, x: float, y: float, k: float, cls: int) -> None:
    """Poles, optionally carrying a traffic light or sign (which keep their own class)."""
    ph, pw = 1.0 * k * c.h, max(1.0, 0.012 * k * c.w)
    c.paint(c.box(x - pw / 2, y - ph, x + pw / 2, y), POLE, grain=0.5)
    if cls == LIGHT:
        c.paint(c.box(x - 2.2 * pw, y - ph, x + 2.2 * pw, y - ph + 0.14 * ph), LIGHT, grain=0.4)
    elif cls == SIGN:
        c.paint(c.ellipse(x, y - ph * 0.85, 0.06 * ph, 0.06 * ph), SIGN, grain=0.4)


def _tree(c: Canvas, x: float, y: float, k: float) -> None:
    th = 0.8 * k * c.h
    c.paint(c.box(x - 0.02 * th, y - th * 0.5, x + 0.02 * th, y), VEGETATION, np.array([80.0, 60.0, 40.0]))
    c.paint(c.ellipse(x, y - th * 0.7, 0.3 * th, 0.3 * th), VEGETATION, grain=1.8)


def _barrier(c: Canvas, x: float, y: float, k: float, cls: int) -> None:
    """Walls (solid) and fences (lattice) along the curb."""
    bw, bh = 0.5 * k * c.w * c.rng.uniform(0.5, 1.0), (0.25 if cls == WALL else 0.18) * k * c.h
    mask = c.box(x - bw / 2, y - bh, x + bw / 2, y)
    c.paint(mask, cls, grain=0.6)
    if cls == FENCE:
        bars = mask & (((c.xx - x) % max(2.0, 0.02 * k * c.w)) < 1.0)
        c.rgb[bars] *= 0.5


def _clutter(c: Canvas, x: float, y: float, k: float) -> None:
    """Unlabeled static objects (bins, boxes): label id 0 in both datasets, ignored in training."""
    size = 0.08 * k * c.h
    c.paint(c.box(x - size / 2, y - size, x + size / 2, y), VOID)


_PLACEMENT = {
    CAR: "road", TRUCK: "road", BUS: "road", TRAIN: "road", MOTORCYCLE: "road", BICYCLE: "road",
    PERSON: "sidewalk", RIDER: "road", POLE: "curb", LIGHT: "curb", SIGN: "curb", VEGETATION: "curb",
    WALL: "curb", FENCE: "curb", TERRAIN: "sidewalk", VOID: "sidewalk",
}  # fmt: skip


def _draw_objects(c: Canvas, s: Street) -> None:
    """Place every object on the ground plane and paint them far to near (painter's algorithm)."""
    placed: list[tuple[float, float, float, int]] = []
    for cls, mean in c.style.counts.items():
        for _ in range(_expected_count(c.rng, mean)):
            x, y, k = _ground_spot(c, s, _PLACEMENT[cls])
            placed.append((y, x, k * c.style.object_scale, cls))
    for y, x, k, cls in sorted(placed):
        if cls in (CAR, TRUCK, BUS, TRAIN):
            _vehicle(c, x, y, k, cls)
        elif cls == PERSON:
            _person(c, x, y, k)
        elif cls in (RIDER, MOTORCYCLE, BICYCLE):
            _two_wheeler(c, x, y, k, MOTORCYCLE if cls == MOTORCYCLE else BICYCLE)
        elif cls in (POLE, LIGHT, SIGN):
            _pole(c, x, y, k, cls)
        elif cls == VEGETATION:
            _tree(c, x, y, k)
        elif cls in (WALL, FENCE):
            _barrier(c, x, y, k, cls)
        elif cls == TERRAIN:
            c.paint(
                c.ellipse(x, y, 0.25 * k * c.w, 0.05 * k * c.h) & (c.label == SIDEWALK), TERRAIN, grain=1.3
            )
        else:
            _clutter(c, x, y, k)


def _finish(c: Canvas, s: Street) -> np.ndarray:
    """Camera effects: hood, haze, light, white balance, vignetting, noise, saturation, blur."""
    st, rng = c.style, c.rng
    if st.ego_hood:
        hood = c.ellipse(c.w / 2, c.h * 1.25, c.w * 0.75, c.h * rng.uniform(0.28, 0.36))
        c.paint(hood, EGO, grain=0.3)
    rgb: np.ndarray = c.rgb
    if st.haze:
        near_horizon = np.exp(-np.abs(c.yy - s.horizon) / (0.25 * c.h))[..., None]
        rgb = rgb * (1 - st.haze * near_horizon) + 210.0 * st.haze * near_horizon
    light = 1.0 - 0.25 * (1 - c.yy / c.h)[..., None] if st.haze == 0 else 1.0  # game sun from above
    gain = rng.uniform(*st.exposure) * (1 + rng.uniform(-st.white_balance, st.white_balance, 3))
    rgb = rgb * light * gain
    if st.vignette:
        r2 = ((c.xx - c.w / 2) / (c.w / 2)) ** 2 + ((c.yy - c.h / 2) / (c.h / 2)) ** 2
        rgb = rgb * (1 - st.vignette * np.clip(r2 / 2, 0, 1))[..., None]
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + st.saturation * (rgb - grey) + rng.normal(0.0, st.noise, rgb.shape)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if st.blur:
        image = image.filter(ImageFilter.GaussianBlur(st.blur))
    return np.asarray(image)


def render_scene(
    domain: str, width: int, height: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: (RGB uint8 HxWx3, Cityscapes labelIds uint8 HxW)."""
    style = STYLES[domain]
    c = Canvas(height, width, style, rng)
    horizon = rng.uniform(*style.horizon) * height
    vx = rng.uniform(0.35, 0.65) * width
    half = rng.uniform(0.35, 0.6) * width
    road = (vx - half * rng.uniform(0.7, 1.3), vx + half * rng.uniform(0.7, 1.3))
    street = Street(horizon, vx, road, rng.uniform(0.15, 0.35) * width, height)
    _draw_background(c, street)
    _draw_objects(c, street)
    image = _finish(c, street)
    lut = np.zeros(256, dtype=np.uint8)
    lut[: L.NUM_CLASSES] = L.TRAIN_ID_TO_LABEL_ID
    lut[EGO], lut[VOID] = L.LABEL_ID_EGO_VEHICLE, L.LABEL_ID_UNLABELED
    return image, lut[c.label]


def frame_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of one frame: independent of worker count and generation order."""
    return np.random.default_rng([seed, DOMAIN_IDS[domain], SPLIT_IDS[split], index])


def gta5_paths(root: Path, index: int) -> tuple[Path, Path]:
    """GTA5 layout: ``images/00001.png`` and ``labels/00001.png`` (1-based, five digits)."""
    name = f"{index + 1:05d}.png"
    return root / "images" / name, root / "labels" / name


def cityscapes_paths(root: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    """Cityscapes layout: leftImg8bit and gtFine (labelIds and color) for frame ``index`` of ``split``."""
    cities = CITYSCAPES_CITIES[split]
    city, seq = cities[index % len(cities)], index // len(cities)
    stem = f"{city}_{seq:06d}_000019"
    image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    gt = root / "gtFine" / split / city
    return image, gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_color.png"


def _write_source(args: tuple[Path, int, int, int, int]) -> None:
    root, seed, index, width, height = args
    image, label_ids = render_scene("source", width, height, frame_rng(seed, "source", "train", index))
    image_path, label_path = gta5_paths(root, index)
    Image.fromarray(image).save(image_path)
    label = Image.fromarray(label_ids, mode="P")
    label.putpalette(L.cityscapes_palette_bytes())
    label.save(label_path)


def _write_target(args: tuple[Path, int, str, int, int, int]) -> None:
    root, seed, split, index, width, height = args
    image, label_ids = render_scene("target", width, height, frame_rng(seed, "target", split, index))
    image_path, label_path, color_path = cityscapes_paths(root, split, index)
    Image.fromarray(image).save(image_path)
    Image.fromarray(label_ids, mode="L").save(label_path)
    Image.fromarray(L.colorize(L.label_id_to_train_id_lut()[label_ids])).save(color_path)


def generate_source(root: Path, seed: int, count: int, size: tuple[int, int], workers: int = 2) -> None:
    """Write ``count`` source frames of ``size`` (W, H) in the GTA5 layout under ``root``."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(root, seed, i, size[0], size[1]) for i in range(count)]
    _run(_write_source, jobs, workers, "source (GTA5 layout)")


def generate_target(
    root: Path, seed: int, counts: dict[str, int], size: tuple[int, int], workers: int = 2
) -> None:
    """Write target frames of ``size`` (W, H) in the Cityscapes layout, ``counts`` per split."""
    jobs = []
    for split, count in counts.items():
        for city in CITYSCAPES_CITIES[split]:
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        jobs += [(root, seed, split, i, size[0], size[1]) for i in range(count)]
    _run(_write_target, jobs, workers, "target (Cityscapes layout)")


def _run(fn, jobs: list, workers: int, what: str) -> None:
    from tqdm import tqdm

    if workers <= 1:
        for job in tqdm(jobs, desc=what, unit="frame", mininterval=2.0):
            fn(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(
            pool.map(fn, jobs, chunksize=16), total=len(jobs), desc=what, unit="frame", mininterval=2.0
        ):
            pass
