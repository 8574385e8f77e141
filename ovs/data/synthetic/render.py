"""Procedural scene renderer: textured stuff backgrounds and coloured shapes, numpy + PIL only, vectorised.

A scene is sampled from a :class:`SceneConfig` with a ``numpy.random.Generator`` (so it is deterministic by seed),
then rendered in painter's order: later shapes occlude earlier ones. Instances whose visible area falls below
``min_visible_area`` pixels or ``min_visible_fraction`` of their in-frame area are removed from the scene before
compositing, so every rendered pixel belongs to exactly one annotated segment (no void) and captions stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ovs.data.synthetic.classes import (
    COLOURS,
    NUM_SHAPES,
    NUM_STUFF,
    NUM_THINGS,
    SHAPES,
    STUFF,
    thing_index,
)

SKY = [name for name, _ in STUFF].index("sky")
"""Stuff index of ``sky`` (always placed above the horizon when a scene has two stuff regions)."""


@dataclass(frozen=True)
class SceneConfig:
    """Distribution of scenes of one split.

    Attributes:
        image_size: side of the square images in pixels.
        min_instances: fewest shapes sampled per image (before occlusion filtering).
        max_instances: most shapes sampled per image.
        max_distinct: most distinct thing classes per image.
        allowed_things: contiguous ids of the thing classes that may be sampled.
        size_range: shape radius range as a fraction of ``image_size`` (sampled log-uniformly).
        two_stuff_prob: probability of a horizon splitting the background into two stuff classes.
        min_visible_area: smallest visible area (pixels) of a kept instance.
        min_visible_fraction: smallest visible fraction of a kept instance's in-frame area.
        mono_colour_prob: probability that all things of a scene share one colour (scenes that only shapes tell
            apart: hard negatives for contrastive pre-training).
        max_rotation: shapes are rotated by an angle drawn uniformly from ``[-max_rotation, max_rotation]`` radians.
    """

    image_size: int = 112
    min_instances: int = 1
    max_instances: int = 5
    max_distinct: int = 3
    allowed_things: tuple[int, ...] = tuple(range(NUM_THINGS))
    size_range: tuple[float, float] = (0.08, 0.26)
    two_stuff_prob: float = 0.5
    min_visible_area: int = 40
    min_visible_fraction: float = 0.45
    mono_colour_prob: float = 0.0
    max_rotation: float = 0.6

    def __post_init__(self) -> None:
        """Validate the ranges."""
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [32, 1024], got {self.image_size}")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError(
                f"need 0 <= min_instances <= max_instances, got {self.min_instances}, {self.max_instances}"
            )
        if self.max_distinct < 1 or not self.allowed_things:
            raise ValueError("max_distinct must be >= 1 and allowed_things must not be empty")
        if any(not 0 <= t < NUM_THINGS for t in self.allowed_things):
            raise ValueError(f"allowed_things must be thing ids in 0..{NUM_THINGS - 1}, got {self.allowed_things}")
        lo, hi = self.size_range
        if not 0.0 < lo <= hi <= 0.5:
            raise ValueError(f"size_range must satisfy 0 < lo <= hi <= 0.5, got {self.size_range}")
        if not 0.0 <= self.mono_colour_prob <= 1.0:
            raise ValueError(f"mono_colour_prob must be in [0, 1], got {self.mono_colour_prob}")


@dataclass(frozen=True)
class Instance:
    """One sampled shape.

    Attributes:
        class_id: contiguous thing class id.
        colour: colour index into :data:`COLOURS`.
        shape: shape index into :data:`SHAPES`.
        cx: centre column in pixels.
        cy: centre row in pixels.
        radius: circumradius in pixels.
        angle: rotation in radians.
        rgb: jittered base colour.
        light: direction of the shading gradient in radians.
    """

    class_id: int
    colour: int
    shape: int
    cx: float
    cy: float
    radius: float
    angle: float
    rgb: tuple[float, float, float]
    light: float


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: ``uint8`` array ``[H, W, 3]``.
        instance_map: ``int32`` array ``[H, W]``: index into ``instances`` of the visible thing, ``-1`` for stuff.
        stuff_map: ``int32`` array ``[H, W]``: stuff class index (``0..NUM_STUFF-1``) of the background pixel.
        instances: the kept instances in painter's order (first = bottom).
        stuff: stuff class indices present in the background (one or two, top region first).
    """

    image: np.ndarray
    instance_map: np.ndarray
    stuff_map: np.ndarray
    instances: list[Instance] = field(default_factory=list)
    stuff: list[int] = field(default_factory=list)


def _resize_float(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubically resize a float32 ``[h, w]`` grid to ``size = (H, W)``."""
    out = Image.fromarray(grid.astype(np.float32)).resize((size[1], size[0]), Image.BICUBIC)  # float32 -> mode "F"
    return np.asarray(out, dtype=np.float32)


def value_noise(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise in ``[0, 1]``-ish: a random ``cells`` grid upsampled to ``size = (H, W)`` → ``[H, W]``."""
    return _resize_float(rng.random((cells[0] + 1, cells[1] + 1), dtype=np.float32), size)


def fbm(rng: np.random.Generator, size: tuple[int, int], base_cells: int, octaves: int = 3) -> np.ndarray:
    """Fractal noise: octaves of :func:`value_noise` with doubling frequency, mean 0, std 1 → ``[H, W]``."""
    total = np.zeros(size, dtype=np.float32)
    for o in range(octaves):
        cells = base_cells * 2**o
        total += value_noise(rng, size, (cells, cells)) * 0.5**o
    return (total - total.mean()) / (total.std() + 1e-6)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each ``[S, S]`` float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")


def _colour_field(base: tuple[float, float, float], modulation: np.ndarray) -> np.ndarray:
    """``base * (1 + modulation)`` as ``[H, W, 3]`` float32."""
    return np.asarray(base, dtype=np.float32)[None, None, :] * (1.0 + modulation[..., None])


def render_texture(stuff: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render the texture of stuff class ``stuff`` as float32 RGB ``[S, S, 3]`` (unclipped, ~0..255)."""
    if not 0 <= stuff < NUM_STUFF:
        raise ValueError(f"stuff index {stuff} is outside 0..{NUM_STUFF - 1}")
    shape2d = (size, size)
    y, x = _grid(size)
    u, v = x / size, y / size  # [S, S] in [0, 1]
    jitter = rng.uniform(0.9, 1.1)
    name = STUFF[stuff][0]
    if name == "sky":
        top = np.array([60, 120, 215], np.float32) * jitter
        bottom = np.array([165, 205, 245], np.float32) * jitter
        img = top + (bottom - top) * v[..., None]
        clouds = np.clip(fbm(rng, shape2d, 2, 3) - 0.6, 0.0, None)
        return img + (255.0 - img) * np.clip(clouds * 0.6, 0.0, 0.9)[..., None]
    if name == "grass":
        blades = value_noise(rng, shape2d, (3, size // 2)) - 0.5
        return _colour_field((70 * jitter, 145, 45), 0.1 * fbm(rng, shape2d, 4, 2) + 0.6 * blades)
    if name == "water":
        freq = rng.uniform(5.0, 9.0)
        warp = 0.04 * np.sin(2 * np.pi * (u * rng.uniform(1.0, 2.5) + rng.random()))
        waves = np.sin(2 * np.pi * freq * (v + warp) + rng.uniform(0, 2 * np.pi))
        mod = 0.18 * waves + 0.06 * fbm(rng, shape2d, 3, 2)
        return _colour_field((25, 95 * jitter, 155), mod) + 35.0 * np.clip(waves - 0.85, 0.0, None)[..., None] / 0.15
    if name == "sand":
        angle = rng.uniform(-0.5, 0.5)
        ripples = np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * (u * math.sin(angle) + v * math.cos(angle)))
        grain = rng.normal(0.0, 1.0, shape2d).astype(np.float32)
        return _colour_field((220, 190 * jitter, 135), 0.05 * ripples + 0.05 * grain + 0.04 * fbm(rng, shape2d, 3, 2))
    if name == "brick wall":
        bh = size / rng.uniform(9.0, 13.0)
        bw = bh * rng.uniform(2.0, 2.6)
        row = np.floor(y / bh)
        shifted = x + (row % 2) * bw / 2
        col = np.floor(shifted / bw)
        mortar = (y - row * bh < 1.5) | (shifted - col * bw < 1.5)
        brick_id = (row.astype(np.int64) * 1000 + col.astype(np.int64)) % 4096
        shade = rng.uniform(-0.15, 0.15, 4096).astype(np.float32)[brick_id]
        img = _colour_field((165 * jitter, 65, 45), shade + 0.05 * fbm(rng, shape2d, 6, 2))
        img[mortar] = np.array([205, 200, 190], np.float32)
        return img
    if name == "snow":
        drifts = fbm(rng, shape2d, 2, 3)  # bluish shadows in the hollows
        sparkle = rng.normal(0.0, 1.0, shape2d).astype(np.float32)
        img = _colour_field((238, 242, 250), 0.03 * drifts + 0.025 * sparkle)
        return img - np.array([10, 5, 0], np.float32) * np.clip(1.0 - drifts, 0.0, None)[..., None]
    if name == "road":
        speckle = rng.normal(0.0, 1.0, shape2d).astype(np.float32)
        return _colour_field((82 * jitter, 82, 88), 0.12 * speckle + 0.06 * fbm(rng, shape2d, 4, 2))
    if name == "wood":
        plank = size / rng.uniform(3.0, 5.0)
        grain = np.sin(2 * np.pi * (x / plank * 4.0 + 1.5 * value_noise(rng, shape2d, (2, 6))) * 2.0)
        seams = ((x % plank) < 1.5).astype(np.float32)
        return _colour_field((150, 98 * jitter, 55), 0.1 * grain - 0.35 * seams + 0.04 * fbm(rng, shape2d, 4, 2))
    raise ValueError(f"no texture is defined for stuff class {name!r}")


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    """Inside test of a regular polygon with a vertex pointing up (``-v``), circumradius-normalised coords."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        phi = math.pi / 2 + math.pi / sides + 2 * math.pi * k / sides  # outward normal of edge k
        inside &= u * math.cos(phi) - v * math.sin(phi) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Inside test of a ``points``-pointed star (outer radius 1, inner radius ``inner``) with straight edges."""
    half = math.pi / points
    theta = np.arctan2(u, -v)  # 0 at the top vertex
    folded = np.abs((theta + half) % (2 * half) - half)  # [0, half]: angle from the nearest outer vertex
    rho = np.hypot(u, v)
    # Edge from the outer vertex (1, 0) to the inner vertex (inner*cos(half), inner*sin(half)) in local coords.
    ax, ay = 1.0, 0.0
    bx, by = inner * math.cos(half), inner * math.sin(half)
    nx, ny = by - ay, ax - bx  # normal of the edge, pointing outwards
    dist = nx * ax + ny * ay
    return rho * (nx * np.cos(folded) + ny * np.sin(folded)) <= dist


def shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of shape ``shape`` on normalised, rotated coordinates (circumradius 1) → bool like ``u``."""
    name = SHAPES[shape][0]
    if name == "circle":
        return u * u + v * v <= 0.85**2
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if name == "triangle":
        return _regular_polygon(u, v + 0.2, 3, 0.5)
    if name == "star":
        return _star(u, v)
    if name == "heart":
        hx, hy = u * 1.25, -(v * 1.25) + 0.25
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.27) & (av <= 0.85)) | ((av <= 0.27) & (au <= 0.85))
    raise ValueError(f"unknown shape index {shape} (0..{NUM_SHAPES - 1})")


def _sample_instances(cfg: SceneConfig, rng: np.random.Generator) -> list[Instance]:
    """Sample the shapes of one scene (before occlusion filtering) in painter's order."""
    n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    if n == 0:
        return []
    pool = np.asarray(cfg.allowed_things)
    if cfg.mono_colour_prob > 0 and rng.random() < cfg.mono_colour_prob:
        colour = rng.choice(np.unique(pool // NUM_SHAPES))
        pool = pool[pool // NUM_SHAPES == colour]
    n_distinct = int(rng.integers(1, min(cfg.max_distinct, n, len(pool)) + 1))
    classes = rng.choice(pool, size=n_distinct, replace=False)
    labels = np.concatenate([classes, rng.choice(classes, size=n - n_distinct)])
    rng.shuffle(labels)
    s = cfg.image_size
    lo, hi = cfg.size_range
    instances = []
    for label in labels.tolist():
        colour, shape = divmod(label, NUM_SHAPES)
        radius = s * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        margin = 0.5 * radius
        base = np.asarray(COLOURS[colour][2], np.float32)
        rgb = np.clip(base * rng.uniform(0.85, 1.1) + rng.normal(0.0, 10.0, 3), 0, 255)
        instances.append(
            Instance(
                class_id=thing_index(colour, shape),
                colour=colour,
                shape=shape,
                cx=float(rng.uniform(margin, s - margin)),
                cy=float(rng.uniform(margin, s - margin)),
                radius=radius,
                angle=float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)),
                rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
                light=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    return instances


def _instance_mask(inst: Instance, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Full (unoccluded) bool mask ``[S, S]`` of an instance."""
    dx, dy = (x - inst.cx) / inst.radius, (y - inst.cy) / inst.radius
    c, s = math.cos(inst.angle), math.sin(inst.angle)
    return shape_mask(inst.shape, c * dx + s * dy, -s * dx + c * dy)


def _sample_background(
    cfg: SceneConfig, rng: np.random.Generator, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Background texture ``[S, S, 3]`` float32, stuff map ``[S, S]`` int32 and the stuff classes (top first)."""
    s = cfg.image_size
    if rng.random() < cfg.two_stuff_prob:
        pair = rng.choice(NUM_STUFF, size=2, replace=False).tolist()
        if pair[1] == SKY:
            pair.reverse()
        horizon = rng.uniform(0.35, 0.65) * s
        tilt = math.tan(rng.uniform(-0.25, 0.25))
        amp, freq = rng.uniform(0.0, 0.04) * s, rng.uniform(0.5, 2.0)
        boundary = horizon + tilt * (x - s / 2) + amp * np.sin(2 * np.pi * freq * x / s + rng.uniform(0, 2 * np.pi))
        bottom = y >= boundary  # [S, S]
        stuff_map = np.where(bottom, pair[1], pair[0]).astype(np.int32)
        image = np.where(bottom[..., None], render_texture(pair[1], rng, s), render_texture(pair[0], rng, s))
        present = [p for p in pair if (stuff_map == p).any()]
        return image, stuff_map, present
    stuff = int(rng.integers(NUM_STUFF))
    return render_texture(stuff, rng, s), np.full((s, s), stuff, np.int32), [stuff]


def render_scene(cfg: SceneConfig, rng: np.random.Generator) -> Scene:
    """Sample and render one scene: background, shapes in painter's order, occlusion filtering."""
    s = cfg.image_size
    y, x = _grid(s)
    image, stuff_map, stuff = _sample_background(cfg, rng, y, x)
    sampled = _sample_instances(cfg, rng)
    masks = [_instance_mask(inst, y, x) for inst in sampled]
    # Top-down pass: an instance is kept iff enough of it stays visible under the kept instances above it.
    occupied = np.zeros((s, s), dtype=bool)
    keep = [False] * len(sampled)
    for i in range(len(sampled) - 1, -1, -1):
        visible = masks[i] & ~occupied
        area, full = int(visible.sum()), int(masks[i].sum())
        if full > 0 and area >= cfg.min_visible_area and area >= cfg.min_visible_fraction * full:
            keep[i] = True
            occupied |= masks[i]
    instances = [inst for inst, k in zip(sampled, keep) if k]
    instance_map = np.full((s, s), -1, dtype=np.int32)
    for j, (inst, mask) in enumerate(zip(instances, [m for m, k in zip(masks, keep) if k])):
        dx, dy = x - inst.cx, y - inst.cy
        shading = 1.0 + 0.2 * (dx * math.cos(inst.light) + dy * math.sin(inst.light)) / inst.radius  # [S, S]
        layer = _colour_field(inst.rgb, shading - 1.0) + rng.normal(0.0, 4.0, (s, s, 1)).astype(np.float32)
        image[mask] = layer[mask]
        instance_map[mask] = j
    image_u8 = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    stuff = [p for p in stuff if ((stuff_map == p) & (instance_map < 0)).any()]
    return Scene(image=image_u8, instance_map=instance_map, stuff_map=stuff_map, instances=instances, stuff=stuff)
