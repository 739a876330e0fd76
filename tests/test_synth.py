"""Synthetic ground-truth videos: determinism, balance, and exact masks that agree with
the pixels and with each class's motion."""
import json
from collections import Counter

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from conceptgen.errors import ConfigError, DataError
from conceptgen.synth import (CLASS_NAMES, generate_synthetic_set, load_ground_truth, render_on_new_background,
                              render_with_decoy, render_with_still_objects, render_without_actor)
from conceptgen.videoio import probe_video, read_frames


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    return generate_synthetic_set(tmp_path_factory.mktemp("synth") / "set", n_videos=12, seed=7)


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path, small_synth):
    again = generate_synthetic_set(tmp_path / "again", n_videos=12, seed=7)
    assert [v.sha256 for v in again.videos] == [v.sha256 for v in small_synth.videos]
    for a, b in zip(again.videos, small_synth.videos):
        assert a.mask_path.read_bytes() == b.mask_path.read_bytes()
    assert again.manifest_hash == small_synth.manifest_hash
    other = generate_synthetic_set(tmp_path / "other", n_videos=4, seed=8)
    assert other.videos[0].sha256 != small_synth.videos[0].sha256


def test_classes_are_balanced_and_split_is_stratified(tmp_path):
    ds = generate_synthetic_set(tmp_path / "bal", n_videos=20, seed=1, num_frames=4, size=48)
    assert Counter(v.class_name for v in ds.videos) == {c: 5 for c in CLASS_NAMES}
    assert Counter(v.class_name for v in ds.split("test")) == {c: 1 for c in CLASS_NAMES}
    assert len(ds.split("train")) == 16


def test_videos_have_the_requested_shape_and_one_actor(small_synth):
    for v in small_synth.videos:
        info = probe_video(v.video_path)
        assert (info.frame_count, info.width, info.height) == (16, 112, 112)
        assert [o.role for o in v.objects].count("actor") == 1
        assert v.actor.motion == v.class_name and v.video_path.parent.name == v.class_name
        assert 14 <= 2 * v.actor.radii.max() <= 40


def test_visible_masks_are_disjoint_and_inside_full_masks(small_synth):
    for v in small_synth.videos:
        visible, full = v.load_masks(), v.load_masks(visible=False)
        assert visible.shape == full.shape == (len(v.objects), 16, 112, 112)
        assert not np.any(visible & ~full)
        assert visible.sum(axis=0).max() <= 1  # each pixel belongs to at most one object


def test_masks_match_rendered_colours(small_synth):
    for v in small_synth.videos:
        frames = read_frames(v.video_path).astype(int)
        masks = v.load_masks()
        for o in v.objects:
            core = np.stack([binary_erosion(m, iterations=2) for m in masks[o.index]])
            if core.sum() < 20:
                continue  # mostly occluded: too few interior pixels to judge after compression
            assert np.abs(frames[core] - np.array(o.rgb)).mean() < 12, (v.id, o.index)


def _centroids(mask):
    ys, xs = zip(*[np.nonzero(m) for m in mask])
    return np.array([x.mean() for x in xs]), np.array([y.mean() for y in ys])


def test_actor_masks_move_the_way_the_class_says(tmp_path):
    ds = generate_synthetic_set(tmp_path / "motion", n_videos=16, seed=3)
    for v in ds.videos:
        full = v.load_masks(visible=False)[v.actor.index]  # before occlusion: exact geometry
        cx, cy = _centroids(full)
        area = full.sum(axis=(1, 2))
        if v.class_name == "moving_right":
            assert np.all(np.diff(cx) > 0) and cx[-1] - cx[0] > 30
        elif v.class_name == "moving_left":
            assert np.all(np.diff(cx) < 0) and cx[0] - cx[-1] > 30
        elif v.class_name == "bouncing":
            assert np.ptp(cy) > 30 and np.ptp(cx) < 1 and np.sum(np.diff(np.sign(np.diff(cy))) != 0) >= 1
        else:
            assert np.all(np.diff(area) >= 0) and area[-1] > 3 * area[0]
        np.testing.assert_allclose(np.stack([cx, cy], 1) + 0.5, v.actor.centers, atol=1.5)


def test_a_video_redrawn_without_its_actor_or_with_a_still_decoy_keeps_everything_else(small_synth):
    for v in small_synth.videos[:4]:
        frames = read_frames(v.video_path).astype(int)
        actor = v.load_masks(visible=False)[v.actor.index]
        bare, decoy = render_without_actor(small_synth, v).astype(int), render_with_decoy(small_synth, v).astype(int)
        # the same pixels away from the actor (up to H.264), none of the actor's colour where it was
        assert np.abs(bare - frames)[~actor].mean() < 10
        assert np.abs(bare[actor] - np.array(v.actor.rgb)).sum(axis=1).min() > 0 or not actor.any()
        # both are painted, not decoded: they differ exactly where the actor or the decoy is
        decoy_px = (decoy != bare).any(axis=-1) & ~v.load_masks(visible=False).any(axis=(0, 1))  # no other object
        assert (decoy_px == decoy_px[0]).all(), v.id   # one place in every frame: it neither moves nor grows
        assert decoy_px[0].sum() >= 0.5 * np.pi * (7 * 0.6) ** 2, v.id   # about the actor's size (7-15 px)


def test_counterfactual_twins_change_only_the_background_or_add_still_objects(small_synth):
    """The demo model's counterfactual twins (TrainConfig.counterfactual_weight), against the
    video painted from its plan (both painted, no H.264 between them)."""
    from conceptgen.synth import _paint, _redrawn_plan

    for v in small_synth.videos[:4]:
        spec = _redrawn_plan(small_synth, v)
        painted = _paint(spec, spec.objects, small_synth.num_frames, small_synth.size)
        assert np.abs(painted.astype(int) - read_frames(v.video_path)).mean() < 10  # the plan is the video (up to H.264)
        covered = v.load_masks(visible=False).any(axis=0)            # (T, H, W): an object is there
        never = ~covered.any(axis=0)                                  # (H, W): never under an object
        restyled = render_on_new_background(small_synth, v)
        assert np.array_equal(restyled[covered], painted[covered]), v.id      # every object as it was
        assert (restyled != painted).any(axis=-1)[:, never].mean() > 0.5, v.id  # a new background
        assert np.array_equal(restyled, render_on_new_background(small_synth, v))  # from its own stream
        cluttered = render_with_still_objects(small_synth, v)
        added = (cluttered != painted).any(axis=-1)[:, never]         # (T, pixels) away from the objects
        assert added.any(), v.id
        assert (added == added[0]).all(), v.id                        # what was added neither moves nor grows
        rest = ~added[0]
        assert np.array_equal(cluttered[0][never][rest], painted[0][never][rest]), v.id  # the rest kept


def test_ground_truth_json_records_attributes_and_background(small_synth):
    manifest = json.loads((small_synth.root / "ground_truth.json").read_text())
    rec = manifest["videos"][0]
    assert set(rec) >= {"id", "class", "split", "video", "masks", "background", "objects", "sha256"}
    assert set(rec["objects"][0]) >= {"role", "shape", "colour", "rgb", "motion", "z", "centers", "radii"}
    assert {v.background for v in small_synth.videos} <= {"flat", "noise", "stripes", "checker", "gradient"}
    assert {o.motion for v in small_synth.videos for o in v.objects if o.role == "distractor"} <= {"static", "drifting"}


def test_interrupted_generation_resumes_to_identical_files(tmp_path, small_synth):
    out = tmp_path / "resume"
    generate_synthetic_set(out, n_videos=12, seed=7)
    victim = load_ground_truth(out).videos[5]
    victim.video_path.unlink()
    (out / "ground_truth.json").unlink()
    resumed = generate_synthetic_set(out, n_videos=12, seed=7)
    assert [v.sha256 for v in resumed.videos] == [v.sha256 for v in small_synth.videos]


def test_mixing_two_sets_in_one_folder_is_refused(tmp_path):
    out = tmp_path / "mixed"
    generate_synthetic_set(out, n_videos=2, seed=0, num_frames=4, size=48)
    with pytest.raises(ConfigError):
        generate_synthetic_set(out, n_videos=2, seed=1, num_frames=4, size=48)
    with pytest.raises(DataError):
        load_ground_truth(tmp_path / "nothing-here")
