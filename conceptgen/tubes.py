"""The stored tube: one typed record for every reader of tubes.

Tracking (:mod:`conceptgen.track`) builds tubes with decoded masks in memory;
once stored, a tube is per source frame a COCO RLE mask and a box at the
processing resolution ``mask_size``. :class:`TubeRecord` is that stored form,
read from a database row (:meth:`TubeRecord.from_row`), from an imported
example's metadata (:meth:`TubeRecord.from_meta`) or from an export's masks
file (:meth:`TubeRecord.from_masks_json`), and the one place RLE is decoded
(:meth:`TubeRecord.masks`, :meth:`TubeRecord.mask`). Export, TCAV, the annotator's media route and the
demo read tubes through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptgen.masks import decode_rle, mask_box

if TYPE_CHECKING:  # pragma: no cover
    from conceptgen import orm

MASKS_FORMAT = "coco-rle"


@dataclass(frozen=True)
class TubeRecord:
    """A tube as the database and exports keep it.

    ``frame_indices``: source-video frame per entry; ``masks_rle``: one COCO RLE
    (``counts`` a str) per frame at ``mask_size`` ``[h, w]`` (the source frame scaled
    so that its longer side is ``max(h, w)``); ``boxes``: ``[x0, y0, x1, y1]`` float
    pixels of that frame, x1/y1 exclusive; ``frame_range``: ``[first, last + 1]``.
    ``id``, ``run_id``, ``kind`` and ``score`` are known for database tubes only.
    Lists (not tuples) so that JSON written from a record keeps its bytes."""

    frame_indices: list[int]
    masks_rle: list[dict[str, Any]]
    boxes: list[list[float]]
    mask_size: list[int] | None
    frame_range: list[int] | None
    id: int | None = None
    run_id: int | None = None
    kind: str | None = None
    score: float | None = None

    @classmethod
    def from_row(cls, row: "orm.Tube") -> "TubeRecord":
        """A database tube, detached from its session."""
        return cls(frame_indices=list(row.frame_indices), masks_rle=list(row.masks_rle),
                   boxes=[list(map(float, b)) for b in row.boxes], mask_size=[row.mask_height, row.mask_width],
                   frame_range=[row.start_frame, row.end_frame], id=row.id, run_id=row.run_id,
                   kind=row.kind, score=row.score)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "TubeRecord":
        """The region an imported example's metadata keeps (possibly none: empty lists)."""
        return cls(frame_indices=list(meta.get("frame_indices") or []), masks_rle=list(meta.get("masks_rle") or []),
                   boxes=list(meta.get("boxes") or []), mask_size=meta.get("mask_size"),
                   frame_range=meta.get("frame_range"))

    @classmethod
    def from_masks_json(cls, data: dict[str, Any]) -> "TubeRecord":
        """An export's ``masks/NNNN.json`` (see :meth:`masks_json`)."""
        frames = list(data["frames"])
        return cls(frame_indices=frames, masks_rle=list(data["rle"]), boxes=list(data["boxes"]),
                   mask_size=data["size"], frame_range=[frames[0], frames[-1] + 1] if frames else None)

    def masks_json(self) -> dict[str, Any]:
        """The export's masks file: ``{"format": "coco-rle", "size", "frames", "boxes", "rle"}``."""
        return {"format": MASKS_FORMAT, "size": self.mask_size, "frames": self.frame_indices,
                "boxes": self.boxes, "rle": self.masks_rle}

    @property
    def has_masks(self) -> bool:
        return bool(self.masks_rle)

    def masks(self) -> list[np.ndarray]:
        """Bool ``(h, w)`` mask per frame."""
        return [self.mask(i) for i in range(len(self.masks_rle))]

    def mask(self, i: int) -> np.ndarray:
        """Bool ``(h, w)`` mask of entry ``i`` (the one place stored RLE is decoded)."""
        return decode_rle(self.masks_rle[i])

    def mask_boxes(self, masks: list[np.ndarray] | None = None) -> list[list[float]]:
        """The boxes of the masks themselves (rendering needs boxes that hold their
        masks, which an imported dataset's stored boxes need not)."""
        return [mask_box(m) for m in (self.masks() if masks is None else masks)]

    def summary(self) -> dict[str, Any]:
        """id, run, segmenter and score: what an export lists of a database tube."""
        return {"id": self.id, "run_id": self.run_id, "kind": self.kind, "score": self.score}
