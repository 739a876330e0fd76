"""Review decisions as a library: concepts, versions, concurrency, undo and audit replay."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from conceptgen.review import decisions as d
from conceptgen.errors import StaleVersionError
from conceptgen.orm import AuditLog, Cluster, ClusterMember, Concept, ConceptVersion, User

RUN_ON_EVERY_DATABASE = True  # review_ws on SQLite and on PostgreSQL (tests/conftest.py)


def _user(ws, name="alice"):
    with ws.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            from conceptgen.review.users import create_user
            user = create_user(s, name, "password-" + name)
        return user.id


def _version(ws, cluster_id):
    with ws.session() as s:
        return s.get(Cluster, cluster_id).version


def _decide(ws, fn, *args, **kwargs):
    with ws.session() as s:
        return fn(s, *args, **kwargs)


def _snapshot(ws):
    with ws.session() as s:
        return d.snapshot_state(s)


def test_accept_creates_versioned_concept_from_kept_members(review_ws):
    ws, info = review_ws
    uid, cid = _user(ws), info.cluster_ids[0]
    with ws.session() as s:
        member = s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cid)).first()
        removed_tube = member.tube_id
    _decide(ws, d.set_member_excluded, uid, member.id, _version(ws, cid), excluded=True)
    v = _version(ws, cid)
    first = _decide(ws, d.accept, uid, cid, v, name="  striped   ball ", description="a ball")
    assert first.versions[cid] == v + 1
    second = _decide(ws, d.accept, uid, cid, v + 1, name="Striped ball", description="better description")
    with ws.session() as s:
        concept = s.get(Concept, first.concept_id)
        assert second.concept_id == concept.id
        assert (concept.name, concept.current_version, concept.status) == ("Striped ball", 2, "approved")
        versions = s.scalars(select(ConceptVersion).where(ConceptVersion.concept_id == concept.id)
                             .order_by(ConceptVersion.version)).all()
        assert [x.version for x in versions] == [1, 2]
        kept = {m.tube_id for m in s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cid,
                                                                          ClusterMember.excluded.is_(False)))}
        assert {e.tube_id for e in versions[1].examples} == kept and removed_tube not in kept
        assert versions[0].created_by == uid
        cluster = s.get(Cluster, cid)
        assert (cluster.status, cluster.concept_id) == ("accepted", concept.id)
        row = s.get(AuditLog, second.audit_id)
        assert row.action == "accept" and row.user_id == uid
        assert row.before["clusters"][str(cid)]["status"] == "accepted"
        assert row.after["concepts"][str(concept.id)]["current_version"] == 2


def test_accept_refuses_taken_name_unless_added_as_new_version(review_ws):
    ws, info = review_ws
    uid = _user(ws)
    a, b = info.cluster_ids[:2]
    made = _decide(ws, d.accept, uid, a, _version(ws, a), name="Hand", description="x")
    with pytest.raises(d.NameTakenError, match="already exists"):
        _decide(ws, d.accept, uid, b, _version(ws, b), name="hand", description="y")
    assert _version(ws, b) == 1
    added = _decide(ws, d.accept, uid, b, _version(ws, b), name="Hand", description="y", as_new_version=True)
    assert added.concept_id == made.concept_id
    with pytest.raises(d.DecisionError, match="name is required"):
        _decide(ws, d.accept, uid, b, _version(ws, b), name="   ", description="y")


def test_stale_version_is_refused_and_changes_nothing(review_ws):
    ws, info = review_ws
    uid, cid = _user(ws), info.cluster_ids[0]
    _decide(ws, d.rename, uid, cid, 1, name="first")
    before = _snapshot(ws)
    with pytest.raises(StaleVersionError, match="reload"):
        _decide(ws, d.reject, uid, cid, 1)
    assert _snapshot(ws) == before


def test_concurrent_writer_cannot_overwrite_a_newer_version(review_ws):
    """Two reviewers load version 1; the first commit wins, the second is refused
    by the version-checked UPDATE (no lost update), even though its own check passed."""
    ws, info = review_ws
    uid, other = _user(ws), _user(ws, "bob")
    cid = info.cluster_ids[0]
    slow = ws.sessions()
    try:
        d.load_cluster(slow, cid, 1)  # bob's request has read version 1 ...
        _decide(ws, d.rename, uid, cid, 1, name="alice wins")  # ... alice commits first
        with pytest.raises(StaleVersionError):
            d.rename(slow, other, cid, 1, name="bob loses")
            slow.commit()
    finally:
        slow.close()
    with ws.session() as s:
        assert s.get(Cluster, cid).name == "alice wins"
        assert s.scalar(select(AuditLog).where(AuditLog.user_id == other)) is None


def test_merge_moves_members_and_undo_restores_exactly(review_ws):
    ws, info = review_ws
    uid = _user(ws)
    a, b, c = info.cluster_ids[:3]
    start = _snapshot(ws)
    sizes = {k: start["clusters"][str(k)]["size"] for k in (a, b, c)}
    result = _decide(ws, d.merge, uid, {a: 1, b: 1, c: 1})
    with ws.session() as s:
        assert s.get(Cluster, a).size == sum(sizes.values())
        assert [s.get(Cluster, k).status for k in (b, c)] == ["merged", "merged"]
        assert s.get(Cluster, b).parent_id == a
        ranks = sorted(m.rank for m in s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == a)))
        assert ranks == list(range(sum(sizes.values())))
    assert result.versions[a] > 1 and result.versions[a] == _version(ws, a)
    with pytest.raises(d.DecisionError, match="merged"):
        _decide(ws, d.reject, uid, b, _version(ws, b))
    _decide(ws, d.undo_last, uid)
    assert d.state_differences(start, _snapshot(ws)) == []


def test_split_is_seeded_and_undo_deletes_the_parts(review_ws, tmp_path):
    ws, info = review_ws
    uid = _user(ws)
    a, b = info.cluster_ids[:2]
    start = _snapshot(ws)["members"].values()
    groups = sorted(sorted(m["tube_id"] for m in start if m["cluster_id"] == k) for k in (a, b))
    _decide(ws, d.merge, uid, {a: 1, b: 1})
    merged = _snapshot(ws)
    result = _decide(ws, d.split, uid, a, _version(ws, a), k=2, seed=3)
    assert len(result.created_cluster_ids) == 2
    with ws.session() as s:
        parts = [sorted(m.tube_id for m in s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == p)))
                 for p in result.created_cluster_ids]
        assert s.get(Cluster, a).status == "split"
        assert all(s.get(Cluster, p).parent_id == a for p in result.created_cluster_ids)
    # the two merged groups were well separated, so the seeded split recovers them
    assert sorted(parts) == groups
    _decide(ws, d.undo_last, uid)
    assert d.state_differences(merged, _snapshot(ws)) == []
    again = _decide(ws, d.split, uid, a, _version(ws, a), k=2, seed=3)
    with ws.session() as s:
        parts_again = [sorted(m.tube_id for m in s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == p)))
                       for p in again.created_cluster_ids]
    assert parts_again == parts


def test_member_decisions_and_undo_refused_after_someone_else_changed_it(review_ws):
    ws, info = review_ws
    alice, bob = _user(ws), _user(ws, "bob")
    a, b = info.cluster_ids[:2]
    with ws.session() as s:
        m1, m2 = [m.id for m in s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == a)
                                          .order_by(ClusterMember.rank)).all()[:2]]
    _decide(ws, d.set_representative, alice, m1, _version(ws, a), representative=False)
    _decide(ws, d.move_member, alice, m2, _version(ws, a), target_cluster_id=b)
    with ws.session() as s:
        assert s.get(ClusterMember, m2).cluster_id == b
        assert s.get(Cluster, a).size == 5 and s.get(Cluster, b).size == 7
    _decide(ws, d.rename, bob, b, _version(ws, b), name="bob touched it")
    with pytest.raises(StaleVersionError, match="changed"):
        _decide(ws, d.undo_last, alice)
    _decide(ws, d.undo_last, bob)
    _decide(ws, d.undo_last, alice)  # now alice's move can be undone
    with ws.session() as s:
        assert s.get(ClusterMember, m2).cluster_id == a
    _decide(ws, d.undo_last, alice)
    with ws.session() as s:
        assert s.get(ClusterMember, m1).representative is True
    with pytest.raises(d.DecisionError, match="no decision left"):
        _decide(ws, d.undo_last, alice)


def test_audit_log_replays_to_the_final_state(review_ws):
    ws, info = review_ws
    alice, bob = _user(ws), _user(ws, "bob")
    a, b, c, e = info.cluster_ids
    initial = _snapshot(ws)
    _decide(ws, d.accept, alice, a, 1, name="one", description="first")
    _decide(ws, d.merge, bob, {b: 1, c: 1})
    _decide(ws, d.reject, alice, e, 1)
    _decide(ws, d.undo_last, alice)
    _decide(ws, d.rename, alice, a, _version(ws, a), name="uno")
    _decide(ws, d.split, bob, b, _version(ws, b), k=2, seed=0)
    with ws.session() as s:
        afters = [row.after for row in s.scalars(select(AuditLog).order_by(AuditLog.id))]
    final = _snapshot(ws)
    assert final != initial
    assert d.state_differences(d.replay(initial, afters), final) == []
    assert d.state_differences(d.replay(initial, afters[:-1]), final) != []


def test_undo_of_accept_removes_the_new_concept_or_version(review_ws):
    ws, info = review_ws
    uid, cid = _user(ws), info.cluster_ids[0]
    start = _snapshot(ws)
    _decide(ws, d.accept, uid, cid, 1, name="walker", description="v1")
    after_first = _snapshot(ws)
    _decide(ws, d.accept, uid, cid, _version(ws, cid), name="walker", description="v2")
    _decide(ws, d.undo_last, uid)  # back to version 1 of the concept
    assert d.state_differences(after_first, _snapshot(ws)) == []
    _decide(ws, d.undo_last, uid)  # and then no concept at all
    assert d.state_differences(start, _snapshot(ws)) == []
    with ws.session() as s:
        assert s.scalar(select(Concept)) is None and s.scalar(select(ConceptVersion)) is None


# --- decisions.run: reads outside the writer's turn, writes inside it -----------------
class _Turn:
    """A writer's turn that counts its entries and can run another decision just before
    granting the first one (what a reviewer deciding in the meantime looks like)."""

    def __init__(self, meanwhile=None):
        self.entered, self.meanwhile = 0, meanwhile

    def __call__(self):
        from contextlib import contextmanager

        @contextmanager
        def turn():
            self.entered += 1
            if self.meanwhile is not None:
                self.meanwhile()
                self.meanwhile = None
            yield
        return turn()


def _run(ws, turn, fn, *args, **kwargs):
    session = ws.sessions()
    try:
        return d.run(fn, session, *args, turn=turn, **kwargs)
    finally:
        session.close()


def test_run_refuses_a_stale_or_inapplicable_decision_without_waiting_for_the_turn(review_ws):
    ws, info = review_ws
    uid, cid = _user(ws), info.cluster_ids[0]
    turn = _Turn()
    result = _run(ws, turn, d.rename, uid, cid, 1, name="first")
    assert turn.entered == 1 and result.versions[cid] == _version(ws, cid) == 2
    before = _snapshot(ws)
    with pytest.raises(StaleVersionError):
        _run(ws, turn, d.reject, uid, cid, 1)
    with pytest.raises(d.DecisionError, match="required"):
        _run(ws, turn, d.accept, uid, cid, 2, name=" ", description="no name")
    assert turn.entered == 1 and _snapshot(ws) == before


def test_run_decides_again_in_its_turn_when_another_decision_changed_what_it_read(review_ws):
    """Each decision reads, then someone else's decision commits before its turn comes:
    it is decided again inside the turn, never written over the other's change."""
    ws, info = review_ws
    alice, bob = _user(ws), _user(ws, "bob")
    a, b, c, e = info.cluster_ids
    initial = _snapshot(ws)
    # a rename that read version 1 loses to bob's rename of the same cluster
    turn = _Turn(lambda: _decide(ws, d.rename, bob, a, 1, name="bob first"))
    with pytest.raises(StaleVersionError):
        _run(ws, turn, d.rename, alice, a, 1, name="alice second")
    assert turn.entered == 1
    with ws.session() as s:
        assert s.get(Cluster, a).name == "bob first"
    # accepting as a new version of a concept that bob retires meanwhile: decided on the retired concept
    _decide(ws, d.accept, bob, b, 1, name="walker", description="v1")
    turn = _Turn(lambda: _decide(ws, d.reject, bob, b, _version(ws, b)))
    _run(ws, turn, d.accept, alice, c, 1, name="walker", description="v2", as_new_version=True)
    with ws.session() as s:
        concept = s.scalar(select(Concept).where(Concept.name == "walker"))
        assert (concept.status, concept.current_version) == ("approved", 2)
    # undo takes alice's decision that is last when its turn comes (made in another tab
    # meanwhile, on another cluster), not the one it first read
    _decide(ws, d.rename, alice, e, 1, name="older")
    turn = _Turn(lambda: _decide(ws, d.rename, alice, a, _version(ws, a), name="newer"))
    _run(ws, turn, d.undo_last, alice)
    with ws.session() as s:
        assert (s.get(Cluster, e).name, s.get(Cluster, a).name) == ("older", "bob first")
        undone = [row.after["info"]["name"] for row in s.scalars(select(AuditLog).where(AuditLog.undone.is_(True)))]
        afters = [row.after for row in s.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert undone == ["newer"]
    assert d.state_differences(d.replay(initial, afters), _snapshot(ws)) == []


def test_run_accept_as_new_version_of_a_name_taken_meanwhile_joins_that_concept(review_ws):
    """Deciding wholly inside the turn, the second accept would find the name taken and,
    asked to, add its cluster as a new version: the same must happen when the name was
    still free when it read."""
    ws, info = review_ws
    alice, bob = _user(ws), _user(ws, "bob")
    a, b = info.cluster_ids[:2]
    turn = _Turn(lambda: _decide(ws, d.accept, bob, b, 1, name="walker", description="bob's"))
    _run(ws, turn, d.accept, alice, a, 1, name="walker", description="alice's", as_new_version=True)
    with ws.session() as s:
        concept = s.scalar(select(Concept).where(Concept.name == "walker"))
        versions = s.scalars(select(ConceptVersion.cluster_id).where(ConceptVersion.concept_id == concept.id)
                             .order_by(ConceptVersion.version)).all()
    assert versions == [b, a] and concept.current_version == 2
