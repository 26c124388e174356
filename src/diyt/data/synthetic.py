"""Embedded synthetic dataset: industrial textures and a machined part, with pixel-exact defect masks.

Three categories in the spirit of MVTec AD (Bergmann et al., CVPR 2019): `weave`, a plain-woven fabric (periodic);
`stone`, a stone surface from multi-octave value noise (stochastic); `nut`, a brass hex nut on a conveyor, with
pose jitter. Normal images vary in pattern phase and scale, lighting (gradient, vignetting), colour and sensor
noise. A defect is painted through a soft shape `alpha`, cut to zero below ALPHA_MIN; its mask is the set of pixels
that painting changed, so outside the mask a defective image is its clean rendering, byte for byte.

Every image depends only on its key `(seed, category index, group, index)`, groups being 0 train, 1 test good and
2 test defective: one sample renders without the others, and the same seed gives byte-identical PNGs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from diyt.data.sample import GOOD, Sample
from diyt.errors import DataError

__all__ = ["CATEGORIES", "GROUP_TEST_DEFECT", "GROUP_TEST_GOOD", "GROUP_TRAIN", "SUBTLE_EVERY", "defect_types",
           "generate", "render"]

CATEGORIES = ("weave", "stone", "nut")
GROUP_TRAIN, GROUP_TEST_GOOD, GROUP_TEST_DEFECT = 0, 1, 2
SUBTLE_EVERY = 7  # every 7th defect of a type (~15%) is drawn smaller and fainter
ALPHA_MIN = 0.12  # a defect's soft shape counts (and changes pixels) above this opacity
MIN_AREA = 0.001  # of the image: smaller draws are redrawn


@dataclass(frozen=True)
class Scene:
    """A clean rendering and what its defects need to know about it (lengths in image fractions)."""

    image: np.ndarray  # (S, S, 3) float32, ~[0, 1]
    support: np.ndarray  # (S, S) float32: coverage of the material that defects may touch
    centre: tuple[float, float]  # (y, x) of the annulus where defects are centred
    annulus: tuple[float, float]  # its inner and outer radius
    light: float  # direction towards the light, radians (image axes, y down)
    rim: float = 0.0  # radius of the part's outer edge (0 for a texture)
    under: np.ndarray | None = None  # (S, S, 3): what a missing piece reveals
    lanes: np.ndarray | None = None  # (S, S) int: which warp thread a pixel belongs to (weave)
    along: np.ndarray | None = None  # (S, S): position along the warp threads (weave)


Defect = Callable[[Scene, np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]  # -> paint, alpha


# ----------------------------------------------------------------------------------------------- fields
@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in image fractions, each (S, S) float32."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(t[:, None], (size, size)), np.broadcast_to(t[None, :], (size, size))


def _noise(rng: np.random.Generator, size: int, cells: int, cells_x: int | None = None) -> np.ndarray:
    """Value noise: a random lattice of `cells` (down) by `cells_x` (across) cells, bicubic-upsampled; (S, S)."""
    lattice = rng.standard_normal((min(cells, size) + 1, min(cells_x or cells, size) + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(lattice).resize((size, size), Image.Resampling.BICUBIC))


def _fbm(rng: np.random.Generator, size: int, cells: int, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Multi-octave value noise, about unit variance; (S, S)."""
    weights = [gain**k for k in range(octaves)]
    total = sum(w * _noise(rng, size, cells * 2**k) for k, w in enumerate(weights))
    return total / (0.8 * math.sqrt(sum(w * w for w in weights)))


def _lighting(rng: np.random.Generator, size: int, slope: float, vignette: float) -> np.ndarray:
    """Exposure, a linear gradient and an off-centre vignette, multiplicative; (S, S)."""
    yy, xx = _grid(size)
    a = rng.uniform(0, math.tau)
    cy, cx = (0.5 + rng.normal(0, 0.08, 2)).tolist()
    ramp = 1 + rng.uniform(0.3, 1) * slope * ((xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a))
    vig = 1 - rng.uniform(0.3, 1) * vignette * ((xx - cx) ** 2 + (yy - cy) ** 2)
    return rng.uniform(0.88, 1.12) * ramp * vig


def _edge(signed: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased step: 0 where `signed` < -width/2, 1 where > width/2."""
    return np.clip(signed / width + 0.5, 0, 1)


def _sensor(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Sensor noise, grey and uniform (cheaper than Gaussian, alike at this level); (S, S, 1)."""
    return (rng.random((size, size, 1), dtype=np.float32) - 0.5) * (sigma * math.sqrt(12))


def _colour(rgb: Sequence[float], rng: np.random.Generator, gain: float, drift: float) -> np.ndarray:
    """A colour with a random exposure gain (±`gain`) and per-channel drift; (3,) float32."""
    return (np.asarray(rgb) * rng.uniform(1 - gain, 1 + gain) + rng.normal(0, drift, 3)).astype(np.float32)


# ------------------------------------------------------------------------------------------- categories
def _weave(rng: np.random.Generator, size: int) -> Scene:
    """Plain-woven fabric: over/under warp and weft threads with per-thread tone and fibre streaks."""
    yy, xx = _grid(size)
    period = rng.uniform(1 / 17.5, 1 / 14.5)
    th = math.radians(rng.uniform(-4, 4))
    u = (xx * math.cos(th) + yy * math.sin(th)) / period + rng.uniform(0, 2)
    v = (yy * math.cos(th) - xx * math.sin(th)) / period + rng.uniform(0, 2)
    fu, fv = np.floor(u), np.floor(v)
    pu, pv = np.sin(np.pi * (u - fu)), np.sin(np.pi * (v - fv))  # thread cross-sections
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    tone_u = rng.normal(0, 0.05, iu.max() - iu.min() + 1).astype(np.float32)[iu - iu.min()]
    tone_v = rng.normal(0, 0.05, iv.max() - iv.min() + 1).astype(np.float32)[iv - iv.min()]
    fibres = max(4, size // 3)
    warp = np.sqrt(pu) * (0.72 + 0.28 * pv) * (1 + tone_u + 0.07 * _noise(rng, size, max(2, size // 24), fibres))
    weft = np.sqrt(pv) * (0.72 + 0.28 * pu) * (1 + tone_v + 0.07 * _noise(rng, size, fibres, max(2, size // 24)))
    warp_top = ((iu + iv) & 1) == 0
    c_weft = _colour([0.66, 0.61, 0.50], rng, gain=0.08, drift=0.006)
    c_warp = _colour(c_weft, rng, gain=0.0, drift=0.006)
    light = _lighting(rng, size, slope=0.3, vignette=0.6)[..., None]
    grain = _sensor(rng, size, 0.012)
    shade = np.where(warp_top, 0.16 + 0.84 * warp, 0.16 + 0.84 * weft)[..., None]
    image = shade * np.where(warp_top[..., None], c_warp, c_weft) * light + grain
    bare = (0.08 + 0.5 * weft)[..., None] * c_weft * light + grain  # the weft where the warp is gone
    return Scene(image, np.ones((size, size), np.float32), (0.5, 0.5), (0.0, 0.4), rng.uniform(0, math.tau),
                 under=bare, lanes=iu, along=v * period)


def _stone(rng: np.random.Generator, size: int) -> Scene:
    """Granite-like stone: multi-octave mottling between two tones, dark and light grains, lighting."""
    dark = _colour([0.36, 0.35, 0.35], rng, gain=0.0, drift=0.006)
    pale = _colour([0.74, 0.71, 0.66], rng, gain=0.0, drift=0.006)
    mottle = np.clip(0.5 + 0.16 * _fbm(rng, size, 3, 4), 0, 1)[..., None]
    grains = _noise(rng, size, max(2, size // 5))
    speck = 0.5 * np.clip(grains - 1.0, 0, 1) - 0.25 * np.clip(-grains - 1.2, 0, 1)
    fine = 0.05 * _noise(rng, size, max(2, size // 12))
    albedo = (dark + (pale - dark) * mottle) * (1 + fine - speck)[..., None]
    image = albedo * _lighting(rng, size, slope=0.5, vignette=0.9)[..., None] + _sensor(rng, size, 0.012)
    return Scene(image, np.ones((size, size), np.float32), (0.5, 0.5), (0.0, 0.4), rng.uniform(0, math.tau))


def _nut(rng: np.random.Generator, size: int) -> Scene:
    """A brass hex nut seen from above (face, chamfered corners, bore with threads) on a dark conveyor."""
    yy, xx = _grid(size)
    px = 1.0 / size
    cy, cx = (0.5 + rng.normal(0, 0.012, 2)).tolist()
    apothem, bore = 0.32 * rng.uniform(0.95, 1.05), 0.42 * 0.32 * rng.uniform(0.97, 1.03)
    phi, light = math.radians(rng.uniform(-10, 10)), math.radians(225 + rng.uniform(-20, 20))
    ly, lx = math.sin(light), math.cos(light)
    dy, dx = yy - cy, xx - cx
    r = np.sqrt(dy * dy + dx * dx)
    facing = (dx * lx + dy * ly) / np.maximum(r, px)  # cos(angle to the light) of an outward normal

    def hexagon(oy: float, ox: float, soft: float) -> np.ndarray:
        """Coverage of the nut's outline (corners rounded off) shifted by (oy, ox), its edge `soft` wide."""
        qy, qx = dy - oy, dx - ox
        flats = np.maximum.reduce([np.abs(qx * math.cos(phi + k * math.pi / 3) + qy * math.sin(phi + k * math.pi / 3))
                                   for k in range(3)])
        return _edge(apothem - flats, soft) * _edge(1.09 * apothem - np.sqrt(qy * qy + qx * qx), soft)

    outer = hexagon(0.0, 0.0, px)
    metal = outer * _edge(r - 0.8 * bore, px)
    rings = np.sin(math.tau * r / 0.02 + 0.8 * _noise(rng, size, 6))
    glint = np.exp(-((dx - 0.45 * apothem * lx) ** 2 + (dy - 0.45 * apothem * ly) ** 2) / (0.18 * apothem**2))
    face = 0.72 + 0.12 * (dx * lx + dy * ly) / apothem + 0.03 * rings + 0.25 * glint
    shade = np.select(
        [r < bore, r < 1.18 * bore, r < 0.97 * apothem],
        [0.32 - 0.1 * facing + 0.1 * np.sin(math.tau * r / 0.011), 0.55 - 0.3 * facing, face],
        0.55 + 0.35 * facing)
    shade = shade * (1 + 0.04 * _noise(rng, size, max(2, size // 4)))
    brass = _colour([0.84, 0.67, 0.38], rng, gain=0.07, drift=0.015)
    belt = _colour([0.21, 0.23, 0.26], rng, gain=0.15, drift=0.005)
    cloth = 1 + 0.08 * _fbm(rng, size, 8, 3) + 0.06 * _noise(rng, size, max(2, size // 3))
    shadow = hexagon(-0.025 * ly, -0.025 * lx, 10 * px)
    floor = cloth * np.where(r < bore, 0.35, 1 - 0.5 * shadow)  # the belt's brightness
    lit = _lighting(rng, size, slope=0.3, vignette=0.5)
    grain = _sensor(rng, size, 0.012)
    image = (floor * (1 - metal) * lit)[..., None] * belt + (shade * metal * lit)[..., None] * brass + grain
    return Scene(image, metal, (cy, cx), (1.3 * bore, 0.85 * apothem), light, rim=1.05 * apothem,
                 under=(floor * lit)[..., None] * belt + grain)


# ---------------------------------------------------------------------------------------------- shapes
def _place(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A defect centre (y, x), uniform over the scene's annulus."""
    r_in, r_out = scene.annulus
    r, a = np.sqrt(rng.uniform(r_in**2, r_out**2)), rng.uniform(0, math.tau)
    return np.array(scene.centre) + r * np.array([np.sin(a), np.cos(a)])


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float, rough: float,
          soft: float) -> np.ndarray:
    """Alpha of an irregular disc: the radius wobbles by `rough`, the edge fades over `soft` of it; (S, S)."""
    yy, xx = _grid(size)
    cy, cx = centre.tolist()
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / radius + rough * _noise(rng, size, max(2, round(1.3 / radius)))
    return np.clip((1 - d) / soft, 0, 1)


def _strokes(size: int, paths: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Alpha of polylines, each (points (N, 2) as y, x fractions; widths (N-1,) as fractions); (S, S)."""
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    for points, widths in paths:
        xy = points[:, ::-1] * size
        for p, q, w in zip(xy[:-1], xy[1:], np.maximum(widths * size, 1.0)):
            draw.line([tuple(p), tuple(q)], fill=255, width=round(w))
            draw.ellipse([q[0] - w / 2, q[1] - w / 2, q[0] + w / 2, q[1] + w / 2], fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.6, size / 256)))
    return np.asarray(canvas, np.float32) / 255


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, steps: int) -> np.ndarray:
    """A jagged path of `steps` straight pieces, its heading drifting and kinking at every joint; (steps + 1, 2)."""
    turns = heading + np.cumsum(rng.normal(0, 0.12, steps)) + rng.normal(0, 0.5, steps)
    moves = np.stack([np.sin(turns), np.cos(turns)], axis=1) * (length / steps)
    return np.concatenate([start[None], start + np.cumsum(moves, axis=0)])


# --------------------------------------------------------------------------------------------- defects
def _scratch(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A slightly curved line: a bright gouge or a dark groove."""
    scale = 0.6 if subtle else 1.0
    mid, a = _place(scene, rng), rng.uniform(0, math.tau)
    half = np.array([np.sin(a), np.cos(a)]) * rng.uniform(0.1, 0.22) * scale
    bend = np.array([np.cos(a), -np.sin(a)]) * rng.normal(0, 0.15) * np.linalg.norm(half)
    t = np.linspace(0, 1, 24)[:, None]
    points = (1 - t) ** 2 * (mid - half) + 2 * t * (1 - t) * (mid + bend) + t**2 * (mid + half)
    alpha = _strokes(scene.image.shape[0], [(points, np.full(23, rng.uniform(0.024, 0.036) * scale))])
    image = scene.image
    paint = image + 0.7 * (1 - image) if rng.random() < 0.7 else 0.35 * image
    return paint, alpha * (0.5 if subtle else 1.0)


def _crack(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged fracture, widest in its middle, with one branch."""
    scale = 0.6 if subtle else 1.0
    steps, heading = 20, rng.uniform(0, math.tau)
    trunk = _walk(rng, _place(scene, rng), heading, rng.uniform(0.25, 0.45) * scale, steps)
    width = rng.uniform(0.02, 0.03) * scale
    fork = int(rng.integers(4, steps - 6))
    branch = _walk(rng, trunk[fork], heading + rng.choice([-1, 1]) * 0.8, rng.uniform(0.06, 0.15) * scale, 8)
    taper = 0.35 + 0.65 * np.sin(np.pi * (np.arange(steps) + 0.5) / steps)
    alpha = _strokes(scene.image.shape[0], [(trunk, width * taper),
                                            (branch, width * taper[fork] * np.linspace(0.8, 0.3, 8))])
    return 0.15 * scene.image, alpha * (0.55 if subtle else 1.0)


def _hole(floor: float, ceil: float, radii: tuple[float, float]) -> Defect:
    """A pit or hole: a rough disc, its wall nearer the light in shadow (x `floor`), the far one lit (x `ceil`)."""

    def hole(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
        size, centre = scene.image.shape[0], _place(scene, rng)
        radius = rng.uniform(*radii) * (0.65 if subtle else 1.0)
        alpha = _blob(rng, size, centre, radius, rough=0.2, soft=0.3)
        yy, xx = _grid(size)
        cy, cx = centre.tolist()
        s = ((yy - cy) * math.sin(scene.light) + (xx - cx) * math.cos(scene.light)) / radius
        paint = scene.image * (floor + (ceil - floor) * (np.clip(1 - s, 0, 2) / 2) ** 2)[..., None]
        return paint, alpha * (0.6 if subtle else 1.0)

    return hole


TINTS = (np.array([0.95, 0.5, 0.25]), np.array([0.3, 0.29, 0.28]), np.array([0.45, 0.65, 1.2]))


def _stain(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A soft discoloured patch: rust, oil or a bluish tarnish."""
    radius = rng.uniform(0.05, 0.1) * (0.75 if subtle else 1.0)
    alpha = _blob(rng, scene.image.shape[0], _place(scene, rng), radius, rough=0.35, soft=0.6)
    strength = rng.uniform(0.3, 0.4) if subtle else rng.uniform(0.75, 1.0)
    return scene.image * TINTS[rng.integers(len(TINTS))].astype(np.float32), alpha * strength


def _missing_threads(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """One or two warp threads gone over a stretch, baring the weft."""
    size = scene.image.shape[0]
    iy, ix = np.clip((_place(scene, rng) * size).astype(int), 0, size - 1)
    lane, along = scene.lanes[iy, ix], scene.along[iy, ix]
    n = 1 if subtle or rng.random() < 0.5 else 2
    half = rng.uniform(0.07, 0.17) * (0.6 if subtle else 1.0)
    region = (scene.lanes >= lane) & (scene.lanes < lane + n) & (np.abs(scene.along - along) < half)
    return scene.under, region.astype(np.float32)


def _chipped_rim(scene: Scene, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off the part's edge, baring what lies under it."""
    a = rng.uniform(0, math.tau)
    centre = np.array(scene.centre) + scene.rim * np.array([np.sin(a), np.cos(a)])
    radius = rng.uniform(0.06, 0.1) * (0.6 if subtle else 1.0)
    return scene.under, _blob(rng, scene.image.shape[0], centre, radius, rough=0.25, soft=0.08)


# ------------------------------------------------------------------------------------------------- API
@dataclass(frozen=True)
class _Category:
    draw: Callable[[np.random.Generator, int], Scene]
    defects: dict[str, Defect]


_REGISTRY = {
    "weave": _Category(_weave, {"hole": _hole(0.04, 0.3, (0.03, 0.06)), "missing": _missing_threads,
                                "scratch": _scratch, "stain": _stain}),
    "stone": _Category(_stone, {"crack": _crack, "hole": _hole(0.05, 1.5, (0.035, 0.065)), "scratch": _scratch,
                                "stain": _stain}),
    "nut": _Category(_nut, {"crack": _crack, "hole": _hole(0.1, 1.3, (0.022, 0.04)), "missing": _chipped_rim,
                            "scratch": _scratch, "stain": _stain}),
}


def _category(category: str) -> _Category:
    if category not in _REGISTRY:
        raise DataError(f"synthetic: unknown category {category!r} (allowed: {', '.join(CATEGORIES)})")
    return _REGISTRY[category]


def defect_types(category: str) -> tuple[str, ...]:
    """The defect types of a category, in the order test defects cycle through them."""
    return tuple(_category(category).defects)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def render(category: str, image_size: int, key: Sequence[int], defect: str | None = None,
           subtle: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (S, S, 3) uint8 and its defect mask (S, S) bool, None when clean, from its key alone.

    The clean scene and the defect draw from separate streams, so the clean rendering of a key is the
    defective one outside its mask.
    """
    spec = _category(category)
    if defect is not None and defect not in spec.defects:
        raise DataError(f"synthetic: {category} has no defect {defect!r} (allowed: {', '.join(spec.defects)})")
    scene_seed, defect_seed = np.random.SeedSequence([int(k) for k in key]).spawn(2)
    scene = spec.draw(np.random.default_rng(scene_seed), image_size)
    clean = _to_uint8(scene.image)
    if defect is None:
        return clean, None
    rng = np.random.default_rng(defect_seed)
    for _ in range(16):  # a draw mostly clipped away by the part's outline is drawn again (else the last is kept)
        paint, alpha = spec.defects[defect](scene, rng, subtle)
        alpha = alpha * scene.support
        mask = alpha > ALPHA_MIN
        if mask.sum() >= max(1.0, MIN_AREA * mask.size):
            break
    image = clean.copy()
    image[mask] = _to_uint8(scene.image[mask] + (paint[mask] - scene.image[mask]) * alpha[mask][:, None])
    return image, (image != clean).any(axis=-1)  # a shape pixel that rounds back to its clean value is no defect


_cached = functools.lru_cache(maxsize=8)(render)  # a sample's image and mask are loaded one after the other


def _load_image(*render_args) -> Image.Image:
    return Image.fromarray(_cached(*render_args)[0].copy())


def _load_mask(*render_args) -> Image.Image:
    return Image.fromarray(_cached(*render_args)[1].astype(np.uint8) * 255)


def generate(category: str, n_train: int, n_test_good: int, n_test_defect: int, image_size: int,
             seed: int) -> list[Sample]:
    """The samples of one category, loaded lazily.

    Test defects cycle through the category's defect types; every SUBTLE_EVERY-th of a type is subtle.
    """
    types = defect_types(category)
    cat = CATEGORIES.index(category)

    def sample(split: str, group: int, index: int, name: str, defect: str | None = None,
               subtle: bool = False) -> Sample:
        args = (category, image_size, (seed, cat, group, index), defect, subtle)
        return Sample(name=name, split=split, defect_type=defect or GOOD,
                      load_image=functools.partial(_load_image, *args),
                      load_mask=functools.partial(_load_mask, *args) if defect else None,
                      origin=f"synthetic {category} seed={seed} {split}/{defect or GOOD}/{name}")

    samples = [sample("train", GROUP_TRAIN, i, f"{i:03d}") for i in range(n_train)]
    samples += [sample("test", GROUP_TEST_GOOD, i, f"{i:03d}") for i in range(n_test_good)]
    for i in range(n_test_defect):
        rank = i // len(types)  # among the defects of its type
        samples.append(sample("test", GROUP_TEST_DEFECT, i, f"{rank:03d}", types[i % len(types)],
                              subtle=rank % SUBTLE_EVERY == SUBTLE_EVERY // 2))
    return samples
