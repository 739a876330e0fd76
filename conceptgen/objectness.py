"""Objectness: is a tube a thing (a person, a hand, a ball, a cup) or background
(a wall, a floor, water, grass, sky)?

Real scenes are mostly background, and region segmenters cut it into as many tubes as
the things in front of it. Background regions share a look: they are large, they run
off the frame's edges, they do not move against the scene, and their edges are weak.
Things are small enough to fit in the frame, move at some point (people, hands, handled
objects) or at least stand out from their surroundings. Per tube, from its masks and
the camera-compensated optical flow:

  * ``motion``: how much faster the tube moves than the frame's typical pixel (the
    median), in pixels per frame after removing the camera's motion; the 90th percentile
    over its frames (a cup that is picked up once is a moving thing). Dense flow smooths
    motion 10 px and more into the surroundings, so a ring around the region is no
    reference;
  * ``area``: mean mask area, fraction of the frame;
  * ``border_sides``: mean number of frame sides (0-4) the mask touches;
  * ``contrast``: boundary contrast (the tube's detection score, in [0, 1]).

``objectness = size x edges x (0.6 moving + 0.4 contrast)``, each term in [0, 1] (see
:class:`ObjectnessRule`); a tube under ``rule.threshold`` (0.25) is tagged background, so a
region that never moves needs strong edges (contrast >= 0.625) to stay a candidate. The
weights were chosen on the labelled real clips (benchmarks/real_discovery.py): of max(moving,
contrast), 0.5/0.5, 0.6/0.4, 0.7/0.3 and 0.8/0.2 at thresholds 0.2-0.3, 0.6/0.4 at 0.25 halved
the background among candidates (0.20 -> 0.11) and kept 86 % of the tubes on labelled
objects; contrast alone does not tell them apart (median 0.39 on objects, 0.37-0.43 off). Tagged
tubes are stored and previewed like any other, but clustering leaves them out unless
asked (``conceptgen cluster --include-background``). Pure: arrays in, numbers out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from conceptgen.segment import Tick, camera_motion

__all__ = ["ObjectnessRule", "TubeObjectness", "residual_motion", "tube_objectness", "score_tubes"]


@dataclass(frozen=True)
class ObjectnessRule:
    """The terms of the objectness score (units: pixels/frame at the processing size,
    fractions of the frame)."""

    motion_scale: float = 0.5  # moving = 1 - exp(-motion / motion_scale)
    small_area: float = 0.05  # size = 1 up to this area ...
    large_area: float = 0.30  # ... falling linearly to 0 here
    free_sides: float = 1.0  # edges = 1 up to this many touched sides ...
    closed_sides: float = 3.0  # ... falling linearly to 0 here
    motion_weight: float = 0.6  # the rest goes to contrast
    threshold: float = 0.25  # below: background

    def score(self, motion: float, area: float, border_sides: float, contrast: float) -> float:
        moving = 1.0 - float(np.exp(-max(motion, 0.0) / self.motion_scale))
        size = float(np.clip((self.large_area - area) / (self.large_area - self.small_area), 0.0, 1.0))
        edges = float(np.clip((self.closed_sides - border_sides) / (self.closed_sides - self.free_sides), 0.0, 1.0))
        stands_out = self.motion_weight * moving + (1.0 - self.motion_weight) * float(np.clip(contrast, 0.0, 1.0))
        return size * edges * stands_out


@dataclass(frozen=True)
class TubeObjectness:
    motion: float
    area: float
    border_sides: float
    contrast: float
    objectness: float
    background: bool


def residual_motion(flows: np.ndarray, *, seed: int = 0, tick: Tick | None = None) -> np.ndarray:
    """Speed not explained by the camera: ``flows`` ``(T-1, H, W, 2)`` -> ``(T-1, H, W)``
    float32 pixels/frame, after subtracting a RANSAC similarity fit per frame pair."""
    out = np.empty(flows.shape[:3], np.float32)
    for i, flow in enumerate(flows):
        out[i] = np.linalg.norm(flow - camera_motion(flow, step=8, seed=seed + i), axis=-1)
        if tick is not None:
            tick(1)
    return out


def _relative_speed(mask: np.ndarray, speed: np.ndarray, typical: float) -> float:
    """Mean speed inside ``mask`` minus the frame's ``typical`` (median) speed."""
    return float(speed[mask].mean()) - typical if mask.any() else 0.0


def _sides_touched(box: Sequence[float], h: int, w: int) -> int:
    x0, y0, x1, y1 = box
    return int(x0 <= 1) + int(y0 <= 1) + int(x1 >= w - 1) + int(y1 >= h - 1)


def tube_objectness(frames: Sequence[int], masks: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                    contrast: float, speed: np.ndarray, typical: Sequence[float],
                    rule: ObjectnessRule = ObjectnessRule()) -> TubeObjectness:
    """One tube's features and verdict. ``speed`` ``(T-1, H, W)`` from :func:`residual_motion`,
    ``typical`` its per-pair medians; a tube's last video frame uses the pair before it."""
    h, w = masks[0].shape
    last_pair = len(speed) - 1
    rel = [_relative_speed(m, speed[min(f, last_pair)], typical[min(f, last_pair)])
           for f, m in zip(frames, masks)] if last_pair >= 0 else [0.0]
    motion = float(np.percentile(rel, 90))
    area = float(np.mean([m.mean() for m in masks]))
    sides = float(np.mean([_sides_touched(b, h, w) for b in boxes]))
    score = rule.score(motion, area, sides, contrast)
    return TubeObjectness(motion, area, sides, float(contrast), score, score < rule.threshold)


def score_tubes(tubes: Sequence, flows: np.ndarray, *, rule: ObjectnessRule = ObjectnessRule(), seed: int = 0,
                tick: Tick | None = None) -> list[TubeObjectness]:
    """Objectness of every ``track.Tube`` of one clip; ``tick`` gets ``T-1`` then one per tube."""
    speed = residual_motion(flows, seed=seed, tick=tick)
    typical = [float(np.median(s)) for s in speed]
    out = []
    for tube in tubes:
        out.append(tube_objectness(tube.frames, tube.masks, tube.boxes, tube.score, speed, typical, rule))
        if tick is not None:
            tick(1)
    return out
