"""The CUDA path (``--device cuda``, ``--amp``) gives what the CPU path gives.

Every test here needs an NVIDIA GPU and is skipped without one (CI has none); on a GPU
machine run ``pytest tests/test_gpu.py``. The CPU path is what the rest of the suite tests.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from conceptgen.demo_model import DEMO_SPEC
from conceptgen.embed import HookEmbedder, embed_clips
from conceptgen.extract import ExtractConfig, extract
from conceptgen.ingest import ingest
from conceptgen.orm import Tube
from conceptgen.registry import LoadedModel
from conceptgen.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from embedding import load_demo  # noqa: E402  (benchmarks/embedding.py: the demo network, random weights)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


def _on(loaded: LoadedModel, device: str) -> LoadedModel:
    return replace(loaded, model=copy.deepcopy(loaded.model).to(device), device=torch.device(device))


def test_hook_embeddings_on_cuda_equal_cpu_and_amp_stays_close():
    cpu = load_demo(None)
    clips = np.random.default_rng(0).integers(0, 256, (12, DEMO_SPEC.num_frames, DEMO_SPEC.side, DEMO_SPEC.side, 3),
                                              dtype=np.uint8)
    layers = ("stage2", "stage3")
    on_cpu = HookEmbedder(cpu, layers).embed(clips)
    on_gpu = HookEmbedder(_on(cpu, "cuda"), layers).embed(clips)
    with_amp = HookEmbedder(_on(cpu, "cuda"), layers, amp=True).embed(clips)
    for layer in layers:
        assert on_gpu[layer].dtype == np.float32 and on_gpu[layer].shape == on_cpu[layer].shape
        np.testing.assert_allclose(on_gpu[layer], on_cpu[layer], rtol=1e-3, atol=1e-4)
        a, b = with_amp[layer], on_cpu[layer]
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.999


def test_cuda_embeddings_and_tcav_arrays_do_not_depend_on_the_batch_size():
    from tcav.activations import forward_backward

    gpu = _on(load_demo(None), "cuda")
    clips = np.random.default_rng(1).integers(0, 256, (13, DEMO_SPEC.num_frames, DEMO_SPEC.side, DEMO_SPEC.side, 3),
                                              dtype=np.uint8)
    embedder = HookEmbedder(gpu, ("stage2", "stage3"))
    reference = embed_clips(embedder, list(clips), batch_size=1)
    grads = {}
    for batch_size in (1, 2, 5, 16):
        again = embed_clips(embedder, list(clips), batch_size=batch_size)
        assert all(again[k].tobytes() == reference[k].tobytes() for k in reference), batch_size
        parts = [forward_backward(gpu, ["stage2"], clips[i:i + batch_size], [1]) for i in range(0, 13, batch_size)]
        grads[batch_size] = torch.cat([p.gradients[("stage2", 1)] for p in parts]).cpu().numpy().tobytes()
    assert len(set(grads.values())) == 1


def test_extract_on_cuda_finds_the_cpu_tubes_with_matching_embeddings(tmp_path):
    from conceptgen.embed import blob_to_vector
    from conceptgen.synth import generate_synthetic_set

    videos = generate_synthetic_set(tmp_path / "synth", n_videos=3, seed=5, num_frames=16, size=64)
    tubes = []
    for i, device in enumerate(("cpu", "cuda")):
        ws = Workspace.resolve(tmp_path / f"workspace{i}")
        ws.ensure_dirs()
        ingest(ws, [videos.root])
        torch.manual_seed(0)  # x3d_xs with random weights: the same weights on both devices
        report = extract(ws, ExtractConfig(model="x3d_xs", segmenters="motion"), device=device)
        assert report.n_failed == 0 and report.n_tubes > 0
        with ws.session() as s:
            tubes.append([(t.frame_indices, t.boxes, [blob_to_vector(e.vector, e.dtype, e.dim) for e in
                                                        sorted(t.embeddings, key=lambda e: e.layer)])
                          for t in s.scalars(select(Tube).order_by(Tube.video_id, Tube.track_index))])
    on_cpu, on_gpu = tubes
    assert [t[:2] for t in on_gpu] == [t[:2] for t in on_cpu]  # segmentation runs on the CPU
    for (_, _, gpu), (_, _, cpu) in zip(on_gpu, on_cpu):
        for g, c in zip(gpu, cpu):
            np.testing.assert_allclose(g, c, rtol=2e-2, atol=2e-3)  # float16 storage


def test_tcav_on_cuda_gives_the_cpu_scores(tcav_toy, tmp_path):
    from tcav.experiment import TcavConfig, run_tcav
    from tcav.toy import toy_tcav_inputs

    inputs = toy_tcav_inputs(seed=0)
    config = TcavConfig(layers=("conv2",), targets=("right",), random_sets=6, seed=3, classifier="mean-diff")
    cpu = run_tcav(tcav_toy, inputs, config, cache_dir=tmp_path / "cache0")
    gpu = run_tcav(_on(tcav_toy, "cuda"), inputs, config, cache_dir=tmp_path / "cache1")
    assert len(gpu.results) == len(cpu.results) > 0
    for g, c in zip(gpu.results, cpu.results):
        assert (g.concept, g.variant, g.layer, g.target) == (c.concept, c.variant, c.layer, c.target)
        np.testing.assert_allclose(g.scores, c.scores, atol=0.1)  # a sign may flip at |gradient . CAV| ~ 0
        np.testing.assert_allclose(g.logit_changes, c.logit_changes, rtol=1e-3, atol=1e-4)
        assert g.significant == c.significant


def test_sam_runs_on_cuda():
    from conceptgen.segment import SamSegmenter
    from test_segment import panning_scene, tiny_sam

    frames, _ = panning_scene()
    segmenter = SamSegmenter(model_factory=tiny_sam, keyframe_every=4, points_per_side=4, min_area_frac=0.0,
                             max_area_frac=1.0, device="cuda",
                             generator_kwargs=dict(pred_iou_thresh=0.0, stability_score_thresh=0.0))
    detections = segmenter.segment(frames[:6])
    assert next(segmenter._generator.predictor.model.parameters()).device.type == "cuda"
    produced = [d for t in (0, 4, 5) for d in detections[t]]
    assert produced and all(d.mask.shape == frames.shape[1:3] and d.mask.dtype == bool for d in produced)
