"""The one-command demo: the whole loop on the embedded synthetic defaults.

Recipe (``prepare_demo``, then ``run_headless`` or the annotator)::

    1. synthesise   WORKSPACE/synth: a seeded, class-balanced synthetic set
    2. train        the demo model into WORKSPACE/models/demo.pt (reused if trained on the same data)
    3. ingest       the synthetic videos (labelled by class folder)
    4. extract      tubes + embeddings (an identical run is resumed, not repeated)
    5. cluster      the run into ``demo_k`` clusters (an identical clustering is reused)
    6. user         ``demo`` with a generated password in WORKSPACE/demo_login.txt (0600)

Headless (``run_headless``) goes on without a person:

    7. accept       by the GROUND-TRUTH RULE below (``accept="ground-truth"``, the default),
                    or the top clusters by the AUTO-ACCEPT RULE (``accept="cohesion"``),
                    through the same decisions library as the annotator (AuditLog rows,
                    user ``demo``), named ``gt-<class>`` and ``gt-distractor``, or
                    ``auto-1``, ``auto-2``, ...
    8. TCAV         the accepted concepts (dynamic + static) for every class with enough
                    labelled videos, at a non-degenerate conv stage and the pooled layer
                    (see ``tcav_layers``), 10 random sets, seeded; stored in the DB with
                    CSV/JSON and plots under media/tcav/<experiment id>/
    9. export       the accepted concepts with static variants to WORKSPACE/exports/demo

GROUND-TRUTH RULE: the synthetic set says which tubes are which object
(:func:`conceptgen.ground_truth.ground_truth_clusters`): per class, the candidate cluster
holding most of that class's actor tubes, when they are the majority of its matched
tubes (the concept the class's motion should be), and one distractor cluster (most
distractor tubes, no actor) to read them against. Each is trimmed and accepted as
below. TCAV then tests the stated hypotheses: each ``gt-<class>`` for its class, and
``gt-distractor`` for every class. When no cluster qualifies, the AUTO-ACCEPT RULE runs.

AUTO-ACCEPT RULE: among the clustering's clusters that are still ``candidate``, are
supported (cluster.py's filters), span at least ``min_videos`` distinct videos and have
at least ``tcav.examples.MIN_CONCEPT_EXAMPLES`` non-outlier members, rank by ``cohesion * ln(size)``
(ties: lower label index) and accept from the top until the clustering holds ``top_k``
accepted clusters. Before accepting, its outliers and the members beyond the
``MAX_AUTO_EXAMPLES`` most central are removed (as a reviewer would, so the concept stays
tight and cheap to score). A cluster is passed over when accepting it would leave fewer than
``MIN_RANDOM_POOL`` tubes outside every concept (TCAV's random sets come from those).
Clusters already decided (accepted, rejected, merged, split) are never touched, and
accepted ones count towards ``top_k``.

Idempotent: every step reuses what exists. A second run creates no run, clustering,
user, concept, audit row, TCAV experiment (a finished one with the same model, config
and concepts, newer than the concepts' latest versions, is reused) or export (an export
that verifies and holds the same concept versions is kept). An experiment an interrupted
demo left 'running' is marked failed and run again (its activations are cached).
"""
from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select

from conceptgen.errors import ConfigError, DataError
from conceptgen.workspace import Workspace

DEMO_USER = "demo"
LOGIN_FILE = "demo_login.txt"
SYNTH_FOLDER = "synth"
EXPORT_FOLDER = "demo"
AUTO_PREFIX = "auto-"
DEFAULT_VIDEOS = 48
DEFAULT_TOP_K = 4
MAX_AUTO_EXAMPLES = 12  # an auto-accepted concept keeps its most central members only
MIN_RANDOM_POOL = 12  # two disjoint random sets of 6 for TCAV's random-vs-random null
MIN_VIDEOS = 20  # the demo model holds out every 5th video per class: 5 per class at least
ACCEPT_RULES = ("ground-truth", "cohesion")
GT_PREFIX = "gt-"
DEMO_MIN_TUBE_LENGTH = 4  # frames

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the demo's results. Sizes in videos, frames and pixels."""

    n_videos: int = DEFAULT_VIDEOS
    seed: int = 0
    top_k: int = DEFAULT_TOP_K
    min_videos: int = 3          # auto-accept and cluster support: distinct source videos
    frames: int = 16             # synthetic video length
    size: int = 112              # synthetic frame side
    epochs: int | None = None    # demo model training (None: demo_model's default)
    segmenters: str = "motion,supervoxel"  # motion alone matches few ground-truth objects (the README figures use these)
    random_sets: int = 10        # TCAV random sets (the paper's number)
    random_set_size: int = 10    # clips per random set (lowered when the pool is small)
    accept: str = "ground-truth"  # headless rule: ground-truth | cohesion (module docstring)

    def validate(self) -> None:
        if self.n_videos < MIN_VIDEOS:
            raise ConfigError(f"--videos {self.n_videos} is too few for the demo; use at least {MIN_VIDEOS}")
        if self.top_k < 1:
            raise ConfigError(f"--top {self.top_k} must be at least 1")
        if self.min_videos < 1:
            raise ConfigError("min_videos must be at least 1")
        if self.accept not in ACCEPT_RULES:
            raise ConfigError(f"--accept {self.accept!r} is not a rule; use one of {', '.join(ACCEPT_RULES)}")


@dataclass(frozen=True)
class DemoLogin:
    name: str
    password: str
    path: Path           # WORKSPACE/demo_login.txt
    created: bool


@dataclass(frozen=True)
class PreparedDemo:
    """What steps 1-6 produced (ids of the DB rows the demo works on)."""

    synth_dir: Path
    model_reused: bool
    test_accuracy: float  # demo model, held-out split
    model_fingerprint: str
    run_id: int
    run_resumed: bool
    clustering_id: int
    clustering_reused: bool
    layer: str
    login: DemoLogin


@dataclass(frozen=True)
class AcceptedCluster:
    cluster_id: int
    concept_name: str
    size: int
    n_videos: int
    cohesion: float
    newly_accepted: bool  # False: accepted by an earlier run (or a person)


@dataclass(frozen=True)
class TcavRow:
    concept: str
    variant: str
    layer: str
    target: str
    tcav_mean: float
    p_corrected: float | None
    verdict: str


@dataclass
class HeadlessSummary:
    prepared: PreparedDemo
    accepted: list[AcceptedCluster]
    experiment_id: int
    experiment_reused: bool
    tcav_rows: list[TcavRow]
    plots: list[Path]
    export_dir: Path
    export_reused: bool
    warnings: list[str] = field(default_factory=list)
    failed_accepts: list[tuple[int, str]] = field(default_factory=list)


# --- steps 1-6 ------------------------------------------------------------------
def prepare_demo(workspace: Workspace, config: DemoConfig, *, log: Log = print) -> PreparedDemo:
    """Synthesise, train, ingest, extract, cluster and make the demo user; each step
    reuses what an earlier call made."""
    from conceptgen.demo_model import train_demo_model
    from conceptgen.extract import ExtractConfig, extract
    from conceptgen.ingest import ingest

    config.validate()
    workspace.ensure_dirs()
    synth_dir = synthesise(workspace, config, log=log)
    log("[2/6] demo model")
    trained = train_demo_model(synth_dir, workspace, seed=config.seed, epochs=config.epochs)
    log(f"      {'reused' if trained.reused else 'trained'} {trained.checkpoint} "
        f"(held-out accuracy {trained.test_accuracy:.2f})")
    log("[3/6] ingest")
    report = ingest(workspace, [synth_dir / "videos"])
    log(f"      {report.summary_lines()[0]}")
    log("[4/6] extract")
    # Its clips are 16 frames: tubes of 4+ frames (extract's default of 8 suits real video, not these).
    extraction = extract(workspace, ExtractConfig.from_options(segmenter=config.segmenters, seed=config.seed,
                                                               min_tube_length=DEMO_MIN_TUBE_LENGTH))
    log(f"      {extraction.summary_lines()[0]}")
    if extraction.n_done + extraction.n_skipped == 0:
        raise DataError(f"no video of run {extraction.run_id} could be processed: "
                        f"{extraction.failures[0][1] if extraction.failures else 'unknown reason'}")
    log("[5/6] cluster")
    clustering_id, layer, reused = cluster_once(workspace, extraction.run_id, config)
    log(f"      {'reused' if reused else 'made'} clustering {clustering_id} at layer {layer}")
    log("[6/6] demo user")
    login = ensure_demo_user(workspace)
    return PreparedDemo(synth_dir, trained.reused, trained.test_accuracy, trained.fingerprint,
                        extraction.run_id, extraction.resumed, clustering_id, reused, layer, login)


def synthesise(workspace: Workspace, config: DemoConfig, *, log: Log = print) -> Path:
    """WORKSPACE/synth, made once; a workspace holds one demo set."""
    from conceptgen.synth import generate_synthetic_set, load_ground_truth

    out = workspace.root / SYNTH_FOLDER
    log(f"[1/6] synthetic set ({config.n_videos} videos, seed {config.seed})")
    if (out / "ground_truth.json").is_file():
        have = load_ground_truth(out)
        wanted = (config.n_videos, config.seed, config.frames, config.size)
        if (len(have.videos), have.seed, have.num_frames, have.size) != wanted:
            raise ConfigError(f"{workspace.root} already holds a demo made with --videos {len(have.videos)} "
                              f"--seed {have.seed}; rerun with those options or use another --workspace")
        log(f"      reused {out}")
        return out
    generate_synthetic_set(out, n_videos=config.n_videos, seed=config.seed, num_frames=config.frames,
                           size=config.size)
    return out


def demo_k(n_tubes: int) -> int:
    """Clusters for the demo's gallery: about 10 tubes each, 4 to 12 clusters.

    Silhouette (``k=auto``) tends to split the synthetic tubes only into actors and
    distractors; finer clusters give the reviewer (and the automatic rule) real choices."""
    return max(1, min(n_tubes, max(4, min(12, n_tubes // 10))))


def cluster_once(workspace: Workspace, run_id: int, config: DemoConfig) -> tuple[int, str, bool]:
    """(clustering id, layer, reused): the run's clustering with the demo's settings,
    made only if none exists."""
    from conceptgen.cluster import cluster_run
    from conceptgen.orm import Clustering, Tube
    from tcav.examples import MIN_CONCEPT_EXAMPLES

    with workspace.session() as s:
        n_tubes = int(s.scalar(select(func.count(Tube.id)).where(Tube.run_id == run_id)))
    if n_tubes == 0:
        raise DataError(f"run {run_id} found no moving regions in the synthetic videos; "
                        "try --segmenter motion,supervoxel,foreground")
    k = demo_k(n_tubes)
    wanted = {"k": k, "seed": config.seed, "min_size": MIN_CONCEPT_EXAMPLES, "min_videos": config.min_videos}
    with workspace.session() as s:
        for clustering in s.scalars(select(Clustering).where(Clustering.run_id == run_id).order_by(Clustering.id)):
            if all((clustering.params or {}).get(key) == v for key, v in wanted.items()):
                return clustering.id, clustering.layer, True
    report = cluster_run(workspace, run_id, k=k, seed=config.seed, min_size=MIN_CONCEPT_EXAMPLES,
                         min_videos=config.min_videos)
    return report.clustering_id, report.layer, False


def ensure_demo_user(workspace: Workspace) -> DemoLogin:
    """User ``demo``; its password lives in WORKSPACE/demo_login.txt (mode 0600).
    A missing file (or user) is made again; the pair always matches afterwards."""
    from conceptgen.review.users import authenticate, create_user, set_password
    from conceptgen.orm import User

    path = workspace.root / LOGIN_FILE
    password = _read_login(path)
    with workspace.session() as s:
        exists = s.scalar(select(User).where(User.name == DEMO_USER)) is not None
        if exists and password is not None and authenticate(s, DEMO_USER, password) is not None:
            return DemoLogin(DEMO_USER, password, path, created=False)
        password = password or secrets.token_urlsafe(12)
        if exists:
            set_password(s, DEMO_USER, password)
        else:
            create_user(s, DEMO_USER, password)
    _write_login(path, password)
    return DemoLogin(DEMO_USER, password, path, created=True)


def _read_login(path: Path) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("password:"):
            return line.split(":", 1)[1].strip() or None
    return None


def _write_login(path: Path, password: str) -> None:
    # Created 0600 from the start: the password is never readable by others, even briefly.
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"user: {DEMO_USER}\npassword: {password}\n")
    tmp.replace(path)


# --- step 7: the automatic reviewer -------------------------------------------------
def auto_accept_score(cohesion: float, size: int) -> float:
    """The ranking score of the auto-accept rule: cohesion * ln(size)."""
    return float(cohesion) * math.log(max(int(size), 1))


def auto_accept(workspace: Workspace, clustering_id: int, user_id: int, *, top_k: int, min_videos: int,
                max_examples: int = MAX_AUTO_EXAMPLES) -> tuple[list[AcceptedCluster], list[tuple[int, str]]]:
    """Apply the AUTO-ACCEPT RULE (module docstring) to one clustering. Returns every
    accepted cluster of the clustering in acceptance order (earlier acceptances included), and
    (cluster id, reason) for each acceptance that failed; the others go on."""
    from conceptgen.errors import ConceptgenError
    from conceptgen.orm import Cluster, ClusterMember, Concept
    from tcav.examples import MIN_CONCEPT_EXAMPLES

    pool = random_pool_size(workspace)
    with workspace.session() as s:
        clusters = list(s.scalars(select(Cluster).where(Cluster.clustering_id == clustering_id)))
        n_accepted = sum(c.status == "accepted" for c in clusters)
        inliers = dict(s.execute(select(ClusterMember.cluster_id, func.count(ClusterMember.id))
                                 .where(ClusterMember.cluster_id.in_([c.id for c in clusters]),
                                        ClusterMember.excluded.is_(False), ClusterMember.is_outlier.is_(False))
                                 .group_by(ClusterMember.cluster_id)).all())
        eligible = [(c.id, min(inliers.get(c.id, 0), max_examples)) for c in sorted(
            (c for c in clusters if c.status == "candidate" and c.supported and c.n_videos >= min_videos
             and inliers.get(c.id, 0) >= MIN_CONCEPT_EXAMPLES),
            key=lambda c: (-auto_accept_score(c.cohesion, c.size), c.label_index))]
    new_ids, failed = set(), []
    for cluster_id, kept in eligible:
        if n_accepted + len(new_ids) >= top_k:
            break
        if pool - kept < MIN_RANDOM_POOL:
            continue
        try:  # one transaction per cluster, as a reviewer's page would commit
            with workspace.session() as s:
                trim_and_accept(s, user_id, s.get(Cluster, cluster_id), max_examples,
                                _next_auto_name(set(s.scalars(select(func.lower(Concept.name))))),
                                by="`conceptgen demo --headless`")
            new_ids.add(cluster_id)
            pool -= kept
        except ConceptgenError as err:
            failed.append((cluster_id, str(err)))
    with workspace.session() as s:
        rows = s.execute(select(Cluster, Concept.name).join(Concept, Concept.id == Cluster.concept_id)
                         .where(Cluster.clustering_id == clustering_id, Cluster.status == "accepted")).all()
        rows = sorted(rows, key=lambda row: row[0].concept_id)  # acceptance order: auto-1, auto-2, ...
        out = [AcceptedCluster(c.id, name, c.size, c.n_videos, c.cohesion, c.id in new_ids) for c, name in rows]
    return out, failed


def trim_and_accept(session, user_id: int, cluster, max_examples: int, name: str, *, by: str) -> None:
    """Remove outliers and members beyond the ``max_examples`` most central, then accept:
    the same decisions (and AuditLog rows) a reviewer makes in the annotator. ``by``
    names the rule's owner in the concept's description."""
    from conceptgen.review.decisions import accept, set_member_excluded
    from conceptgen.orm import ClusterMember

    members = session.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cluster.id,
                                                          ClusterMember.excluded.is_(False))
                              .order_by(ClusterMember.rank, ClusterMember.id)).all()
    inliers = [m for m in members if not m.is_outlier]
    size, n_videos, label = cluster.size, cluster.n_videos, cluster.label_index
    version = cluster.version
    for member in [m for m in members if m.is_outlier] + inliers[max_examples:]:
        version = set_member_excluded(session, user_id, member.id, version).versions[cluster.id]
    accept(session, user_id, cluster.id, version, name=name, description=(
        f"auto-accepted by {by}: the {min(len(inliers), max_examples)} most central "
        f"of {size} tubes ({n_videos} videos) of cluster {label} in clustering {cluster.clustering_id}"))


def ground_truth_accept(workspace: Workspace, clustering_id: int, user_id: int, synth_dir: Path, *,
                        max_examples: int = MAX_AUTO_EXAMPLES) -> tuple[list[AcceptedCluster], list[tuple[int, str]]]:
    """Apply the GROUND-TRUTH RULE (module docstring): accept the clusters the synthetic
    ground truth says carry each class's motion, and one distractor cluster, as
    ``gt-<class>`` / ``gt-distractor``. Returns (accepted, failed) as :func:`auto_accept`;
    a cluster accepted by an earlier run is reported again, not accepted twice."""
    from conceptgen.errors import ConceptgenError
    from conceptgen.ground_truth import ground_truth_clusters
    from conceptgen.orm import Cluster, ClusterMember, Concept
    from conceptgen.synth import load_ground_truth
    from tcav.examples import MIN_CONCEPT_EXAMPLES

    picks = ground_truth_clusters(workspace, clustering_id, load_ground_truth(synth_dir), candidates_only=True)
    pool, out, failed = random_pool_size(workspace), [], []
    for pick in picks:
        name = f"{GT_PREFIX}{pick.stands_for}"
        with workspace.session() as s:
            cluster = s.get(Cluster, pick.cluster_id)
            inliers = s.scalar(select(func.count(ClusterMember.id)).where(
                ClusterMember.cluster_id == cluster.id, ClusterMember.excluded.is_(False),
                ClusterMember.is_outlier.is_(False)))
            status, size, n_videos, cohesion = cluster.status, cluster.size, cluster.n_videos, cluster.cohesion
            concept = s.get(Concept, cluster.concept_id) if cluster.concept_id else None
        if status == "accepted":
            out.append(AcceptedCluster(pick.cluster_id, concept.name if concept else name, size, n_videos,
                                       cohesion, False))
            continue
        kept = min(inliers, max_examples)
        if inliers < MIN_CONCEPT_EXAMPLES or pool - kept < MIN_RANDOM_POOL:
            failed.append((pick.cluster_id, f"{name}: {inliers} inlier(s), {pool} tubes in no concept; "
                                            f"needs {MIN_CONCEPT_EXAMPLES} and a random pool of {MIN_RANDOM_POOL}"))
            continue
        try:
            with workspace.session() as s:
                trim_and_accept(s, user_id, s.get(Cluster, pick.cluster_id), max_examples, name,
                                by=f"`conceptgen demo --headless` (ground truth: {pick.matched} {pick.stands_for} "
                                   f"tubes, purity {pick.purity:.2f})")
            out.append(AcceptedCluster(pick.cluster_id, name, size, n_videos, cohesion, True))
            pool -= kept
        except ConceptgenError as err:
            failed.append((pick.cluster_id, str(err)))
    return out, failed


def ground_truth_hypotheses(concepts: list[str], targets: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The ground truth's claims, stated before TCAV runs: gt-<class> for its class,
    gt-distractor for every class (empty when the concepts are not the ground truth's)."""
    out = [(c, c[len(GT_PREFIX):]) for c in concepts if c[len(GT_PREFIX):] in targets]
    out += [(c, t) for c in concepts if c == f"{GT_PREFIX}distractor" for t in targets]
    return tuple(out) if out and all(c.startswith(GT_PREFIX) for c in concepts) else ()


def _next_auto_name(taken_lower: set[str]) -> str:
    n = 1
    while f"{AUTO_PREFIX}{n}" in taken_lower:
        n += 1
    return f"{AUTO_PREFIX}{n}"


# --- step 8: TCAV ---------------------------------------------------------------------
def tcav_layers() -> tuple[str, ...]:
    """The demo model's second-to-last conv stage, plus the pooled layer.

    The last conv stage feeds global pooling and a linear head directly, so the gradient
    of a logit there is the same for every clip (a degenerate layer: TCAV 0 or 1); the
    stage before it still has a non-linearity downstream. The pooled layer costs little
    and is kept for contrast: TCAV's diagnostics flag it as degenerate."""
    from conceptgen.demo_model import CONV_STAGES, POOLED_LAYER

    return (CONV_STAGES[-2], POOLED_LAYER)


def tcav_targets(workspace: Workspace) -> tuple[str, ...]:
    """Every class label with at least tcav.examples.MIN_CLASS_EXAMPLES ok videos."""
    from conceptgen.orm import Video
    from tcav.examples import MIN_CLASS_EXAMPLES

    with workspace.session() as s:
        rows = s.execute(select(Video.label, func.count(Video.id))
                         .where(Video.status == "ok", Video.label.is_not(None))
                         .group_by(Video.label).order_by(Video.label)).all()
    targets = tuple(label for label, n in rows if n >= MIN_CLASS_EXAMPLES)
    if not targets:
        raise DataError(f"no class has {MIN_CLASS_EXAMPLES} labelled videos for TCAV; use more --videos")
    return targets


def random_pool_size(workspace: Workspace) -> int:
    """Tubes in no concept: tcav.examples' random pool rule, counted without rendering."""
    from conceptgen.orm import ConceptExample, Tube

    with workspace.session() as s:
        used = select(ConceptExample.tube_id).where(ConceptExample.tube_id.is_not(None))
        return int(s.scalar(select(func.count(Tube.id)).where(Tube.id.not_in(used))))


def demo_tcav_request(workspace: Workspace, prepared: PreparedDemo, concepts: list[str], config: DemoConfig):
    """The TCAV request the demo makes (a tcav.workflow.TcavRequest)."""
    from tcav.experiment import TcavConfig, pseudo_test_fits
    from tcav.workflow import TcavRequest

    pool = random_pool_size(workspace)
    size = min(config.random_set_size, pool // 2)
    if size < MIN_RANDOM_POOL // 2:
        raise DataError("too few tubes outside the accepted concepts for TCAV random sets; use more --videos")
    # A small demo's pool cannot hold pseudo-concepts beside random sets: the permutation test then.
    test = "pseudo" if pseudo_test_fits(pool, MAX_AUTO_EXAMPLES, size) else "permutation"
    targets = tcav_targets(workspace)
    tcav = TcavConfig(layers=tcav_layers(), targets=targets, random_sets=config.random_sets,
                      seed=config.seed, random_set_size=size, test=test,
                      hypotheses=ground_truth_hypotheses(concepts, targets))
    return TcavRequest(model="demo", concepts=",".join(concepts), config=tcav)


def matching_experiments(workspace: Workspace, request, model_fingerprint: str, status: str) -> list[int]:
    """Ids (newest first) of experiments with ``status`` that answer ``request`` with this
    model (the same stored config, device aside) and were made after the latest version
    of each of its concepts."""
    from conceptgen.orm import Concept, ConceptVersion, TcavExperiment

    names = request.concepts.split(",")
    # as the JSON column holds it (tuples come back as lists)
    want = json.loads(json.dumps({k: v for k, v in request.stored_config().items() if k not in ("device", "amp")}))
    with workspace.session() as s:
        newest = s.scalar(select(func.max(ConceptVersion.created_at)).join(Concept)
                          .where(Concept.name.in_(names)))
        experiments = s.scalars(select(TcavExperiment).where(
            TcavExperiment.status == status, TcavExperiment.model_fingerprint == model_fingerprint)
            .order_by(TcavExperiment.id.desc())).all()
        return [exp.id for exp in experiments
                if all(exp.config.get(k) == v for k, v in want.items())
                and (newest is None or exp.created_at >= newest)]


def run_demo_tcav(workspace: Workspace, prepared: PreparedDemo, concepts: list[str], config: DemoConfig
                  ) -> tuple[int, bool, list[TcavRow], list[Path], list[str]]:
    """(experiment id, reused, rows, plot paths, warnings) of the demo's TCAV experiment."""
    from conceptgen.orm import TcavExperiment, TcavResult
    from tcav.results import fail_experiment
    from tcav.workflow import run_experiment

    request = demo_tcav_request(workspace, prepared, concepts, config)
    finished = matching_experiments(workspace, request, prepared.model_fingerprint, "finished")
    reused = bool(finished)
    if reused:
        experiment_id = finished[0]
    else:
        # An interrupted demo left its experiment 'running'; the activation cache makes the rerun cheap.
        for stale in matching_experiments(workspace, request, prepared.model_fingerprint, "running"):
            fail_experiment(workspace, stale, "interrupted before it finished; `conceptgen demo` ran it again")
        experiment_id = run_experiment(workspace, request).experiment_id
    with workspace.session() as s:
        exp = s.get(TcavExperiment, experiment_id)
        results = s.scalars(select(TcavResult).where(TcavResult.experiment_id == experiment_id,
                                                     TcavResult.comparison == "random")
                            .order_by(TcavResult.target_class, TcavResult.layer, TcavResult.concept_name,
                                      TcavResult.variant)).all()
        rows = [TcavRow(r.concept_name, r.variant, r.layer, r.target_class, r.tcav_mean, r.p_corrected,
                        r.verdict) for r in results]
        plots = [workspace.media / p for p in exp.plots]
        warnings = list((exp.summary or {}).get("warnings", []))
    return experiment_id, reused, rows, plots, warnings


# --- step 9: export -------------------------------------------------------------------
def export_demo(workspace: Workspace, concepts: list[str]) -> tuple[Path, bool]:
    """(folder, reused): WORKSPACE/exports/demo with static variants. An export that
    verifies and holds the same concept versions is kept; otherwise it is replaced
    atomically (exports are byte-reproducible, so nothing else changes)."""
    from conceptgen.concepts import load_concept_records
    from conceptgen.export import export_concepts, read_manifest
    from conceptgen.errors import ConceptgenError

    out = workspace.exports / EXPORT_FOLDER
    wanted = sorted((r.name, r.version) for r in load_concept_records(workspace, concepts))
    if out.is_dir():
        try:
            manifest = read_manifest(out, verify=True)
            have = sorted((c["name"], c["version"]) for c in manifest["concepts"])
            if have == wanted and manifest.get("render", {}).get("static"):
                return out, True
        except (ConceptgenError, KeyError, TypeError):
            pass  # corrupt or foreign: replaced below
    export_concepts(workspace, concepts, out, static=True, overwrite=True)
    return out, False


# --- the headless loop ----------------------------------------------------------------
def run_headless(workspace: Workspace, config: DemoConfig, *, log: Log = print) -> HeadlessSummary:
    """Steps 1-9 without a person (see the module docstring for the rule and reuse)."""
    from conceptgen.orm import User

    prepared = prepare_demo(workspace, config, log=log)
    with workspace.session() as s:
        user_id = s.scalar(select(User.id).where(User.name == DEMO_USER))
    accepted, failed = [], []
    if config.accept == "ground-truth":
        log(f"[auto] accept the clusters the ground truth says carry each class's motion, and a distractor "
            f"(clustering {prepared.clustering_id})")
        accepted, failed = ground_truth_accept(workspace, prepared.clustering_id, user_id, prepared.synth_dir)
    if not accepted:
        log(f"[auto] accept the top {config.top_k} clusters of clustering {prepared.clustering_id}")
        accepted, more = auto_accept(workspace, prepared.clustering_id, user_id, top_k=config.top_k,
                                     min_videos=config.min_videos)
        failed += more
    for cluster_id, reason in failed:
        log(f"      could not accept cluster {cluster_id}: {reason}")
    if not accepted:
        raise DataError(f"no cluster of clustering {prepared.clustering_id} passes the auto-accept rule; "
                        "use more --videos")
    concepts = [a.concept_name for a in accepted]
    log(f"[tcav] {', '.join(concepts)} (dynamic and static)")
    experiment_id, exp_reused, rows, plots, warnings = run_demo_tcav(workspace, prepared, concepts, config)
    log(f"[export] {workspace.exports / EXPORT_FOLDER}")
    export_dir, export_reused = export_demo(workspace, concepts)
    return HeadlessSummary(prepared, accepted, experiment_id, exp_reused, rows, plots, export_dir,
                           export_reused, warnings, failed)


def summary_lines(summary: HeadlessSummary) -> list[str]:
    """The headless demo's report, for people."""
    p = summary.prepared
    lines = [f"demo login: user {p.login.name}, password {p.login.password} (also in {p.login.path})",
             f"run {p.run_id}, clustering {p.clustering_id} at layer {p.layer}; "
             f"demo model held-out accuracy {p.test_accuracy:.2f}",
             "accepted concepts (rule: " + ("the synthetic ground truth" if summary.accepted and all(
                 a.concept_name.startswith(GT_PREFIX) for a in summary.accepted) else "cohesion x ln(size)") + "):"]
    lines += [f"  {a.concept_name:<16} cluster {a.cluster_id:<5} {a.size:>4} tubes {a.n_videos:>3} videos "
              f"cohesion {a.cohesion:.3f}{'' if a.newly_accepted else '  (already accepted)'}"
              for a in summary.accepted]
    lines += [f"  could not accept cluster {cid}: {reason}" for cid, reason in summary.failed_accepts]
    lines.append(f"TCAV experiment {summary.experiment_id}{' (reused)' if summary.experiment_reused else ''}:")
    lines.append(f"  {'concept':<16} {'layer':<10} {'class':<14} {'dynamic':>7} {'static':>7} {'p corr':>7}  "
                 f"verdict (dynamic)")
    static = {(r.concept, r.layer, r.target): r for r in summary.tcav_rows if r.variant == "static"}
    for r in (r for r in summary.tcav_rows if r.variant == "dynamic"):
        twin = static.get((r.concept, r.layer, r.target))
        p_text = "-" if r.p_corrected is None else f"{r.p_corrected:.3g}"
        lines.append(f"  {r.concept:<16} {r.layer:<10} {r.target:<14} {r.tcav_mean:>7.2f} "
                     f"{'-' if twin is None else f'{twin.tcav_mean:.2f}':>7} {p_text:>7}  {r.verdict}")
    lines += [f"warning: {w}" for w in summary.warnings]
    folder = summary.plots[0].parent if summary.plots else None
    lines.append(f"plots: {len(summary.plots)} in {folder}" if folder else "plots: none")
    lines.append(f"export: {summary.export_dir}{' (reused)' if summary.export_reused else ''}; "
                 f"check it with `conceptgen verify {summary.export_dir}`")
    return lines
