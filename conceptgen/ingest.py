"""Ingest videos into the workspace database.

Recipe: expand the given paths (files, folders recursively, globs) -> hash each
file's content (sha256) -> skip contents already ingested -> probe the video ->
record a Video row (``status='ok'``, or ``'failed'`` with the reason). One bad
file never stops the batch.

Labels come from each file's parent folder name, or from a CSV with columns
``path`` or ``filename``, ``label`` and optionally ``split``. CSV paths are
matched after resolving (relative paths are relative to the CSV's folder);
``filename`` matches the base name.
"""
from __future__ import annotations

import csv
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sqlalchemy import select

from conceptgen.errors import ConceptgenError, ConfigError
from conceptgen.hashing import sha256_file
from conceptgen.orm import Video
from conceptgen.progress import progress
from conceptgen.videoio import probe_video
from conceptgen.workspace import Workspace

# Folders are searched for these; a file named explicitly is always tried.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".3gp", ".ogv", ".ts", ".gif"})
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class LabelInfo:
    label: str | None
    split: str | None = None


@dataclass
class IngestReport:
    """added: new ok videos (path, video id); duplicates: paths whose content is
    already in the database; failed: (path, reason), also recorded as failed rows."""

    added: list[tuple[Path, int]] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [f"added {len(self.added)}, duplicates {len(self.duplicates)}, failed {len(self.failed)}"]
        lines += [f"  failed: {path}: {reason}" for path, reason in self.failed]
        return lines


# --- path expansion (pure file-system walking) -----------------------------------
def expand_paths(specs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for video extensions, globs
    expanded (``**`` allowed). Result: resolved, de-duplicated, in a stable order."""
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        if any(ch in text for ch in _GLOB_CHARS) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ConfigError(f"{text}: the pattern matches no files; check the glob")
            for m in matches:
                found += _expand_one(Path(m), explicit=True)
            continue
        path = Path(text)
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder; check the path")
        found += _expand_one(path, explicit=True)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return list(unique)


def _expand_one(path: Path, *, explicit: bool) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return [path] if explicit and path.is_file() else []


# --- labels -----------------------------------------------------------------------
def read_label_csv(csv_path: str | Path) -> dict[str, LabelInfo]:
    """CSV -> {key: LabelInfo}; keys are resolved paths (``path`` column) or base
    names prefixed ``name:`` (``filename`` column)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError(f"{csv_path}: labels CSV not found; check --labels")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        key_col = cols.get("path") or cols.get("filename")
        if key_col is None or "label" not in cols:
            raise ConfigError(f"{csv_path}: needs columns path (or filename) and label, "
                              f"found {', '.join(cols) or 'none'}")
        by_name = key_col == cols.get("filename") and "path" not in cols
        out: dict[str, LabelInfo] = {}
        for row in reader:
            key = (row.get(key_col) or "").strip()
            if not key:
                continue
            info = LabelInfo((row.get(cols["label"]) or "").strip() or None,
                             (row.get(cols["split"]) or "").strip() or None if "split" in cols else None)
            if by_name:
                out[f"name:{Path(key).name}"] = info
            else:
                p = Path(key)
                out[str((p if p.is_absolute() else csv_path.parent / p).resolve())] = info
    return out


def label_for(path: Path, labels: dict[str, LabelInfo] | None, split: str | None) -> LabelInfo:
    """The label of one file: from the CSV table when given, else its parent folder's name.
    ``split`` (from --split) applies when the CSV gives none."""
    if labels is None:
        return LabelInfo(path.parent.name or None, split)
    info = labels.get(str(path.resolve())) or labels.get(f"name:{path.name}") or LabelInfo(None)
    return LabelInfo(info.label, info.split or split)


# --- the orchestrator ---------------------------------------------------------------
def ingest(workspace: Workspace, specs: Sequence[str | Path], *, labels_csv: str | Path | None = None,
           split: str | None = None) -> IngestReport:
    """Ingest files, folders and globs. Re-ingesting the same content adds nothing."""
    paths = expand_paths(specs)
    if not paths:
        raise ConfigError("no video files found in the given paths; give files, folders or globs")
    labels = read_label_csv(labels_csv) if labels_csv is not None else None
    report = IngestReport()
    for path in progress(paths, desc="ingest", unit="file"):
        _ingest_one(workspace, path, label_for(path, labels, split), report)
    return report


def _ingest_one(workspace: Workspace, path: Path, label: LabelInfo, report: IngestReport) -> None:
    try:
        sha = sha256_file(path)
    except OSError as err:
        # Unreadable even as bytes: no content hash to key a row on, so report only.
        report.failed.append((path, f"cannot read file ({err.strerror or err}); check permissions"))
        return
    with workspace.session() as s:
        if s.scalar(select(Video.id).where(Video.sha256 == sha)) is not None:
            report.duplicates.append(path)
            return
        video = Video(path=str(path), sha256=sha, label=label.label, split=label.split)
        try:
            info = probe_video(path)  # refuses text files that FFmpeg would read as "ANSI art"
            video.fps, video.frame_count = info.fps, info.frame_count
            video.width, video.height, video.status = info.width, info.height, "ok"
        except ConceptgenError as err:
            video.status, video.error = "failed", str(err)
        s.add(video)
        s.flush()
        if video.status == "ok":
            report.added.append((path, video.id))
        else:
            report.failed.append((path, video.error))


def select_videos(session, selector: str = "all") -> list[Video]:
    """Ok videos chosen by ``all`` or ``label=NAME`` (several: ``label=a|b``), by id."""
    q = select(Video).where(Video.status == "ok").order_by(Video.id)
    if selector == "all":
        return list(session.scalars(q))
    if selector.startswith("label="):
        names = [n for n in selector[len("label="):].split("|") if n]
        return list(session.scalars(q.where(Video.label.in_(names))))
    raise ConfigError(f"--videos {selector!r} not understood; use 'all' or 'label=NAME'")
