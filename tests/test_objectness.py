"""Objectness: things (moving or standing out) against background (large, static, edge-touching)."""
from __future__ import annotations

import numpy as np
import pytest

from conceptgen.masks import mask_box
from conceptgen.objectness import ObjectnessRule, score_tubes
from conceptgen.segment import boundary_contrast, lab_frames, optical_flow
from conceptgen.track import Tube

T, H, W = 16, 96, 128


def room() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A wall over a floor (both textured, edge to edge), a ball rolling 3 px/frame across
    the floor and a block standing still on it. -> frames (T, H, W, 3), masks per thing (T, H, W)."""
    rng = np.random.default_rng(0)
    frames = np.empty((T, H, W, 3), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    masks = {name: np.zeros((T, H, W), bool) for name in ("wall", "floor", "ball", "block")}
    texture = rng.integers(-12, 13, (H, W, 3))
    for t in range(T):
        frame = np.where((yy < H // 2)[..., None], [150, 140, 120], [90, 70, 50]) + texture
        ball = (xx - 20 - 3 * t) ** 2 + (yy - 70) ** 2 <= 8 ** 2
        block = (np.abs(xx - 100) <= 7) & (np.abs(yy - 64) <= 7)
        frame[ball] = (220, 30, 30)
        frame[block] = (30, 60, 200)
        frames[t] = frame.clip(0, 255)
        masks["ball"][t], masks["block"][t] = ball, block
        masks["wall"][t] = yy < H // 2
        masks["floor"][t] = (yy >= H // 2) & ~ball & ~block
    return frames, masks


def as_tube(frames: np.ndarray, masks: np.ndarray) -> Tube:
    lab = lab_frames(frames)
    score = float(np.mean([boundary_contrast(lab[t], masks[t]) for t in range(T)]))
    return Tube(list(range(T)), list(masks), [mask_box(m) for m in masks], "test", score)


def test_walls_and_floors_are_background_and_the_ball_and_block_are_things():
    frames, masks = room()
    names = list(masks)
    verdicts = dict(zip(names, score_tubes([as_tube(frames, masks[n]) for n in names], optical_flow(frames))))
    assert verdicts["wall"].background and verdicts["floor"].background
    assert not verdicts["ball"].background and not verdicts["block"].background
    assert verdicts["ball"].motion > 1.0 > verdicts["block"].motion  # pixels/frame against its surroundings
    assert verdicts["wall"].border_sides >= 3
    assert min(verdicts["ball"].objectness, verdicts["block"].objectness) > max(
        verdicts["wall"].objectness, verdicts["floor"].objectness)


def test_the_score_rises_with_motion_and_contrast_and_falls_with_size_and_edges():
    rule = ObjectnessRule()
    base = dict(motion=0.1, area=0.1, border_sides=0.5, contrast=0.2)
    score = rule.score(**base)
    assert rule.score(**{**base, "motion": 2.0}) > score
    assert rule.score(**{**base, "contrast": 0.6}) > score
    assert rule.score(**{**base, "area": 0.25}) < score
    assert rule.score(**{**base, "border_sides": 2.5}) < score
    assert rule.score(**{**base, "area": 0.5}) == 0.0 and rule.score(**{**base, "border_sides": 3}) == 0.0
    assert 0.0 <= rule.score(motion=50.0, area=0.0, border_sides=0.0, contrast=1.0) <= 1.0


def test_scoring_is_deterministic():
    frames, masks = room()
    tubes = [as_tube(frames, m) for m in masks.values()]
    flows = optical_flow(frames)
    assert score_tubes(tubes, flows, seed=1) == score_tubes(tubes, flows, seed=1)
