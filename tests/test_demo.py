"""`conceptgen demo`: the headless loop end to end through the real CLI, its idempotence,
the annotator it serves, and the automatic reviewer's rule."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from conceptgen.orm import (AuditLog, Cluster, Clustering, Concept, ConceptVersion, Run, TcavExperiment,
                            TcavResult, User, Video)
from conceptgen.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
VIDEOS = 20  # the smallest set the demo model trains on (5 per class)
# These tests check the loop, not the model (tests/test_demo_model.py does): 20 epochs of its
# 16 training clips (20 steps) instead of the default's 200 steps keep them fast.
EPOCHS = 20
COUNTED = (Video, Run, Clustering, Cluster, User, Concept, ConceptVersion, AuditLog, TcavExperiment, TcavResult)


def _cli(workspace: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "conceptgen", "--quiet", "--workspace", str(workspace), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _counts(ws: Workspace) -> dict[str, int]:
    with ws.session() as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) for m in COUNTED}


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    """One workspace after `demo --headless` ran twice: (root, first, second, counts1, counts2)."""
    root = tmp_path_factory.mktemp("demo") / "ws"
    first = _cli(root, "demo", "--headless", "--videos", str(VIDEOS), "--seed", "0", "--epochs", str(EPOCHS))
    assert first.returncode == 0, first.stderr[-3000:]
    ws = Workspace.resolve(root)
    counts1 = _counts(ws)
    ws.close()
    second = _cli(root, "demo", "--headless", "--videos", str(VIDEOS), "--seed", "0", "--epochs", str(EPOCHS))
    assert second.returncode == 0, second.stderr[-3000:]
    ws = Workspace.resolve(root)
    counts2 = _counts(ws)
    yield ws, first, second, counts1, counts2
    ws.close()


def test_headless_demo_accepts_clusters_through_the_decisions_library(headless):
    ws, first, _second, _c1, _c2 = headless
    with ws.session() as s:
        demo_user = s.scalar(select(User).where(User.name == "demo"))
        concepts = s.scalars(select(Concept).order_by(Concept.name)).all()
        accepts = s.scalars(select(AuditLog).where(AuditLog.action == "accept")).all()
        accepted = s.scalars(select(Cluster).where(Cluster.status == "accepted")).all()
        names = [c.name for c in concepts]
        # the ground-truth rule: a gt-<class> concept per class the synthetic truth finds a cluster for,
        # and gt-distractor; the cohesion rule's auto-N names only when none qualifies
        assert names and (all(n.startswith("gt-") for n in names) or
                          sorted(names) == [f"auto-{i}" for i in range(1, len(names) + 1)])
        assert len(accepts) == len(names) == len(accepted)
        assert {a.user_id for a in accepts} == {demo_user.id}
        assert {a.target_id for a in accepts} == {c.id for c in accepted}
        for concept in concepts:
            assert concept.status == "approved" and len(concept.versions[-1].examples) >= 6
    for name in names:
        assert name in first.stdout


def test_ground_truth_rule_picks_the_cluster_holding_each_class_actors(headless):
    from conceptgen.ground_truth import ground_truth_clusters, match_objects
    from conceptgen.synth import load_ground_truth

    ws, first, _second, _c1, _c2 = headless
    dataset = load_ground_truth(ws.root / "synth")
    with ws.session() as s:
        clustering_id = s.scalars(select(Clustering.id)).one()
        run_id = s.scalars(select(Run.id)).one()
        accepted = {s.get(Concept, c.concept_id).name: c
                    for c in s.scalars(select(Cluster).where(Cluster.status == "accepted"))}
        members = {name: {m.tube_id for m in c.members} for name, c in accepted.items()}   # as clustered
    picks = ground_truth_clusters(ws, clustering_id, dataset)
    assert picks and {f"gt-{p.stands_for}" for p in picks} >= set(accepted) and "accepted concepts (rule: the " \
        "synthetic ground truth)" in first.stdout
    _rows, truth = match_objects(ws, run_id, dataset)
    for p in picks:
        name = f"gt-{p.stands_for}"
        if name not in accepted:
            continue
        kinds = [truth[t] for t in members[name] if t in truth]
        if p.stands_for == "distractor":   # no actor at all among its matched tubes
            assert kinds and all(k.role == "distractor" for k in kinds)
        else:   # most of its matched tubes are that class's actors
            assert sum(k.role == "actor" and k.motion == p.stands_for for k in kinds) > 0.5 * len(kinds)


def test_headless_demo_stores_tcav_results_with_static_and_dynamic_variants(headless):
    ws, first, _second, _c1, _c2 = headless
    with ws.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        results = s.scalars(select(TcavResult).where(TcavResult.experiment_id == exp.id)).all()
        assert exp.status == "finished"
        assert {r.variant for r in results} == {"dynamic", "static"}
        assert len({r.layer for r in results}) == 2 and len({r.target_class for r in results}) == 4
        assert all(0.0 <= r.tcav_mean <= 1.0 and r.verdict for r in results)
        plots = [ws.media / p for p in exp.plots]
    assert any("static_dynamic" in p.name for p in plots)
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    assert f"TCAV experiment {exp.id}" in first.stdout


def test_headless_demo_writes_a_verified_export_with_static_variants(headless):
    from conceptgen.export import read_manifest

    ws, _first, _second, _c1, _c2 = headless
    export = ws.exports / "demo"
    verify = _cli(ws.root, "verify", str(export))
    assert verify.returncode == 0, verify.stderr
    manifest = read_manifest(export)
    with ws.session() as s:
        names = sorted(s.scalars(select(Concept.name)))
    assert sorted(c["name"] for c in manifest["concepts"]) == names
    assert manifest["render"]["static"] is True
    assert any(f.endswith("_static.mp4") for f in manifest["files"])


def test_demo_login_is_private_and_works(headless):
    from conceptgen.review.users import authenticate

    ws, first, _second, _c1, _c2 = headless
    login = ws.root / "demo_login.txt"
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    password = login.read_text().split("password:")[1].split()[0]
    with ws.session() as s:
        assert authenticate(s, "demo", password) is not None
    assert password in first.stdout


def test_second_headless_run_reuses_everything(headless):
    ws, _first, second, counts1, counts2 = headless
    assert counts2 == counts1
    assert counts1["TcavExperiment"] == 1 and counts1["Run"] == 1 and counts1["Clustering"] == 1
    for reused in ("reused", "(resumed)", "TCAV experiment 1 (reused)", "/exports/demo (reused)"):
        assert reused in second.stdout


def test_demo_serves_the_annotator_and_stops_on_ctrl_c(headless):
    """Non-headless mode on the prepared workspace: prints the login and URL, serves
    the login page, and stops cleanly on SIGINT (Ctrl-C)."""
    ws, *_ = headless
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    # As a terminal's foreground job, whose Ctrl-C is not ignored: a suite started in the
    # background (`make test &`) hands its children SIGINT ignored, and Python keeps it so.
    foreground = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                  "runpy.run_module('conceptgen', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", foreground, "--quiet", "--workspace", str(ws.root), "demo",
                             "--videos", str(VIDEOS), "--epochs", str(EPOCHS), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        url, lines, deadline = f"http://127.0.0.1:{port}/", [], time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if url in line:
                break
        assert any(url in line for line in lines), "".join(lines) + proc.stderr.read()
        assert any("password" in line for line in lines)
        for _ in range(50):  # the URL is printed just before waitress binds
            try:
                page = requests.get(url + "login", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert page.status_code == 200 and "password" in page.text.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rest, stderr = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0 and "annotator stopped" in rest, stderr
    assert "Traceback" not in stderr


def test_demo_rejects_a_different_set_in_the_same_workspace_with_one_line(headless):
    ws, *_ = headless
    result = _cli(ws.root, "demo", "--headless", "--videos", str(VIDEOS + 4))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "--videos 20" in result.stderr


def test_demo_rejects_too_few_videos_before_any_work(tmp_path):
    result = _cli(tmp_path / "ws", "demo", "--headless", "--videos", "5")
    assert result.returncode == 2 and "at least 20" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws" / "synth").exists()


# --- the automatic reviewer, on the annotator's seeded review workspace -----------------
def test_auto_accept_ranks_by_cohesion_times_log_size_and_keeps_a_random_pool(review_ws):
    from conceptgen.review.decisions import reject
    from conceptgen.demo import MIN_RANDOM_POOL, auto_accept, auto_accept_score

    ws, info = review_ws
    cohesion = dict(zip(info.cluster_ids, (0.5, 0.9, 0.8, 0.95)))
    with ws.session() as s:
        for cid, value in cohesion.items():
            s.get(Cluster, cid).cohesion = value
        alice = s.scalar(select(User.id).where(User.name == info.user))
    with ws.session() as s:
        best = info.cluster_ids[3]
        reject(s, alice, best, s.get(Cluster, best).version)  # decided: never touched again
    with ws.session() as s:
        sizes = {c.id: c.size for c in s.scalars(select(Cluster).where(Cluster.id.in_(info.cluster_ids)))}
        n_tubes = sum(sizes.values())

    assert set(sizes.values()) == {6} and n_tubes == 24  # the fixture's four clusters of 6 tubes
    accepted, failed = auto_accept(ws, info.clustering_id, alice, top_k=4, min_videos=1)
    assert not failed
    # Best first among the undecided: 0.9, then 0.8; a third would leave 24 - 18 = 6 < 12 tubes.
    assert [a.cluster_id for a in accepted] == [info.cluster_ids[1], info.cluster_ids[2]]
    assert [a.concept_name for a in accepted] == ["auto-1", "auto-2"]
    assert auto_accept_score(0.9, 6) > auto_accept_score(0.8, 6) > auto_accept_score(0.5, 6)
    assert n_tubes - sum(a.size for a in accepted) == MIN_RANDOM_POOL
    with ws.session() as s:
        assert s.get(Cluster, best).status == "rejected"
        assert s.get(Cluster, info.cluster_ids[0]).status == "candidate"

    with ws.session() as s:
        audit_rows = s.scalar(select(func.count(AuditLog.id)))
    again, _ = auto_accept(ws, info.clustering_id, alice, top_k=4, min_videos=1)
    assert [a.cluster_id for a in again] == [a.cluster_id for a in accepted]
    assert not any(a.newly_accepted for a in again)
    with ws.session() as s:
        assert s.scalar(select(func.count(AuditLog.id))) == audit_rows


def test_an_interrupted_tcav_step_is_marked_failed_and_run_again(headless, tmp_path):
    """A copy of the demo workspace whose experiment was killed mid-run ('running', no
    results): the next demo marks it failed and stores one finished experiment."""
    import shutil

    import torch

    from conceptgen.demo import DemoConfig, run_headless
    from conceptgen.orm import TcavResult

    torch.set_num_threads(2)
    ws, *_ = headless
    shutil.copytree(ws.root, tmp_path / "ws")
    copy = Workspace.resolve(tmp_path / "ws")
    try:
        with copy.session() as s:
            old = s.scalars(select(TcavExperiment)).one()
            n_results = s.scalar(select(func.count(TcavResult.id)))
            s.query(TcavResult).delete()
            old.status, old_id = "running", old.id
        summary = run_headless(copy, DemoConfig(n_videos=VIDEOS, seed=0, epochs=EPOCHS), log=lambda _line: None)
        assert not summary.experiment_reused and summary.experiment_id != old_id
        with copy.session() as s:
            assert s.get(TcavExperiment, old_id).status == "failed"
            finished = s.scalars(select(TcavExperiment).where(TcavExperiment.status == "finished")).all()
            assert [e.id for e in finished] == [summary.experiment_id]
            assert s.scalar(select(func.count(TcavResult.id))) == n_results
    finally:
        copy.close()


def test_auto_accept_keeps_only_the_most_central_members_through_audited_removals(review_ws):
    from conceptgen.review.decisions import merge
    from conceptgen.demo import auto_accept
    from conceptgen.orm import ClusterMember, ConceptExample

    ws, info = review_ws
    a, b = info.cluster_ids[:2]
    with ws.session() as s:
        alice = s.scalar(select(User.id).where(User.name == info.user))
        merge(s, alice, {a: s.get(Cluster, a).version, b: s.get(Cluster, b).version})
    with ws.session() as s:
        s.get(Cluster, a).cohesion = 0.99  # the merged cluster (12 members) ranks first
        central = [m.tube_id for m in s.scalars(select(ClusterMember).where(
            ClusterMember.cluster_id == a, ClusterMember.is_outlier.is_(False)).order_by(ClusterMember.rank))][:6]
        removals_before = s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == "remove_member"))

    accepted, failed = auto_accept(ws, info.clustering_id, alice, top_k=1, min_videos=1, max_examples=6)
    assert not failed and [x.cluster_id for x in accepted] == [a]
    with ws.session() as s:
        concept = s.scalars(select(Concept).where(Concept.name == accepted[0].concept_name)).one()
        examples = s.scalars(select(ConceptExample.tube_id).where(
            ConceptExample.concept_version_id == concept.versions[-1].id)).all()
        removals = s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == "remove_member"))
        assert sorted(examples) == sorted(central)
        assert removals - removals_before == 12 - 6
        assert s.get(Cluster, a).size == 6
