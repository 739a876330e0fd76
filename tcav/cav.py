"""The Concept Activation Vector: a result that saves and loads itself."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conceptgen.errors import IntegrityError, NotFoundError
from conceptgen.hashing import sha256_bytes


@dataclass(frozen=True)
class CAV:
    """Normal of a linear separator between ``concept`` and ``against`` at ``layer``.

    ``vector`` (D,) float32, unit norm, oriented towards the concept, in the
    layer's flattened activation space (C*T*H*W for a 5-D layer). ``accuracy`` is
    the held-out accuracy in [0, 1]; ``against`` names the other set
    (``random:<i>``, ``null:<i>`` or another concept's name). ``bias``: activations
    ``x`` with ``x . vector + bias > 0`` are on the concept's side.
    """

    concept: str
    against: str
    layer: str
    vector: np.ndarray
    accuracy: float
    classifier: str
    seed: int
    bias: float = 0.0

    def save(self, path: str | Path) -> Path:
        """Writes ``path`` (.npz) with the vector, metadata and a checksum."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        vector = np.ascontiguousarray(self.vector, dtype=np.float32)
        meta = {"concept": self.concept, "against": self.against, "layer": self.layer,
                "accuracy": self.accuracy, "classifier": self.classifier, "seed": self.seed,
                "bias": self.bias, "sha256": sha256_bytes(vector.tobytes())}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, vector=vector, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CAV":
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"no CAV file at {path}: run `conceptgen tcav` to compute it")
        try:
            with np.load(path) as data:
                vector = data["vector"].astype(np.float32)
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as err:
            raise IntegrityError(f"CAV file {path} is unreadable ({err}): delete it and recompute") from None
        if sha256_bytes(vector.tobytes()) != meta.get("sha256"):
            raise IntegrityError(f"CAV file {path} fails its checksum: delete it and recompute")
        return cls(concept=meta["concept"], against=meta["against"], layer=meta["layer"],
                   vector=vector, accuracy=float(meta["accuracy"]), classifier=meta["classifier"],
                   seed=int(meta["seed"]), bias=float(meta.get("bias", 0.0)))


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over all pairs of rows of ``vectors`` (K, D), K >= 2: how much CAVs
    fitted with different seeds agree (1 = the same direction every time)."""
    v = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    if len(v) < 2:
        raise ValueError("mean_pairwise_cosine needs at least two vectors")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.where(norms > 0, norms, 1.0)
    cos = unit @ unit.T
    upper = np.triu_indices(len(v), k=1)
    return float(np.mean(cos[upper]))
