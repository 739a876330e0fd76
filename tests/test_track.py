"""track.py on painted scenes with exact masks: identities, gaps, births, filtering, dedup."""
import numpy as np
import pytest

from conceptgen.masks import mask_iou
from conceptgen.segment import Detection, optical_flow
from conceptgen.track import LinkRules, Tube, build_tubes, dedup_tubes, tube_iou_matrix

SIZE, T = 64, 12


def paint(paths, num_frames=T, seed=0):
    """Frames and exact visible masks for squares on a smooth random texture.

    ``paths``: list of (rgb, half_side, [(x, y) per frame] or None when absent);
    later objects are painted on top. Returns frames (T, H, W, 3), masks (N, T, H, W).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 180, size=(SIZE // 8, SIZE // 8, 3)).astype(np.uint8)
    background = np.kron(coarse, np.ones((8, 8, 1), np.uint8))
    background = (background.astype(int) + rng.integers(-15, 15, size=background.shape)).clip(0, 255).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    masks = np.zeros((len(paths), num_frames, SIZE, SIZE), bool)
    for i, (rgb, r, centres) in enumerate(paths):
        for t, c in enumerate(centres):
            if c is None:
                continue
            x, y = int(round(c[0])), int(round(c[1]))
            m = np.zeros((SIZE, SIZE), bool)
            m[max(y - r, 0):y + r, max(x - r, 0):x + r] = True
            masks[:i, t] &= ~m
            masks[i, t] = m
            frames[t][m] = rgb
    return frames, masks


def detections_from(masks, source="motion", drop=()):
    """One Detection per visible object mask, except (object, frame) pairs in ``drop``."""
    dets = [[] for _ in range(masks.shape[1])]
    for i in range(len(masks)):
        for t in range(masks.shape[1]):
            if masks[i, t].any() and (i, t) not in drop:
                dets[t].append(Detection(t, masks[i, t], 0.9, source))
    return dets


def matches_object(tube, obj_masks, floor=0.5):
    return all(mask_iou(tube.mask_at(t), obj_masks[t]) > floor for t in tube.frames)


def line(x0, y0, dx, dy, n=T):
    return [(x0 + dx * t, y0 + dy * t) for t in range(n)]


def test_crossing_objects_keep_their_identities():
    frames, masks = paint([((230, 30, 30), 6, line(8, 28, 4, 0)), ((30, 30, 230), 6, line(56, 36, -4, 0))])
    tubes = build_tubes(frames, detections_from(masks), min_length=3)
    assert len(tubes) == 2
    for tube in tubes:
        assert tube.frames == list(range(T))
        assert sum(matches_object(tube, masks[i], floor=0.3) for i in range(2)) == 1


def test_occlusion_gap_is_bridged_by_warping():
    frames, masks = paint([((230, 200, 30), 7, line(10, 30, 3, 0))])
    gap = {(0, 5), (0, 6)}
    tubes = build_tubes(frames, detections_from(masks, drop=gap), max_gap=2)
    assert len(tubes) == 1
    tube = tubes[0]
    assert tube.frames == list(range(T))
    for t in (5, 6):  # the filled frames follow the object
        assert mask_iou(tube.mask_at(t), masks[0, t]) > 0.5
    assert len(tube.boxes) == len(tube.masks) == T


def test_a_gap_longer_than_max_gap_ends_the_track():
    frames, masks = paint([((230, 200, 30), 7, line(10, 30, 3, 0))])
    gap = {(0, t) for t in range(4, 8)}
    tubes = build_tubes(frames, detections_from(masks, drop=gap), max_gap=1, min_length=3, link=None)
    assert [(tube.start, tube.end) for tube in tubes] == [(0, 4), (8, T)]


def test_a_track_broken_by_a_long_gap_is_linked_again_and_the_gap_follows_the_object():
    frames, masks = paint([((230, 200, 30), 7, line(10, 30, 3, 0))])
    gap = {(0, t) for t in range(4, 8)}
    tubes = build_tubes(frames, detections_from(masks, drop=gap), max_gap=1, min_length=3)
    assert len(tubes) == 1 and tubes[0].frames == list(range(T))
    for t in range(4, 8):
        assert mask_iou(tubes[0].mask_at(t), masks[0, t]) > 0.5
    assert len(tubes[0].boxes) == T


def test_a_different_object_where_one_vanished_is_not_linked_to_it():
    # Same place and speed, other colour: a red square leaves, a blue one arrives on its path.
    first = line(10, 30, 3, 0)[:4] + [None] * (T - 4)
    second = [None] * 7 + line(10, 30, 3, 0)[7:]
    frames, masks = paint([((230, 30, 30), 7, first), ((30, 30, 230), 7, second)])
    tubes = build_tubes(frames, detections_from(masks), max_gap=1, min_length=3)
    assert sorted((tube.start, tube.end) for tube in tubes) == [(0, 4), (7, T)]


def test_an_object_that_does_not_continue_the_path_is_not_linked():
    # Same colour, but it appears on the far side instead of where the first was heading.
    first = line(10, 20, 3, 0)[:4] + [None] * (T - 4)
    second = [None] * 7 + [(50, 50)] * (T - 7)
    frames, masks = paint([((230, 200, 30), 6, first), ((230, 200, 30), 6, second)])
    tubes = build_tubes(frames, detections_from(masks), max_gap=1, min_length=3)
    assert sorted((tube.start, tube.end) for tube in tubes) == [(0, 4), (7, T)]


def test_linking_respects_its_largest_gap():
    frames, masks = paint([((230, 200, 30), 5, line(6, 30, 2, 0, n=24))], num_frames=24)
    gap = {(0, t) for t in range(4, 12)}
    dets = detections_from(masks, drop=gap)
    assert len(build_tubes(frames, dets, max_gap=1, min_length=3, link=LinkRules(max_gap=8))) == 1
    assert len(build_tubes(frames, dets, max_gap=1, min_length=3, link=LinkRules(max_gap=6))) == 2


def test_a_new_object_starts_a_new_tube():
    late = [None] * 6 + [(44, 44)] * (T - 6)
    frames, masks = paint([((230, 30, 30), 6, line(10, 14, 2, 0)), ((30, 220, 60), 6, late)])
    tubes = build_tubes(frames, detections_from(masks))
    assert sorted((tube.start, tube.end) for tube in tubes) == [(0, T), (6, T)]
    newborn = next(tube for tube in tubes if tube.start == 6)
    assert matches_object(newborn, masks[1])


def test_short_tubes_are_dropped():
    brief = [(40, 40)] * 3 + [None] * (T - 3)
    frames, masks = paint([((230, 30, 30), 6, line(10, 14, 2, 0)), ((30, 220, 60), 6, brief)])
    tubes = build_tubes(frames, detections_from(masks), min_length=4)
    assert len(tubes) == 1 and matches_object(tubes[0], masks[0])


def test_duplicate_tubes_from_two_sources_are_merged_keeping_the_better_score():
    frames, masks = paint([((230, 30, 30), 8, line(10, 30, 3, 0))])
    shrunk = masks.copy()
    shrunk[:, :, :, :] = False
    for t in range(T):
        ys, xs = np.nonzero(masks[0, t])
        shrunk[0, t, ys.min() + 1:ys.max(), xs.min() + 1:xs.max()] = True
    dets = detections_from(masks, source="motion")
    for t, extra in enumerate(detections_from(shrunk, source="supervoxel")):
        dets[t] += [Detection(d.frame, d.mask, 0.5, d.source) for d in extra]
    tubes = build_tubes(frames, dets)
    assert len(tubes) == 1
    assert tubes[0].kind == "motion" and tubes[0].score == pytest.approx(0.9)


def test_keyframe_detections_are_propagated_between_keyframes():
    frames, masks = paint([((230, 30, 230), 7, line(10, 30, 3, 0))])
    keyframes = {0, 4, 8, T - 1}
    dets = [d if t in keyframes else [] for t, d in enumerate(detections_from(masks, source="sam"))]
    flows = optical_flow(frames)
    tubes = build_tubes(frames, dets, flows=flows, observed={"sam": keyframes})
    assert len(tubes) == 1 and tubes[0].frames == list(range(T))
    assert np.mean([mask_iou(tubes[0].mask_at(t), masks[0, t]) for t in range(T)]) > 0.7


def test_tracking_is_deterministic():
    frames, masks = paint([((230, 30, 30), 6, line(8, 28, 4, 0)), ((30, 30, 230), 6, line(56, 36, -4, 0))])
    a = build_tubes(frames, detections_from(masks), min_length=3)
    b = build_tubes(frames, detections_from(masks), min_length=3)
    assert [(x.frames, x.kind, x.score, x.boxes) for x in a] == [(y.frames, y.kind, y.score, y.boxes) for y in b]
    assert all(np.array_equal(ma, mb) for x, y in zip(a, b) for ma, mb in zip(x.masks, y.masks))


def test_tube_iou_counts_missing_frames_as_zero():
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    long = Tube([0, 1, 2, 3], [m] * 4, [[2, 2, 5, 5]] * 4, "motion", 0.5)
    short = Tube([2, 3], [m] * 2, [[2, 2, 5, 5]] * 2, "sam", 0.9)
    assert tube_iou_matrix([long], [short])[0, 0] == pytest.approx(0.5)
    assert len(dedup_tubes([long, short], dedup_iou=0.5)) == 2
    assert dedup_tubes([long, short], dedup_iou=0.4) == [short]


def test_fast_object_beyond_the_flow_is_linked_by_shape():
    # 11 px/frame on a flat background: the flow under-estimates it, so warped predictions miss
    frames = np.zeros((8, SIZE, SIZE, 3), np.uint8)
    frames[:] = (120, 120, 120)
    masks = np.zeros((1, 8, SIZE, SIZE), bool)
    for t in range(8):
        x = 4 + 7 * t if t < 4 else 4 + 7 * (7 - t) + 11  # reverses like a bounce
        masks[0, t, 30:40, x:x + 10] = True
        frames[t][masks[0, t]] = (240, 200, 20)
    dets = detections_from(masks, source="supervoxel")
    tubes = build_tubes(frames, dets, min_length=3)
    assert len(tubes) == 1 and tubes[0].frames == list(range(8))
    assert matches_object(tubes[0], masks[0], floor=0.99)
    # without the shape rule the same detections fall apart into several tubes
    assert len(build_tubes(frames, dets, min_length=1, shape_iou=1.01, link=None)) > 1
