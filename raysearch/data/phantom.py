"""Built-in synthetic X-rays ("phantoms"): seeded, deterministic, written in the real data's on-disk format.

Each image shows one upper-limb layout (soft-tissue silhouette, bones drawn as tubes with bright cortex
and darker marrow) with exactly one fracture: a thin dark jagged line across a long bone whose far piece
is shifted a few pixels. The label is a 4-point polygon (an oriented box along the bone around the
break), normalised to [0, 1], in canonical order: clockwise on screen in image coordinates (x right,
y down, so the shoelace signed area is positive), starting from the point with the smallest x + y.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from raysearch.core.files import atomic_folder
from raysearch.data.samples import SPLITS
from raysearch.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("finger", "wrist", "forearm", "elbow", "humerus", "shoulder")
GENERATOR_VERSION = 1
_SUBPIXEL_BITS = 4
_Point = tuple[float, float] | np.ndarray


@dataclass(frozen=True)
class PhantomSpec:
    """How many phantom images to write per split, their size in pixels, and the seed."""

    train: int = 480
    val: int = 120
    test: int = 120
    image_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in SPLITS:
            if getattr(self, name) < 0:
                raise ConfigError(f"phantom spec: {name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ConfigError(f"phantom spec: image_size must be >= 32, got {self.image_size}")


@dataclass(frozen=True)
class PhantomImage:
    """One rendered phantom: image (H, W) uint8, bone mask (H, W) uint8 0/1, polygon (4, 2) float32 in [0, 1]."""

    image: np.ndarray
    mask: np.ndarray
    polygon: np.ndarray
    class_id: int


@dataclass(frozen=True)
class _Bone:
    """A bone outline (K, 2) as (x, y), its relative density; long bones also have an axis p0 -> p1 and a radius."""

    outline: np.ndarray
    axis: np.ndarray | None = None
    radius: float = 0.0
    density: float = 1.0


def _long_bone(p0: _Point, p1: _Point, radius: float, flare: float = 0.5) -> _Bone:
    """A tube from p0 to p1 whose ends widen by `flare` (epiphyses) and are capped by half circles."""
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    u = (b - a) / np.linalg.norm(b - a)
    v = np.array([-u[1], u[0]])
    t = np.linspace(0.0, 1.0, 17)[:, None]
    w = radius * (1.0 + flare * (2.0 * t - 1.0) ** 6)
    centre = a + t * (b - a)
    phi = np.linspace(0.0, np.pi, 9)[1:-1, None]
    cap1 = b + w[-1] * (np.cos(phi) * v + np.sin(phi) * u)
    cap0 = a + w[0] * (-np.cos(phi) * v - np.sin(phi) * u)
    outline = np.concatenate([centre + w * v, cap1, (centre - w * v)[::-1], cap0])
    return _Bone(outline, np.stack([a, b]), radius)


def _blob(centre: _Point, rx: float, ry: float, angle: float = 0.0) -> _Bone:
    """An ellipse of spongy bone (carpal, humeral head, condyle)."""
    phi = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    c, s, x, y = np.cos(angle), np.sin(angle), rx * np.cos(phi), ry * np.sin(phi)
    return _Bone(np.asarray(centre) + np.stack([c * x - s * y, s * x + c * y], axis=1), density=0.75)


def _plate(corners: np.ndarray, density: float) -> _Bone:
    """A thin plate of bone (scapula): the polygon `corners` rounded by three rounds of corner cutting."""
    pts = corners
    for _ in range(3):
        after = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * after, 0.25 * pts + 0.75 * after], axis=1).reshape(-1, 2)
    return _Bone(pts, density=density)


def _ray(start: np.ndarray, angle: float, length: float) -> np.ndarray:
    """The point `length` away from `start` in direction `angle` (radians, 0 = up, clockwise)."""
    return start + length * np.array([np.sin(angle), -np.cos(angle)])


def _finger(rng: np.random.Generator) -> list[_Bone]:
    """One to three fingers, each a metacarpal stub and three thin phalanges bent slightly at open joints."""
    n, bones = int(rng.integers(1, 4)), []
    for k in range(n):
        p = np.array([(k - (n - 1) / 2) * 0.26, 0.62])
        angle, scale = p[0] * 0.4 + rng.uniform(-0.08, 0.08), rng.uniform(0.95, 1.15)
        for length, radius in ((0.22, 0.032), (0.26, 0.028), (0.17, 0.024), (0.12, 0.021)):
            q = _ray(p, angle, length * scale)
            bones.append(_long_bone(p, q, radius * scale, flare=0.45))
            p, angle = _ray(q, angle, 0.035 * scale), angle + rng.uniform(-0.15, 0.15)
    return bones


def _wrist(rng: np.random.Generator) -> list[_Bone]:
    """Radius and ulna ending in two rows of small carpal blobs, metacarpal bases beyond."""
    top = rng.uniform(0.0, 0.12)
    bones = [_long_bone((-0.1, 0.75), (-0.09, top), 0.05, flare=0.7),
             _long_bone((0.11, 0.75), (0.1, top + 0.05), 0.038, flare=0.5)]
    for y in (top - 0.1, top - 0.21):
        for k in range(4):
            x = (k - 1.5) * 0.085 + rng.normal(0, 0.01)
            bones.append(_blob((x, y + rng.normal(0, 0.01)), rng.uniform(0.035, 0.048),
                               rng.uniform(0.03, 0.042), rng.uniform(0, np.pi)))
    for k in range(4):
        x = (k - 1.5) * 0.09
        bones.append(_long_bone((x, top - 0.3), (x * 1.5, top - 0.75), 0.027, flare=0.4))
    return bones


def _forearm(rng: np.random.Generator) -> list[_Bone]:
    """Two long, nearly parallel bones crossing the whole image."""
    gap, tilt = rng.uniform(0.14, 0.22), rng.uniform(-0.04, 0.04)
    return [_long_bone((-gap / 2 + tilt, -0.75), (-gap / 2 - tilt, 0.75), rng.uniform(0.04, 0.05), flare=0.3),
            _long_bone((gap / 2 + tilt, -0.75), (gap / 2, 0.75), rng.uniform(0.035, 0.045), flare=0.3)]


def _elbow(rng: np.random.Generator) -> list[_Bone]:
    """The distal humerus with its condyles meeting radius and ulna bent at the joint."""
    joint = np.array([0.0, rng.uniform(-0.12, 0.0)])
    angle = np.pi - rng.uniform(0.25, 1.1)
    bones = [_long_bone((0.0, -0.8), joint - (0, 0.05), 0.06, flare=0.6),
             _blob(joint, rng.uniform(0.1, 0.13), 0.055, rng.uniform(-0.15, 0.15))]
    side = np.array([np.cos(angle), np.sin(angle)])
    for offset, radius in ((-0.055, 0.04), (0.055, 0.036)):
        start = _ray(joint + offset * side, angle, 0.09)
        bones.append(_long_bone(start, _ray(start, angle, 0.8), radius, flare=0.5))
    return bones


def _humerus(rng: np.random.Generator) -> list[_Bone]:
    """One thick long bone, its ends sometimes in view."""
    return [_long_bone((rng.normal(0, 0.03), rng.uniform(-0.75, -0.4)),
                       (rng.normal(0, 0.03), rng.uniform(0.4, 0.75)), rng.uniform(0.065, 0.085), flare=0.6)]


def _shoulder(rng: np.random.Generator) -> list[_Bone]:
    """A round humeral head on its shaft, a scapula blade with its glenoid, and a clavicle above."""
    head = np.array([0.08, rng.uniform(-0.2, -0.08)])
    r = rng.uniform(0.11, 0.14)
    scapula = np.array([[-0.05, head[1] - 0.1], [-0.55, -0.4], [-0.45, 0.55], [-0.1, head[1] + 0.16]])
    return [_blob(head, r, r * rng.uniform(0.9, 1.05)),
            _long_bone(head + (0.02, 0.9 * r), (0.14, 0.8), rng.uniform(0.06, 0.075), flare=0.4),
            _plate(scapula + rng.normal(0, 0.03, scapula.shape), rng.uniform(0.35, 0.5)),
            _long_bone((-0.7, head[1] - 0.26), (0.2, head[1] - rng.uniform(0.2, 0.3)), 0.032, flare=0.5)]


_LAYOUTS: tuple[Callable[[np.random.Generator], list[_Bone]], ...] = (
    _finger, _wrist, _forearm, _elbow, _humerus, _shoulder)


def _posed(rng: np.random.Generator, bones: list[_Bone], size: int) -> list[_Bone]:
    """Bones mapped from the unit frame to pixels by a random flip, rotation, scale, aspect and shift."""
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.8, 1.1)
    aspect = rng.uniform(0.85, 1.15)
    flip = 1.0 if rng.random() < 0.5 else -1.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = size * scale * rot @ np.diag([flip * aspect, 1.0 / aspect])
    shift = size * (0.5 + rng.uniform(-0.08, 0.08, 2))
    return [_Bone(b.outline @ m.T + shift, None if b.axis is None else b.axis @ m.T + shift,
                  b.radius * size * scale, b.density) for b in bones]


def _fixed(points: np.ndarray) -> list[np.ndarray]:
    """Pixel coordinates as OpenCV's fixed-point int32 points (for drawing with `_SUBPIXEL_BITS`)."""
    return [np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)]


def _fill(points: np.ndarray, size: int) -> np.ndarray:
    """Rasterise one polygon (pixel coordinates) into a 0/1 uint8 image."""
    return cv2.fillPoly(np.zeros((size, size), np.uint8), _fixed(points), 1, cv2.LINE_8, _SUBPIXEL_BITS)


def _density(rng: np.random.Generator, support: np.ndarray, bone: _Bone) -> np.ndarray:
    """Attenuation of one bone: bright cortex at its walls fading to darker marrow inside."""
    dist = cv2.distanceTransform(support, cv2.DIST_L2, 3)
    marrow = rng.uniform(0.4, 0.6) if bone.axis is not None else rng.uniform(0.6, 0.75)
    wall = max(1.0, 0.3 * bone.radius) if bone.radius else 2.0
    return bone.density * support * (marrow + (1.0 - marrow) * np.exp(-(dist - 1.0) / wall))


@dataclass(frozen=True)
class _Fracture:
    """Which bone breaks, the jagged line (pixels), the far side's region and shift, and the label box."""

    bone: int
    line: np.ndarray
    side: np.ndarray
    shift: tuple[int, int]
    box: np.ndarray


def _plan_fracture(rng: np.random.Generator, bones: list[_Bone], size: int) -> _Fracture:
    """Choose a break on a long bone, inside the image, with its jagged line, displacement and box."""
    spots = [(i, t) for i, b in enumerate(bones) if b.axis is not None for t in np.linspace(0.2, 0.8, 13)]
    points = np.array([bones[i].axis[0] + t * (bones[i].axis[1] - bones[i].axis[0]) for i, t in spots])
    inside = np.flatnonzero(np.all((points > 0.15 * size) & (points < 0.85 * size), axis=1))
    pick = rng.choice(inside) if inside.size else np.argmin(np.abs(points - size / 2).sum(axis=1))
    bone, centre = bones[spots[pick][0]], points[pick]
    u = (bone.axis[1] - bone.axis[0]) / np.linalg.norm(bone.axis[1] - bone.axis[0])
    v, r, tilt = np.array([-u[1], u[0]]), bone.radius, rng.uniform(-0.45, 0.45)
    across = np.linspace(-1.8 * r, 1.8 * r, int(rng.integers(6, 10)))
    along = np.tan(tilt) * across + rng.uniform(-0.12, 0.12, across.size) * r
    line = centre + across[:, None] * v + along[:, None] * u
    side = np.concatenate([line, line[::-1] + 4.0 * size * u])
    step = rng.uniform(1.0, 2.5) * size / 128 * rng.choice([-1.0, 1.0]) * v + rng.uniform(0.0, 1.0) * u
    half_u = r * (abs(np.tan(tilt)) * 1.2 + rng.uniform(0.6, 1.0)) + 1.0
    half_v = r * rng.uniform(1.25, 1.6) + np.abs(step).max()
    box = np.array([centre + su * half_u * u + sv * half_v * v for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    return _Fracture(spots[pick][0], line, side, (int(np.round(step[0])), int(np.round(step[1]))), box)


def _shifted(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`a` moved by whole pixels, zero-filled where it moved away."""
    move = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(a, move, a.shape[::-1], flags=cv2.INTER_NEAREST, borderValue=0)


def _break(
    rng: np.random.Generator, att: np.ndarray, support: np.ndarray, f: _Fracture
) -> tuple[np.ndarray, np.ndarray]:
    """Move the far piece of a bone by the fracture's shift and darken a thin jagged line at the break."""
    far = _fill(f.side, att.shape[0]) & support
    support = (support & (1 - far)) | _shifted(far, *f.shift)
    att = att * (1 - far) + _shifted(att * far, *f.shift)
    crack = cv2.polylines(np.zeros_like(support), _fixed(f.line), False, 1, 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return att * (1.0 - rng.uniform(0.35, 0.7) * crack), support


def _bones(rng: np.random.Generator, bones: list[_Bone], f: _Fracture, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed bone attenuation (overlaps add up, as in a projection) and the exact bone mask."""
    att, mask = np.zeros((size, size), np.float32), np.zeros((size, size), np.uint8)
    for i, bone in enumerate(bones):
        support = _fill(bone.outline, size)
        one = _density(rng, support, bone)
        if i == f.bone:
            one, support = _break(rng, one, support, f)
        att, mask = att + one, mask | support
    return att, mask


def _tissue(rng: np.random.Generator, mask: np.ndarray, size: int) -> np.ndarray:
    """A rounded soft-tissue silhouette around the bones, thickest in its middle."""
    margin = rng.uniform(0.06, 0.13) * size
    near = (cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3) < margin).astype(np.float32)
    limb = (cv2.GaussianBlur(near, (0, 0), margin / 3) > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(limb, cv2.DIST_L2, 3)
    return np.sqrt(np.clip(depth / margin, 0.0, 1.0))


def _illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth exposure field: a linear gradient in a random direction times a vignette."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    phi = rng.uniform(0, 2 * np.pi)
    ramp = 1.0 + rng.uniform(0.0, 0.35) * (x * np.cos(phi) + y * np.sin(phi))
    return ramp * (1.0 - rng.uniform(0.0, 0.3) * (x**2 + y**2) / 2)


def _distractors(rng: np.random.Generator, size: int) -> np.ndarray:
    """An L/R side marker and a few small bright dots, as burnt into real radiographs (0..1 overlay)."""
    marks = np.zeros((size, size), np.uint8)
    if rng.random() < 0.7:
        scale = size / 128 * rng.uniform(0.35, 0.55)
        corner = (int(rng.uniform(0.03, 0.8) * size), int(rng.choice([0.12, 0.95]) * size))
        cv2.putText(marks, str(rng.choice(["L", "R"])), corner, cv2.FONT_HERSHEY_SIMPLEX, scale,
                    int(rng.integers(200, 256)), max(1, size // 96), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        centre = tuple(int(c) for c in rng.integers(2, size - 2, 2))
        cv2.circle(marks, centre, int(rng.integers(1, 3)), int(rng.integers(190, 256)), -1, cv2.LINE_AA)
    return marks / np.float32(255.0)


def _expose(rng: np.random.Generator, tissue: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """Film the attenuation map: contrast, blur, uneven exposure, markers, grain and quantum noise."""
    size = tissue.shape[0]
    att = rng.uniform(0.2, 0.4) * tissue + rng.uniform(0.35, 0.6) * bone
    img = rng.uniform(0.0, 0.25) + rng.uniform(0.5, 1.05) * cv2.GaussianBlur(att, (0, 0), rng.uniform(0.4, 0.9))
    img = np.clip(img * _illumination(rng, size), 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    img = np.maximum(img, _distractors(rng, size))
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, img.shape).astype(np.float32), (0, 0), 1.0)
    noise = rng.normal(0.0, 1.0, img.shape) * (rng.uniform(0.02, 0.05) * np.sqrt(img) + rng.uniform(0.01, 0.03))
    img = img + rng.uniform(0.02, 0.06) * grain + noise
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _canonical(box: np.ndarray, size: int) -> np.ndarray:
    """Pixel box to [0, 1], clockwise on screen (y down), starting at the point with the smallest x + y."""
    pts = np.clip(box / size, 0.0, 1.0)
    centred = pts - pts.mean(axis=0)
    pts = pts[np.argsort(np.arctan2(centred[:, 1], centred[:, 0]))]
    return np.roll(pts, -int(np.argmin(pts.sum(axis=1))), axis=0).astype(np.float32)


def render_phantom(rng: np.random.Generator, class_id: int, image_size: int) -> PhantomImage:
    """Render one phantom radiograph of class `class_id` with one fracture, its bone mask and polygon."""
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in 0..{len(CLASS_NAMES) - 1}, got {class_id}")
    bones = _posed(rng, _LAYOUTS[class_id](rng), image_size)
    fracture = _plan_fracture(rng, bones, image_size)
    bone, mask = _bones(rng, bones, fracture, image_size)
    image = _expose(rng, _tissue(rng, mask, image_size), bone)
    return PhantomImage(image, mask, _canonical(fracture.box, image_size), class_id)


def _manifest(spec: PhantomSpec) -> dict[str, int]:
    """The `phantom:` block of data.yaml that identifies a complete dataset for this spec."""
    return {**asdict(spec), "version": GENERATOR_VERSION}


def _is_complete(out: Path, spec: PhantomSpec) -> bool:
    """Whether `out` holds a finished dataset written for exactly this spec."""
    try:
        data = yaml.safe_load((out / "data.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("phantom") == _manifest(spec)


def _imwrite(path: Path, image: np.ndarray) -> None:
    """Write a PNG, failing loudly (OpenCV only returns False)."""
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write image")


def _write_sample(folder: Path, split: str, index: int, sample: PhantomImage) -> None:
    """Write one image, its YOLO segmentation label and its bone mask."""
    stem = f"phantom_{index:06d}"
    _imwrite(folder / split / "images" / f"{stem}.png", sample.image)
    _imwrite(folder / split / "masks" / f"{stem}.png", sample.mask * np.uint8(255))
    coords = " ".join(f"{v:.6f}" for v in sample.polygon.ravel())
    (folder / split / "labels" / f"{stem}.txt").write_text(f"{sample.class_id} {coords}\n")


def _generate(folder: Path, spec: PhantomSpec, progress: bool) -> None:
    """Render every split into `folder`, data.yaml last."""
    with tqdm(total=spec.train + spec.val + spec.test, desc="phantom X-rays", disable=not progress) as bar:
        for split_idx, split in enumerate(SPLITS):
            for sub in ("images", "labels", "masks"):
                (folder / split / sub).mkdir(parents=True)
            for i in range(getattr(spec, split)):
                rng = np.random.default_rng([spec.seed, split_idx, i])
                _write_sample(folder, split, i, render_phantom(rng, i % len(CLASS_NAMES), spec.image_size))
                bar.update()
    meta = {"path": ".", **{s: f"{s}/images" for s in SPLITS}, "nc": len(CLASS_NAMES),
            "names": list(CLASS_NAMES), "phantom": _manifest(spec)}
    (folder / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def write_phantom(out: Path, spec: PhantomSpec, *, progress: bool = True) -> Path:
    """Write the phantom dataset for `spec` to `out` atomically; a finished one is returned untouched."""
    out = Path(out)
    if _is_complete(out, spec):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists but is not the phantom dataset for {spec}; remove it or pick another folder")
    if out.is_dir():
        out.rmdir()
    try:
        with atomic_folder(out, keep_if=lambda built: _is_complete(built, spec)) as staging:
            _generate(staging, spec, progress)
    except OSError as error:
        if not _is_complete(out, spec):
            raise ConfigError(f"{out}: cannot write the phantom dataset ({error.strerror or error})") from None
    return out


def default_phantom_dir(spec: PhantomSpec) -> Path:
    """The cache folder for `spec`: $RAYSEARCH_CACHE (default ~/.cache/raysearch)/phantom/<spec name>."""
    root = Path(os.environ.get("RAYSEARCH_CACHE") or Path.home() / ".cache" / "raysearch")
    name = f"v{GENERATOR_VERSION}-seed{spec.seed}-{spec.train}-{spec.val}-{spec.test}-px{spec.image_size}"
    return root / "phantom" / name


def ensure_phantom(spec: PhantomSpec, *, progress: bool = True) -> Path:
    """The cached phantom dataset for `spec`, written first if missing; safe when processes race."""
    return write_phantom(default_phantom_dir(spec), spec, progress=progress)
