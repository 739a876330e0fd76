# --- synthetic set + demo model, shared by the whole session (videoio/registry/synth owner) ---
# Both live in pytest's cache folder keyed by seed and size, so later sessions reuse them:
# generation is deterministic and train_demo_model reuses a checkpoint whose training key
# (data hash, seed, config, code hash) matches. Each test gets its own copy of the workspace.
import shutil as _shutil_demo
from pathlib import Path as _Path_demo

import pytest as _pytest_demo

DEMO_SEED = 0
DEMO_SET_VIDEOS = 200  # 160 train / 40 held-out


def _demo_cache_root(request, tmp_path_factory) -> _Path_demo:
    cache = getattr(request.config, "cache", None)
    if cache is None:  # cache provider disabled (-p no:cacheprovider)
        return tmp_path_factory.mktemp("conceptgen-demo")
    return _Path_demo(cache.mkdir(f"conceptgen-demo-seed{DEMO_SEED}-n{DEMO_SET_VIDEOS}"))


@_pytest_demo.fixture(scope="session")
def synth_dir(request, tmp_path_factory) -> _Path_demo:
    """Folder of a class-balanced synthetic set: DEMO_SET_VIDEOS videos, 16 frames, 112 px, seed 0.
    Read it with ``conceptgen.synth.load_ground_truth(synth_dir)``; do not write into it."""
    from conceptgen.synth import generate_synthetic_set

    out = _demo_cache_root(request, tmp_path_factory) / "synth"
    generate_synthetic_set(out, n_videos=DEMO_SET_VIDEOS, seed=DEMO_SEED)
    return out


@_pytest_demo.fixture(scope="session")
def demo_report(request, tmp_path_factory, synth_dir):
    """The TrainReport of the demo model trained (or reused) on ``synth_dir``."""
    import torch

    from conceptgen.demo_model import train_demo_model
    from conceptgen.workspace import Workspace

    torch.set_num_threads(2)
    ws = Workspace.resolve(_demo_cache_root(request, tmp_path_factory) / "workspace")
    return train_demo_model(synth_dir, ws, seed=DEMO_SEED)


@_pytest_demo.fixture(scope="session")
def demo_workspace(tmp_path_factory, demo_report):
    """A fresh Workspace whose ``models/demo.pt`` holds the trained demo model."""
    from conceptgen.workspace import Workspace

    ws = Workspace.resolve(tmp_path_factory.mktemp("demo-workspace"))
    ws.ensure_dirs()
    _shutil_demo.copy2(demo_report.checkpoint, ws.models / "demo.pt")
    return ws

# --- concept workspace (export/import/concept_dataset tests) --------------------------
import pytest as _pytest_concepts


@_pytest_concepts.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """Four 8-frame 48x48 synthetic videos with exact ground-truth masks (seed 0)."""
    from conceptgen.synth import generate_synthetic_set

    return generate_synthetic_set(tmp_path_factory.mktemp("tiny-synth"), n_videos=4, seed=0,
                                  num_frames=8, size=48)


def build_concept_workspace(root, synth, concepts=(("actors", "the moving actor", 2),
                                                    ("distractors", "small distractors", 2))):
    """A real workspace DB: the synth videos ingested, one run whose tubes are the
    ground-truth object masks, a user, a clustering, and approved concepts built as the
    annotator does (Concept -> ConceptVersion(user, cluster, provenance) -> ConceptExample
    per tube) with an 'accept' AuditLog entry. ``concepts``: (name, description, n_examples)."""
    import numpy as np

    from conceptgen.ingest import ingest
    from conceptgen.masks import encode_rle, mask_box
    from conceptgen.orm import (AuditLog, Cluster, Clustering, Concept, ConceptExample, ConceptVersion, Run,
                                Tube, User, Video)
    from conceptgen.workspace import Workspace

    ws = Workspace.resolve(root)
    ingest(ws, [v.video_path for v in synth.videos])
    with ws.session() as s:
        user = User(name="alice", password_hash="x")
        run = Run(config={"segmenters": "groundtruth"}, config_hash="0" * 64, model_name="demo",
                  model_fingerprint="f" * 64, code_version="test", status="finished")
        s.add_all([user, run])
        s.flush()
        tubes = {"actor": [], "distractor": []}
        for v in synth.videos:
            video = s.query(Video).filter_by(sha256=v.sha256).one()
            masks = v.load_masks()
            for o in v.objects:
                m = masks[o.index]
                frames = [int(t) for t in range(m.shape[0]) if m[t].any()]
                if not frames:  # fully occluded object
                    continue
                tube = Tube(run_id=run.id, video_id=video.id, track_index=o.index, start_frame=frames[0],
                            end_frame=frames[-1] + 1, frame_indices=frames, kind="groundtruth",
                            mask_height=m.shape[1], mask_width=m.shape[2],
                            masks_rle=[encode_rle(m[t]) for t in frames], boxes=[mask_box(m[t]) for t in frames],
                            area=float(np.mean([m[t].mean() for t in frames])), score=1.0)
                s.add(tube)
                tubes[o.role].append(tube)
        clustering = Clustering(run_id=run.id, params={"k": 2}, layer="blocks.2", k=2, seed=0)
        s.add(clustering)
        s.flush()
        for i, (name, description, n) in enumerate(concepts):
            pool = tubes["actor" if i % 2 == 0 else "distractor"]
            cluster = Cluster(clustering_id=clustering.id, label_index=i, size=n, status="accepted",
                              name=name, description=description)
            concept = Concept(name=name, description=description, source="cluster", status="approved")
            s.add_all([cluster, concept])
            s.flush()
            cluster.concept_id = concept.id
            version = ConceptVersion(concept=concept, version=1, description=description, cluster_id=cluster.id,
                                     created_by=user.id,
                                     provenance={"model": "demo", "layer": "blocks.2", "run": run.id})
            s.add(version)
            for position, tube in enumerate(pool[:n]):
                s.add(ConceptExample(concept_version=version, position=position, tube_id=tube.id,
                                     variant="dynamic"))
            s.add(AuditLog(user_id=user.id, action="accept", target_type="cluster", target_id=cluster.id,
                           before={"status": "candidate"}, after={"status": "accepted", "name": name}))
    return ws


@_pytest_concepts.fixture
def concept_ws(tmp_path, tiny_synth):
    """A fresh workspace with two approved concepts ('actors', 'distractors'), 2 tubes each."""
    ws = build_concept_workspace(tmp_path / "ws", tiny_synth)
    yield ws
    ws.close()


# --- annotator (review app) ------------------------------------------------------------
@_pytest_concepts.fixture(scope="session")
def annotator_template(tmp_path_factory):
    """One seeded review workspace (4 engine-made clusters of 6 tubes with H.264 previews,
    embeddings and a FAISS index, user alice); tests get copies via ``review_ws``."""
    import torch

    from annotator.testing import seed_review_workspace
    from conceptgen.workspace import Workspace

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("annotator-template") / "ws"
    ws = Workspace.resolve(root)
    info = seed_review_workspace(ws, n_clusters=4, tubes_per_cluster=6, n_videos=3, seed=0)
    ws.close()
    return root, info


@_pytest_concepts.fixture
def review_backend(request):
    """'sqlite', or 'postgresql' in modules that set ``RUN_ON_EVERY_DATABASE = True``."""
    return getattr(request, "param", "sqlite")


@_pytest_concepts.fixture
def review_ws(tmp_path, annotator_template, review_backend, request):
    """(workspace, SeedInfo): a private copy of the seeded review workspace (its database
    a copy of the seeded one: a SQLite file, or a PostgreSQL database made from a template)."""
    import shutil

    from conceptgen.workspace import Workspace

    if review_backend == "postgresql":
        root, info, template = request.getfixturevalue("annotator_template_postgres")
        url = request.getfixturevalue("postgres_server")(template=template)
    else:
        (root, info), url = annotator_template, None
    shutil.copytree(root, tmp_path / "ws")
    ws = Workspace.resolve(tmp_path / "ws", url)
    yield ws, info
    ws.close()


@_pytest_concepts.fixture(scope="session")
def annotator_template_postgres(tmp_path_factory, postgres_server):
    """The seeded review workspace of ``annotator_template``, made on PostgreSQL: (media
    folder, SeedInfo, template database name); tests get databases copied from it."""
    import torch
    from sqlalchemy.engine import make_url

    from annotator.testing import seed_review_workspace
    from conceptgen.workspace import Workspace

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("annotator-template-pg") / "ws"
    ws = Workspace.resolve(root, postgres_server())
    info = seed_review_workspace(ws, n_clusters=4, tubes_per_cluster=6, n_videos=3, seed=0)
    ws.close()  # a template database must have no open connections
    return root, info, make_url(ws.db_url).database


def pytest_generate_tests(metafunc):
    """Modules with ``RUN_ON_EVERY_DATABASE = True`` run their review_ws tests on SQLite and PostgreSQL."""
    if getattr(metafunc.module, "RUN_ON_EVERY_DATABASE", False) and "review_ws" in metafunc.fixturenames:
        metafunc.parametrize("review_backend", ["sqlite", "postgresql"], indirect=True)


# --- tcav: a tiny trained 3D CNN (tests/test_tcav_*.py) ------------------------------
@_pytest_concepts.fixture(scope="session")
def tcav_toy():
    """conceptgen.toy_model's 3D CNN (global pooling + linear head) trained to tell a square moving
    right from one moving left; a LoadedModel on CPU. Treat as read-only (deepcopy to edit)."""
    import torch

    from conceptgen.toy_model import train_toy_model

    torch.set_num_threads(2)
    loaded, _accuracy = train_toy_model(seed=0)
    return loaded


# --- tcav: the toy model as a checkpoint with clip folders (saved CAVs, calibration) -----
@_pytest_concepts.fixture(scope="session")
def toy_tcav_clips(tcav_toy, tmp_path_factory):
    """Folder with ``toy.pt`` (tcav_toy as a conceptgen checkpoint), ``concepts/`` (rightward,
    blob, a random/ pool of 20), ``classes/right`` (6 videos) and ``new/`` (3 right, 3 left)."""
    import numpy as np

    from conceptgen import registry
    from conceptgen.videoio import write_video
    from conceptgen.toy_model import ToyWorld, _background, class_clips, moving_square_clip, static_blob

    world, root = ToyWorld(), tmp_path_factory.mktemp("toy-tcav-clips")
    registry.save_checkpoint(root / "toy.pt", builder="tcav_toy", builder_kwargs={}, model=tcav_toy.model,
                             spec=tcav_toy.spec, class_names=tcav_toy.class_names)
    rng = np.random.default_rng(0)
    folders = {
        "concepts/rightward": [moving_square_clip(rng, world, "right", distractor=False) for _ in range(8)],
        "concepts/blob": [static_blob(_background(rng, world), rng, world) for _ in range(8)],
        "concepts/random": [moving_square_clip(rng, world, "static") for _ in range(20)],
        "classes/right": list(class_clips("right", 6, seed=3)),
        "new": list(class_clips("right", 3, seed=7)) + list(class_clips("left", 3, seed=8)),
    }
    for name, clips in folders.items():
        (root / name).mkdir(parents=True)
        for i, clip in enumerate(clips):
            write_video(root / name / f"{i:03d}.mp4", clip)
    return root


# --- database backends: every store test runs on SQLite and on a real PostgreSQL server ---------
import os as _os_db
import uuid as _uuid_db

import pytest as _pytest_db

POSTGRES_URL_ENV = "CONCEPTGEN_TEST_POSTGRES_URL"  # a server URL (.ci/run exports one)


@_pytest_db.fixture(scope="session")
def postgres_server():
    """A callable ``new_database(template=None) -> URL`` on a real PostgreSQL server: the one at
    $CONCEPTGEN_TEST_POSTGRES_URL, else a throwaway cluster started here (stopped at the
    end of the session). Skips, saying why, only when no PostgreSQL server binaries exist."""
    from conceptgen.pgtemp import ThrowawayPostgres, create_database_at, server_bindir

    url = _os_db.environ.get(POSTGRES_URL_ENV)
    if url:
        yield lambda template=None: create_database_at(url, f"t_{_uuid_db.uuid4().hex[:12]}", template=template)
        return
    if server_bindir() is None:
        _pytest_db.skip(f"NO POSTGRESQL: install the server (apt-get install postgresql) or set {POSTGRES_URL_ENV}; "
                        "the PostgreSQL half of the store tests did not run")
    server = ThrowawayPostgres.start()
    try:
        yield lambda template=None: server.create_database(f"t_{_uuid_db.uuid4().hex[:12]}", template=template)
    finally:
        server.stop()


@_pytest_db.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database URL: a SQLite file, and a new database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_server")()
