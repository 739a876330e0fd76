"""Every experiment's CAVs on disk, to score new videos later without retraining.

Layout (one owner: this module), beside results.json::

    media/tcav/<experiment id>/cavs/
      manifest.json       format, schema version, model name and fingerprint, one entry per CAV
      cav_0000.npz ...    each CAV's vector with its own checksum (:meth:`tcav.cav.CAV.save`)

Each entry carries what a CAV needs to be reused honestly: concept, variant,
concept id and version (database concepts) or the content hash of its examples,
layer, classifier, seed, bias, held-out accuracy and the model fingerprint it
was trained on. Only concept-versus-random-set CAVs are kept: they are what the
TCAV scores average over.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from conceptgen.errors import IntegrityError, NotFoundError
from conceptgen.hashing import sha256_json
from tcav.cav import CAV
from tcav.examples import ConceptExamples, static_counterpart

FOLDER = "cavs"
MANIFEST = "manifest.json"
FORMAT_NAME = "conceptgen-cavs"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SavedCav:
    """One stored CAV and where it comes from."""

    cav: CAV
    concept: str                 # the concept's name (without the variant)
    variant: str                 # dynamic | static
    concept_id: int | None
    concept_version: int | None  # database concepts; None for folder concepts
    examples_sha256: str         # content hash of the concept's example clips
    model_fingerprint: str


@dataclass(frozen=True)
class SavedCavSet:
    experiment_id: int | None
    model_name: str
    model_fingerprint: str
    cavs: list[SavedCav]

    def groups(self) -> dict[tuple[str, str, str], list[SavedCav]]:
        """(concept, variant, layer) -> its CAVs (one per random set), in stored order."""
        out: dict[tuple[str, str, str], list[SavedCav]] = {}
        for saved in self.cavs:
            out.setdefault((saved.concept, saved.variant, saved.cav.layer), []).append(saved)
        return out


def cav_folder(experiment_folder: str | Path) -> Path:
    return Path(experiment_folder) / FOLDER


def _by_label(concepts: Sequence[ConceptExamples]) -> dict[str, ConceptExamples]:
    """CAV concept label (``name`` or ``name [static]``) -> the concept variant it was fitted on."""
    out = {}
    for c in concepts:
        out[c.label] = c
        if c.variant == "dynamic":
            out.setdefault(static_counterpart(c).label, static_counterpart(c))
    return out


def save_cavs(cavs: Sequence[CAV], concepts: Sequence[ConceptExamples], *, model_name: str,
              model_fingerprint: str, experiment_folder: str | Path,
              experiment_id: int | None = None) -> Path:
    """Writes every CAV and the manifest (last, so a manifest never names a missing file)."""
    folder = cav_folder(experiment_folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_label = _by_label(concepts)
    entries = []
    for i, cav in enumerate(cavs):
        concept = by_label[cav.concept]
        name = f"cav_{i:04d}.npz"
        cav.save(folder / name)
        entries.append({
            "file": name, "concept": concept.name, "variant": concept.variant, "concept_id": concept.concept_id,
            "concept_version": concept.version,
            "examples_sha256": sha256_json(sorted(e.key for e in concept.examples)),
            "against": cav.against, "layer": cav.layer, "classifier": cav.classifier, "seed": cav.seed,
            "bias": cav.bias, "held_out_accuracy": cav.accuracy, "dim": int(cav.vector.size),
            "model_fingerprint": model_fingerprint})
    manifest = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "experiment_id": experiment_id,
                "model_name": model_name, "model_fingerprint": model_fingerprint, "cavs": entries}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(folder / MANIFEST)
    return folder / MANIFEST


def load_cavs(experiment_folder: str | Path) -> SavedCavSet:
    """Reads the manifest and every CAV (each checked against its checksum)."""
    folder = cav_folder(experiment_folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"no saved CAVs at {folder}: re-run `conceptgen tcav` for this experiment "
                            "(experiments that failed or ran before CAVs were saved have none)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise IntegrityError(f"{path} is not valid JSON: re-run `conceptgen tcav`") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise IntegrityError(f"{path} is not a conceptgen CAV manifest this version reads: upgrade conceptgen")
    cavs = []
    for entry in manifest["cavs"]:
        cav = CAV.load(folder / entry["file"])
        cavs.append(SavedCav(cav, entry["concept"], entry["variant"], entry["concept_id"], entry["concept_version"],
                             entry["examples_sha256"], entry["model_fingerprint"]))
    return SavedCavSet(manifest.get("experiment_id"), manifest["model_name"], manifest["model_fingerprint"], cavs)

