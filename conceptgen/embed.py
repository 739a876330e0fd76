"""Embed tube clips with the model under study: activations at one or more layers,
captured by forward hooks (conceptgen.capture) in one forward per clip, pooled to one
vector per clip. A clip's vector is bit-identical whatever batch it came in.

Pooling (activation (B, C, T, H, W) -> vector):
  ``mean``  spatiotemporal mean -> (B, C)
  ``time``  mean over space keeping time -> (B, C * T), flattened channel-major
An activation that is already (B, C) (after global pooling) is kept as is; a
slowfast layer returning [slow, fast] is pooled per pathway and concatenated.

This module owns the embedding storage format: float16 little-endian blobs in
``Embedding.vector`` with ``dim`` and ``dtype`` alongside.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from conceptgen.errors import ConfigError, IntegrityError
from conceptgen.malloc_tuning import keep_freed_memory
from conceptgen.orm import Embedding, Tube

POOLINGS = ("mean", "time")
STORAGE_DTYPE = "float16"


# --- storage ------------------------------------------------------------------
def vector_to_blob(vector: np.ndarray, dtype: str = STORAGE_DTYPE) -> bytes:
    """(D,) float -> little-endian bytes of ``dtype`` (float16 or float32)."""
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"unknown embedding dtype {dtype!r}; use float16 or float32")
    return np.asarray(vector, dtype=np.dtype(dtype).newbyteorder("<")).ravel().tobytes()


def blob_to_vector(blob: bytes, dtype: str, dim: int) -> np.ndarray:
    """Inverse of :func:`vector_to_blob`, widened to float32 (D,)."""
    vec = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"))
    if vec.size != dim:
        raise IntegrityError(f"stored embedding has {vec.size} values but dim={dim}; re-run extract")
    return vec.astype(np.float32)


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Embeddings of a run at one (layer, pooling, render_mode): rows ordered by tube id.
    tube_ids (N,) int64; video_ids (N,) int64; vectors (N, D) float32."""

    tube_ids: np.ndarray
    video_ids: np.ndarray
    vectors: np.ndarray


def load_embeddings(session: Session, run_id: int, *, layer: str, pooling: str, render_mode: str,
                    tube_ids: Sequence[int] | None = None) -> EmbeddingMatrix:
    """Read stored embeddings (optionally only ``tube_ids``) as a float32 matrix."""
    q = (select(Tube.id, Tube.video_id, Embedding.vector, Embedding.dtype, Embedding.dim)
         .join(Embedding, Embedding.tube_id == Tube.id)
         .where(Tube.run_id == run_id, Embedding.layer == layer, Embedding.pooling == pooling,
                Embedding.render_mode == render_mode)
         .order_by(Tube.id))
    if tube_ids is not None:
        q = q.where(Tube.id.in_([int(t) for t in tube_ids]))
    rows = session.execute(q).all()
    if not rows:
        return EmbeddingMatrix(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    vectors = np.stack([blob_to_vector(r.vector, r.dtype, r.dim) for r in rows])
    return EmbeddingMatrix(np.array([r.id for r in rows], np.int64),
                           np.array([r.video_id for r in rows], np.int64), vectors)


# --- pooling (pure) -----------------------------------------------------------
def pool_activation(act, pooling: str) -> torch.Tensor:
    """Activation -> (B, D) float32. act: (B, C, T, H, W), (B, C, H, W), (B, C) or a
    list/tuple of those (slowfast pathways, pooled each and concatenated)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if isinstance(act, (list, tuple)):
        return torch.cat([pool_activation(a, pooling) for a in act], dim=1)
    act = act.float()
    if act.dim() == 2:
        return act
    if act.dim() == 4:  # (B, C, H, W): no time axis
        return act.mean(dim=(2, 3))
    if act.dim() != 5:
        return act.flatten(1)
    if pooling == "mean":
        return act.mean(dim=(2, 3, 4))
    return act.mean(dim=(3, 4)).flatten(1)


# --- embedders ----------------------------------------------------------------
class Embedder(ABC):
    """Turns a batch of rendered clips into one vector per clip per layer."""

    layers: tuple[str, ...]
    pooling: str

    @abstractmethod
    def embed(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        """clips (B, T, S, S, 3) uint8 at the model's input size -> {layer: (B, D) float32}."""


class HookEmbedder(Embedder):
    """The default: forward hooks on a registry model's layers (conceptgen.capture),
    each clip in its own fixed-shape forward, so a clip's vector does not depend on the
    batch it came in (see conceptgen.capture.run_clipwise).

    ``amp`` runs the forward under CUDA autocast (float16); it is refused on CPU."""

    def __init__(self, loaded, layers: Sequence[str], *, pooling: str = "mean", amp: bool = False):
        from conceptgen.capture import LayerCapture  # registry imports torch models; keep it lazy

        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if not layers:
            raise ConfigError("no layers given; pass --layers NAME[,NAME...]")
        if amp and torch.device(loaded.device).type != "cuda":
            raise ConfigError("--amp needs --device cuda; drop --amp on CPU")
        keep_freed_memory()  # a forward per clip: no page faults per forward
        self.loaded = loaded
        self.layers = tuple(layers)
        self.pooling = pooling
        self.amp = amp
        LayerCapture(loaded.model, self.layers, stop_after_last=True)  # fail fast on names and TorchScript

    def embed(self, clips: np.ndarray) -> dict[str, np.ndarray]:
        from conceptgen.capture import capture_layers, run_clipwise

        def pooled(part: np.ndarray) -> dict[str, torch.Tensor]:
            with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                captured = capture.forward(self.loaded.prepare(part))
                return {n: pool_activation(captured.layers[n], self.pooling).cpu() for n in self.layers}

        with capture_layers(self.loaded.model, self.layers, stop_after_last=True) as capture:
            vectors = run_clipwise(pooled, clips, self.loaded.device)
        return {name: vectors[name].numpy().astype(np.float32) for name in self.layers}


def batched(items: Iterable, batch_size: int) -> Iterator[list]:
    """Consecutive lists of at most ``batch_size`` items (streaming)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_clips(embedder: Embedder, clips: Iterable[np.ndarray], *, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Embed a stream of clips (each (T, S, S, 3) uint8) batch by batch; only one
    batch of clips is held at a time. -> {layer: (N, D) float32}."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in embedder.layers}
    for batch in batched(clips, batch_size):
        for name, vecs in embedder.embed(np.stack(batch)).items():
            out[name].append(vecs)
    return {name: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for name, v in out.items()}
