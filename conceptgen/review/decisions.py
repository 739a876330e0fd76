"""Review decisions: the one library behind the annotator's pages and JSON API, the headless
demo and scripts (no web framework: a session in, flushed rows out).

Every decision follows the same recipe (:func:`_decide`):
  1. load the clusters it touches and check the version the reviewer saw
     (optimistic concurrency: a stale version raises :class:`StaleVersionError`);
  2. snapshot the touched records (clusters, members, concepts) — the *before* state;
  3. apply the change and bump the version of every touched cluster, so a concurrent
     writer's ``UPDATE ... WHERE version = seen`` fails instead of being overwritten;
  4. snapshot the same records again — the *after* state — and append an AuditLog row.

A state is plain JSON: ``{"clusters": {id: {...}}, "members": {id: {...}},
"concepts": {id: {...}}}`` with string ids; ``None`` means "does not exist".
Replaying every audit row's *after* patch over the initial state gives the final
database state (:func:`replay`), which is how the load benchmark proves that no
update was lost. Undo writes its own audit row whose *after* is the undone row's
*before*, so replay needs no special case.

The caller owns the transaction: these functions flush, the caller commits. A server that
serialises decisions (the annotator's writer turn) calls them through :func:`run`, which
holds its turn only for step 3 onwards and commits: steps 1 and 2 are reads, done beside
other requests, and re-checked inside the turn (:func:`_reads_unchanged`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, object_session
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.exc import StaleDataError

from conceptgen.db import get_or_raise
from conceptgen.errors import ConceptgenError, DataError, StaleVersionError
from conceptgen.orm import (
    AuditLog,
    Cluster,
    Clustering,
    ClusterMember,
    Concept,
    ConceptExample,
    ConceptVersion,
    Tube,
)

CLUSTER_FIELDS = ("clustering_id", "label_index", "status", "name", "description", "concept_id",
                  "parent_id", "size", "n_videos", "cohesion", "supported")
MEMBER_FIELDS = ("cluster_id", "tube_id", "distance", "rank", "is_outlier", "excluded", "representative")
CONCEPT_FIELDS = ("name", "description", "status", "current_version")
STATE_KINDS = ("clusters", "members", "concepts")

REVIEWABLE = ("candidate", "accepted", "rejected")  # merged/split clusters live on in their successors
MAX_NAME = 200
MAX_DESCRIPTION = 5000


class DecisionError(ConceptgenError):
    """A decision that cannot apply to the record as it is (wrong status, bad input)."""


class NameTakenError(ConceptgenError):
    """A concept name that another concept already uses."""

    exit_code = 3


@dataclass(frozen=True)
class DecisionResult:
    """What a decision did: its audit row, the clusters it touched with their new
    versions, and the concept it created or updated (if any)."""

    audit_id: int
    action: str
    versions: dict[int, int]
    concept_id: int | None = None
    created_cluster_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"audit_id": self.audit_id, "action": self.action,
                "versions": {str(k): v for k, v in self.versions.items()},
                "concept_id": self.concept_id, "created_cluster_ids": self.created_cluster_ids}


# --- state snapshots -----------------------------------------------------------
def _row_state(fields: tuple[str, ...], values: Iterable[Any]) -> dict[str, Any]:
    return {f: (float(v) if isinstance(v, float) else v) for f, v in zip(fields, values)}


def cluster_state(c: Cluster) -> dict[str, Any]:
    return _row_state(CLUSTER_FIELDS, (getattr(c, f) for f in CLUSTER_FIELDS))


def _concept_versions(session: Session, concept_ids: list[int],
                      known_tubes: dict[int, list[int]] | None = None) -> dict[int, dict[str, Any]]:
    """concept id -> {str(version): {cluster_id, description, tube_ids}}. ``known_tubes``
    (version row id -> tube ids) spares reading examples again within one decision: a
    version's examples never change once written (an undo deletes the whole version)."""
    out: dict[int, dict[str, Any]] = {cid: {} for cid in concept_ids}
    if not concept_ids:
        return out
    versions = session.execute(
        select(ConceptVersion.id, ConceptVersion.concept_id, ConceptVersion.version,
               ConceptVersion.cluster_id, ConceptVersion.description)
        .where(ConceptVersion.concept_id.in_(concept_ids))).all()
    tubes = known_tubes if known_tubes is not None else {}
    unread = [v.id for v in versions if v.id not in tubes]
    for vid in unread:
        tubes[vid] = []
    for vid, tube_id in session.execute(
            select(ConceptExample.concept_version_id, ConceptExample.tube_id)
            .where(ConceptExample.concept_version_id.in_(unread))
            .order_by(ConceptExample.concept_version_id, ConceptExample.position)) if unread else ():
        tubes[vid].append(tube_id)
    for v in versions:
        out[v.concept_id][str(v.version)] = {"cluster_id": v.cluster_id, "description": v.description,
                                             "tube_ids": list(tubes[v.id])}
    return out


def _concept_states(session: Session, concepts: list[Concept],
                    known_tubes: dict[int, list[int]] | None = None) -> dict[str, dict[str, Any]]:
    versions = _concept_versions(session, [c.id for c in concepts], known_tubes)
    return {str(c.id): {**_row_state(CONCEPT_FIELDS, (getattr(c, f) for f in CONCEPT_FIELDS)),
                        "versions": versions[c.id]} for c in concepts}


def snapshot_state(session: Session) -> dict[str, dict[str, dict[str, Any]]]:
    """The reviewable state of the whole database (every cluster, member and concept)."""
    clusters = session.execute(select(Cluster.id, *[getattr(Cluster, f) for f in CLUSTER_FIELDS])).all()
    members = session.execute(select(ClusterMember.id, *[getattr(ClusterMember, f) for f in MEMBER_FIELDS])).all()
    concepts = session.execute(select(Concept.id, *[getattr(Concept, f) for f in CONCEPT_FIELDS])).all()
    versions = _concept_versions(session, [row[0] for row in concepts])
    return {
        "clusters": {str(r[0]): _row_state(CLUSTER_FIELDS, r[1:]) for r in clusters},
        "members": {str(r[0]): _row_state(MEMBER_FIELDS, r[1:]) for r in members},
        "concepts": {str(r[0]): {**_row_state(CONCEPT_FIELDS, r[1:]), "versions": versions[r[0]]}
                     for r in concepts},
    }


def replay(initial: dict[str, dict], entries: Iterable[dict[str, Any]]) -> dict[str, dict]:
    """Apply audit *after* patches, in order, to a state (pure; the input is not modified)."""
    state = {kind: dict(initial.get(kind, {})) for kind in STATE_KINDS}
    for after in entries:
        for kind in STATE_KINDS:
            for key, value in (after or {}).get(kind, {}).items():
                if value is None:
                    state[kind].pop(key, None)
                else:
                    state[kind][key] = value
    return state


def state_differences(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """Records (``kind:id``) whose state differs between two snapshots."""
    diffs = []
    for kind in STATE_KINDS:
        xa, xb = a.get(kind, {}), b.get(kind, {})
        diffs += [f"{kind}:{key}" for key in sorted(set(xa) | set(xb)) if xa.get(key) != xb.get(key)]
    return diffs


# --- the decision recipe -------------------------------------------------------
@dataclass
class _Touched:
    """Records a decision reads and writes; snapshots are taken over exactly these."""

    clusters: dict[int, Cluster] = field(default_factory=dict)
    # ORM records, plain members (_Member, of whole-cluster decisions) or None (undo: by id)
    members: dict[int, Any] = field(default_factory=dict)
    concepts: dict[int, Concept] = field(default_factory=dict)
    version_tubes: dict[int, list[int]] = field(default_factory=dict)  # examples, read once per decision

    def snapshot(self, session: Session) -> dict[str, dict[str, Any]]:
        return {"clusters": {str(i): cluster_state(c) for i, c in self.clusters.items()},
                "members": _member_states(session, self.members),
                "concepts": _concept_states(session, list(self.concepts.values()), self.version_tubes)}


_MEMBER_COLUMNS = (ClusterMember.id, *[getattr(ClusterMember, f) for f in MEMBER_FIELDS])


def _member_states(session: Session, members: dict[int, Any], chunk: int = 500) -> dict[str, dict[str, Any]]:
    """The state of the touched members: from their own values (plain :class:`_Member`
    rows, written in bulk, or the few ORM records of a member decision), and for members
    known only by id (an undo's hundreds) read back as plain rows in one query per chunk."""
    rows: dict[int, Any] = {i: tuple(getattr(m, f) for f in MEMBER_FIELDS)  # plain or ORM: its own values
                            for i, m in members.items() if m is not None}
    ids = [i for i in members if i not in rows]
    for lo in range(0, len(ids), chunk):
        rows.update((r[0], r[1:]) for r in session.execute(select(*_MEMBER_COLUMNS)
                                                           .where(ClusterMember.id.in_(ids[lo:lo + chunk]))))
    return {str(i): _row_state(MEMBER_FIELDS, rows[i]) for i in members if i in rows}


def cluster_title(label_index: int | None, cluster_id: int) -> str:
    """How messages name a cluster: its gallery number first ("#3", what reviewers see), its id after."""
    return f"cluster #{label_index} (id {cluster_id})" if label_index is not None else f"cluster {cluster_id}"


def _title(cluster: Cluster) -> str:
    return cluster_title(cluster.label_index, cluster.id)


def _stale(what: str) -> StaleVersionError:
    return StaleVersionError(f"{what} was changed by someone else since you loaded it; "
                             f"reload the page and decide again")


def load_cluster(session: Session, cluster_id: int, seen_version: int | None) -> Cluster:
    """The cluster, checked against the version the reviewer saw (None skips the check)."""
    cluster = get_or_raise(session, Cluster, cluster_id, "cluster", "go back to the gallery and reload")
    if seen_version is not None and int(seen_version) != cluster.version:
        raise _stale(f"{_title(cluster)} (you saw version {seen_version}, it is now {cluster.version})")
    return cluster


def _require_reviewable(cluster: Cluster) -> None:
    if cluster.status not in REVIEWABLE:
        merged_into = (object_session(cluster).get(Cluster, cluster.parent_id)
                       if cluster.status == "merged" and cluster.parent_id else None)
        successor = f" into {_title(merged_into)}" if merged_into is not None else ""
        raise DecisionError(f"{_title(cluster)} was {cluster.status}{successor}; "
                            f"review its successor clusters instead")


def _decide(session: Session, user_id: int | None, action: str, target: Cluster,
            touched: _Touched, apply: Callable[[], dict[str, Any] | None],
            still_valid: Callable[[], bool] | None = None) -> DecisionResult:
    """Snapshot, apply, bump versions, snapshot, audit. ``apply`` may add records to
    ``touched`` (created clusters get ``None`` as their before state). Under :func:`run`,
    the writer's turn is taken after the *before* snapshot; ``still_valid`` then re-checks
    what the decision read beyond its touched records (undo: that its entry is still last)."""
    before = touched.snapshot(session)
    _take_turn(session, touched, before, still_valid)
    try:
        info = apply() or {}
        for cluster in touched.clusters.values():
            if cluster not in session.new:
                flag_modified(cluster, "status")  # forces the version-checked UPDATE
        session.flush()
        after = touched.snapshot(session)
        for kind in STATE_KINDS:  # created records: before None; deleted records: after None
            for key in after[kind]:
                before[kind].setdefault(key, None)
            for key in before[kind]:
                after[kind].setdefault(key, None)
        row = AuditLog(user_id=user_id, action=action, target_type="cluster", target_id=target.id,
                       before=before, after={**after, "info": info})
        session.add(row)
        session.flush()
    except StaleDataError:
        session.rollback()
        raise _stale(_title(target)) from None
    except SqlIntegrityError as err:
        session.rollback()
        raise NameTakenError("that name was just taken by another concept; choose another name") from err
    created = [c.id for c in touched.clusters.values() if before["clusters"].get(str(c.id)) is None]
    return DecisionResult(audit_id=row.id, action=action,
                          versions={c.id: c.version for c in touched.clusters.values()},
                          concept_id=info.get("concept_id"), created_cluster_ids=created)


# --- running a decision beside other requests ------------------------------------
_TURN = "conceptgen.review.decisions.turn"


class _ReadsChanged(Exception):
    """A record the decision read before its turn was changed by another decision meanwhile."""


def run(decision: Callable[..., DecisionResult], session: Session, user_id: int | None, *args: Any,
        turn: Callable[[], AbstractContextManager[Any]], **kwargs: Any) -> DecisionResult:
    """Run ``decision(session, user_id, *args, **kwargs)`` and commit it, holding the
    writer's ``turn`` (a context manager that serialises writers) only while it writes.

    The decision loads and checks its records and snapshots their *before* state outside
    the turn, so a stale or inapplicable decision is refused without queueing behind
    others, and the turn is held for the writes, not the reads. Inside the turn the
    records read are compared with the database again (:func:`_reads_unchanged`); if
    another decision changed any of them meanwhile, this one is rolled back and decided
    again from the start inside the turn, exactly as a fully serialised decision would be.
    The result is the same as deciding wholly inside the turn: the audit log replays to
    the database and undo sees the same states."""
    with ExitStack() as held:
        session.info[_TURN] = lambda: held.enter_context(turn())
        try:
            try:
                result = decision(session, user_id, *args, **kwargs)
            except _ReadsChanged:
                session.rollback()  # the turn is held now: decide again, serialised
                result = decision(session, user_id, *args, **kwargs)
            session.commit()
        except BaseException:
            session.rollback()  # before the turn ends: no write transaction may outlive it
            raise
        finally:
            session.info.pop(_TURN, None)
    return result


def _take_turn(session: Session, touched: _Touched, before: dict[str, dict],
               still_valid: Callable[[], bool] | None) -> None:
    """Under :func:`run`: end the read transaction, wait for the writer's turn, and check
    that nothing read has changed since (else :class:`_ReadsChanged`). Without it: nothing."""
    take = session.info.pop(_TURN, None)  # once per run: a decision decided again keeps the turn
    if take is None:
        return
    seen = {"clusters": {i: c.version for i, c in touched.clusters.items()},
            "concepts": {i: (c.version, c.created_at) for i, c in touched.concepts.items()}}
    session.commit()  # reads so far came from committed data; the writes start a new transaction
    take()
    if not _reads_unchanged(session, touched, seen, before) or (still_valid is not None and not still_valid()):
        raise _ReadsChanged()


def _reads_unchanged(session: Session, touched: _Touched, seen: dict[str, dict[int, Any]],
                     before: dict[str, dict]) -> bool:
    """Are the touched clusters and concepts as the decision read them? A row's version
    counter changes with every UPDATE of it, so an unchanged counter (and, for a row that
    could have been deleted and made again under a reused id, unchanged state or creation
    time) means an unchanged row. Members need no check of their own: a decision that
    changes a member bumps its old and new cluster, and touches the clusters of the members
    it reads. A concept's versions are added and deleted only together with an UPDATE of
    the concept (its ``current_version``), so its row stands for them."""
    ids = list(touched.clusters)
    rows = session.execute(_CLUSTERS_NOW, {"ids": ids}).all() if ids else []
    now = {r[0]: (r[1], _row_state(CLUSTER_FIELDS, r[2:])) for r in rows}
    if any(now.get(i) != (seen["clusters"][i], before["clusters"][str(i)]) for i in ids):
        return False
    ids = list(touched.concepts)
    rows = session.execute(_CONCEPTS_NOW, {"ids": ids}).all() if ids else []
    return {r[0]: (r[1], r[2]) for r in rows} == seen["concepts"]


# built once: this check runs inside the writers' turn, where every millisecond queues others
_CLUSTERS_NOW = (select(Cluster.id, Cluster.version, *[getattr(Cluster, f) for f in CLUSTER_FIELDS])
                 .where(Cluster.id.in_(bindparam("ids", expanding=True))))
_CONCEPTS_NOW = (select(Concept.id, Concept.version, Concept.created_at)
                 .where(Concept.id.in_(bindparam("ids", expanding=True))))


@dataclass
class _Member:
    """A cluster member as plain values: the decisions over whole clusters (accept, merge,
    split) read and write hundreds of them in bulk; ORM objects for them cost more than
    the rest of the decision."""

    id: int
    cluster_id: int
    tube_id: int
    distance: float
    rank: int
    is_outlier: bool
    excluded: bool
    representative: bool


def _touch_members(session: Session, touched: _Touched, cluster: Cluster) -> list[_Member]:
    members = [_Member(r[0], **dict(zip(MEMBER_FIELDS, r[1:]))) for r in session.execute(
        select(*_MEMBER_COLUMNS).where(ClusterMember.cluster_id == cluster.id)
        .order_by(ClusterMember.rank, ClusterMember.id))]
    for m in members:
        touched.members[m.id] = m  # its snapshot comes from these values: every change must be written
    return members


_MEMBER_TABLE = ClusterMember.__table__
_INSERT_EXAMPLE = ConceptExample.__table__.insert()  # Core executemany: no ORM bookkeeping per row
_WRITE_MEMBER = (_MEMBER_TABLE.update().where(_MEMBER_TABLE.c.id == bindparam("member_id"))
                 .values({f: bindparam(f"new_{f}") for f in MEMBER_FIELDS}))


def _write_members(session: Session, members: list[_Member]) -> None:
    """Store plain members back: one executemany UPDATE by primary key."""
    if members:
        session.execute(_WRITE_MEMBER, [{"member_id": m.id, **{f"new_{f}": getattr(m, f) for f in MEMBER_FIELDS}}
                                         for m in members])


def _refresh_stats(session: Session, cluster: Cluster) -> None:
    """size and n_videos count the members a human has not removed."""
    session.flush()
    size, n_videos = session.execute(
        select(func.count(ClusterMember.id), func.count(func.distinct(Tube.video_id)))
        .join(Tube, Tube.id == ClusterMember.tube_id)
        .where(ClusterMember.cluster_id == cluster.id, ClusterMember.excluded.is_(False))).one()
    cluster.size, cluster.n_videos = int(size), int(n_videos)


def _clean_text(value: str | None, what: str, limit: int, *, required: bool) -> str:
    text = " ".join(str(value or "").split()) if what == "name" else str(value or "").strip()
    if required and not text:
        raise DecisionError(f"a {what} is required; type one and try again")
    if len(text) > limit:
        raise DecisionError(f"the {what} is {len(text)} characters; shorten it to at most {limit}")
    return text


def _check_name_free(session: Session, name: str, own_concept_id: int | None) -> Concept | None:
    """The concept already called ``name`` (case-insensitively) other than our own, if any."""
    other = session.scalars(select(Concept).where(func.lower(Concept.name) == name.lower())).first()
    return other if other is not None and other.id != own_concept_id else None


# --- decisions on clusters -----------------------------------------------------
def accept(session: Session, user_id: int | None, cluster_id: int, seen_version: int | None, *,
           name: str, description: str, as_new_version: bool = False) -> DecisionResult:
    """Accept a cluster as a concept: creates the concept (version 1) or adds a new
    version to the concept this cluster already belongs to (or, with
    ``as_new_version``, to the existing concept of that name). The version's examples
    are the cluster's members a human did not remove, most central first."""
    cluster = load_cluster(session, cluster_id, seen_version)
    _require_reviewable(cluster)
    name = _clean_text(name, "name", MAX_NAME, required=True)
    description = _clean_text(description, "description", MAX_DESCRIPTION, required=True)
    touched = _Touched(clusters={cluster.id: cluster})
    members = _touch_members(session, touched, cluster)
    examples = sorted((m for m in members if not m.excluded),
                      key=lambda m: (not m.representative, m.distance, m.id))
    if not examples:
        raise DecisionError(f"{_title(cluster)} has no members left; restore a member or reject it")
    concept = session.get(Concept, cluster.concept_id) if cluster.concept_id else None
    other = _check_name_free(session, name, concept.id if concept else None)
    if other is not None:
        if not as_new_version or concept is not None:
            raise NameTakenError(f"a concept named {other.name!r} already exists; choose another name "
                                 f"or add this cluster as a new version of it")
        concept = other
    if concept is not None:
        touched.concepts[concept.id] = concept

    def apply() -> dict[str, Any]:
        nonlocal concept
        if concept is None:
            concept = Concept(name=name, description=description, source="cluster", status="approved",
                              current_version=0)
            session.add(concept)
            session.flush()
            touched.concepts[concept.id] = concept
        concept.name, concept.description, concept.status = name, description, "approved"
        concept.current_version = (session.scalar(select(func.max(ConceptVersion.version))
                                                  .where(ConceptVersion.concept_id == concept.id)) or 0) + 1
        clustering = session.get(Clustering, cluster.clustering_id)
        version = ConceptVersion(concept_id=concept.id, version=concept.current_version,
                                 description=description, cluster_id=cluster.id, created_by=user_id,
                                 provenance={"run_id": clustering.run_id, "clustering_id": clustering.id,
                                             "layer": clustering.layer, "cluster_id": cluster.id,
                                             "label_index": cluster.label_index})
        session.add(version)
        session.flush()
        # one bulk INSERT: a cluster has hundreds of examples, and ORM objects for them cost more than the rest
        session.execute(_INSERT_EXAMPLE, [
            {"concept_version_id": version.id, "position": i, "tube_id": m.tube_id, "variant": "dynamic",
             "meta": {"cluster_member_id": m.id, "representative": m.representative}}
            for i, m in enumerate(examples)])
        touched.version_tubes[version.id] = [m.tube_id for m in examples]  # the after snapshot need not read them
        cluster.status, cluster.name, cluster.description = "accepted", name, description
        cluster.concept_id = concept.id
        return {"name": name, "concept_id": concept.id, "concept_version": concept.current_version}

    def name_still_free() -> bool:  # else decided again in the turn: refused, or a new version of that concept
        return _check_name_free(session, name, concept.id if concept else None) is None

    return _decide(session, user_id, "accept", cluster, touched, apply, name_still_free if other is None else None)


def reject(session: Session, user_id: int | None, cluster_id: int, seen_version: int | None) -> DecisionResult:
    """Reject a cluster; a concept it was accepted as is retired."""
    cluster = load_cluster(session, cluster_id, seen_version)
    _require_reviewable(cluster)
    touched = _Touched(clusters={cluster.id: cluster})
    concept = session.get(Concept, cluster.concept_id) if cluster.concept_id else None
    if concept is not None:
        touched.concepts[concept.id] = concept

    def apply() -> None:
        cluster.status = "rejected"
        if concept is not None:
            concept.status = "retired"

    return _decide(session, user_id, "reject", cluster, touched, apply)


def rename(session: Session, user_id: int | None, cluster_id: int, seen_version: int | None, *,
           name: str) -> DecisionResult:
    """Rename a cluster (and its concept, whose name must stay unique)."""
    cluster = load_cluster(session, cluster_id, seen_version)
    name = _clean_text(name, "name", MAX_NAME, required=True)
    touched = _Touched(clusters={cluster.id: cluster})
    concept = session.get(Concept, cluster.concept_id) if cluster.concept_id else None
    if concept is not None:
        if _check_name_free(session, name, concept.id) is not None:
            raise NameTakenError(f"a concept named {name!r} already exists; choose another name")
        touched.concepts[concept.id] = concept

    def apply() -> dict[str, Any]:
        cluster.name = name
        if concept is not None:
            concept.name = name
        return {"name": name}

    return _decide(session, user_id, "rename", cluster, touched, apply)


def merge(session: Session, user_id: int | None, seen_versions: dict[int, int | None]) -> DecisionResult:
    """Merge clusters into the first one listed: the others' members move into it and
    they become ``merged`` (``parent_id`` = the surviving cluster). Members are
    re-ranked around the merged centroid when embeddings are stored."""
    ids = [int(i) for i in seen_versions]
    if len(set(ids)) < 2:
        raise DecisionError("select at least two different clusters to merge")
    clusters = [load_cluster(session, i, seen_versions[i]) for i in ids]
    target = clusters[0]
    for c in clusters:
        _require_reviewable(c)
        if c.clustering_id != target.clustering_id:
            raise DecisionError(f"clusters {target.id} and {c.id} come from different clusterings; "
                                f"merge only clusters of one gallery")
    touched = _Touched(clusters={c.id: c for c in clusters})
    members = [m for c in clusters for m in _touch_members(session, touched, c)]
    rerank = _plan_rerank(session, target, members)  # reads embeddings: before the writers' turn

    def apply() -> dict[str, Any]:
        for c in clusters[1:]:
            c.status, c.parent_id = "merged", target.id
        for m in members:
            m.cluster_id = target.id
        rerank()
        _write_members(session, members)
        _refresh_stats(session, target)
        for c in clusters[1:]:
            _refresh_stats(session, c)
        return {"merged": ids[1:], "into": target.id}

    return _decide(session, user_id, "merge", target, touched, apply)


def split(session: Session, user_id: int | None, cluster_id: int, seen_version: int | None, *,
          k: int, seed: int = 0) -> DecisionResult:
    """Split a cluster into k new candidate clusters by re-clustering its members'
    stored embeddings (seeded k-means). The original becomes ``split``; removed
    members stay with it."""
    from conceptgen.cluster import split_cluster_members

    cluster = load_cluster(session, cluster_id, seen_version)
    _require_reviewable(cluster)
    touched = _Touched(clusters={cluster.id: cluster})
    kept = [m for m in _touch_members(session, touched, cluster) if not m.excluded]
    vectors = _member_vectors(session, cluster, kept)
    labels = split_cluster_members(vectors, k, seed)

    def apply() -> dict[str, Any]:
        next_label = (session.scalar(select(func.max(Cluster.label_index))
                                     .where(Cluster.clustering_id == cluster.clustering_id)) or 0) + 1
        cluster.status = "split"
        for part in range(int(k)):
            child = Cluster(clustering_id=cluster.clustering_id, label_index=next_label + part,
                            status="candidate", parent_id=cluster.id, supported=cluster.supported,
                            name=None, description=None)
            session.add(child)
            session.flush()
            touched.clusters[child.id] = child
            rows = np.flatnonzero(labels == part)
            for r in rows:
                kept[r].cluster_id = child.id
            _rerank(session, child, [kept[r] for r in rows], vectors[rows])
            _write_members(session, [kept[r] for r in rows])
            _refresh_stats(session, child)
        _refresh_stats(session, cluster)
        return {"k": int(k), "seed": int(seed)}

    return _decide(session, user_id, "split", cluster, touched, apply)


def _member_vectors(session: Session, cluster: Cluster, members: list[_Member]) -> np.ndarray:
    """(N, D) stored embeddings of ``members`` at the clustering's layer, member order."""
    from conceptgen.embed import load_embeddings

    clustering = session.get(Clustering, cluster.clustering_id)
    params = clustering.params or {}
    emb = load_embeddings(session, clustering.run_id, layer=clustering.layer,
                          pooling=params.get("pooling", "mean"), render_mode=params.get("render_mode", "crop"),
                          tube_ids=[m.tube_id for m in members])
    row_of = {int(t): i for i, t in enumerate(emb.tube_ids)}
    missing = [m.tube_id for m in members if m.tube_id not in row_of]
    if missing:
        raise DataError(f"{len(missing)} members of cluster {cluster.id} have no stored embedding at "
                        f"{clustering.layer!r}; re-run `conceptgen extract` for run {clustering.run_id}")
    return np.asarray(emb.vectors)[[row_of[m.tube_id] for m in members]]


def _rerank(session: Session, cluster: Cluster, members: list[_Member],
            vectors: np.ndarray | None = None) -> None:
    """Re-rank members around their centroid (distances, outliers, cohesion) with the
    engine's own statistics; without stored embeddings, keep distances and re-rank."""
    _plan_rerank(session, cluster, members, vectors)()


def _plan_rerank(session: Session, cluster: Cluster, members: list[_Member],
                 vectors: np.ndarray | None = None) -> Callable[[], None]:
    """The reads and statistics of :func:`_rerank`, done now; the function returned writes
    the ranks, distances, outlier flags, cohesion and centroid (a merge plans before its
    writers' turn, and writes in it)."""
    from conceptgen.cluster import clustering_spread, l2_normalise, summarise_clusters

    kept = [m for m in members if not m.excluded]
    if vectors is None:
        try:
            vectors = _member_vectors(session, cluster, kept) if kept else None
        except (DataError, ImportError):
            vectors = None
    if vectors is None or not kept:
        order = sorted(members, key=lambda m: (m.excluded, m.distance, m.id))

        def keep_distances() -> None:
            for rank, m in enumerate(order):
                m.rank = rank
        return keep_distances
    video_of = dict(session.execute(select(Tube.id, Tube.video_id).where(Tube.id.in_([m.tube_id for m in kept]))).all())
    video_ids = np.array([video_of[m.tube_id] for m in kept])
    spread = clustering_spread(session.get(Clustering, cluster.clustering_id).params)
    stats = summarise_clusters(l2_normalise(vectors), np.zeros(len(kept), dtype=np.int64), video_ids,
                               min_size=1, min_videos=1, spread=spread)[0]

    def write() -> None:
        for rank, (row, dist, out) in enumerate(zip(stats.members, stats.distances, stats.outliers)):
            m = kept[int(row)]
            m.rank, m.distance, m.is_outlier = rank, float(dist), bool(out)
        for rank, m in enumerate(sorted((m for m in members if m.excluded), key=lambda m: m.id), start=len(kept)):
            m.rank = rank
        cluster.cohesion = float(stats.cohesion)
        cluster.centroid = stats.centroid.astype(np.float32).tobytes()
    return write


# --- decisions on members ------------------------------------------------------
def _load_member(session: Session, member_id: int) -> ClusterMember:
    return get_or_raise(session, ClusterMember, member_id, "cluster member", "reload the page")


def set_member_excluded(session: Session, user_id: int | None, member_id: int, seen_version: int | None,
                        *, excluded: bool = True) -> DecisionResult:
    """Remove a member from its cluster (``excluded``), or restore it."""
    member = _load_member(session, member_id)
    cluster = load_cluster(session, member.cluster_id, seen_version)
    return _set_excluded(session, user_id, cluster, [member], excluded,
                         "remove_member" if excluded else "restore_member",
                         {"member_id": member.id, "tube_id": member.tube_id})


def set_members_excluded(session: Session, user_id: int | None, cluster_id: int, member_ids: Iterable[int],
                         seen_version: int | None, *, excluded: bool = True) -> DecisionResult:
    """Remove (or restore) several members of one cluster in one decision (one undo)."""
    cluster = load_cluster(session, cluster_id, seen_version)
    members = _load_members_of(session, cluster, member_ids)
    return _set_excluded(session, user_id, cluster, members, excluded,
                         "remove_members" if excluded else "restore_members",
                         {"member_ids": [m.id for m in members], "n_members": len(members)})


def _set_excluded(session: Session, user_id: int | None, cluster: Cluster, members: list[ClusterMember],
                  excluded: bool, action: str, info: dict[str, Any]) -> DecisionResult:
    touched = _Touched(clusters={cluster.id: cluster}, members={m.id: m for m in members})

    def apply() -> dict[str, Any]:
        for member in members:
            member.excluded = bool(excluded)
            if excluded:
                member.representative = False
        _refresh_stats(session, cluster)
        return info

    return _decide(session, user_id, action, cluster, touched, apply)


MAX_BULK_MEMBERS = 5000  # one decision; larger selections are a split or a merge


def _load_members_of(session: Session, cluster: Cluster, member_ids: Iterable[int]) -> list[ClusterMember]:
    """The members ``member_ids`` (in rank order), each checked to belong to ``cluster``."""
    ids = list(dict.fromkeys(int(i) for i in member_ids))
    if not ids:
        raise DecisionError("select at least one member first")
    if len(ids) > MAX_BULK_MEMBERS:
        raise DecisionError(f"{len(ids)} members selected; act on at most {MAX_BULK_MEMBERS} at once")
    members = list(session.scalars(select(ClusterMember).where(ClusterMember.id.in_(ids))
                                   .order_by(ClusterMember.rank, ClusterMember.id)))
    strays = sorted(set(ids) - {m.id for m in members if m.cluster_id == cluster.id})
    if strays:
        shown = ", ".join(map(str, strays[:5])) + (" …" if len(strays) > 5 else "")
        raise DecisionError(f"member(s) {shown} are no longer in {_title(cluster)}; reload the page")
    return members


def set_representative(session: Session, user_id: int | None, member_id: int, seen_version: int | None,
                       *, representative: bool = True) -> DecisionResult:
    """Mark (or unmark) a member as representative of its cluster."""
    member = _load_member(session, member_id)
    cluster = load_cluster(session, member.cluster_id, seen_version)
    if representative and member.excluded:
        raise DecisionError(f"member {member.id} was removed; restore it before marking it representative")
    touched = _Touched(clusters={cluster.id: cluster}, members={member.id: member})

    def apply() -> dict[str, Any]:
        member.representative = bool(representative)
        return {"member_id": member.id, "tube_id": member.tube_id}

    return _decide(session, user_id, "representative" if representative else "unrepresentative",
                   cluster, touched, apply)


def move_member(session: Session, user_id: int | None, member_id: int, seen_version: int | None, *,
                target_cluster_id: int) -> DecisionResult:
    """Move a member to another cluster of the same clustering (appended last)."""
    member = _load_member(session, member_id)
    source = load_cluster(session, member.cluster_id, seen_version)
    return _move(session, user_id, source, [member], target_cluster_id, "move_member",
                 {"member_id": member.id, "tube_id": member.tube_id})


def move_members(session: Session, user_id: int | None, cluster_id: int, member_ids: Iterable[int],
                 seen_version: int | None, *, target_cluster_id: int) -> DecisionResult:
    """Move several members of one cluster to another cluster in one decision (one undo)."""
    source = load_cluster(session, cluster_id, seen_version)
    members = _load_members_of(session, source, member_ids)
    return _move(session, user_id, source, members, target_cluster_id, "move_members",
                 {"member_ids": [m.id for m in members], "n_members": len(members)})


def _move(session: Session, user_id: int | None, source: Cluster, members: list[ClusterMember],
          target_cluster_id: int, action: str, info: dict[str, Any]) -> DecisionResult:
    target = load_cluster(session, target_cluster_id, None)
    if target.id == source.id:
        raise DecisionError(f"the member(s) are already in {_title(target)}; pick another cluster")
    if target.clustering_id != source.clustering_id:
        raise DecisionError(f"{_title(target)} belongs to another clustering; move members only "
                            f"between clusters of one gallery")
    _require_reviewable(target)
    touched = _Touched(clusters={source.id: source, target.id: target}, members={m.id: m for m in members})

    def apply() -> dict[str, Any]:
        last = session.scalar(select(func.max(ClusterMember.rank)).where(ClusterMember.cluster_id == target.id))
        for offset, member in enumerate(members, start=1):
            member.cluster_id, member.rank = target.id, (last if last is not None else -1) + offset
            member.excluded = False
        _refresh_stats(session, source)
        _refresh_stats(session, target)
        return {**info, "from": source.id, "to": target.id}

    return _decide(session, user_id, action, source, touched, apply)


# --- undo ----------------------------------------------------------------------
def _undoable(column, user_id: int):
    return (select(column).where(AuditLog.user_id == user_id, AuditLog.undone.is_(False), AuditLog.action != "undo")
            .order_by(AuditLog.id.desc()).limit(1))


def last_undoable(session: Session, user_id: int) -> AuditLog | None:
    return session.scalars(_undoable(AuditLog, user_id)).first()


def undo_last(session: Session, user_id: int) -> DecisionResult:
    """Undo this user's most recent decision that is not undone yet, restoring its
    *before* state exactly. Refused if a later decision changed the same records."""
    entry = last_undoable(session, user_id)
    if entry is None:
        raise DecisionError("you have no decision left to undo")
    before, after = entry.before or {}, entry.after or {}
    if not any(kind in after for kind in STATE_KINDS):
        raise DecisionError(f"your last decision (#{entry.id}, {entry.action}) was recorded without its "
                            f"before/after state, so it cannot be undone; change the records by hand")
    touched = _Touched(clusters=_load_all(session, Cluster, after.get("clusters", {})),
                       members=_existing(session, ClusterMember, after.get("members", {})),
                       concepts=_load_all(session, Concept, after.get("concepts", {})))
    current = touched.snapshot(session)
    changed = [key for key in state_differences(current, {k: after.get(k, {}) for k in STATE_KINDS})]
    if changed:
        raise _stale(f"{changed[0].replace(':', ' ').rstrip('s')} (touched by your last "
                     f"{entry.action}, #{entry.id})")
    target = session.get(Cluster, entry.target_id) or next(iter(touched.clusters.values()))

    def apply() -> dict[str, Any]:
        _restore(session, touched, before)
        entry.undone = True
        return {"undoes": entry.id, "undone_action": entry.action}

    def still_last() -> bool:  # by id: loading the entry again would decode its before/after JSON
        return session.scalar(_undoable(AuditLog.id, user_id)) == entry.id

    return _decide(session, user_id, "undo", target, touched, apply, still_last)


def _load_all(session: Session, model: type, keys: Iterable[str]) -> dict[int, Any]:
    """id -> record for the (string) ids that still exist, in the given order, in one query
    (an undo of an accept touches hundreds of members)."""
    ids = [int(k) for k in keys]
    found = {r.id: r for r in session.scalars(select(model).where(model.id.in_(ids)))} if ids else {}
    return {i: found[i] for i in ids if i in found}


def _existing(session: Session, model: type, keys: Iterable[str]) -> dict[int, None]:
    """The (string) ids that still exist, as keys without loaded records: an undo writes
    hundreds of members back in one bulk UPDATE instead of through ORM objects."""
    ids = [int(k) for k in keys]
    found = set(session.scalars(select(model.id).where(model.id.in_(ids)))) if ids else set()
    return {i: None for i in ids if i in found}


def _restore(session: Session, touched: _Touched, before: dict[str, dict]) -> None:
    """Write a *before* state back: fields of surviving records, then delete the records
    the decision created (their members have moved back by then)."""
    rows = [{"member_id": int(key), **{f"new_{f}": state[f] for f in MEMBER_FIELDS}}
            for key, state in before.get("members", {}).items() if state is not None and int(key) in touched.members]
    if rows:
        session.execute(_WRITE_MEMBER, rows)  # one executemany UPDATE by primary key
        for row in rows:  # the after snapshot takes the values just written instead of reading them back
            touched.members[row["member_id"]] = _Member(row["member_id"],
                                                        **{f: row[f"new_{f}"] for f in MEMBER_FIELDS})
    doomed_clusters = []
    for key, state in before.get("clusters", {}).items():
        cluster = touched.clusters[int(key)]
        if state is None:
            cluster.concept_id = None
            doomed_clusters.append(cluster)
        else:
            _assign(cluster, state, CLUSTER_FIELDS)
    session.flush()
    for key, state in before.get("concepts", {}).items():
        concept = touched.concepts[int(key)]
        keep = set() if state is None else {int(v) for v in state["versions"]}
        version_ids = [v for v, n in session.execute(select(ConceptVersion.id, ConceptVersion.version)
                                                     .where(ConceptVersion.concept_id == concept.id))
                       if n not in keep]
        session.execute(delete(ConceptExample).where(ConceptExample.concept_version_id.in_(version_ids)))
        session.execute(delete(ConceptVersion).where(ConceptVersion.id.in_(version_ids)))
        if state is None:
            del touched.concepts[int(key)]
            session.delete(concept)
        else:
            _assign(concept, state, CONCEPT_FIELDS)
    for cluster in doomed_clusters:
        session.expire(cluster, ["members"])
        del touched.clusters[cluster.id]
        session.delete(cluster)


def _assign(obj: Any, state: dict[str, Any], fields: tuple[str, ...]) -> None:
    for f in fields:
        if getattr(obj, f) != state[f]:
            setattr(obj, f, state[f])
