"""Embedding: hooks capture several layers in one forward, pooling shapes, streaming
batches, compact storage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conceptgen.embed import (Embedder, HookEmbedder, batched, blob_to_vector, embed_clips, pool_activation,
                              vector_to_blob)
from conceptgen.errors import ConfigError, IntegrityError, LayerNotFoundError
from conceptgen.registry import InputSpec, LoadedModel, model_fingerprint

torch.set_num_threads(2)


class CountingIdentity(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def tiny_loaded(seed=0) -> LoadedModel:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv3d(3, 4, 3, padding=1))
    model.add_module("block", nn.Sequential(nn.ReLU(), nn.Conv3d(4, 6, 3, stride=2, padding=1)))
    model.add_module("tail", CountingIdentity())
    model.add_module("pool", nn.AdaptiveAvgPool3d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(6, 3))
    model.eval()
    spec = InputSpec(num_frames=4, side=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return LoadedModel(name="tiny", model=model, spec=spec, class_names=["a", "b", "c"],
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"))


def clips(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 16, 16, 3), dtype=np.uint8)


def test_pooling_shapes():
    act = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    mean = pool_activation(act, "mean")
    assert mean.shape == (2, 3)
    torch.testing.assert_close(mean, act.mean(dim=(2, 3, 4)))
    timed = pool_activation(act, "time")
    assert timed.shape == (2, 3 * 4)
    torch.testing.assert_close(timed.reshape(2, 3, 4).mean(-1), mean)
    assert pool_activation(torch.ones(2, 7), "time").shape == (2, 7)
    assert pool_activation([act, act[:, :, :2]], "mean").shape == (2, 6)
    with pytest.raises(ConfigError, match="pooling"):
        pool_activation(act, "max")


def test_hooks_capture_every_layer_in_one_forward_and_match_a_manual_pass():
    loaded = tiny_loaded()
    embedder = HookEmbedder(loaded, ["stem", "block.1", "head"], pooling="mean")
    batch = clips(3)
    out = embedder.embed(batch)
    assert {k: v.shape for k, v in out.items()} == {"stem": (3, 4), "block.1": (3, 6), "head": (3, 3)}
    with torch.no_grad():
        x = loaded.prepare(batch)
        stem = loaded.model.stem(x)
        block = loaded.model.block(stem)
        logits = loaded.model(x)
    np.testing.assert_allclose(out["stem"], stem.mean(dim=(2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["block.1"], block.mean(dim=(2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["head"], logits.numpy(), rtol=1e-5, atol=1e-6)


def test_forward_stops_after_the_deepest_captured_layer():
    loaded = tiny_loaded()
    HookEmbedder(loaded, ["block.1"]).embed(clips(2))
    assert loaded.model.tail.calls == 0
    HookEmbedder(loaded, ["tail"]).embed(clips(2))
    assert loaded.model.tail.calls == 2  # one forward per clip
    assert not loaded.model.tail._forward_hooks  # hooks are removed afterwards


def test_batch_size_does_not_change_embeddings():
    loaded = tiny_loaded()
    embedder = HookEmbedder(loaded, ["block.1"], pooling="time")
    data = clips(7, seed=2)
    a = embed_clips(embedder, iter(data), batch_size=7)["block.1"]
    b = embed_clips(embedder, iter(data), batch_size=3)["block.1"]
    assert a.shape == (7, 6 * 2)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_embedding_streams_one_batch_at_a_time():
    class Recording(Embedder):
        layers, pooling = ("x",), "mean"

        def __init__(self):
            self.produced_at_call = []

        def embed(self, batch):
            self.produced_at_call.append(produced[0])
            return {"x": batch.reshape(len(batch), -1)[:, :2].astype(np.float32)}

    produced = [0]

    def stream():
        for clip in clips(10):
            produced[0] += 1
            yield clip

    rec = Recording()
    out = embed_clips(rec, stream(), batch_size=4)
    assert rec.produced_at_call == [4, 8, 10]  # never more than one batch rendered ahead
    assert out["x"].shape == (10, 2)
    np.testing.assert_array_equal(out["x"], clips(10).reshape(10, -1)[:, :2])


def test_bad_options_give_clear_errors():
    loaded = tiny_loaded()
    with pytest.raises(ConfigError, match="--amp needs --device cuda"):
        HookEmbedder(loaded, ["stem"], amp=True)
    with pytest.raises(LayerNotFoundError, match="stem"):
        HookEmbedder(loaded, ["stme"])
    with pytest.raises(ConfigError, match="batch-size"):
        list(batched(range(3), 0))


def test_vectors_round_trip_through_float16_blobs():
    vec = np.random.default_rng(0).normal(size=128).astype(np.float32)
    blob = vector_to_blob(vec)
    assert len(blob) == 2 * 128
    back = blob_to_vector(blob, "float16", 128)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, vec, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(blob_to_vector(vector_to_blob(vec, "float32"), "float32", 128), vec)
    with pytest.raises(IntegrityError):
        blob_to_vector(blob, "float16", 64)
