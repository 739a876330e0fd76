"""Where TCAV's example clips come from: concepts, class examples and the random pool.

Every example is an :class:`Example`: a content key (sha256 of the source bytes
and of how the clip was cut and rendered) and a ``load()`` that returns uint8
(T, S, S, 3) at the model's input spec, decoded only when needed.

Concepts come from
  * the database: approved concepts, current version, rendered from their tubes
    with ``render_mode`` (mask | crop | blur); imported clip files are used as is;
  * an export folder (``manifest.json`` written by ``conceptgen export``);
  * a plain folder with one sub-folder of .mp4 clips per concept;
  * concept folders named one by one or by a glob (``DIR/striped,DIR/dotted`` or
    ``'DIR/str*'``), each folder one concept, as TF-TCAV and Captum keep them.
The *static* counterpart of a dynamic concept is the same tubes rendered with one
frame repeated over time (``render_tube_clip(static=True)``); for a plain clip,
its middle frame repeated.

Class examples are labelled videos in the database (``Video.label``) or the .mp4
files of a folder, uniformly sampled to the model's frame count and resized.

The random pool (stated rule): every tube in the database that is an example of
*no* concept at all (any status, any version), rendered like the concepts; for
folders, the clips of every sub-folder whose name starts with ``random``, or of
``--random-pool DIR``. TF-TCAV's and Captum's random folders (``random500_0`` ...
``random500_N``) can also be the N random sets themselves, used exactly as they are
(:func:`random_sets_from_folders`, ``--random-sets 'DIR/random500_*'``). Every file in
a concept or random folder that is not a video (by suffix) is reported by name and
counted (``rejected``); videos that fail to decode are reported when loaded. Because the rule excludes all concepts rather than only
the scored ones, the pool, and so the null, does not move when the list of
scored concepts changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sqlalchemy import select

from conceptgen.concepts import ExampleRecord, example_record, load_concept_records, render_concept_example
from conceptgen.errors import ConfigError, DataError
from conceptgen.export import read_manifest
from conceptgen.hashing import sha256_bytes, sha256_file, sha256_json
from conceptgen.orm import Concept, ConceptExample, Tube, Video
from conceptgen.videoio import clip_from_file, static_clip

MIN_CONCEPT_EXAMPLES = 6   # a 33% held-out split must leave >= 4 to train on
MIN_CLASS_EXAMPLES = 4
RANDOM_PREFIX = "random"
CLIP_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")


@dataclass(frozen=True)
class Example:
    """One clip. ``key``: content sha256; ``render_mode``: how it was cut
    (mask | crop | blur | clip | video); ``origin``: a path or tube id for messages."""

    key: str
    render_mode: str
    origin: str
    loader: Callable[[], np.ndarray] = field(compare=False, repr=False)

    def load(self) -> np.ndarray:
        """uint8 (T, S, S, 3) at the model's input spec."""
        return self.loader()

    @classmethod
    def from_array(cls, clip: np.ndarray, *, origin: str = "array") -> "Example":
        clip = np.ascontiguousarray(clip, dtype=np.uint8)
        key = sha256_json({"array": sha256_bytes(clip.tobytes()), "shape": clip.shape})
        return cls(key, "array", origin, lambda: clip)


@dataclass(frozen=True)
class ConceptExamples:
    """A concept's examples in one variant (dynamic | static)."""

    name: str
    variant: str
    examples: list[Example]
    concept_id: int | None = None
    source: str = "folder"
    version: int | None = None   # the concept version the examples are from (database concepts)

    @property
    def label(self) -> str:
        return self.name if self.variant == "dynamic" else f"{self.name} [static]"


# --- clips from files ---------------------------------------------------------
def file_example(path: Path, spec, *, static: bool = False, render_mode: str = "clip") -> Example:
    path = Path(path)
    key = sha256_json({"file": sha256_file(path), "static": static,
                       "frames": spec.num_frames, "side": spec.side})
    return Example(key, render_mode, str(path),
                   lambda: clip_from_file(path, spec.num_frames, spec.side, static=static))


def clip_files(folder: Path, rejected: dict[str, str] | None = None) -> list[Path]:
    """The video files under ``folder``; every other file (hidden files and an export's
    manifest aside) is recorded in ``rejected`` (path -> reason), never skipped silently."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    clips = [p for p in files if p.suffix.lower() in CLIP_SUFFIXES]
    if rejected is not None:
        for p in files:
            if p.suffix.lower() not in CLIP_SUFFIXES and p.name != "manifest.json":
                rejected[str(p)] = f"not a video file ({p.suffix or 'no suffix'}; videos are {', '.join(CLIP_SUFFIXES)})"
    return clips


GLOB_CHARS = "*?["


def folders_matching(spec: str, flag: str) -> list[Path]:
    """Folders named by ``spec``: comma-separated paths, each a folder or a glob of folders
    (sorted, each once). A part that names no folder is a one-line error."""
    import glob

    out: list[Path] = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        if any(c in part for c in GLOB_CHARS):
            found = sorted(Path(p) for p in glob.glob(part) if Path(p).is_dir())
        else:
            found = [Path(part)] if Path(part).is_dir() else []
        if not found:
            raise ConfigError(f"{flag} {part} matches no folder: give folders or a quoted glob such as "
                              f"'DIR/random500_*'")
        out += [p for p in found if p not in out]
    return out


def is_folder_spec(spec: str) -> bool:
    """Whether ``--concepts`` names folders (a path, several, or a glob) rather than database concepts."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    return bool(parts) and all(Path(p).is_dir() or any(c in p for c in GLOB_CHARS) and "/" in p for p in parts)


# --- concepts -----------------------------------------------------------------
def concepts_from_folder(root: str | Path, spec, *, names: Sequence[str] | None = None,
                         rejected: dict[str, str] | None = None) -> list[ConceptExamples]:
    """One dynamic concept per sub-folder of ``root`` (random* folders excluded);
    an export folder (with manifest.json) is read through its manifest."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--concepts {root} is not a folder: pass concept names, all-approved or a folder")
    if (root / "manifest.json").is_file():
        return concepts_from_export(root, spec, names=names)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(RANDOM_PREFIX))
    if names:
        folders = [p for p in folders if p.name in set(names)]
    return concept_folders(folders, spec, rejected=rejected)


def concept_folders(folders: Sequence[Path], spec, *, rejected: dict[str, str] | None = None
                    ) -> list[ConceptExamples]:
    """Each folder one dynamic concept named after it (its clips, recursively)."""
    names = [Path(p).name for p in folders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two concept folders are named {twice[0]}: concepts are named by their folder; "
                          "rename one")
    return [ConceptExamples(Path(p).name, "dynamic", [file_example(f, spec) for f in clip_files(p, rejected)])
            for p in folders]


def concepts_from_spec(spec_text: str, spec, *, rejected: dict[str, str] | None = None) -> list[ConceptExamples]:
    """``--concepts`` given as folders: one root folder (a sub-folder per concept, or an
    export), or concept folders named one by one or by glob."""
    named = folders_matching(spec_text, "--concepts")
    folders = [f for f in named if not f.name.startswith(RANDOM_PREFIX)] or named   # 'DIR/*' leaves random* out
    root = folders[0]
    direct = any(p.is_file() and p.suffix.lower() in CLIP_SUFFIXES for p in root.iterdir())
    if len(folders) == 1 and ((root / "manifest.json").is_file() or not direct):
        return concepts_from_folder(root, spec, rejected=rejected)   # a root of concept folders, or an export
    return concept_folders(folders, spec, rejected=rejected)


def concepts_from_export(root: Path, spec, *, names: Sequence[str] | None = None) -> list[ConceptExamples]:
    """Concepts of a ``conceptgen export`` folder; its static clips, if exported,
    become the static variant (otherwise the middle-frame rule applies)."""
    manifest = read_manifest(root)
    out = []
    for entry in manifest["concepts"]:
        if names and entry["name"] not in set(names):
            continue
        for variant in ("dynamic", "static"):
            clips = [root / e["clip"] for e in entry["examples"] if e["variant"] == variant]
            if clips:
                # A static clip is one frame repeated; H.264 P-frames may drift by a few levels, so
                # the middle decoded frame is repeated (the same rule as for any clip).
                examples = [file_example(c, spec, static=variant == "static") for c in clips]
                out.append(ConceptExamples(entry["name"], variant, examples, source="export"))
    return out


def concepts_from_db(workspace, names: Sequence[str] | str, spec, *, render_mode: str
                     ) -> list[ConceptExamples]:
    """Approved concepts (names or "all-approved"), current version, dynamic variant."""
    out = []
    records = load_concept_records(workspace, names)
    with workspace.session() as s:
        ids = {c.name: c.id for c in s.scalars(select(Concept).where(
            Concept.name.in_([r.name for r in records])))}
    for record in records:
        examples = [_record_example(ex, spec, render_mode, workspace.media, static=False)
                    for ex in record.examples if ex.variant == "dynamic"]
        out.append(ConceptExamples(record.name, "dynamic", examples, ids.get(record.name), "db", record.version))
    return out


def static_counterpart(concept: ConceptExamples) -> ConceptExamples:
    """The same examples rendered with one frame repeated (the paper's static concepts):
    DB tubes re-rendered with ``static=True``, other clips' middle frame repeated."""
    statics = [static_example(e) for e in concept.examples]
    return ConceptExamples(concept.name, "static", statics, concept.concept_id, concept.source, concept.version)


def static_example(example: Example) -> Example:
    """``example`` with one frame repeated over time (a DB tube re-rendered static)."""
    if hasattr(example.loader, "static_loader"):
        key, loader = example.loader.static_loader()
        return Example(key, example.render_mode, example.origin, loader)
    key = sha256_json({"static_of": example.key})
    return Example(key, example.render_mode, example.origin, lambda: static_clip(example.load()))


class _TubeLoader:
    """Renders a concept example (a DB tube or an imported clip) as a clip; knows its static twin."""

    def __init__(self, record: ExampleRecord, spec, mode: str, media: Path, static: bool):
        self.record, self.spec, self.mode, self.media, self.static = record, spec, mode, media, static

    def key(self) -> str:
        r = self.record
        src = ({"video": r.video["sha256"], "frames": r.tube.frame_indices,
                "masks": sha256_json(r.tube.masks_rle), "boxes": r.tube.boxes}
               if r.tube else {"clip": r.clip_sha256 or str(r.clip_path)})
        return sha256_json({**src, "mode": self.mode, "static": self.static,
                            "frames_out": self.spec.num_frames, "side": self.spec.side})

    def __call__(self) -> np.ndarray:
        return render_concept_example(self.record, self.media, mode=self.mode, num_frames=self.spec.num_frames,
                                      side=self.spec.side, static=self.static)

    def static_loader(self):
        twin = _TubeLoader(self.record, self.spec, self.mode, self.media, True)
        return twin.key(), twin


def _record_example(record, spec, mode: str, media: Path, *, static: bool) -> Example:
    loader = _TubeLoader(record, spec, mode, media, static)
    origin = f"tube {record.tube.id}" if record.tube else str(record.clip_path)
    return Example(loader.key(), mode if record.tube else "clip", origin, loader)


# --- class examples -----------------------------------------------------------
def class_examples_from_db(workspace, class_name: str, spec) -> list[Example]:
    with workspace.session() as s:
        videos = s.scalars(select(Video).where(Video.label == class_name, Video.status == "ok")
                           .order_by(Video.id)).all()
        rows = [(v.path, v.sha256) for v in videos]
    return [_video_example(Path(p), sha, spec) for p, sha in rows]


def class_examples_from_folder(folder: str | Path, class_name: str, spec) -> list[Example]:
    """Clips of ``folder/<class_name>/`` if it exists, else of ``folder`` itself."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--class-examples {folder} is not a folder: pass a folder of .mp4 videos")
    sub = folder / class_name
    return [_video_example(p, None, spec) for p in clip_files(sub if sub.is_dir() else folder)]


def _video_example(path: Path, sha: str | None, spec) -> Example:
    key = sha256_json({"video": sha or sha256_file(path), "frames": spec.num_frames, "side": spec.side})
    return Example(key, "video", str(path), lambda: clip_from_file(path, spec.num_frames, spec.side))


# --- random pool --------------------------------------------------------------
def random_pool_from_db(workspace, spec, *, render_mode: str) -> list[Example]:
    """Every tube that is an example of no concept, rendered with ``render_mode``."""
    with workspace.session() as s:
        used = select(ConceptExample.tube_id).where(ConceptExample.tube_id.is_not(None))
        tubes = s.scalars(select(Tube).where(Tube.id.not_in(used)).order_by(Tube.id)).all()
        records = [example_record(ConceptExample(position=0, variant="dynamic", meta={}, tube=t))
                   for t in tubes]
        s.expunge_all()
        s.rollback()
    return [_record_example(r, spec, render_mode, workspace.media, static=False) for r in records]


def random_pool_from_folder(folder: str | Path, spec, *, rejected: dict[str, str] | None = None) -> list[Example]:
    """Clips under ``folder``'s random* sub-folders, or under ``folder`` itself when it has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"random pool {folder} is not a folder: pass a folder of .mp4 clips")
    subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith(RANDOM_PREFIX)]
    files = [f for p in subs for f in clip_files(p, rejected)] if subs else clip_files(folder, rejected)
    return [file_example(f, spec) for f in files]


def random_sets_from_folders(spec_text: str, spec, *, rejected: dict[str, str] | None = None
                             ) -> list[list[Example]]:
    """TF-TCAV's and Captum's random folders as the N random sets, one set per folder
    (comma-separated folders or a glob such as ``'DIR/random500_*'``), in sorted order."""
    folders = folders_matching(spec_text, "--random-sets")
    if len(folders) < 2:
        raise ConfigError(f"--random-sets {spec_text} names {len(folders)} folder; random sets need at least 2 "
                          "(e.g. 'DIR/random500_*')")
    sets = [[file_example(f, spec) for f in clip_files(p, rejected)] for p in folders]
    small = [(p, len(s)) for p, s in zip(folders, sets) if len(s) < 2]
    if small:
        raise DataError(f"random set folder {small[0][0]} holds {small[0][1]} video(s); each needs at least 2")
    return sets


def check_enough(concepts: Sequence[ConceptExamples], class_examples: Sequence[Example],
                 pool: Sequence[Example], *, random_set_size: int, target: str) -> None:
    """The one-line errors for too few concept/class examples and an empty pool."""
    for c in concepts:
        if len(c.examples) < MIN_CONCEPT_EXAMPLES:
            raise DataError(f"concept {c.label} has {len(c.examples)} examples, fewer than the minimum "
                            f"{MIN_CONCEPT_EXAMPLES}: approve more examples or drop it from --concepts")
    if len(class_examples) < MIN_CLASS_EXAMPLES:
        raise DataError(f"class {target} has {len(class_examples)} example videos, fewer than the minimum "
                        f"{MIN_CLASS_EXAMPLES}: label more videos or pass --class-examples DIR")
    if not pool:
        raise DataError("the random pool is empty (no tubes or clips outside every concept): "
                        "extract more tubes or pass --random-pool DIR")
    if len(pool) < 2 * random_set_size:
        raise DataError(f"the random pool has {len(pool)} clips, fewer than two random sets of "
                        f"{random_set_size}: add clips or lower --random-set-size")

