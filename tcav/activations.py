"""The one owner of TCAV's activation and gradient cache.

Layout: one SQLite file, ``WORKSPACE/cache/tcav/activations.sqlite``, holding one
array per (example, layer, kind[, target class]) under ``key``, the sha256 of

    model weights fingerprint (hashed from the live state_dict, not a name),
    model input spec, layer, example content key, render mode, dtype,
    kind ("act" or "grad") and target class index.

A changed weight, layer, clip or render mode therefore hashes to a different
key, so a stale entry is impossible by construction. Each batch is written in one
transaction, so an interrupted run resumes where it stopped and never duplicates
work. (One file per array was the first layout: with a small model, writing ~15
files per class example cost more than the model's own forward and backward.)

All requested layers come from ONE forward per clip (forward hooks, each clip in
its own fixed-shape forward: see conceptgen.capture) and ONE backward per target
class (``torch.autograd.grad`` w.r.t. every hooked output at once). Work stays on the model's device; AMP (float16 autocast) is opt-in and
CUDA-only.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from conceptgen.capture import FORWARD_CONTRACT
from conceptgen.embed import batched
from conceptgen.errors import ConceptgenError, ConfigError, DataError
from conceptgen.hashing import sha256_json
from conceptgen.progress import progress

STORAGE_DTYPES = ("float32", "float16")
CACHE_FILE = "activations.sqlite"
PAGE_SIZE = 65536   # bytes, SQLite's largest


class ClipExample(Protocol):
    """What the store needs from an example: a content ``key`` (sha256 of the clip's
    source bytes and how it was cut), its ``render_mode`` and ``load()`` ->
    uint8 (T, S, S, 3) at the model's input spec."""

    key: str
    render_mode: str

    def load(self) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchOutputs:
    """One batch's layer outputs: ``activations[layer]`` (B, *shape),
    ``gradients[(layer, target)]`` (B, *shape) = d logit_target / d activation, and
    ``logits`` (B, n_classes). A layer with several output tensors (SlowFast) gives them
    flattened and concatenated, (B, D) (conceptgen.capture.as_activation)."""

    activations: dict[str, torch.Tensor]
    gradients: dict[tuple[str, int], torch.Tensor]
    logits: torch.Tensor


def forward_backward(loaded, layers: Sequence[str], clips: np.ndarray,
                     targets: Sequence[int], *, amp: bool = False) -> BatchOutputs:
    """Per clip, one forward with hooks on every layer and, per target class, one
    backward to all of them (conceptgen.capture.run_clipwise: each clip's arrays do not
    depend on the batch). ``clips`` uint8 (B, T, S, S, 3); ``layers`` dotted names."""
    from conceptgen.capture import as_activation, capture_layers, run_clipwise

    names = list(dict.fromkeys(layers))
    device_type = torch.device(loaded.device).type

    def one(part: np.ndarray) -> dict:
        with torch.set_grad_enabled(bool(targets)), \
                torch.autocast(device_type, dtype=torch.float16, enabled=amp):
            captured = capture.forward(loaded.prepare(part))
        out = {("act", n): as_activation(captured.layers[n]).detach() for n in names}
        logits = captured.logits
        out["logits"] = logits.detach().float()
        for i, target in enumerate(targets):
            # Examples are independent in eval mode, so the gradient of the summed
            # logit w.r.t. each example's activation is that example's gradient.
            # Taken to the tensors in the graph, then seen as the activations are.
            tensors = [t for n in names for t in captured.raw[n]]
            grads = torch.autograd.grad(logits[:, target].float().sum(), tensors,
                                        retain_graph=i < len(targets) - 1, allow_unused=True)
            grads = iter(torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors, grads))
            for n in names:
                raw = [next(grads) for _ in captured.raw[n]]
                out[("grad", n, target)] = as_activation(capture.view(raw, len(part)))
        return out

    with capture_layers(loaded.model, names) as capture:
        out = run_clipwise(one, clips, loaded.device)
    return BatchOutputs({n: out[("act", n)] for n in names},
                        {(n, t): out[("grad", n, t)] for n in names for t in targets}, out["logits"])


class BatchForward:
    """A worker's step of :meth:`ActivationStore.ensure`: ``(index, clips)`` ->
    ``(index, {(layer, kind, target): array (B, *shape) in the storage dtype})``.
    Built once per worker over its model, in this process or on a Ray actor."""

    def __init__(self, layers: Sequence[str], targets: Sequence[int], amp: bool, dtype: str, loaded):
        self.loaded, self.layers, self.targets, self.amp, self.dtype = loaded, list(layers), list(targets), amp, dtype

    def __call__(self, item: tuple[int, np.ndarray]) -> tuple[int, dict[tuple[str, str, int | None], np.ndarray]]:
        index, clips = item
        out = forward_backward(self.loaded, self.layers, clips, self.targets, amp=self.amp)
        tensors = {(layer, "act", None): out.activations[layer] for layer in self.layers}
        tensors.update({(layer, "grad", t): out.gradients[(layer, t)] for layer in self.layers for t in self.targets})
        return index, {what: t.float().cpu().numpy().astype(self.dtype, copy=False) for what, t in tensors.items()}


class BlobCache:
    """key -> numpy array in one SQLite file (WAL, safe across processes).
    ``put_many`` writes a whole batch in one transaction: all or nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        # Arrays are tens of KB: large pages and a rowid table (blobs out of the key's
        # B-tree) halve the write cost. Both only take effect when the file is created;
        # a file made with other settings keeps working as it is.
        self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS arrays (key TEXT PRIMARY KEY, dtype TEXT NOT NULL, "
                         "shape TEXT NOT NULL, data BLOB NOT NULL)")
        self._db.commit()

    def _select(self, columns: str, keys: Sequence[str]):
        """Rows of ``columns`` for the distinct ``keys`` that exist, in chunks SQLite accepts."""
        for chunk in batched(list(dict.fromkeys(keys)), 500):
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(f"SELECT {columns} FROM arrays WHERE key IN ({marks})", chunk)

    def present(self, keys: Sequence[str]) -> set[str]:
        return {k for (k,) in self._select("key", keys)}

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [(k, a.dtype.str, ",".join(map(str, a.shape)), np.ascontiguousarray(a).tobytes())
                for k, a in items]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?)", rows)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray]:
        """Arrays in the order of ``keys``; KeyError names the first missing one."""
        found = {k: np.frombuffer(data, dtype=np.dtype(dtype)).reshape(tuple(int(d) for d in shape.split(",") if d))
                 for k, dtype, shape, data in self._select("key, dtype, shape, data", keys)}
        missing = [k for k in keys if k not in found]
        if missing:
            raise KeyError(missing[0])
        return [found[k] for k in keys]


class ActivationStore:
    """Activations and class-logit gradients of examples at some layers of one model.

    ``loaded`` is a :class:`conceptgen.registry.LoadedModel` (``model``, ``spec``,
    ``prepare``, ``device``). ``layers`` are dotted module names. ``executor``
    (conceptgen.executors) runs the forward/backward batches: in this process by
    default, or on Ray workers for large concept and class sets; clips are decoded
    here and every result is written here, batch by batch, as it arrives."""

    def __init__(self, cache_dir: str | Path, loaded, layers: Sequence[str], *, amp: bool = False,
                 dtype: str = "float32", batch_size: int = 8, executor=None):
        from conceptgen.capture import LayerCapture
        from conceptgen.executors import InProcessExecutor
        from conceptgen.registry import model_fingerprint  # keeps model zoo imports lazy

        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"unknown cache dtype {dtype!r}: use one of {', '.join(STORAGE_DTYPES)}")
        if amp and torch.device(loaded.device).type != "cuda":
            raise ConfigError("--amp needs --device cuda: drop --amp on CPU")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.root = Path(cache_dir)
        self.loaded = loaded
        self.layers = list(dict.fromkeys(layers))
        LayerCapture(loaded.model, self.layers, stop_after_last=False)  # fail fast on names and TorchScript
        self.amp, self.dtype, self.batch_size = amp, dtype, batch_size
        # Hashed from the live weights, not trusted from a name or an earlier load.
        self.fingerprint = model_fingerprint(loaded.model)
        self._spec = repr(loaded.spec)
        self.computed = 0  # examples run through the model by this store (cache misses)
        self.failed: dict[str, str] = {}  # example key -> "origin: reason" (skipped, not fatal)
        self.cache = BlobCache(self.root / CACHE_FILE)
        self.executor = executor or InProcessExecutor()

    # --- keys ---------------------------------------------------------------
    def _key(self, example: ClipExample, layer: str, kind: str, target: int | None) -> str:
        return sha256_json({"model": self.fingerprint, "spec": self._spec, "layer": layer,
                            "forward": FORWARD_CONTRACT,
                            "example": example.key, "render": example.render_mode,
                            "dtype": self.dtype, "amp": self.amp, "kind": kind, "target": target})

    def _keys(self, example, targets) -> dict[tuple[str, str, int | None], str]:
        """Every array ``ensure`` writes for ``example``: (layer, kind, target) -> key."""
        wanted = [(layer, "act", None) for layer in self.layers]
        wanted += [(layer, "grad", t) for layer in self.layers for t in targets]
        return {w: self._key(example, *w) for w in wanted}

    # --- computing ----------------------------------------------------------
    def ensure(self, examples: Sequence[ClipExample], targets: Sequence[int] = (), *,
               desc: str = "activations") -> None:
        """Computes and writes whatever is missing, batch by batch (resumable)."""
        targets = sorted(set(int(t) for t in targets))
        unique = [e for e in dict(((e.key, e.render_mode), e) for e in examples).values() if e.key not in self.failed]
        keys = {(e.key, e.render_mode): self._keys(e, targets) for e in unique}
        present = self.cache.present([k for ks in keys.values() for k in ks.values()])
        missing = [e for e in unique if not all(k in present for k in keys[e.key, e.render_mode].values())]
        if not missing:
            return
        batches = list(batched(missing, self.batch_size))
        kept: dict[int, list] = {}

        def decoded():  # lazily: only the batches in flight are held in memory
            for index, batch in enumerate(batches):
                clips, kept[index] = self._load_batch(batch)
                if kept[index]:
                    yield index, clips

        work = partial(BatchForward, self.layers, targets, self.amp, self.dtype)
        results = self.executor.map_unordered(work, self.loaded, decoded())
        for _item, (index, arrays) in progress(results, total=len(batches), desc=desc, unit="batch"):
            batch = kept.pop(index)
            self.cache.put_many([(keys[e.key, e.render_mode][what], values[i])
                                 for what, values in arrays.items() for i, e in enumerate(batch)])
            self.computed += len(batch)

    def _load_batch(self, batch):
        """Decoded clips of a batch; a clip that fails is recorded in ``failed`` and skipped."""
        clips, kept = [], []
        for example in batch:
            try:
                clips.append(_checked_clip(example, self.loaded.spec))
                kept.append(example)
            except ConceptgenError as err:
                reason = str(err)
                self.failed[example.key] = reason if example.origin in reason else f"{example.origin}: {reason}"
        return (np.stack(clips) if clips else None), kept

    # --- reading ------------------------------------------------------------
    def activations(self, examples: Sequence[ClipExample], layer: str) -> np.ndarray:
        """(N, D) float32 flattened activations (computed if missing)."""
        keys = [self._key(e, layer, "act", None) for e in examples]
        return self._read(keys, lambda: self.ensure(examples)).reshape(len(examples), -1)

    def gradients(self, examples: Sequence[ClipExample], layer: str, target: int) -> np.ndarray:
        """(N, *layer shape) float32 gradients of logit ``target`` (computed if missing)."""
        keys = [self._key(e, layer, "grad", int(target)) for e in examples]
        return self._read(keys, lambda: self.ensure(examples, [target]))

    def _read(self, keys: list[str], compute) -> np.ndarray:
        """The arrays under ``keys``, stacked as float32; ``compute()`` first fills a miss."""
        if not keys:
            return np.zeros((0,), np.float32)
        try:
            arrays = self.cache.get_many(keys)
        except KeyError:
            compute()
            arrays = self.cache.get_many(keys)
        return np.stack(arrays).astype(np.float32)


def _checked_clip(example: ClipExample, spec) -> np.ndarray:
    clip = example.load()
    want = (spec.num_frames, spec.side, spec.side, 3)
    if clip.shape != want or clip.dtype != np.uint8:
        raise DataError(f"example {example.key[:12]} loads as {clip.shape} {clip.dtype}, "
                        f"not {want} uint8: re-render it at the model's input spec")
    return clip

