"""Score new videos with an experiment's saved CAVs, without retraining them.

For each saved (concept, variant, layer) and each target class of the experiment:
the class-logit gradients of the new videos at the layer, projected on every
saved CAV (one per random set), give the TCAV score (share of videos whose logit
rises along the CAV) per CAV, summarised as mean and spread over the random sets;
per video, the share of CAVs along which its logit rises and the share of CAVs
that call its own activations the concept (``x . v + bias > 0``).
A model whose fingerprint differs from the one the CAVs were trained on is refused.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from conceptgen.errors import ConfigError, DataError, ModelError, NotFoundError
from tcav import scoring
from tcav.activations import ActivationStore
from tcav.examples import class_examples_from_folder
from tcav.results import media_folder
from tcav.saved_cavs import SavedCavSet, load_cavs


class FingerprintMismatchError(ModelError):
    """Saved CAVs applied to a model other than the one they were trained on."""


@dataclass(frozen=True)
class VideoScore:
    video: str
    positive_fraction: float     # share of the CAVs along which the class logit rises
    derivative_mean: float       # mean directional derivative (logit units per activation unit)
    concept_presence: float      # share of the CAVs that classify the video's activations as the concept


@dataclass(frozen=True)
class AppliedScore:
    concept: str
    variant: str
    layer: str
    target: str
    n_cavs: int
    tcav_mean: float             # mean over the CAVs of the share of videos with a positive derivative
    tcav_std: float
    cav_accuracy_mean: float     # held-out accuracy when the CAVs were trained
    videos: list[VideoScore] = field(default_factory=list)


@dataclass
class ApplyReport:
    experiment_id: int
    model_fingerprint: str
    videos_dir: str
    scores: list[AppliedScore]
    skipped: dict[str, str]
    out: Path | None = None

    def to_json(self) -> dict:
        return {"experiment_id": self.experiment_id, "model_fingerprint": self.model_fingerprint,
                "videos_dir": self.videos_dir, "skipped": self.skipped,
                "scores": [asdict(s) for s in self.scores]}


def check_fingerprint(saved: SavedCavSet, fingerprint: str, experiment_id: int) -> None:
    if saved.model_fingerprint != fingerprint:
        raise FingerprintMismatchError(
            f"the CAVs of experiment {experiment_id} were trained on model {saved.model_name} with fingerprint "
            f"{saved.model_fingerprint[:12]}, not this model ({fingerprint[:12]}): apply them to the same "
            "weights, or run `conceptgen tcav` on this model")


def score_with_cavs(saved: SavedCavSet, store: ActivationStore, videos, targets: dict[str, int]
                    ) -> list[AppliedScore]:
    """Pure scoring over the store's activations and gradients of ``videos`` (loaded ones only)."""
    out = []
    for (concept, variant, layer), group in saved.groups().items():
        vectors = np.stack([g.cav.vector for g in group]).astype(np.float64)   # (K, D)
        biases = np.array([g.cav.bias for g in group])
        presence = store.activations(videos, layer).astype(np.float64) @ vectors.T + biases > 0   # (N, K)
        for target, k in targets.items():
            derivatives = scoring.directional_derivatives(store.gradients(videos, layer, k), vectors)  # (N, K)
            per_cav = scoring.tcav_score(derivatives)
            rows = [VideoScore(v.origin, float(np.mean(d > 0)), float(np.mean(d)), float(np.mean(p)))
                    for v, d, p in zip(videos, derivatives, presence)]
            out.append(AppliedScore(concept, variant, layer, target, len(group), float(np.mean(per_cav)),
                                    float(np.std(per_cav)), float(np.mean([g.cav.accuracy for g in group])), rows))
    return out


def apply_experiment(workspace, experiment_id: int, videos_dir: str | Path, *, model: str | None = None,
                     weights: str | None = None, targets: tuple[str, ...] = (), device: str = "cpu",
                     batch_size: int = 8, out: str | Path | None = None) -> ApplyReport:
    """Loads the experiment's CAVs and model, refuses a different model, scores ``videos_dir``
    (``DIR/*.mp4``, or ``DIR/<class>/*.mp4`` per target) and writes the JSON report."""
    from conceptgen.orm import TcavExperiment
    from conceptgen.registry import load_model

    with workspace.session() as s:
        exp = s.get(TcavExperiment, experiment_id)
        if exp is None:
            raise NotFoundError(f"no TCAV experiment {experiment_id}: list them in the annotator or run `conceptgen tcav`")
        config, stored_targets = dict(exp.config or {}), tuple(exp.target.split(","))
    saved = load_cavs(media_folder(workspace, experiment_id))
    model = model or config.get("model")
    if not model:
        raise ConfigError(f"experiment {experiment_id} does not record its model: pass --model (and --weights)")
    loaded = load_model(model, weights=weights or config.get("weights"), device=device, workspace=workspace)
    check_fingerprint(saved, loaded.fingerprint, experiment_id)
    targets = targets or stored_targets
    indices = {t: loaded.class_index(t) for t in targets}
    layers = sorted({c.cav.layer for c in saved.cavs})
    store = ActivationStore(Path(workspace.cache) / "tcav", loaded, layers, batch_size=batch_size)
    scores, skipped = [], {}
    for target, k in indices.items():
        videos = class_examples_from_folder(videos_dir, target, loaded.spec)
        if not videos:
            raise DataError(f"no videos in {videos_dir}: pass a folder of .mp4 files (or DIR/<class>/*.mp4)")
        store.ensure(videos, [k], desc=f"videos ({target})")
        ok = [v for v in videos if v.key not in store.failed]
        skipped.update({v.origin: store.failed[v.key] for v in videos if v.key in store.failed})
        if not ok:
            raise DataError(f"none of the videos in {videos_dir} could be read: {next(iter(skipped.values()))}")
        scores += score_with_cavs(saved, store, ok, {target: k})
    report = ApplyReport(experiment_id, loaded.fingerprint, str(videos_dir), scores, skipped)
    report.out = Path(out) if out else media_folder(workspace, experiment_id) / "applied.json"
    report.out.parent.mkdir(parents=True, exist_ok=True)
    report.out.write_text(json.dumps(report.to_json(), indent=1))
    return report
