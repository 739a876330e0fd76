"""Run by tests/test_readers.py with the Datumaro venv's python: Datumaro's CVAT importer
reads the whole export folder in one call; every shape is written out, each polygon also
rasterised by Datumaro's own mask tools.

    python read_datumaro.py EXPORT_DIR SIZES_JSON OUT_DIR [README_SNIPPET]
SIZES_JSON: {"<subset>": [width, height]}. Writes OUT_DIR/shapes.json and OUT_DIR/masks.npz."""
import json
import sys
from pathlib import Path

import numpy as np
import datumaro as dm
from datumaro.util.mask_tools import rles_to_mask

export, sizes, out = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
if len(sys.argv) > 4:   # the README's snippet for this reader, run first as a user would
    exec(compile(Path(sys.argv[4]).read_text(), "README.md", "exec"), {})
dataset = dm.Dataset.import_from(str(export), "cvat")
labels = dataset.categories()[dm.AnnotationType.label]
shapes, masks = [], {}
for item in dataset:
    for ann in item.annotations:
        record = {"subset": item.subset, "frame": item.attributes["frame"], "type": ann.type.name,
                  "label": labels[ann.label].name, "tube_id": ann.attributes.get("tube_id"),
                  "outside": bool(ann.attributes.get("outside", False))}
        if ann.type == dm.AnnotationType.bbox:
            record["box"] = [ann.x, ann.y, ann.x + ann.w, ann.y + ann.h]
        elif ann.type == dm.AnnotationType.polygon:
            width, height = sizes[item.subset]
            record["mask"] = key = f"m{len(masks)}"
            masks[key] = rles_to_mask([ann.points], width, height).astype(bool)
        shapes.append(record)
out.mkdir(parents=True, exist_ok=True)
(out / "shapes.json").write_text(json.dumps({"labels": [c.name for c in labels],
                                             "subsets": sorted(dataset.subsets()), "shapes": shapes}))
np.savez_compressed(out / "masks.npz", **masks)
