"""Concept dataset export and verification.

An export is a self-describing folder that outlives the tool that made it::

    OUT/
      FORMAT.md              the format, for people (written into every export)
      manifest.json          schema version, concepts, provenance, examples, sha256 of every file
      manifest.json.sha256   the manifest's own checksum (``sha256sum -c`` format)
      <concept folder>/
        clips/0000_dynamic.mp4   H.264 clip rendered from the tube and its source video
        clips/0001_static.mp4    its static variant (one frame repeated), with ``--static``
        masks/0000.json          per-frame COCO RLE masks and boxes of the example's tube

Export is atomic (:class:`AtomicFolder`: a temporary sibling folder, fsync, then
one rename; the labelling-tool exports of :mod:`conceptgen.export_formats` write
through it too) and
deterministic (sorted JSON keys, fixed encoder options, dates only from the DB),
so exporting the same concepts twice gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import conceptgen
from conceptgen.concepts import (ConceptRecord, ExampleRecord, clip_file, load_concept_records,
                                 render_concept_example)
from conceptgen.errors import ConceptgenError, ConfigError, IntegrityError, NotFoundError
from conceptgen.hashing import sha256_bytes, sha256_file
from conceptgen.processes import pid_alive
from conceptgen.progress import progress

SCHEMA_VERSION = 1
FORMAT_NAME = "conceptgen-concept-dataset"
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.json.sha256"
CHECKSUMS = "SHA256SUMS"   # the FiftyOne and CVAT exports' checksums (``sha256sum -c`` format)
FORMAT_DOC = "FORMAT.md"
CLIP_FPS = 8.0  # exported clips are frame sequences; a fixed rate keeps the bytes reproducible

#: Called with each file's path relative to the export root right after it is written.
FileHook = Callable[[str], None]
#: Called with (clips written, clips in all) after each clip.
ProgressHook = Callable[[int, int], None]


# --- small typed records ------------------------------------------------------
@dataclass(frozen=True)
class SkippedItem:
    """One item of a batch that failed; the rest of the batch went on."""

    item: str
    reason: str


@dataclass
class ExportReport:
    out_dir: Path
    concepts: list[str]
    n_clips: int
    n_files: int
    manifest_sha256: str
    skipped: list[SkippedItem] = field(default_factory=list)


@dataclass(frozen=True)
class FileProblem:
    path: str  # relative to the export root
    problem: str  # missing | checksum mismatch | unexpected file | unreadable manifest | path outside the export


@dataclass
class VerifyReport:
    export_dir: Path
    n_files: int
    problems: list[FileProblem]
    kind: str = "native"   # native | fiftyone | cvat-video
    notes: list[str] = field(default_factory=list)   # what could not be checked, one line each

    @property
    def ok(self) -> bool:
        return not self.problems


# --- public API ------------------------------------------------------------------
def export_concepts(
    workspace,
    names: Sequence[str] | str,
    out_dir: str | Path,
    *,
    mode: str = "crop",
    static: bool = False,
    num_frames: int = 16,
    side: int = 112,
    overwrite: bool = False,
    on_file: FileHook | None = None,
    on_progress: ProgressHook | None = None,
) -> ExportReport:
    """Export concepts (names, or ``"all-approved"``) of ``workspace`` to ``out_dir``.

    Clips are ``num_frames`` x ``side`` x ``side`` RGB rendered at ``mode``
    (mask | crop | blur); ``static`` adds a static variant per dynamic example.
    ``on_file`` is a hook called after every file write (tests use it to
    interrupt the export); ``on_progress(done, total)`` after every clip (the
    annotator's job progress; an exception it raises stops the export). Nothing
    appears at ``out_dir`` unless the export completes.
    """
    from conceptgen.render import RENDER_MODES

    if mode not in RENDER_MODES:
        raise ConfigError(f"unknown render mode '{mode}'; use one of {', '.join(RENDER_MODES)}")
    if num_frames < 1 or side < 8:
        raise ConfigError("--num-frames must be >= 1 and --side >= 8")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists; choose another --out or pass --overwrite")

    concepts = load_concept_records(workspace, names)
    render = {"mode": mode, "static": static, "num_frames": num_frames, "side": side, "fps": CLIP_FPS}
    plans = [_plan_examples(c.examples, static) for c in concepts]
    counter = _Progress(sum(len(p) for p in plans), on_progress)
    with AtomicFolder(out_dir, on_file=on_file) as folder:
        entries, skipped, n_clips = [], [], 0
        for concept, plan, sub in zip(concepts, plans, _concept_folders([c.name for c in concepts])):
            entry, concept_skips = _write_concept(folder, concept, plan, sub, render, workspace.media, counter)
            entries.append(entry)
            skipped += concept_skips
            n_clips += len(entry["examples"])
        folder.write_text(FORMAT_DOC, FORMAT_TEXT)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT_NAME,
            "generator": {"name": "conceptgen", "version": conceptgen.__version__},
            "render": render,
            "concepts": entries,
            "files": dict(sorted(folder.checksums.items())),
        }
        manifest_bytes = _json_bytes(manifest)
        folder.write_bytes(MANIFEST, manifest_bytes)
        folder.write_text(MANIFEST_SUM, f"{sha256_bytes(manifest_bytes)}  {MANIFEST}\n")
        n_files = len(folder.checksums)
    return ExportReport(out_dir, [c.name for c in concepts], n_clips, n_files,
                        sha256_bytes(manifest_bytes), skipped)


def verify_native_export(export_dir: str | Path) -> VerifyReport:
    """Check a native export: the manifest's own checksum and every file's sha256.
    (:func:`conceptgen.export_formats.verify_export` checks an export of any format.)"""
    root = Path(export_dir)
    kind = "native"
    problems: list[FileProblem] = []
    manifest_bytes = (root / MANIFEST).read_bytes()
    sum_file = root / MANIFEST_SUM
    if not sum_file.is_file():
        problems.append(FileProblem(MANIFEST_SUM, "missing"))
    elif sum_file.read_text().split()[:1] != [sha256_bytes(manifest_bytes)]:
        problems.append(FileProblem(MANIFEST, "checksum mismatch"))
    try:
        files: dict[str, str] = json.loads(manifest_bytes)["files"]
    except (ValueError, KeyError, TypeError):
        problems.append(FileProblem(MANIFEST, "unreadable manifest"))
        return VerifyReport(root, 0, problems, kind)
    problems += check_files(root, files, also_listed={MANIFEST, MANIFEST_SUM})
    return VerifyReport(root, len(files) + 2, problems, kind)


def export_kind(root: Path) -> str:
    """native | fiftyone | cvat-video: which writer made the folder ``root``, by its layout."""
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            head = json.loads(manifest.read_bytes())
        except ValueError:
            return "native"   # verify reports the unreadable manifest
        return "fiftyone" if isinstance(head, dict) and head.get("type") == "eta.core.datasets.LabeledVideoDataset" \
            else "native"
    if root.is_dir() and (any(root.glob("*/*.xml")) or any(root.glob("*.xml"))):
        return "cvat-video"
    raise NotFoundError(f"{root} is not an export (no {MANIFEST}, no CVAT XML); pass the folder "
                        "written by `conceptgen export`")


def checksum_lines(checksums: dict[str, str]) -> str:
    """``sha256sum -c`` lines for the files of ``checksums`` (relative path -> sha256)."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(checksums.items()))


def read_checksum_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        digest, sep, rel = line.partition("  ")
        if sep and len(digest) == 64:
            out[rel] = digest
    return out


def check_files(root: Path, files: dict[str, str], *, also_listed: set[str]) -> list[FileProblem]:
    """Each listed file is inside ``root``, present and of its sha256; no other file is there
    (except ``also_listed``)."""
    problems = []
    for rel, expected in progress(sorted(files.items()), desc="verify", unit="file"):
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:  # a manifest must not point outside
            problems.append(FileProblem(rel, "path outside the export"))
        elif not path.is_file():
            problems.append(FileProblem(rel, "missing"))
        elif sha256_file(path) != expected:
            problems.append(FileProblem(rel, "checksum mismatch"))
    listed = set(files) | also_listed
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(FileProblem(rel, "unexpected file"))
    return problems


def read_manifest(export_dir: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The parsed manifest of an export; with ``verify`` raises IntegrityError on corruption."""
    root = Path(export_dir)
    if verify:
        if not (root / MANIFEST).is_file():
            raise NotFoundError(f"{root} has no {MANIFEST}; pass the folder written by `conceptgen export`")
        report = verify_native_export(root) if export_kind(root) == "native" else None
        if report is not None and not report.ok:
            listed = ", ".join(f"{p.path} ({p.problem})" for p in report.problems[:5])
            raise IntegrityError(f"{root} is corrupt: {listed}; run `conceptgen verify {root}` "
                                 "and re-export or restore the files")
    elif not (root / MANIFEST).is_file():
        raise NotFoundError(f"{root} has no {MANIFEST}; pass the folder written by `conceptgen export`")
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
    except ValueError as err:
        raise IntegrityError(f"{root / MANIFEST} is not valid JSON ({err}); re-export the concepts") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME or manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ConfigError(f"{root} is not a {FORMAT_NAME} of schema <= {SCHEMA_VERSION}; "
                          "upgrade conceptgen to read it")
    return manifest


# --- writing ----------------------------------------------------------------------
def _concept_folders(names: list[str]) -> list[str]:
    """Filesystem-safe, unique folder names in the order of ``names``."""
    used: set[str] = set()
    out = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "concept"
        folder, i = base, 2
        while folder.lower() in used or folder.lower() in {MANIFEST.lower(), FORMAT_DOC.lower()}:
            folder, i = f"{base}-{i}", i + 1
        used.add(folder.lower())
        out.append(folder)
    return out


class _Progress:
    """Counts written clips across all concepts for an ``on_progress(done, total)`` hook."""

    def __init__(self, total: int, hook: ProgressHook | None) -> None:
        self.done, self.total, self.hook = 0, total, hook
        if hook:
            hook(0, total)

    def step(self) -> None:
        self.done += 1
        if self.hook:
            self.hook(self.done, self.total)


def _write_concept(folder: "AtomicFolder", concept: ConceptRecord, plan: list, sub: str, render: dict,
                   media: Path, counter: _Progress) -> tuple[dict[str, Any], list[SkippedItem]]:
    entries: list[dict[str, Any]] = []
    skipped: list[SkippedItem] = []
    for k, (example, variant, sibling) in enumerate(progress(plan, desc=f"export {concept.name}", unit="clip")):
        try:
            entries.append(_write_example(folder, example, variant, sibling, k, sub, render, media))
        except (ConceptgenError, OSError, ValueError) as err:  # recorded; the rest go on
            skipped.append(SkippedItem(f"{concept.name}#{k} ({variant})", str(err)))
        counter.step()  # outside the try: a cancel raised by the hook stops the export
    entry = {
        "name": concept.name, "description": concept.description, "folder": sub,
        "source": concept.source, "status": concept.status, "version": concept.version,
        "versions": concept.versions, "approval_history": concept.approval_history,
        "discovery": concept.discovery, "examples": entries,
        "skipped": [{"item": s.item, "reason": s.reason} for s in skipped],
    }
    return entry, skipped


def _plan_examples(examples: list[ExampleRecord], static: bool) -> list[tuple[ExampleRecord, str, int | None]]:
    """(example, variant to write, export position of its dynamic sibling), in export order.

    Every stored example is written as its own variant. With ``static``, a dynamic
    example without a stored static sibling also gets a rendered static variant.
    Static siblings are matched by tube id, or for imported clips by ``meta["static_of"]``."""
    def tube_id(e: ExampleRecord):
        return e.tube.id if e.tube else None

    stored = [e for e in examples if e.variant == "static"]
    static_tubes = {tube_id(e) for e in stored if e.tube}
    static_of = {e.meta.get("static_of") for e in stored if not e.tube}
    plan: list[tuple[ExampleRecord, str, int | None]] = []
    k_of_tube: dict[int, int] = {}
    k_of_position: dict[int, int] = {}
    for e in examples:
        if e.variant != "static":
            k_of_position[e.position] = len(plan)
            if e.tube:
                k_of_tube.setdefault(tube_id(e), len(plan))
            plan.append((e, e.variant, None))
            has_static = (e.tube and tube_id(e) in static_tubes) or (not e.tube and e.position in static_of)
            if static and not has_static:
                plan.append((e, "static", len(plan) - 1))
        else:
            sibling = k_of_tube.get(tube_id(e)) if e.tube else k_of_position.get(e.meta.get("static_of"))
            plan.append((e, "static", sibling))
    return plan


def _write_example(folder: "AtomicFolder", ex: ExampleRecord, variant: str, sibling: int | None,
                   k: int, sub: str, render: dict, media: Path) -> dict[str, Any]:
    clip_rel = f"{sub}/clips/{k:04d}_{variant}.mp4"
    track = ex.track
    if ex.tube is None and ex.clip_path is None:
        raise ValueError("example has neither a tube nor a clip file")
    rendered = ex.tube is not None or variant != ex.variant  # an imported clip's own variant keeps its bytes
    if rendered:
        folder.write_video(clip_rel, render_concept_example(
            ex, media, mode=render["mode"], num_frames=render["num_frames"], side=render["side"],
            static=variant == "static"))
    else:
        folder.copy_file(clip_rel, clip_file(ex, media))
    masks_rel = None
    if track.has_masks:
        masks_rel = f"{sub}/masks/{(sibling if sibling is not None else k):04d}.json"  # shared by variants
        folder.write_bytes(masks_rel, _json_bytes(track.masks_json()), skip_if_same=True)
    return {
        "position": k, "variant": variant, "clip": clip_rel, "rendered": rendered,
        "derived_from": sibling, "masks": masks_rel,
        "source_video": ex.video or ex.meta.get("source_video"),
        "frame_range": track.frame_range,
        "frame_indices": track.frame_indices, "boxes": track.boxes, "mask_size": track.mask_size,
        "tube": ex.tube.summary() if ex.tube else ex.meta.get("tube"),
    }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class AtomicFolder:
    """Writes files into a hidden sibling of ``target`` and renames it into place
    only when every file is written and fsynced; on any error it removes itself.
    ``checksums`` maps each written file (relative path) to its sha256. Every
    export writer (this module's and :mod:`conceptgen.export_formats`) uses it."""

    def __init__(self, target: Path, *, on_file: FileHook | None = None):
        self.target = target
        self.on_file = on_file
        self.checksums: dict[str, str] = {}
        self.tmp = target.parent / f".{target.name}.partial-{os.getpid()}"

    def __enter__(self) -> "AtomicFolder":
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.target)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for d in sorted({p.parent for p in self.tmp.rglob("*")} | {self.tmp}):
                _fsync(d)
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            if self.target.exists():
                os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            _fsync(self.target.parent)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _path(self, rel: str) -> Path:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _done(self, rel: str, path: Path) -> None:
        _fsync(path)
        self.checksums[rel] = sha256_file(path)
        if self.on_file is not None:
            self.on_file(rel)

    def write_bytes(self, rel: str, data: bytes, *, skip_if_same: bool = False) -> None:
        if skip_if_same and rel in self.checksums:
            return
        path = self._path(rel)
        path.write_bytes(data)
        self._done(rel, path)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_video(self, rel: str, frames: np.ndarray) -> None:
        from conceptgen.videoio import write_video

        path = self._path(rel)
        write_video(path, frames, fps=CLIP_FPS)
        self._done(rel, path)

    def copy_file(self, rel: str, src: Path) -> None:
        path = self._path(rel)
        shutil.copyfile(src, path)
        self._done(rel, path)


def _remove_stale_partials(target: Path) -> None:
    """Delete temporary folders left by exports to ``target`` whose process died."""
    for p in target.parent.glob(f".{target.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (a folder opens read-only too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FORMAT_TEXT = f"""# conceptgen concept dataset (format `{FORMAT_NAME}`, schema {SCHEMA_VERSION})

A folder of human-approved spatiotemporal concepts for explaining video models,
written by `conceptgen export` and readable without conceptgen.

## Layout
- `manifest.json`: UTF-8 JSON, keys sorted. Top level: `schema_version`, `format`,
  `generator`, `render` (mode mask|crop|blur, static, num_frames, side, fps),
  `concepts` (list) and `files` (relative path -> sha256 hex of every other file).
- `manifest.json.sha256`: the manifest's sha256 in `sha256sum -c` format.
- `<folder>/clips/NNNN_<variant>.mp4`: H.264 (yuv420p) clips of `num_frames` frames,
  `side` x `side` pixels. `dynamic` follows the region as it moves; `static` repeats
  one frame of it (for static-vs-dynamic comparisons).
- `<folder>/masks/NNNN.json`: the example's region per source frame:
  `{{"format": "coco-rle", "size": [h, w], "frames": [source frame indices],
  "boxes": [[x0, y0, x1, y1], ...], "rle": [{{"size": [h, w], "counts": "..."}}, ...]}}`.
  RLE is COCO's compressed run-length encoding (pycocotools `mask.decode`, column-major);
  masks and boxes are in pixels of the `size` frame (the source frame scaled so that
  its longer side equals max(h, w)). Boxes are float, x1/y1 exclusive.

## A concept entry
`name`, `description`, `folder`, `source` (cluster | import | folder), `status`, `version`,
`versions` (each: version, description, created_at UTC ISO-8601, created_by, cluster_id,
provenance), `approval_history` (each: at, by, action, target_type, target_id, undone),
`discovery` (model, model_fingerprint, layer, run_id, cluster_id, ... as known),
`examples` and `skipped` (examples that could not be exported, with the reason).

## An example entry
`position`, `variant` (dynamic | static), `clip`, `rendered` (false: an imported clip copied
as-is), `derived_from` (position of the dynamic example a static one was made from),
`masks` (path or null), `source_video` (path, sha256, fps, frame_count, width, height, label),
`frame_range` ([first, last + 1] source frames), `frame_indices`, `boxes`, `mask_size`, `tube`.

## Checking
`conceptgen verify DIR`, or `sha256sum -c manifest.json.sha256` and the `files` map.
"""
