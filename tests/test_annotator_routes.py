"""Every annotator route through Flask's test client against a real seeded workspace:
auth, CSRF, stale versions, escaping, media traversal and HTTP Range."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from sqlalchemy import select

from annotator import create_app
from conceptgen.orm import Cluster, ClusterMember, TcavExperiment, TcavResult

PASSWORD = "correct-horse"


@pytest.fixture
def app(review_ws):
    ws, info = review_ws
    app = create_app(ws, {"TESTING": True})
    app.seed = info
    return app


def _token(html: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


class Reviewer:
    """A logged-in test client that sends JSON with the page's CSRF token."""

    def __init__(self, client, name="alice", password=PASSWORD):
        self.client = client
        login_page = client.get("/login")
        r = client.post("/login", data={"username": name, "password": password, "csrf_token": _token(login_page.text)})
        assert r.status_code == 302, r.text
        self.token = _token(client.get("/runs").text)

    def get(self, url, **kw):
        return self.client.get(url, **kw)

    def post(self, url, body=None, token=True):
        headers = {"X-CSRFToken": self.token} if token else {}
        return self.client.post(url, json=body if body is not None else {}, headers=headers)


@pytest.fixture
def alice(app):
    return Reviewer(app.test_client())


def _version(app, cluster_id):
    with app.extensions["conceptgen_workspace"].session() as s:
        return s.get(Cluster, cluster_id).version


# --- auth ---------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/runs", "/runs/1/clusters", "/clusters/1", "/concepts", "/audit",
                                 "/media/previews/run1/c0_t0.mp4", "/tubes/1/highlight", "/experiments",
                                 "/experiments/1", "/videos/1/source", "/clusters/1/members?offset=0"])
def test_anonymous_pages_redirect_to_login(app, url):
    r = app.test_client().get(url)
    assert r.status_code == 302 and r.location.startswith("/login?next=")


@pytest.mark.parametrize("url", ["/api/runs", "/api/runs/1/clusters", "/api/clusters/1", "/api/clusters/1/similar",
                                 "/api/concepts", "/api/audit", "/api/experiments", "/api/experiments/1",
                                 "/api/jobs", "/api/jobs/1", "/api/tubes/1"])
def test_anonymous_api_gets_401_json(app, url):
    r = app.test_client().get(url)
    assert r.status_code == 401 and "log in" in r.get_json()["error"]


def test_anonymous_decision_with_valid_token_is_refused(app):
    client = app.test_client()
    token = _token(client.get("/login").text)
    r = client.post("/api/clusters/1/reject", json={"version": 1}, headers={"X-CSRFToken": token})
    assert r.status_code == 401
    assert _version(app, 1) == 1


def test_login_rejects_wrong_password_and_unsafe_next(app):
    client = app.test_client()
    token = _token(client.get("/login").text)
    bad = client.post("/login", data={"username": "alice", "password": "wrong-pass", "csrf_token": token})
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    ok = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token,
                                     "next": "//evil.example/x"})
    assert ok.status_code == 302 and ok.location == "/runs"
    token = _token(client.get("/runs").text)
    out = client.post("/logout", data={"csrf_token": token})
    assert out.status_code == 302 and client.get("/runs").status_code == 302


def test_login_without_csrf_token_is_refused(app):
    r = app.test_client().post("/login", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 400 and "security token" in r.text


# --- pages --------------------------------------------------------------------------
def test_runs_page_shows_config_counts_and_progress(app, alice):
    assert alice.get("/").location == "/runs"
    runs = alice.get("/api/runs").get_json()["runs"]
    assert [(r["n_tubes"], r["n_clusters"], r["n_reviewed"], r["n_videos"]) for r in runs] == [(24, 4, 0, 3)]
    page = alice.get("/runs").text
    assert "blocks.1" in page and "Review" in page
    assert re.search(r"<td>24</td>", page)  # tubes
    assert "0 / 4" in page
    alice.post("/api/clusters/1/reject", {"version": 1})
    assert "1 / 4" in alice.get("/runs").text


def test_runs_page_says_how_many_tubes_are_tagged_background(app, alice):
    """On real clips a fifth of the tubes are walls and floors, kept but not clustered: the count
    on the runs page should add up with the clusters' members."""
    from conceptgen.orm import Tube

    with app.extensions["conceptgen_workspace"].session() as s:
        for tube in s.query(Tube).order_by(Tube.id).limit(5):
            tube.background = True
        s.commit()
    assert alice.get("/api/runs").get_json()["runs"][0]["n_background"] == 5
    assert re.search(r"<td>24 <small[^>]*>\(5 background\)</small></td>", alice.get("/runs").text)


def test_gallery_cards_have_lazy_looping_previews_and_stats(app, alice):
    page = alice.get(f"/runs/{app.seed.run_id}/clusters").text
    cards = re.findall(r'<article class="card', page)
    assert len(cards) == 4
    videos = re.findall(r"<video[^>]*>", page)
    assert len(videos) == 4 * 6
    for v in videos:
        for attr in ("loop", "muted", "autoplay", "playsinline", 'preload="none"', 'data-src="/media/previews/'):
            assert attr in v
        assert " src=" not in v  # loaded by IntersectionObserver, not eagerly
    assert "cohesion" in page and "support" in page and "Keys:" in page


def test_gallery_filters_sorts_and_paginates(app, review_ws):
    ws, info = review_ws
    app = create_app(ws, {"TESTING": True, "PER_PAGE_CLUSTERS": 3})
    alice = Reviewer(app.test_client())
    alice.post(f"/api/clusters/{info.cluster_ids[1]}/reject", {"version": 1})
    run = info.run_id
    first, second = alice.get(f"/runs/{run}/clusters?page=1").text, alice.get(f"/runs/{run}/clusters?page=2").text
    ids = lambda html: re.findall(r'data-cluster-id="(\d+)"', html)
    assert len(ids(first)) == 3 and len(ids(second)) == 1 and not set(ids(first)) & set(ids(second))
    assert "Page 1 of 2" in first
    assert ids(alice.get(f"/runs/{run}/clusters?status=rejected").text) == [str(info.cluster_ids[1])]
    assert str(info.cluster_ids[1]) not in ids(alice.get(f"/runs/{run}/clusters?status=candidate").text)
    api = alice.get(f"/api/runs/{run}/clusters?sort=cohesion&status=all").get_json()
    cohesions = [c["cohesion"] for c in api["cards"]]
    assert cohesions == sorted(cohesions, reverse=True) and api["total"] == 4
    support = alice.get(f"/api/runs/{run}/clusters?sort=support&status=all").get_json()["cards"]
    assert [c["supported"] for c in support] == sorted((c["supported"] for c in support), reverse=True)
    bad = alice.get(f"/runs/{run}/clusters?sort=colour")
    assert bad.status_code == 400 and "unknown sort" in bad.text and "Traceback" not in bad.text
    assert alice.get(f"/runs/{run}/clusters?page=zero").status_code == 400
    assert alice.get("/runs/999/clusters").status_code == 404


def test_cluster_detail_lists_members_with_source_and_frames(app, alice):
    cid = app.seed.cluster_ids[0]
    with app.extensions["conceptgen_workspace"].session() as s:
        s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cid)).first().is_outlier = True
    page = alice.get(f"/clusters/{cid}").text
    assert len(re.findall(r'<tr class="member', page)) == 6
    assert "source0.mp4" in page or "source1.mp4" in page
    assert re.search(r"frames \d+–\d+", page)
    assert "outlier" in page and "Similar tubes from other clusters" in page
    for button in ("act-remove", "act-rep", "move-form", "act-play", "act-accept", "act-reject"):
        assert button in page
    detail = alice.get(f"/api/clusters/{cid}").get_json()
    assert detail["n_members"] == 6 and detail["cluster"]["version"] == 1
    assert alice.get("/clusters/99999").status_code == 404


def test_similar_tubes_come_from_other_clusters(app, alice):
    cid = app.seed.cluster_ids[0]
    data = alice.get(f"/api/clusters/{cid}/similar?k=5").get_json()
    assert 0 < len(data["similar"]) <= 5
    assert all(s["cluster_id"] != cid for s in data["similar"])
    scores = [s["score"] for s in data["similar"]]
    assert scores == sorted(scores, reverse=True)


def test_similar_tubes_name_their_cluster_as_the_gallery_does(app, alice):
    """"#n · name" as on the gallery card, not the database id (a reviewer saw "cluster 2" beside #0 and #1)."""
    from conceptgen.orm import Cluster

    cid = app.seed.cluster_ids[0]
    hits = alice.get(f"/api/clusters/{cid}/similar?k=5").get_json()["similar"]
    other = hits[0]["cluster_id"]
    with app.extensions["conceptgen_workspace"].session() as s:
        s.get(Cluster, other).name = "ball <in> flight"
        s.commit()
        shown = {c.id: (c.label_index, c.name) for c in s.query(Cluster).all()}
    hits = alice.get(f"/api/clusters/{cid}/similar?k=5").get_json()["similar"]
    assert hits and all((h["cluster_label"], h["cluster_name"]) == shown[h["cluster_id"]] for h in hits)
    assert any(h["cluster_name"] == "ball <in> flight" for h in hits)


def test_similar_tubes_are_as_far_as_the_runs_spread_says_not_a_raw_cosine(app, alice):
    from conceptgen.orm import Cluster, Clustering

    cid = app.seed.cluster_ids[0]
    with app.extensions["conceptgen_workspace"].session() as s:
        clustering = s.get(Clustering, s.get(Cluster, cid).clustering_id)
        clustering.params = {**clustering.params, "layer_check": {"spread": 0.05}}
        s.commit()
    for hit in alice.get(f"/api/clusters/{cid}/similar?k=5").get_json()["similar"]:
        assert hit["distance"] == pytest.approx(max(1.0 - hit["score"], 0.0) / 0.05, abs=1e-3)


# --- decisions over the API ---------------------------------------------------------
def test_accept_via_api_needs_csrf_header_and_current_version(app, alice):
    cid = app.seed.cluster_ids[0]
    body = {"version": 1, "name": "Sliding square", "description": "a square that slides"}
    no_token = alice.post(f"/api/clusters/{cid}/accept", body, token=False)
    assert no_token.status_code == 400 and "security token" in no_token.get_json()["error"]
    assert _version(app, cid) == 1
    ok = alice.post(f"/api/clusters/{cid}/accept", body)
    assert ok.status_code == 200 and ok.get_json()["concept_id"]
    stale = alice.post(f"/api/clusters/{cid}/reject", {"version": 1})
    assert stale.status_code == 409 and "reload the page" in stale.get_json()["error"]
    missing = alice.post(f"/api/clusters/{cid}/reject", {})
    assert missing.status_code == 400 and "version" in missing.get_json()["error"]
    taken = alice.post(f"/api/clusters/{app.seed.cluster_ids[1]}/accept",
                       {"version": 1, "name": "sliding SQUARE", "description": "x"})
    assert taken.status_code == 409 and "already exists" in taken.get_json()["error"]
    library = alice.get("/concepts").text
    assert "Sliding square" in library and "alice" in library and "v1" in library
    with app.extensions["conceptgen_workspace"].session() as s:
        label = s.get(Cluster, cid).label_index
    assert label != cid and f'href="/clusters/{cid}">#{label}</a>' in library  # the gallery's number, linked


def test_script_names_are_escaped_everywhere(app, alice):
    cid = app.seed.cluster_ids[0]
    evil = "<script>alert('x')</script>"
    assert alice.post(f"/api/clusters/{cid}/accept", {"version": 1, "name": evil, "description": evil}).status_code == 200
    for url in ("/concepts", f"/clusters/{cid}", f"/runs/{app.seed.run_id}/clusters?status=accepted", "/audit"):
        html = alice.get(url).text
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;alert(" in html, url


def test_split_and_merge_links_name_clusters_as_the_gallery_does(app, alice):
    """The parent's and children's links read "#n" (a split's parts were listed by database id)."""
    a, b, _c, _ = app.seed.cluster_ids
    merged = alice.post("/api/clusters/merge", {"clusters": [{"id": a, "version": 1}, {"id": b, "version": 1}]})
    va = merged.get_json()["versions"][str(a)]
    parts = alice.post(f"/api/clusters/{a}/split", {"version": va, "k": 2, "seed": 0}).get_json()["created_cluster_ids"]
    with app.extensions["conceptgen_workspace"].session() as s:
        label = {i: s.get(Cluster, i).label_index for i in (a, b, *parts)}
    assert all(label[i] != i for i in parts)
    page = alice.get(f"/clusters/{a}").text
    for i in parts:
        assert f'href="/clusters/{i}">#{label[i]}</a>' in page
    assert f'href="/clusters/{b}">#{label[b]}</a>' in page  # merged from
    assert f'href="/clusters/{a}">#{label[a]}</a>' in alice.get(f"/clusters/{parts[0]}").text  # split from
    similar = alice.get(f"/api/clusters/{a}/similar")
    assert similar.status_code == 404 and "this cluster has no members left" in similar.get_json()["error"]
    late = alice.post(f"/api/clusters/{b}/reject", {"version": _version(app, b)})  # decisions' messages too
    assert late.status_code == 400
    assert late.get_json()["error"].startswith(f"cluster #{label[b]} (id {b}) was merged into cluster #{label[a]} (id {a})")


def test_merge_split_members_and_undo_via_api(app, alice):
    a, b, c, _ = app.seed.cluster_ids
    merged = alice.post("/api/clusters/merge", {"clusters": [{"id": a, "version": 1}, {"id": b, "version": 1}]})
    assert merged.status_code == 200
    va = merged.get_json()["versions"][str(a)]
    split = alice.post(f"/api/clusters/{a}/split", {"version": va, "k": 2, "seed": 0})
    assert split.status_code == 200 and len(split.get_json()["created_cluster_ids"]) == 2
    assert alice.post("/api/undo").status_code == 200  # undo split
    assert alice.post("/api/undo").status_code == 200  # undo merge
    with app.extensions["conceptgen_workspace"].session() as s:
        assert s.get(Cluster, b).status == "candidate"
        members = s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == c).order_by(ClusterMember.rank)).all()
        m1, m2 = members[0].id, members[1].id
    vc = _version(app, c)
    removed = alice.post(f"/api/members/{m1}/remove", {"version": vc}).get_json()
    vc = removed["versions"][str(c)]
    restored = alice.post(f"/api/members/{m1}/restore", {"version": vc}).get_json()
    vc = restored["versions"][str(c)]
    rep = alice.post(f"/api/members/{m2}/representative", {"version": vc, "representative": False}).get_json()
    vc = rep["versions"][str(c)]
    moved = alice.post(f"/api/members/{m2}/move", {"version": vc, "target": a})
    assert moved.status_code == 200
    renamed = alice.post(f"/api/clusters/{a}/rename", {"version": moved.get_json()["versions"][str(a)], "name": "big"})
    assert renamed.status_code == 200
    bad_merge = alice.post("/api/clusters/merge", {"clusters": [{"id": a}]})
    assert bad_merge.status_code == 400
    not_json = alice.client.post(f"/api/clusters/{c}/reject", data="x", headers={"X-CSRFToken": alice.token})
    assert not_json.status_code == 400 and "JSON" in not_json.get_json()["error"]
    audit = alice.get("/api/audit").get_json()["entries"]
    assert [e["action"] for e in audit][:3] == ["rename", "move_member", "unrepresentative"]
    assert sum(e["undone"] for e in audit) == 2
    page = alice.get("/audit").text
    assert "undone" in page and "alice" in page and "move_member" in page
    with app.extensions["conceptgen_workspace"].session() as s:
        label_a = s.get(Cluster, a).label_index
    # clusters are named as the gallery numbers them, the database id after
    assert f"cluster #{label_a} <small>(id {a})</small>" in page


def test_other_users_cannot_undo_my_decision(app, alice):
    from conceptgen.review.users import create_user

    with app.extensions["conceptgen_workspace"].session() as s:
        create_user(s, "bob", "bob-password")
    bob = Reviewer(app.test_client(), "bob", "bob-password")
    alice.post(f"/api/clusters/{app.seed.cluster_ids[0]}/reject", {"version": 1})
    r = bob.post("/api/undo")
    assert r.status_code == 400 and "no decision left" in r.get_json()["error"]


# --- concept library ----------------------------------------------------------------
def _store_experiment(ws, concept_id, plots=(), status="finished", summary=None):
    with ws.session() as s:
        exp = TcavExperiment(config={"targets": ["push", "pull"], "test": "pseudo", "statistic": "logit-change",
                                     "correction": "holm", "alpha": 0.05},
                             model_name="demo", model_fingerprint="f" * 64, target="push,pull",
                             layers=["blocks.1", "blocks.2"], seed=0, status=status, plots=list(plots),
                             summary=summary if summary is not None else
                             {"test": "pseudo", "statistic": "logit-change",
                              "warnings": ["layer blocks.2 is degenerate for push"]})
        s.add(exp)
        s.flush()
        for target, layer, variant, mean, sig, p_corr, flags in (
                ("push", "blocks.1", "dynamic", 0.83, True, 0.004, []),
                ("push", "blocks.1", "static", 0.41, False, 0.6, []),
                ("pull", "blocks.2", "dynamic", 0.5, False, None, ["degenerate layer", "not tested"])):
            s.add(TcavResult(experiment_id=exp.id, concept_id=concept_id, concept_name="sq", layer=layer,
                             target_class=target, variant=variant, tcav_mean=mean, tcav_std=0.05, magnitude_mean=0.4,
                             cav_accuracy_mean=0.9, p_value=p_corr and p_corr / 4, p_corrected=p_corr,
                             significant=sig, verdict="significant positive" if sig else "not significant",
                             details={"logit_changes": [0.2, 0.4], "flags": flags, "null_mean": 0.5}))
        return exp.id


def test_experiment_page_shows_verdicts_plots_once_per_target_and_json(app, alice):
    cid = app.seed.cluster_ids[0]
    concept_id = alice.post(f"/api/clusters/{cid}/accept", {"version": 1, "name": "sq", "description": "d"}
                            ).get_json()["concept_id"]
    ws = app.extensions["conceptgen_workspace"]
    folder = ws.media / "tcav" / "1"
    folder.mkdir(parents=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plots = ["scores_push.png", "temporal_push.png", "scores_pull.png", "calibration.png"]
    for name in plots:
        plt.figure(figsize=(2, 2)).savefig(folder / name)
    plt.close("all")
    exp_id = _store_experiment(ws, concept_id, [f"tcav/1/{n}" for n in plots])

    library = alice.get("/concepts").text  # the library links to the experiment, without the plots
    assert "0.83 ± 0.05" in library and f'href="/experiments/{exp_id}"' in library and "<img" not in library
    listing = alice.get("/experiments").text
    assert f'href="/experiments/{exp_id}"' in listing and "push, pull" in listing and "pseudo" in listing
    page = alice.get(f"/experiments/{exp_id}").text
    for name in plots:
        assert page.count(f'src="/media/tcav/1/{name}"') == 1  # each plot once
    assert page.index("Plots for push") < page.index("scores_push.png") < page.index("Plots for pull")
    assert "layer blocks.2 is degenerate for push" in page and "degenerate layer" in page
    assert f'href="/clusters/{cid}"' in page  # the concept links to its members
    assert 'data-static="0.41"' in page  # the dynamic row carries its static sibling's score
    data = alice.get(f"/api/experiments/{exp_id}").get_json()
    assert data["targets"] == ["push", "pull"] and data["statistic"] == "logit-change"
    rows = data["results"]
    assert [(r["target"], r["variant"], r["significant"]) for r in rows] == [
        ("push", "dynamic", True), ("push", "static", False), ("pull", "dynamic", False)]
    assert rows[0]["statistic_value"] == pytest.approx(0.3) and rows[0]["p_corrected"] == 0.004
    assert rows[2]["flags"] == ["degenerate layer", "not tested"] and rows[2]["p_corrected"] is None
    assert data["plots_by_target"]["push"] == ["tcav/1/scores_push.png", "tcav/1/temporal_push.png"]
    assert data["shared_plots"] == ["tcav/1/calibration.png"]
    assert alice.get("/api/experiments/999").status_code == 404


def test_running_experiment_shows_its_stage(app, alice):
    from tcav.results import record_progress

    ws = app.extensions["conceptgen_workspace"]
    exp_id = _store_experiment(ws, None, status="running", summary={})
    record_progress(ws, exp_id, 1, 3, "writing results and CAVs")
    for url in ("/experiments", f"/experiments/{exp_id}"):
        page = alice.get(url).text
        assert '<progress class="progress" max="3" value="1"' in page and "writing results and CAVs" in page
    assert alice.get(f"/api/experiments/{exp_id}").get_json()["progress"]["stage"] == "writing results and CAVs"


def test_export_button_starts_an_export_job_with_progress(app, alice):
    """The export answers at once with a job; the job reports progress and ends with the export."""
    import time

    cid = app.seed.cluster_ids[0]
    alice.post(f"/api/clusters/{cid}/accept", {"version": 1, "name": "exported", "description": "d"})
    assert 'id="export-btn"' in alice.get("/concepts").text
    r = alice.post("/api/concepts/export", {"names": ["exported"], "mode": "crop"})
    assert r.status_code == 202, r.get_json()
    job_url = r.get_json()["status_url"]
    deadline = time.monotonic() + 120
    while (job := alice.get(job_url).get_json())["state"] in ("queued", "running") and time.monotonic() < deadline:
        assert 0 <= job["done"] <= max(job["total"], 0) or job["total"] == 0
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert job["done"] == job["total"] == 6 and job["result"]["n_clips"] == 6
    assert os.path.isfile(os.path.join(job["result"]["out_dir"], "manifest.json"))
    listed = alice.get("/api/jobs?kind=export").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    bad = alice.post("/api/concepts/export", {"names": []})
    assert bad.status_code == 400


# --- media --------------------------------------------------------------------------
def test_media_serves_previews_with_http_range(app, alice):
    path = "/media/previews/run1/c0_t0.mp4"
    full = alice.get(path)
    assert full.status_code == 200 and full.mimetype == "video/mp4" and full.headers["Accept-Ranges"] == "bytes"
    part = alice.get(path, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and len(part.data) == 100 and part.data == full.data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(full.data)}"
    tail = alice.get(path, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == full.data[-10:]


@pytest.mark.parametrize("url", [
    "/media/../concepts.db", "/media/%2e%2e/concepts.db", "/media/..%2fconcepts.db",
    "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/media//etc/passwd", "/media/%2Fetc%2Fpasswd",
    "/media/previews/..%5c..%5cconcepts.db", "/media/previews/%00x", "/media/escape/concepts.db",
    "/media/previews", "/media/nothing.mp4",
])
def test_media_refuses_everything_outside_media(app, alice, url):
    ws = app.extensions["conceptgen_workspace"]
    os.symlink(ws.root, ws.media / "escape")  # a symlink inside media/ pointing out of it
    r = alice.get(url, follow_redirects=True)  # werkzeug answers '//' with a redirect that merges slashes
    assert r.status_code in (404, 400), url
    assert b"SQLite" not in r.data and b"root:" not in r.data and b"Traceback" not in r.data


# --- errors -------------------------------------------------------------------------
def test_errors_render_friendly_pages_or_json(review_ws):
    app = create_app(review_ws[0], {"TESTING": False})

    @app.get("/boom")
    def boom():
        raise RuntimeError("internal detail")

    alice = Reviewer(app.test_client())
    page = alice.get("/no/such/page")
    assert page.status_code == 404 and "nothing at this address" in page.text
    api = alice.get("/api/no/such")
    assert api.status_code == 404 and api.get_json()["error"]
    crash = alice.get("/boom")
    assert crash.status_code == 500 and "went wrong" in crash.text
    assert "internal detail" not in crash.text and "Traceback" not in crash.text
    wrong_method = alice.get("/api/undo")
    assert wrong_method.status_code == 405 and wrong_method.get_json()["error"]


def test_secret_key_comes_from_a_private_workspace_file(app, review_ws):
    ws, _ = review_ws
    key_file = ws.root / "annotator_secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert app.config["SECRET_KEY"] == key_file.read_text().strip() and len(app.config["SECRET_KEY"]) >= 32
    assert create_app(ws).config["SECRET_KEY"] == app.config["SECRET_KEY"]


def test_highlighted_source_video_is_rendered_once_and_served(app, alice):
    from conceptgen.orm import Tube, Video
    from conceptgen.videoio import probe_video, read_frames

    ws = app.extensions["conceptgen_workspace"]
    with ws.session() as s:
        tube = s.scalars(select(Tube).order_by(Tube.id)).first()
        source = s.get(Video, tube.video_id).path
        tube_id, tube_frames = tube.id, set(tube.frame_indices)
    first = alice.get(f"/tubes/{tube_id}/highlight")
    assert first.status_code == 302 and first.location.startswith("/media/highlight/")
    out = ws.media / first.location.removeprefix("/media/")
    made = out.stat().st_mtime_ns
    served = alice.get(first.location, headers={"Range": "bytes=0-1023"})
    assert served.status_code == 206 and served.mimetype == "video/mp4"
    frames = read_frames(out)
    assert len(frames) == probe_video(source).frame_count
    # the outline changes pixels exactly on the tube's frames (beyond re-encoding noise)
    changed = np.abs(frames.astype(int) - read_frames(source).astype(int)).max(axis=-1)
    outlined = {t for t in range(len(frames)) if (changed[t] > 60).sum() >= 8}
    assert outlined == tube_frames
    again = alice.get(f"/tubes/{tube_id}/highlight")
    assert again.location == first.location and out.stat().st_mtime_ns == made
    assert alice.get("/tubes/999999/highlight").status_code == 404


def test_gallery_warns_when_the_clustered_layer_does_not_separate_the_tubes(app, alice):
    from conceptgen.orm import Clustering

    url = f"/runs/{app.seed.run_id}/clusters"
    assert 'id="layer-warning"' not in alice.get(url).text  # a clustering made before the check: no banner
    with app.extensions["conceptgen_workspace"].session() as s:
        clustering = s.scalars(select(Clustering).where(Clustering.run_id == app.seed.run_id)).first()
        clustering.params = {**clustering.params, "layer_check": {
            "layer": "blocks.<1>", "n": 24, "spread": 0.001, "effective_rank": 1.0, "nn_ratio": 1.0,
            "separates": False, "reason": "mean distance between tubes 0.001 < 0.02"}}
    page = alice.get(url).text
    banner = re.search(r'<div class="banner warn" role="alert" id="layer-warning">([^<]*)</div>', page)
    assert banner and "layer blocks.&lt;1&gt; does not separate this run&#39;s 24 tubes" in banner.group(1)
    assert "another layer" in banner.group(1) or "--layers" in banner.group(1)
    assert alice.get(f"/api/runs/{app.seed.run_id}/clusters").json["layer_warning"].startswith("layer blocks.<1>")
# --- review at scale: bulk member decisions, tube overlays, cards that show their state ---
def _members(app, cluster_id):
    with app.extensions["conceptgen_workspace"].session() as s:
        return {m.id: (m.cluster_id, m.excluded) for m in s.scalars(select(ClusterMember).order_by(ClusterMember.id))
                if m.cluster_id == cluster_id}


def test_bulk_remove_and_move_are_one_decision_each_and_undo_whole(app, alice):
    a, b = app.seed.cluster_ids[:2]
    ids = sorted(_members(app, a))[:3]
    r = alice.post(f"/api/clusters/{a}/members/bulk", {"version": 1, "action": "remove", "members": ids})
    assert r.status_code == 200, r.get_json()
    assert [_members(app, a)[i][1] for i in ids] == [True, True, True]
    moved = sorted(_members(app, a))[3:5]
    r = alice.post(f"/api/clusters/{a}/members/bulk",
                   {"version": _version(app, a), "action": "move", "members": moved, "target": b})
    assert r.status_code == 200, r.get_json()
    assert set(moved) <= set(_members(app, b)) and not set(moved) & set(_members(app, a))
    audit = alice.get("/api/audit").get_json()["entries"]
    assert [e["action"] for e in audit][:2] == ["move_members", "remove_members"]
    assert alice.post("/api/undo").status_code == 200  # the move, all of it
    assert set(moved) <= set(_members(app, a))
    stray = alice.post(f"/api/clusters/{a}/members/bulk",
                       {"version": _version(app, a), "action": "remove", "members": [sorted(_members(app, b))[0]]})
    assert stray.status_code == 400 and "no longer in cluster" in stray.get_json()["error"]
    stale = alice.post(f"/api/clusters/{a}/members/bulk", {"version": 1, "action": "remove", "members": ids})
    assert stale.status_code == 409
    for bad in ({"version": 1, "action": "remove", "members": "1,2"}, {"version": 1, "action": "zap", "members": ids}):
        assert alice.post(f"/api/clusters/{a}/members/bulk", bad).status_code == 400


def test_members_move_to_the_cluster_numbered_as_the_gallery_shows_it(app, alice):
    """The move fields take "#n", the number on the gallery card: the database id differs, and a
    reviewer who typed 1 for "#1" moved tubes into #0."""
    from conceptgen.orm import Cluster

    a, b = app.seed.cluster_ids[:2]
    with app.extensions["conceptgen_workspace"].session() as s:
        label_b = s.get(Cluster, b).label_index
    assert label_b != b
    one, two = sorted(_members(app, a))[:2]
    r = alice.post(f"/api/members/{one}/move", {"version": _version(app, a), "target_label": label_b})
    assert r.status_code == 200, r.get_json()
    r = alice.post(f"/api/clusters/{a}/members/bulk",
                   {"version": _version(app, a), "action": "move", "members": [two], "target_label": label_b})
    assert r.status_code == 200, r.get_json()
    assert {one, two} <= set(_members(app, b))
    missing = alice.post(f"/api/clusters/{a}/members/bulk", {"version": _version(app, a), "action": "move",
                                                             "members": sorted(_members(app, a))[:1], "target_label": 999})
    assert missing.status_code == 400 and missing.get_json()["error"].startswith("no cluster #999 in this gallery")


def test_tube_overlay_gives_row_major_mask_runs_that_rebuild_the_masks(app, alice):
    from conceptgen.orm import Tube
    from conceptgen.tubes import TubeRecord

    tube_id = next(iter(_members(app, app.seed.cluster_ids[0])))  # a member id; look its tube up
    with app.extensions["conceptgen_workspace"].session() as s:
        tube_id = s.get(ClusterMember, tube_id).tube_id
        masks = TubeRecord.from_row(s.get(Tube, tube_id)).masks()
    data = alice.get(f"/api/tubes/{tube_id}").get_json()
    assert data["fps"] > 0 and len(data["masks"]) == len(data["frame_indices"]) == len(data["boxes"])
    for runs, mask in zip(data["masks"], masks):
        assert sum(runs) == data["mask_width"] * data["mask_height"]
        flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
        assert np.array_equal(flat.reshape(data["mask_height"], data["mask_width"]), mask)
    video = alice.get(f"/videos/{data['video_id']}/source", headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and len(video.data) == 100
    assert alice.get("/api/tubes/99999").status_code == 404


def test_member_rows_load_from_an_offset(app, alice):
    cid = app.seed.cluster_ids[0]
    first = alice.get(f"/clusters/{cid}/members?offset=0&limit=2").text
    rest = alice.get(f"/clusters/{cid}/members?offset=2").text
    ids = lambda html: re.findall(r'data-member-id="(\d+)"', html)  # noqa: E731
    assert len(ids(first)) == 2 and len(ids(first) + ids(rest)) == len(_members(app, cid))
    assert not set(ids(first)) & set(ids(rest))


def test_cards_show_their_state_instead_of_buttons_that_no_longer_apply(app, alice):
    a, b = app.seed.cluster_ids[:2]
    alice.post(f"/api/clusters/{a}/accept", {"version": 1, "name": "slide", "description": "d"})
    alice.post(f"/api/clusters/{b}/reject", {"version": 1})
    page = alice.get(f"/runs/{app.seed.run_id}/clusters?status=all").text
    cards = {int(m.group(1)): m.group(0) for m in
             re.finditer(r'<article class="card[^>]*data-cluster-id="(\d+)".*?</article>', page, re.S)}
    assert "Accepted as “slide”" in cards[a] and "act-accept" not in cards[a] and "act-reject" in cards[a]
    assert 'data-concept="slide"' in cards[a] and 'data-status="accepted"' in cards[a]
    assert "Rejected" in cards[b] and "act-reject" not in cards[b] and "act-accept" in cards[b]
    assert 'id="reject-dialog"' in page
