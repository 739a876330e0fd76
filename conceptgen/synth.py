"""Synthetic action videos with exact ground truth, to *measure* the pipeline.

The class of each video is decided only by the motion of one large *actor* object:

    moving_right  actor translates left-to-right at constant speed
    moving_left   actor translates right-to-left at constant speed
    bouncing      actor bounces vertically (|sin| trajectory), x fixed
    growing       actor stays put and its radius grows linearly

Actor shape and colour are drawn at random per video, so appearance cannot tell the
class. Class-independent distractors (smaller objects, static or slowly drifting) and a
random background (flat colour or a static texture) are added to every video.

Layout written by :func:`generate_synthetic_set`::

    out_dir/videos/<class>/<id>.mp4       H.264, num_frames x size x size, 8 fps
    out_dir/ground_truth/<id>.npz         masks (n_objects, T, H, W) bool: visible pixels
                                          full_masks (n_objects, T, H, W) bool: before occlusion
    out_dir/ground_truth.json             per video: class, split, background, objects

Masks are the exact pixels each object was painted with (hard edges, no anti-aliasing);
``masks`` removes what objects higher in the z-order cover. Object geometry is in pixels:
``centers`` (T, 2) as (x, y) and ``radii`` (T,) (half the object's width).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from conceptgen.errors import ConfigError, DataError
from conceptgen.hashing import sha256_file, sha256_json
from conceptgen.progress import progress
from conceptgen.videoio import write_video

CLASS_NAMES = ("moving_right", "moving_left", "bouncing", "growing")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Saturated object colours; backgrounds are kept muted so objects always stand out.
COLOURS = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 60, 230),
    "yellow": (240, 220, 20), "cyan": (20, 210, 220), "magenta": (220, 30, 210),
    "orange": (250, 130, 10), "purple": (120, 30, 180), "white": (250, 250, 250),
    "black": (10, 10, 10),
}
BACKGROUNDS = ("flat", "noise", "stripes", "checker", "gradient")
DISTRACTOR_MOTIONS = ("static", "drifting")
FPS = 8.0
TEST_EVERY = 5  # every 5th video of each class is held out: a deterministic 80/20 split
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class SynthObject:
    """One painted object. ``centers`` (T, 2) float pixels (x, y); ``radii`` (T,) pixels."""

    index: int
    role: str           # "actor" | "distractor"
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    motion: str         # a class name for the actor; "static" | "drifting" for distractors
    z: int              # paint order: higher z covers lower
    centers: np.ndarray = field(compare=False, repr=False)
    radii: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class SynthVideo:
    id: str
    class_name: str
    label: int
    split: str          # "train" | "test"
    video_path: Path
    mask_path: Path
    sha256: str
    background: str
    background_rgb: tuple[int, int, int]
    objects: tuple[SynthObject, ...]

    @property
    def actor(self) -> SynthObject:
        return next(o for o in self.objects if o.role == "actor")

    def load_masks(self, *, visible: bool = True) -> np.ndarray:
        """(n_objects, T, H, W) bool, in ``objects`` order; visible pixels unless visible=False."""
        with np.load(self.mask_path) as data:
            return data["masks" if visible else "full_masks"]


@dataclass(frozen=True)
class SynthDataset:
    root: Path
    seed: int
    num_frames: int
    size: int
    fps: float
    class_names: tuple[str, ...]
    videos: tuple[SynthVideo, ...]
    manifest_hash: str  # sha256 over the ground truth, video hashes included

    def split(self, name: str) -> list[SynthVideo]:
        return [v for v in self.videos if v.split == name]


# --------------------------------------------------------------------------- orchestrator
def generate_synthetic_set(out_dir: str | Path, *, n_videos: int, seed: int,
                           num_frames: int = 16, size: int = 112) -> SynthDataset:
    """Write ``n_videos`` class-balanced videos with ground truth and return the dataset.

    Deterministic: the same arguments give byte-identical files. Each video draws from
    its own RNG stream (seed, index), so an interrupted run resumes by skipping the
    videos already written and rendering the rest.
    """
    _check_args(n_videos, num_frames, size)
    out = Path(out_dir)
    params = {"version": _FORMAT_VERSION, "seed": int(seed), "n_videos": int(n_videos),
              "num_frames": int(num_frames), "size": int(size), "fps": FPS}
    _claim_out_dir(out, params)
    labels = _balanced_labels(n_videos, seed)
    records = []
    for index in progress(range(n_videos), desc="synth videos", unit="video"):
        spec = _draw_video(index, int(labels[index]), np.random.default_rng([seed, index]),
                           num_frames, size)
        records.append(_write_video_files(out, spec, _split_of(index, labels), num_frames, size))
    manifest = {**params, "class_names": list(CLASS_NAMES), "videos": records}
    _atomic_write_text(out / "ground_truth.json", json.dumps(manifest, indent=1))
    return load_ground_truth(out)


def load_ground_truth(out_dir: str | Path) -> SynthDataset:
    """Read ``out_dir/ground_truth.json`` back into typed dataclasses."""
    out = Path(out_dir)
    path = out / "ground_truth.json"
    if not path.is_file():
        raise DataError(f"{out}: no ground_truth.json; create the set with "
                        "`conceptgen synth --out DIR --videos N --seed S`")
    try:
        manifest = json.loads(path.read_text())
        videos = tuple(_video_from_record(out, r) for r in manifest["videos"])
        return SynthDataset(root=out, seed=manifest["seed"], num_frames=manifest["num_frames"],
                            size=manifest["size"], fps=manifest["fps"],
                            class_names=tuple(manifest["class_names"]), videos=videos,
                            manifest_hash=sha256_json(manifest))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed ground truth ({err!r}); regenerate it with "
                        "`conceptgen synth`") from err


# --------------------------------------------------------------------------- planning
@dataclass
class _VideoSpec:
    """Everything drawn for one video, before painting."""

    id: str
    label: int
    background: np.ndarray  # (H, W, 3) uint8
    background_kind: str
    background_rgb: tuple[int, int, int]
    objects: list[SynthObject]


def _check_args(n_videos: int, num_frames: int, size: int) -> None:
    if n_videos < 1:
        raise ConfigError(f"--videos must be at least 1 (got {n_videos})")
    if num_frames < 4:
        raise ConfigError(f"num_frames must be at least 4 to show motion (got {num_frames})")
    if size < 48:
        raise ConfigError(f"size must be at least 48 pixels (got {size})")


def _claim_out_dir(out: Path, params: dict) -> None:
    """Refuse to mix two different sets in one folder; resume the same one."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / SYNTH_MARKER
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous != params:
            raise ConfigError(f"{out} already holds a synthetic set made with {previous}; "
                              "use an empty --out folder or the same arguments")
    elif any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no synthetic set; use an empty --out folder")
    else:
        marker.write_text(json.dumps(params, sort_keys=True))


def _balanced_labels(n_videos: int, seed: int) -> np.ndarray:
    """Class index per video: as equal counts as possible, in a seeded random order."""
    labels = np.arange(n_videos) % len(CLASS_NAMES)
    return np.random.default_rng([seed, 1 << 30]).permutation(labels)


def _split_of(index: int, labels: np.ndarray) -> str:
    rank_in_class = int(np.sum(labels[:index] == labels[index]))
    return "test" if rank_in_class % TEST_EVERY == TEST_EVERY - 1 else "train"


def _draw_video(index: int, label: int, rng: np.random.Generator, t: int, size: int) -> _VideoSpec:
    background, kind, base_rgb = _draw_background(rng, size)
    n_distractors = int(rng.integers(1, 4))
    actor_z = int(rng.integers(0, n_distractors + 1))
    colour_names = list(COLOURS)
    objects = []
    for i in range(n_distractors + 1):
        colour = colour_names[int(rng.integers(len(colour_names)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        z = actor_z if i == 0 else (i - 1 if i - 1 < actor_z else i)
        if i == 0:
            motion = CLASS_NAMES[label]
            centers, radii = _actor_path(motion, rng, t, size)
            role = "actor"
        else:
            motion = DISTRACTOR_MOTIONS[int(rng.integers(len(DISTRACTOR_MOTIONS)))]
            centers, radii = _distractor_path(motion, rng, t, size)
            role = "distractor"
        objects.append(SynthObject(index=i, role=role, shape=shape, colour=colour,
                                   rgb=COLOURS[colour], motion=motion, z=z,
                                   centers=centers, radii=radii))
    return _VideoSpec(id=f"synth_{index:05d}", label=label, background=background,
                      background_kind=kind, background_rgb=base_rgb, objects=objects)


def _actor_path(motion: str, rng: np.random.Generator, t: int, size: int):
    """Centres (T, 2) and radii (T,) in pixels for the actor; radius 7-15 px at size 112."""
    s = size / 112.0
    steps = np.linspace(0.0, 1.0, t)
    r = rng.uniform(7, 15) * s
    radii = np.full(t, r)
    if motion in ("moving_right", "moving_left"):
        travel = rng.uniform(0.35, 0.55) * size
        x0 = rng.uniform(r, size - r - travel)
        xs = x0 + travel * steps
        if motion == "moving_left":
            xs = xs[::-1]
        ys = np.full(t, rng.uniform(r, size - r))
    elif motion == "bouncing":
        floor = rng.uniform(size * 0.75, size - r)
        height = rng.uniform(0.35, 0.5) * size
        bounces = rng.choice([1.5, 2.0])
        ys = floor - height * np.abs(np.sin(np.pi * bounces * steps + rng.uniform(0, 0.3)))
        ys = np.maximum(ys, r)
        xs = np.full(t, rng.uniform(r, size - r))
    elif motion == "growing":
        r0, r1 = rng.uniform(5, 8) * s, rng.uniform(16, 19) * s
        radii = r0 + (r1 - r0) * steps
        xs = np.full(t, rng.uniform(r1, size - r1))
        ys = np.full(t, rng.uniform(r1, size - r1))
    else:  # pragma: no cover - CLASS_NAMES is closed
        raise AssertionError(motion)
    return np.stack([xs, ys], axis=1), radii


def _distractor_path(motion: str, rng: np.random.Generator, t: int, size: int):
    """Smaller objects (radius 4-8 px at 112) that are static or drift slowly (<= 0.8 px/frame)
    in any direction, so their motion never mimics a class."""
    s = size / 112.0
    r = rng.uniform(4, 8) * s
    start = rng.uniform(r, size - r, size=2)
    if motion == "static":
        velocity = np.zeros(2)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0.3, 0.8) * s * np.array([np.cos(angle), np.sin(angle)])
    centers = np.clip(start + np.arange(t)[:, None] * velocity, r, size - r)
    return centers, np.full(t, r)


def _draw_background(rng: np.random.Generator, size: int):
    """A static (H, W, 3) uint8 background in muted colours (values 60-190)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    base = rng.integers(70, 180, size=3)
    other = rng.integers(70, 180, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "flat":
        image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == "noise":
        image = base + rng.normal(0, 10, size=(size, size, 3))
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(8, 24)
        phase = ((xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2)) % 2
        image = np.where(phase[..., None] > 0, base, other).astype(np.float32)
    elif kind == "checker":
        cell = int(rng.integers(6, 20))
        phase = ((xx // cell) + (yy // cell)) % 2
        image = np.where(phase[..., None] > 0, base, other).astype(np.float32)
    else:  # gradient
        w = (xx / (size - 1))[..., None]
        image = base * (1 - w) + other * w
    return np.clip(image, 60, 190).astype(np.uint8), kind, tuple(int(c) for c in base)


# --------------------------------------------------------------------------- painting
def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Exact (size, size) bool mask of a shape centred at (cx, cy) with half-width r px."""
    yy, xx = np.mgrid[0:size, 0:size]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy  # pixel centres
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up, base at +r
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.58)
    if shape == "cross":
        arm = r * 0.35
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (r * 0.5) ** 2)
    raise ConfigError(f"unknown shape {shape!r}; use one of {SHAPES}")


def render_video(spec: _VideoSpec, t: int, size: int):
    """Paint the video. Returns frames (T, H, W, 3) uint8, visible and full masks
    (n_objects, T, H, W) bool, with objects painted in increasing z."""
    n = len(spec.objects)
    full = np.zeros((n, t, size, size), dtype=bool)
    for o in spec.objects:
        for f in range(t):
            full[o.index, f] = shape_mask(o.shape, *o.centers[f], o.radii[f], size)
    frames = np.repeat(spec.background[None], t, axis=0)
    visible = full.copy()
    for o in sorted(spec.objects, key=lambda o: o.z):
        frames[full[o.index]] = o.rgb
        for below in spec.objects:
            if below.z < o.z:
                visible[below.index] &= ~full[o.index]
    return frames, visible, full


def _redrawn_plan(dataset: SynthDataset, video: SynthVideo) -> _VideoSpec:
    """``video``'s plan drawn again from its own RNG stream (seed, index): exactly the
    one it was painted from."""
    index = _index_of(video)
    return _draw_video(index, video.label, np.random.default_rng([dataset.seed, index]),
                       dataset.num_frames, dataset.size)


def _paint(spec: _VideoSpec, objects: list[SynthObject], t: int, size: int) -> np.ndarray:
    """Frames of ``spec`` with ``objects`` (re-indexed) in place of its own."""
    frames, _, _ = render_video(replace(spec, objects=[replace(o, index=i) for i, o in enumerate(objects)]),
                                t, size)
    return frames


def render_without_actor(dataset: SynthDataset, video: SynthVideo) -> np.ndarray:
    """``video`` painted again with its actor left out: (T, H, W, 3) uint8, the same
    background and distractors pixel for pixel. A clip with no actor holds no
    evidence for any class (the class is the actor's motion alone): the demo model
    trains on such clips so that absent motion does not read as a class."""
    spec = _redrawn_plan(dataset, video)
    return _paint(spec, [o for o in spec.objects if o.role != "actor"], dataset.num_frames, dataset.size)


def render_with_decoy(dataset: SynthDataset, video: SynthVideo) -> np.ndarray:
    """``video`` painted again with one more object: a decoy of the actor's size that
    neither moves nor grows, its shape, colour, place and paint order drawn from the
    stream (seed, index, 1): (T, H, W, 3) uint8. The class stays the actor's motion, so
    a model trained on such videos cannot read "a large object that does not translate"
    as ``growing``."""
    spec = _redrawn_plan(dataset, video)
    rng = np.random.default_rng([dataset.seed, _index_of(video), 1])
    t, size = dataset.num_frames, dataset.size
    decoy = _still_object(rng, spec, t, size, rng.uniform(7, 15) * size / 112.0)
    return _paint(spec, [*spec.objects, decoy], t, size)


def render_with_still_objects(dataset: SynthDataset, video: SynthVideo) -> np.ndarray:
    """``video`` painted again with 1-3 more objects that neither move nor grow, of radius
    4-19 px at 112 (from a distractor's size to past the largest actor's), anywhere and in
    any paint order, drawn from the stream (seed, index, 3): (T, H, W, 3) uint8. Still
    things are no class evidence, so the two are to be classified alike."""
    spec = _redrawn_plan(dataset, video)
    rng = np.random.default_rng([dataset.seed, _index_of(video), 3])
    t, size = dataset.num_frames, dataset.size
    still = [_still_object(rng, spec, t, size, rng.uniform(4, 19) * size / 112.0, z_offset=0.01 * i)
             for i in range(int(rng.integers(1, 4)))]
    return _paint(spec, [*spec.objects, *still], t, size)


def render_on_new_background(dataset: SynthDataset, video: SynthVideo) -> np.ndarray:
    """``video`` painted again, every object where it was, on a background drawn afresh
    (kind and colours from the stream (seed, index, 2)): (T, H, W, 3) uint8. The class is
    the actor's motion alone, so the two are to be classified alike."""
    spec = _redrawn_plan(dataset, video)
    background, kind, rgb = _draw_background(np.random.default_rng([dataset.seed, _index_of(video), 2]),
                                             dataset.size)
    return _paint(replace(spec, background=background, background_kind=kind, background_rgb=rgb),
                  spec.objects, dataset.num_frames, dataset.size)


def _index_of(video: SynthVideo) -> int:
    return int(video.id.rsplit("_", 1)[1])


def _still_object(rng: np.random.Generator, spec: _VideoSpec, t: int, size: int, radius: float, *,
                  z_offset: float = 0.0) -> SynthObject:
    """An object of ``radius`` px that neither moves nor grows, its place, colour, shape and
    paint order (between two of ``spec``'s layers, ``z_offset`` apart from others) from ``rng``."""
    centre = rng.uniform(radius, size - radius, size=2)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    return SynthObject(index=len(spec.objects), role="distractor", shape=SHAPES[int(rng.integers(len(SHAPES)))],
                       colour=colour, rgb=COLOURS[colour], motion="static",
                       z=int(rng.integers(0, len(spec.objects) + 1)) - 0.5 + z_offset,
                       centers=np.repeat(centre[None], t, axis=0), radii=np.full(t, radius))


def _write_video_files(out: Path, spec: _VideoSpec, split: str, t: int, size: int) -> dict:
    class_name = CLASS_NAMES[spec.label]
    video_rel = Path("videos") / class_name / f"{spec.id}.mp4"
    mask_rel = Path("ground_truth") / f"{spec.id}.npz"
    video_path, mask_path = out / video_rel, out / mask_rel
    if not (video_path.exists() and mask_path.exists()):  # resume: both files are atomic
        frames, visible, full = render_video(spec, t, size)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = mask_path.with_name(f".{spec.id}.partial.npz")
        np.savez_compressed(tmp, masks=visible, full_masks=full)
        os.replace(tmp, mask_path)
        write_video(video_path, frames, fps=FPS)
    return {
        "id": spec.id, "class": class_name, "label": spec.label, "split": split,
        "video": video_rel.as_posix(), "masks": mask_rel.as_posix(),
        "sha256": sha256_file(video_path),
        "background": {"kind": spec.background_kind, "rgb": list(spec.background_rgb)},
        "objects": [_object_record(o) for o in spec.objects],
    }


def _object_record(o: SynthObject) -> dict:
    record = asdict(o)
    record["rgb"] = list(o.rgb)
    record["centers"] = np.round(o.centers, 3).tolist()
    record["radii"] = np.round(o.radii, 3).tolist()
    return record


def _video_from_record(out: Path, r: dict) -> SynthVideo:
    objects = tuple(SynthObject(index=o["index"], role=o["role"], shape=o["shape"],
                                colour=o["colour"], rgb=tuple(o["rgb"]), motion=o["motion"],
                                z=o["z"], centers=np.asarray(o["centers"], dtype=np.float64),
                                radii=np.asarray(o["radii"], dtype=np.float64))
                    for o in r["objects"])
    return SynthVideo(id=r["id"], class_name=r["class"], label=r["label"], split=r["split"],
                      video_path=out / r["video"], mask_path=out / r["masks"],
                      sha256=r["sha256"], background=r["background"]["kind"],
                      background_rgb=tuple(r["background"]["rgb"]), objects=objects)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def uniform_mat_frames(*, num_frames: int = 48, width: int = 1280, height: int = 720, n_blocks: int = 120,
                       block_side: int | None = None, seed: int = 0) -> np.ndarray:
    """A stress case for region merging: one large uniform mat touching many small blocks.

    ``(T, H, W, 3)`` uint8 RGB: a mat in one colour (with sensor noise) fills the frame,
    and ``n_blocks`` small blocks in varied colours sit on it, a few of them sliding, as
    when wooden blocks are arranged on a cutting mat. Every block borders the mat in
    every frame, so the mat is adjacent to thousands of pieces of the volume.
    """
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    side = block_side or max(4, min(width, height) // 16)
    xs = rng.integers(side, width - 2 * side, n_blocks).astype(float)
    ys = rng.integers(side, height - 2 * side, n_blocks).astype(float)
    colours = rng.integers(20, 236, (n_blocks, 3))
    velocity = np.where(rng.random((n_blocks, 1)) < 0.2, rng.normal(0, side / 8, (n_blocks, 2)), 0.0)
    mat = np.array([70, 110, 80])
    for t in range(num_frames):
        frame = (mat + rng.normal(0, 2.0, (height, width, 3))).clip(0, 255)
        for b in range(n_blocks):
            x = int(np.clip(xs[b] + velocity[b, 0] * t, 0, width - side))
            y = int(np.clip(ys[b] + velocity[b, 1] * t, 0, height - side))
            frame[y:y + side, x:x + side] = colours[b]
        frames[t] = frame.astype(np.uint8)
    return frames


SYNTH_MARKER = ".synth_params.json"


def is_synthetic_video(path: str | Path) -> bool:
    """True for a video inside a set written by :func:`generate_synthetic_set` (its folder,
    or a folder up to three levels above it, holds the set's marker file)."""
    parents = list(Path(path).resolve().parents)[:4]
    return any((parent / SYNTH_MARKER).is_file() for parent in parents)
