"""The rendered-fragment cache (annotator.fragments): used on repeat views, and never
stale — after every decision, the gallery and detail pages show the database's state."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from annotator.fragments import FragmentCache, content_key
from annotator.queries import ClusterCard, MemberRow, Preview
from conceptgen.orm import Cluster, ClusterMember
from test_annotator_routes import Reviewer, app  # noqa: F401  (app: the shared fixture)



@pytest.fixture
def alice(app):
    return Reviewer(app.test_client())


def _card(**changes) -> ClusterCard:
    base = dict(id=1, version=1, label_index=0, name=None, status="candidate", size=6, cohesion=0.5, n_videos=3,
                supported=True, parent_id=None, concept_id=None,
                previews=[Preview(1, "p/a.mp4"), Preview(2, "p/b.mp4")])
    return ClusterCard(**{**base, **changes})


def test_content_key_is_equal_for_equal_content_and_differs_for_any_change():
    assert content_key(_card()) == content_key(_card())
    assert hash(content_key(_card())) == hash(content_key(_card()))
    changed = [_card(version=2), _card(name="x"), _card(status="accepted"), _card(cohesion=0.5000001),
               _card(previews=[Preview(1, "p/a.mp4")]), _card(previews=[Preview(1, "p/a.mp4"), Preview(3, "p/b.mp4")])]
    keys = {content_key(c) for c in changed}
    assert len(keys) == len(changed) and content_key(_card()) not in keys
    row = MemberRow(1, 2, 0, 0.1, False, False, False, 3, "v.mp4", 0, 8, "motion", None)
    assert content_key(row) != content_key(_card())  # the dataclass's name is part of the key


def test_cache_is_emptied_when_full_and_keeps_serving(app):
    cache = FragmentCache(max_entries=3)
    with app.test_request_context("/"):
        htmls = [cache.render("_fragments.html", "cluster_card", _card(id=i)) for i in range(1, 6)]
        assert len(cache) <= 3 and cache.misses == 5
        assert 'data-cluster-id="5"' in htmls[-1] and 'data-cluster-id="1"' in htmls[0]
        assert cache.render("_fragments.html", "cluster_card", _card(id=5)) == htmls[-1] and cache.hits == 1


def _cards(html: str) -> dict[int, str]:
    """cluster id -> that card's HTML on a gallery page."""
    cards = re.finditer(r'<article[^>]*data-cluster-id="(\d+)".*?</article>', html, re.S)
    return {int(m.group(1)): m.group(0) for m in cards}


def _db(app):
    return app.extensions["conceptgen_workspace"].session()


def test_gallery_repeats_come_from_the_cache_and_every_decision_shows_at_once(app, alice):
    cache = app.extensions["annotator_fragments"]
    cid = app.seed.cluster_ids[0]
    url = f"/runs/{app.seed.run_id}/clusters?status=all"
    first = alice.get(url).text
    hits = cache.hits
    assert _cards(alice.get(url).text) == _cards(first) and cache.hits >= hits + len(_cards(first)) > hits
    with _db(app) as s:
        version = s.get(Cluster, cid).version
    assert f'data-version="{version}"' in _cards(first)[cid] and "status-candidate" in _cards(first)[cid]

    r = alice.post(f"/api/clusters/{cid}/accept", {"version": version, "name": "<b>cached</b>", "description": "d"})
    assert r.status_code == 200
    card = _cards(alice.get(url).text)[cid]
    with _db(app) as s:
        now = s.get(Cluster, cid)
        assert f'data-version="{now.version}"' in card and now.status == "accepted"
    assert "status-accepted" in card and "&lt;b&gt;cached&lt;/b&gt;" in card and "<b>cached" not in card

    assert alice.post("/api/undo").status_code == 200  # back to the earlier content, with a newer version
    card = _cards(alice.get(url).text)[cid]
    with _db(app) as s:
        now = s.get(Cluster, cid)
    assert "status-candidate" in card and "cached" not in card and f'data-version="{now.version}"' in card


def _member_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-member-id="(\d+)"', html)]


def test_detail_rows_follow_member_decisions_and_reused_cluster_ids(app, alice):
    cid = app.seed.cluster_ids[0]
    page = alice.get(f"/clusters/{cid}").text
    with _db(app) as s:
        version = s.get(Cluster, cid).version
        first = s.scalars(select(ClusterMember).where(ClusterMember.cluster_id == cid)
                          .order_by(ClusterMember.rank)).first().id
    assert f'data-member-id="{first}"' in page and 'class="member excluded' not in page
    assert alice.post(f"/api/members/{first}/remove", {"version": version}).status_code == 200
    page = alice.get(f"/clusters/{cid}").text
    row = re.search(rf'<tr class="([^"]*)" data-member-id="{first}".*?</tr>', page, re.S)
    assert "excluded" in row.group(1) and "Restore" in row.group(0)

    # split, undo (the children are deleted), split again: SQLite may hand out the same
    # child ids, with version 1 again, yet each child's page must list its own members
    with _db(app) as s:
        version = s.get(Cluster, cid).version
    children = alice.post(f"/api/clusters/{cid}/split", {"version": version, "k": 2, "seed": 0}).get_json()
    shown_before = {c: _member_ids(alice.get(f"/clusters/{c}").text) for c in children["created_cluster_ids"]}
    assert alice.post("/api/undo").status_code == 200
    with _db(app) as s:
        version = s.get(Cluster, cid).version
    again = alice.post(f"/api/clusters/{cid}/split", {"version": version, "k": 3, "seed": 1}).get_json()
    assert set(again["created_cluster_ids"]) & set(shown_before)  # the ids were reused: the case that matters
    with _db(app) as s:
        for child in again["created_cluster_ids"]:
            expected = list(s.scalars(select(ClusterMember.id).where(ClusterMember.cluster_id == child)
                                      .order_by(ClusterMember.excluded, ClusterMember.rank, ClusterMember.id)))
            page = alice.get(f"/clusters/{child}").text
            assert _member_ids(page) == expected
            card = _cards(alice.get(f"/runs/{app.seed.run_id}/clusters?status=all").text)[child]
            assert f'data-version="{s.get(Cluster, child).version}"' in card


@pytest.mark.parametrize("script_root", ["", "/review"])
def test_fragment_url_helpers_build_what_url_for_builds(app, script_root):
    from flask import url_for

    from annotator.app import cluster_url, highlight_url, media_url

    with app.test_request_context("/", base_url=f"http://localhost{script_root}"):
        assert cluster_url(7) == url_for("clusters.detail", cluster_id=7)
        assert highlight_url(9) == url_for("media.highlight", tube_id=9)
        assert media_url("previews/a b.mp4") == url_for("media.serve", relpath="previews/a b.mp4")
