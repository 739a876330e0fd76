"""TubeRecord: the one typed form of a stored tube (database row, imported metadata,
an export's masks file), and the one place its RLE is decoded."""
from __future__ import annotations

import numpy as np

from conceptgen.masks import encode_rle, mask_box
from conceptgen.orm import Tube
from conceptgen.tubes import TubeRecord


def _masks(n=3, h=12, w=16):
    out = []
    for t in range(n):
        m = np.zeros((h, w), bool)
        m[2 + t:6 + t, 3:9 + t] = True
        out.append(m)
    return out


def test_a_database_row_reads_back_with_its_masks_and_boxes():
    masks = _masks()
    row = Tube(id=7, run_id=2, video_id=1, track_index=0, start_frame=4, end_frame=7, frame_indices=[4, 5, 6],
               kind="motion", mask_height=12, mask_width=16, masks_rle=[encode_rle(m) for m in masks],
               boxes=[mask_box(m) for m in masks], area=0.1, score=0.9)
    tube = TubeRecord.from_row(row)
    assert tube.frame_indices == [4, 5, 6] and tube.frame_range == [4, 7] and tube.mask_size == [12, 16]
    assert all(np.array_equal(a, b) for a, b in zip(tube.masks(), masks))
    assert tube.mask_boxes() == [mask_box(m) for m in masks]
    assert tube.summary() == {"id": 7, "run_id": 2, "kind": "motion", "score": 0.9}


def test_the_export_masks_file_round_trips():
    masks = _masks()
    tube = TubeRecord([10, 11, 12], [encode_rle(m) for m in masks], [mask_box(m) for m in masks], [12, 16], [10, 13])
    data = tube.masks_json()
    assert data["format"] == "coco-rle" and data["frames"] == [10, 11, 12]
    assert TubeRecord.from_masks_json(data) == tube


def test_an_import_without_a_region_is_an_empty_track():
    track = TubeRecord.from_meta({"frame_range": [0, 30]})
    assert not track.has_masks and track.masks() == [] and track.frame_range == [0, 30]
