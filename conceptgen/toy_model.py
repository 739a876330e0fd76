"""A toy video world and a tiny 3D CNN trained on it, for tests and quick checks
(``registry.PROJECT_BUILDERS`` names :func:`build_toy_network` as ``tcav_toy``;
``tcav.toy.toy_tcav_inputs`` makes TCAV inputs of this world).

Clips are T x S x S RGB uint8. The class of a clip is the direction in which a
bright square moves (``right`` or ``left``); a small static blob of random colour
and a noise background are added to every clip (class-independent distractors).

The network (:func:`build_toy_network`) is a small 3D CNN whose head is global
average pooling followed by a linear layer, the shape of most video classifiers:

    conv1 (3->8, stride 1x2x2) -> relu1 -> conv2 (8->16, stride 1x2x2) -> relu2
    -> pool (global average) -> flatten -> fc (16 -> 2)

so ``pool``/``flatten`` are degenerate TCAV layers and ``conv1``/``conv2`` are not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CLASSES = ("right", "left")


@dataclass(frozen=True)
class ToyWorld:
    num_frames: int = 8
    side: int = 32
    square: int = 8


def _background(rng: np.random.Generator, w: ToyWorld) -> np.ndarray:
    base = rng.integers(40, 110, size=3)
    noise = rng.integers(-25, 26, size=(w.side, w.side, 3))
    frame = np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.repeat(frame[None], w.num_frames, axis=0)


def _paint(clip: np.ndarray, xs: np.ndarray, y: int, size: int, colour) -> None:
    for t, x in enumerate(xs):
        clip[t, y:y + size, int(x):int(x) + size] = colour


def _track(rng: np.random.Generator, w: ToyWorld, direction: str) -> np.ndarray:
    span = w.side - w.square
    xs = np.linspace(0, span, w.num_frames).round().astype(int)
    return xs if direction == "right" else xs[::-1]


def moving_square_clip(rng: np.random.Generator, w: ToyWorld, direction: str, *,
                       background: bool = True, distractor: bool = True) -> np.ndarray:
    """(T, S, S, 3) uint8: a bright square crossing the frame in ``direction``
    (right | left | static), over noise, with a small static blob."""
    clip = _background(rng, w) if background else np.full((w.num_frames, w.side, w.side, 3), 128, np.uint8)
    if distractor:
        static_blob(clip, rng, w)
    colour = rng.integers(180, 256, size=3)
    y = int(rng.integers(0, w.side - w.square))
    xs = (_track(rng, w, direction) if direction in CLASSES
          else np.full(w.num_frames, int(rng.integers(0, w.side - w.square))))
    _paint(clip, xs, y, w.square, colour)
    return clip


def static_blob(clip: np.ndarray, rng: np.random.Generator, w: ToyWorld) -> np.ndarray:
    """Paints a 4-pixel static blob of random colour into ``clip`` in place."""
    x, y = rng.integers(0, w.side - 4, size=2)
    clip[:, y:y + 4, x:x + 4] = rng.integers(0, 256, size=3)
    return clip


def noise_clip(rng: np.random.Generator, w: ToyWorld) -> np.ndarray:
    """Pure noise, independent per frame: no object, no motion."""
    return rng.integers(0, 256, size=(w.num_frames, w.side, w.side, 3), dtype=np.uint8)


def class_clips(direction: str, n: int, seed: int, w: ToyWorld = ToyWorld()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([moving_square_clip(rng, w, direction) for _ in range(n)])


def build_toy_network(num_classes: int = 2) -> nn.Sequential:
    from collections import OrderedDict

    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool3d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(16, num_classes)),
    ]))


def train_toy_model(*, seed: int = 0, n_per_class: int = 32, epochs: int = 12, w: ToyWorld = ToyWorld()):
    """A :class:`conceptgen.registry.LoadedModel` of the toy network trained to tell
    right from left (CPU, a few seconds). Returns (loaded, training accuracy)."""
    from conceptgen.registry import InputSpec, LoadedModel, model_fingerprint

    torch.manual_seed(seed)
    model = build_toy_network(len(CLASSES))
    spec = InputSpec(num_frames=w.num_frames, side=w.side, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    loaded = LoadedModel(name="toy", model=model, spec=spec, class_names=list(CLASSES),
                         fingerprint="", device=torch.device("cpu"))
    clips = np.concatenate([class_clips(c, n_per_class, seed * 10 + i, w) for i, c in enumerate(CLASSES)])
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    x = loaded.prepare(clips)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(16):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), labels[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    loaded.fingerprint = model_fingerprint(model)
    return loaded, accuracy
