"""Files under WORKSPACE/media only, with HTTP Range support (so videos seek), and
full source videos with a tube highlighted, rendered on demand and cached."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from flask import Blueprint, redirect, send_file, url_for

from annotator.db import db, workspace
from conceptgen.db import get_or_raise
from annotator.views.auth import login_required
from conceptgen.errors import NotFoundError
from conceptgen.hashing import sha256_json
from conceptgen.orm import Tube, Video
from conceptgen.tubes import TubeRecord

bp = Blueprint("media", __name__)
HIGHLIGHT_DIR = "highlight"


def resolve_media_path(media_root: Path, relpath: str) -> Path:
    """The real file for ``relpath`` if it lies under ``media_root``; else NotFoundError.
    Rejects absolute paths, ``..``, backslashes, NUL and symlinks that leave the root."""
    rel = PurePosixPath(relpath or "")
    bad = (not relpath or "\x00" in relpath or "\\" in relpath or rel.is_absolute()
           or any(part in ("..", "") for part in relpath.split("/")))
    if not bad:
        root = media_root.resolve()
        real = (root / rel).resolve()
        if real.is_relative_to(root) and real.is_file():
            return real
    raise NotFoundError("no such media file; media links only point inside the workspace's media folder")


@bp.route("/media/<path:relpath>")
@login_required
def serve(relpath: str):
    path = resolve_media_path(workspace().media, relpath)
    return send_file(path, conditional=True, max_age=300)


HIGHLIGHT_MAX_SIDE = 480  # pixels; bounds the work of rendering a long source video


def highlight_relpath(tube: TubeRecord, video: Video) -> str:
    """Cache name keyed by content: the video's hash and the tube's frames and masks."""
    key = sha256_json([video.sha256, tube.frame_indices, tube.masks_rle, HIGHLIGHT_MAX_SIDE])[:16]
    return f"{HIGHLIGHT_DIR}/tube{tube.id}-{key}.mp4"


def render_highlight(video: Video, tube: TubeRecord, out: Path) -> None:
    """The whole source video with the tube outlined (the engine's renderer), as H.264."""
    from conceptgen.render import highlight_full_video
    from conceptgen.videoio import probe_video, read_frames, write_video

    frames = read_frames(video.path)
    clip = highlight_full_video(frames, tube.frame_indices, tube.masks(), max_side=HIGHLIGHT_MAX_SIDE)
    write_video(out, clip, fps=video.fps or probe_video(video.path).fps)  # atomic: never half a file


@bp.route("/videos/<int:video_id>/source")
@login_required
def source(video_id: int):
    """A registered source video as it is (HTTP Range, so the browser seeks to a tube)."""
    video = get_or_raise(db(), Video, video_id, "video")
    path = Path(video.path)
    if not path.is_file():
        raise NotFoundError(f"the source video {video.path} is missing; restore it to play tubes in context")
    return send_file(path, conditional=True, max_age=300)


@bp.route("/tubes/<int:tube_id>/highlight")
@login_required
def highlight(tube_id: int):
    """Render (once) the full source video with the tube outlined, then redirect to it."""
    row = get_or_raise(db(), Tube, tube_id, "tube")
    video, tube = db().get(Video, row.video_id), TubeRecord.from_row(row)
    rel = highlight_relpath(tube, video)
    out = workspace().media / rel
    if not out.exists():
        if not Path(video.path).exists():
            raise NotFoundError(f"the source video {video.path} is missing; restore it to play the tube in context")
        render_highlight(video, tube, out)
    return redirect(url_for("media.serve", relpath=rel))
