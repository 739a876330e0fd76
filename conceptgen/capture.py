"""The one owner of layer capture: which tensors a layer's output is, how forward hooks
record them, and how clips go through the model so that what is recorded depends on
the clip alone.

One rule for outputs (:func:`output_tensors`): a layer's output is the tensors in it,
in order: a tensor alone, or the tensors of a tuple/list/dict, nested ones flattened
(SlowFast stages return ``[slow, fast]``). Each is then seen per clip
(:func:`layer_view`): a tensor that folds positions into the batch axis (B * k, ...)
is regrouped (B, k, ...), and on a model with a patch-token grid (conceptgen.tokens,
set by the registry) token tensors (B, N, D) become (B, D, T, H, W), the class tokens
set aside, so transformer blocks read like 3-D CNN layers. Gradients are taken with
respect to the tensors in the graph (``Captured.raw``) and seen the same way.
:func:`as_activation` turns a layer's tensors into one: a single tensor stays as it is
(B, C, T, H, W); several are flattened per sample and concatenated (B, D).
The model's output gives logits by conceptgen.model_io's rule (``Captured.logits``).

The determinism contract (:func:`run_clipwise`): on CPU every clip goes through the
model in its own forward of fixed shape (batch 1) on ONE intra-op thread, so neither
the batch size, the batch's other clips, the resume point nor the process's
``torch.set_num_threads`` can change its rounding (oneDNN picks different kernels and
reduction splits for other batch and thread counts). Throughput comes from running
``workers`` clips at once on Python threads (kernels release the GIL); each worker
thread sets its own OpenMP thread count to 1, which OpenMP keeps per thread, so the
caller's thread count is left as it was. The results are bit-identical on one machine
(one CPU instruction set and torch build), not across machines. On CUDA, clips go in
zero-padded forwards of a fixed :data:`CUDA_CLIPS_PER_FORWARD` clips with cuDNN's
deterministic algorithms and autotuning off, so every forward has the same shape.
"""
from __future__ import annotations

import difflib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from conceptgen.errors import ConceptgenError, LayerNotFoundError, ModelError
from conceptgen.model_io import forward_failure, require_logits
from conceptgen.tokens import TokenGrid, regroup, to_grid

CUDA_CLIPS_PER_FORWARD = 8
# Part of the identity of every stored embedding / cached activation: bump it when the
# way clips go through the model changes, so results made the old way are not mixed in.
FORWARD_CONTRACT = "clipwise-v1"
TORCHSCRIPT_REFUSAL = ("TorchScript cannot expose layer activations (PyTorch runs no forward "
                       "hooks inside it); load the network as Python code instead: `--model "
                       "package.module:function --model-kwargs JSON --weights state_dict.pt` "
                       "(or a model card), or pass the nn.Module to the library API")


# --------------------------------------------------------------------------- the output rule
def output_tensors(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a layer's output, in order (tuples, lists and dict values flattened)."""
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return tuple(t for item in output for t in output_tensors(item))
    return ()


def layer_view(t: torch.Tensor, batch: int, tokens: TokenGrid | None) -> torch.Tensor:
    """A captured tensor per clip: folded batches regrouped (B, k, ...); on a model with
    a token grid, tokens (B, N, D) of the grid's length as (B, D, T, H, W)."""
    t = regroup(t, batch)
    grid = to_grid(t, tokens) if tokens is not None else None
    return t if grid is None else grid


def as_activation(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor per layer: a single output as it is; several flattened per sample and
    concatenated, (B, D)."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat([t.flatten(1) for t in tensors], dim=1)


# --------------------------------------------------------------------------- hooks
class _StopForward(Exception):
    """Raised by the last hook so layers after the deepest captured one never run."""


@dataclass
class Captured:
    """One forward's record: ``layers[name]`` the tensors of that layer's first output
    seen per clip (:func:`layer_view`), in the order the layers finished; ``raw[name]``
    the same tensors as the model made them (the ones gradients are taken to);
    ``output`` the model's output (None when the forward stopped after the last
    captured layer)."""

    layers: dict[str, tuple[torch.Tensor, ...]]
    output: Any = None
    raw: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    @property
    def logits(self) -> torch.Tensor:
        """(B, classes) from ``output`` (conceptgen.model_io.logits_of); ModelError if none."""
        return require_logits(self.output)


def find_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at ``dotted``; raises LayerNotFoundError with close matches.
    (Here rather than in the registry, which imports this module: no import cycle.)"""
    modules = dict(model.named_modules())
    if dotted and dotted in modules:
        return modules[dotted]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(dotted, names, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else "run `conceptgen models --layers NAME`"
    raise LayerNotFoundError(f"layer {dotted!r} is not in the model; {hint}")


class LayerCapture:
    """Forward hooks on named layers, registered once by :func:`capture_layers`. Each
    thread's :meth:`forward` records into its own dict, so several threads may run the
    same model at once."""

    def __init__(self, model: nn.Module, layers: Sequence[str], *, stop_after_last: bool,
                 require_all: bool = True):
        if isinstance(model, torch.jit.ScriptModule):
            raise ModelError(TORCHSCRIPT_REFUSAL)
        self.model = model
        self.tokens: TokenGrid | None = getattr(model, "conceptgen_tokens", None)
        self.layers = tuple(dict.fromkeys(layers))
        self.stop_after_last, self.require_all = stop_after_last, require_all
        self._modules = {name: find_layer(model, name) for name in self.layers}
        scripted = [n for n, m in self._modules.items() if isinstance(m, torch.jit.ScriptModule)]
        if scripted:
            raise ModelError(f"layer {scripted[0]} is TorchScript: {TORCHSCRIPT_REFUSAL}")
        self._local = threading.local()
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            sink = getattr(self._local, "sink", None)
            if sink is None or name in sink:  # another caller's forward, or a second call
                return
            sink[name] = output_tensors(output)
            if self.stop_after_last and len(sink) == len(self.layers):
                raise _StopForward
        return hook

    def attach(self) -> None:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def forward(self, inputs) -> Captured:
        """Run the model on ``inputs`` (grad/autocast modes are the caller's) and return
        what the hooks saw. Raises ModelError when a layer never ran, or in one line
        (the model's own message and the likely fix) when the model's forward fails."""
        self._local.sink = sink = {}
        output = None
        try:
            output = self.model(inputs)
        except _StopForward:
            pass
        except (ConceptgenError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # raised inside the user's model
            raise forward_failure(err, getattr(self.model, "conceptgen_spec", None), inputs) from err
        finally:
            self._local.sink = None
        missing = [n for n in self.layers if n not in sink]
        if missing and self.require_all:
            raise ModelError(f"layer {missing[0]} did not run in the model's forward; choose another "
                             "(`conceptgen models --layers NAME`)")
        batch = len(inputs[0] if isinstance(inputs, (list, tuple)) else inputs)
        return Captured({n: self.view(ts, batch) for n, ts in sink.items()}, output, sink)

    def view(self, tensors: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
        """A layer's tensors (or their gradients) as :attr:`Captured.layers` shows them."""
        return tuple(layer_view(t, batch, self.tokens) for t in tensors)


@contextmanager
def capture_layers(model: nn.Module, layers: Sequence[str], *, stop_after_last: bool = False,
                   require_all: bool = True) -> Iterator[LayerCapture]:
    """Hooks on ``layers`` of ``model`` for the duration of the block; raises
    LayerNotFoundError for an unknown name and ModelError for TorchScript.
    ``stop_after_last``: the forward ends once every layer has run (no output).
    ``require_all=False``: a layer that never runs is left out instead of an error
    (probe forwards over every module)."""
    capture = LayerCapture(model, layers, stop_after_last=stop_after_last, require_all=require_all)
    capture.attach()
    try:
        yield capture
    finally:
        capture.detach()


# --------------------------------------------------------------------------- clip-wise forwards
def run_clipwise(fn: Callable[[np.ndarray], dict[Any, torch.Tensor]], clips: np.ndarray,
                 device: torch.device | str, *, workers: int | None = None) -> dict[Any, torch.Tensor]:
    """``fn(part)`` on fixed-shape parts of ``clips`` (B, ...), concatenated along the
    first axis: a function of each clip alone (see the module docstring). ``fn`` gets
    uint8 (n, T, S, S, 3) and returns {key: (n, ...) tensor}; it sets its own grad and
    autocast modes (both are per thread). ``workers``: concurrent clips on CPU
    (default: the caller's torch.get_num_threads())."""
    if torch.device(device).type == "cuda":
        return _cuda_chunks(fn, clips)
    workers = max(1, workers or torch.get_num_threads())
    singles = [clips[i:i + 1] for i in range(len(clips))]
    if workers == 1 or len(singles) == 1 or not _per_thread_omp():
        with _one_intraop_thread():
            parts = [fn(c) for c in singles]
    else:
        previous = torch.get_num_threads()
        try:
            parts = list(_executor(workers).map(functools.partial(_on_one_thread, fn), singles))
        finally:
            torch.set_num_threads(previous)  # a worker's first set_num_threads also set the default for new threads
    return _concat(parts)


def _on_one_thread(fn, clip):
    if torch.get_num_threads() != 1:  # per thread under OpenMP; set once per worker
        torch.set_num_threads(1)
    return fn(clip)


@contextmanager
def _one_intraop_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cuda_chunks(fn, clips: np.ndarray) -> dict[Any, torch.Tensor]:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    parts = []
    for start in range(0, len(clips), CUDA_CLIPS_PER_FORWARD):
        part = clips[start:start + CUDA_CLIPS_PER_FORWARD]
        n = len(part)
        if n < CUDA_CLIPS_PER_FORWARD:
            pad = np.zeros((CUDA_CLIPS_PER_FORWARD - n, *part.shape[1:]), part.dtype)
            part = np.concatenate([part, pad])
        parts.append({k: v[:n] for k, v in fn(part).items()})
    return _concat(parts)


def _concat(parts: list[dict[Any, torch.Tensor]]) -> dict[Any, torch.Tensor]:
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@functools.lru_cache(maxsize=1)
def _per_thread_omp() -> bool:
    """Whether torch's intra-op thread count is per thread (the OpenMP backend); other
    backends share one pool, so clips then run one after another instead."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()
# A forked child (annotator workers, multiprocessing) inherits the pools but not their
# threads: it must start its own.
os.register_at_fork(after_in_child=_EXECUTORS.clear)


def _executor(workers: int) -> ThreadPoolExecutor:
    with _EXECUTORS_LOCK:
        if workers not in _EXECUTORS:
            _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="conceptgen-clip")
        return _EXECUTORS[workers]
