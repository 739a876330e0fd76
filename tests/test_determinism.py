"""Results are a function of the clip alone (conceptgen.capture.run_clipwise): embeddings,
TCAV activations, gradients and scores are bit-identical whatever the batch size, the
batch's other clips, the order or the process's intra-op thread count.

x3d_xs (random weights, seeded) is used because oneDNN's convolutions round differently
for other batch and thread counts on it: a batched forward fails these tests."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptgen.capture import capture_layers, run_clipwise
from conceptgen.embed import HookEmbedder, embed_clips
from conceptgen.registry import load_model
from tcav.activations import forward_backward

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("blocks.3", "blocks.4")
BATCH_SIZES = (1, 2, 5, 16)
N_CLIPS = 12


def _x3d():
    torch.manual_seed(0)
    return load_model("x3d_xs")


def _clips(spec, n=N_CLIPS, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, spec.num_frames, spec.side, spec.side, 3),
                                                dtype=np.uint8)


def _digests(loaded, clips) -> dict[str, str]:
    """sha256 of the embeddings and of TCAV's activations and gradients, batch size 5."""
    def sha(a) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    emb = embed_clips(HookEmbedder(loaded, LAYERS), list(clips), batch_size=5)
    parts = [forward_backward(loaded, LAYERS[:1], clips[i:i + 5], [0, 7]) for i in range(0, len(clips), 5)]
    return {**{f"embed {n}": sha(emb[n]) for n in LAYERS},
            "act": sha(np.concatenate([p.activations[LAYERS[0]].numpy() for p in parts])),
            "grad": sha(np.concatenate([p.gradients[(LAYERS[0], 7)].numpy() for p in parts])),
            "logits": sha(np.concatenate([p.logits.numpy() for p in parts]))}


@pytest.fixture(scope="module")
def x3d():
    return _x3d()


def test_embeddings_are_bit_identical_for_every_batch_size_and_order(x3d):
    clips = _clips(x3d.spec)
    embedder = HookEmbedder(x3d, LAYERS)
    reference = embed_clips(embedder, list(clips), batch_size=BATCH_SIZES[0])
    for batch_size in BATCH_SIZES[1:]:
        again = embed_clips(embedder, list(clips), batch_size=batch_size)
        for layer in LAYERS:
            assert again[layer].tobytes() == reference[layer].tobytes(), (layer, batch_size)
    # Other company in the batch, other order: each clip's vector is unchanged.
    order = np.random.default_rng(1).permutation(N_CLIPS)
    mixed = np.concatenate([clips[order], _clips(x3d.spec, 4, seed=9)])
    shuffled = embed_clips(embedder, list(mixed), batch_size=5)
    for layer in LAYERS:
        assert shuffled[layer][:N_CLIPS].tobytes() == reference[layer][order].tobytes()


def _tcav_arrays(loaded, clips, batch_size: int) -> dict[str, bytes]:
    parts = [forward_backward(loaded, LAYERS, clips[i:i + batch_size], [0, 7])
             for i in range(0, len(clips), batch_size)]
    arrays = {f"act {n}": torch.cat([p.activations[n] for p in parts]) for n in LAYERS}
    arrays |= {f"grad {k}": torch.cat([p.gradients[k] for p in parts]) for k in parts[0].gradients}
    arrays["logits"] = torch.cat([p.logits for p in parts])
    return {k: v.numpy().tobytes() for k, v in arrays.items()}


def test_tcav_activations_gradients_and_logits_are_bit_identical_for_every_batch_size(x3d):
    clips = _clips(x3d.spec)
    reference = _tcav_arrays(x3d, clips, BATCH_SIZES[0])
    assert len(reference) == 2 + 4 + 1
    for batch_size in BATCH_SIZES[1:]:
        assert _tcav_arrays(x3d, clips, batch_size) == reference, batch_size


def test_processes_with_other_thread_counts_get_the_same_bytes(x3d):
    torch.set_num_threads(2)
    here = _digests(x3d, _clips(x3d.spec))
    script = textwrap.dedent(f"""
        import json, sys, torch
        torch.set_num_threads(int(sys.argv[1]))
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_determinism import _clips, _digests, _x3d
        m = _x3d()
        print(json.dumps(_digests(m, _clips(m.spec))))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for threads in (1, 3):
        out = subprocess.run([sys.executable, "-c", script, str(threads)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == here, f"{threads} threads"
    assert torch.get_num_threads() == 2  # the caller's thread count is left as it was


def test_clipwise_forward_leaves_the_callers_thread_count_and_runs_every_clip_alone(x3d):
    torch.set_num_threads(2)
    shapes = []
    with capture_layers(x3d.model, LAYERS[:1], stop_after_last=True) as capture:
        def one(part):
            shapes.append(part.shape[0])
            assert torch.get_num_threads() == 1
            with torch.inference_mode():
                return {"a": capture.forward(x3d.prepare(part)).layers[LAYERS[0]][0]}
        out = run_clipwise(one, _clips(x3d.spec, 5), x3d.device, workers=3)
    assert shapes == [1] * 5 and out["a"].shape[0] == 5
    assert torch.get_num_threads() == 2


def test_tcav_scores_do_not_depend_on_the_batch_size(tcav_toy, tmp_path):
    from tcav.experiment import TcavConfig, run_tcav
    from tcav.toy import toy_tcav_inputs

    inputs = toy_tcav_inputs(seed=0, n_concept=8, n_pool=20, n_class=6)
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=4, random_set_size=8, seed=1,
                        classifier="mean-diff")
    reports = [run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path / f"cache{b}", batch_size=b)
               for b in (1, 3, 7)]

    def signature(report):
        return [(r.concept, r.variant, r.layer, r.target, r.scores.tobytes(), r.magnitudes.tobytes(),
                 r.logit_changes.tobytes(), r.p_value) for r in report.results]

    assert signature(reports[0]) and all(signature(r) == signature(reports[0]) for r in reports[1:])


_FORKED: dict = {}  # what a forked child inherits (the model does not pickle)


def _first_layer_clipwise(loaded, clips) -> np.ndarray:
    with capture_layers(loaded.model, LAYERS[:1], stop_after_last=True) as capture:
        def one(part):
            with torch.inference_mode():
                return {"a": capture.forward(loaded.prepare(part)).layers[LAYERS[0]][0]}
        return run_clipwise(one, clips, loaded.device, workers=2)["a"].numpy()


def test_a_forked_child_runs_clipwise_forwards_with_its_own_threads(x3d):
    import multiprocessing

    clips = _clips(x3d.spec, 4)
    here = _first_layer_clipwise(x3d, clips)  # the parent's pool of 2 threads exists now
    _FORKED.update(loaded=x3d, clips=clips)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(_in_child).get(timeout=300)
    assert child.tobytes() == here.tobytes()


def _in_child() -> np.ndarray:
    torch.set_num_threads(1)  # the parent's OpenMP team does not survive a fork (libgomp)
    return _first_layer_clipwise(_FORKED["loaded"], _FORKED["clips"])


def test_stored_embeddings_are_the_same_bytes_for_every_batch_size(tmp_path):
    # float16 storage hides this CPU's last-bit differences (the tests above catch them);
    # on the Xeon of the issue the batched forward changed stored bytes too.
    from sqlalchemy import select

    from conceptgen.extract import ExtractConfig, extract
    from conceptgen.ingest import ingest
    from conceptgen.orm import Embedding, Tube, Video
    from conceptgen.synth import generate_synthetic_set
    from conceptgen.workspace import Workspace

    videos = generate_synthetic_set(tmp_path / "synth", n_videos=2, seed=4, num_frames=12, size=64)
    stored = {}
    for batch_size in (1, 3, 16):
        ws = Workspace.resolve(tmp_path / f"ws{batch_size}")
        ws.ensure_dirs()
        ingest(ws, [videos.root / "videos"])
        torch.manual_seed(0)  # x3d_xs's random weights: the same in every workspace
        extract(ws, ExtractConfig.from_options(model="x3d_xs", layers=LAYERS, seed=0), batch_size=batch_size)
        with ws.session() as s:
            stored[batch_size] = s.execute(
                select(Video.sha256, Tube.track_index, Embedding.layer, Embedding.vector)
                .join(Tube, Tube.video_id == Video.id).join(Embedding, Embedding.tube_id == Tube.id)
                .order_by(Video.sha256, Tube.track_index, Embedding.layer)).all()
        ws.close()
    assert len(stored[1]) >= 2 * len(LAYERS)
    assert stored[3] == stored[1] and stored[16] == stored[1]


@pytest.mark.parametrize("kind", ["videomae", "timesformer", "vivit"])
def test_transformer_token_layers_are_bit_identical_for_every_batch_size(kind, tmp_path):
    """The same contract for Hugging Face video transformers (tests/hf_tiny.py), whose
    token layers are read as (D, T, H, W): embeddings, activations and gradients."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests"))
    import hf_tiny

    loaded = load_model(hf_tiny.save(kind, tmp_path / kind))
    block = hf_tiny.BLOCKS[kind]
    clips = _clips(loaded.spec, 7)
    embedder = HookEmbedder(loaded, [block], pooling="time")
    reference = embed_clips(embedder, list(clips), batch_size=1)[block]
    assert reference.shape == (7, 32 * loaded.tokens.frames)
    for batch_size in (3, 7):
        assert embed_clips(embedder, list(clips), batch_size=batch_size)[block].tobytes() == reference.tobytes()
    arrays = []
    for batch_size in (1, 4):
        parts = [forward_backward(loaded, [block], clips[i:i + batch_size], [1]) for i in range(0, 7, batch_size)]
        arrays.append([torch.cat([p.activations[block] for p in parts]).numpy().tobytes(),
                       torch.cat([p.gradients[(block, 1)] for p in parts]).numpy().tobytes()])
    assert arrays[0] == arrays[1]
