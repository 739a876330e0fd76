"""segment.py: motion under camera pan, supervoxel regions, the SAM path with a tiny random SAM,
and construction by name."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from conceptgen.errors import ConfigError
from conceptgen.masks import mask_iou
from conceptgen.segment import (Detection, ForegroundSegmenter, MotionSegmenter, SamSegmenter, SupervoxelSegmenter, build_segmenters,
                                default_segmenter_names, merge_similar_regions, optical_flow, run_segmenters,
                                warp_mask)

torch.set_num_threads(2)
SIZE, T = 64, 8


def panning_scene(pan=2, speed=3, seed=0, textured=False):
    """A textured world seen by a camera panning ``pan`` px/frame to the right, with a red
    square moving ``speed`` px/frame right in the world. Returns frames, square masks."""
    rng = np.random.default_rng(seed)
    texture = np.stack([rng.integers(200, 256, (14, 14)), rng.integers(0, 80, (14, 14)),
                        rng.integers(0, 80, (14, 14))], axis=-1).astype(np.uint8)
    coarse = rng.integers(50, 200, size=(SIZE // 4, (SIZE + pan * T) // 4 + 1, 3)).astype(np.uint8)
    world = np.kron(coarse, np.ones((4, 4, 1), np.uint8))
    frames = np.zeros((T, SIZE, SIZE, 3), np.uint8)
    masks = np.zeros((T, SIZE, SIZE), bool)
    for t in range(T):
        frames[t] = world[:, pan * t:pan * t + SIZE]
        x = (12 if speed >= pan else 40) + (speed - pan) * t  # square position in camera coordinates
        masks[t, 24:38, x:x + 14] = True
        frames[t, 24:38, x:x + 14] = texture if textured else (230, 20, 20)
    return frames, masks


def test_motion_finds_the_moving_square_under_camera_pan():
    frames, masks = panning_scene(pan=2, speed=5, textured=True)
    dets = MotionSegmenter().segment(frames)
    assert len(dets) == T and all(d.source == "motion" and d.frame == t for t, ds in enumerate(dets) for d in ds)
    hits = [max([mask_iou(d.mask, masks[t]) for d in dets[t]] + [0.0]) for t in range(T)]
    assert np.mean(np.array(hits) > 0.35) >= 0.75
    # The panning background is compensated: detections stay on or next to the square.
    near = np.zeros_like(masks)
    for t in range(T):
        ys, xs = np.nonzero(masks[t])
        near[t, ys.min() - 6:ys.max() + 7, xs.min() - 6:xs.max() + 7] = True
    detected = np.array([np.any([d.mask for d in dets[t]] or [np.zeros((SIZE, SIZE), bool)], axis=0) for t in range(T)])
    assert detected.sum() > 0 and (detected & ~near).sum() / detected.sum() < 0.1


def test_static_scene_under_pan_gives_no_motion():
    frames, masks = panning_scene(pan=2, speed=0)  # the square is still in the world: only the camera moves
    assert masks.any(axis=(1, 2)).all()
    dets = MotionSegmenter().segment(frames)
    assert sum(len(d) for d in dets) == 0


def still_camera_scene(num_frames=24, speed=2, seed=0):
    """A still camera on a blocky background; a red square crosses it at ``speed`` px/frame,
    so no pixel is covered on more than a third of the frames. Returns frames, square masks."""
    rng = np.random.default_rng(seed)
    background = np.kron(rng.integers(50, 200, size=(SIZE // 4, SIZE // 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    masks = np.zeros((num_frames, SIZE, SIZE), bool)
    for t in range(num_frames):
        masks[t, 24:38, 1 + speed * t:15 + speed * t] = True
        frames[t][masks[t]] = (230, 20, 20)
    return frames, masks


def test_foreground_finds_the_whole_mover_on_a_still_camera_and_nothing_else():
    frames, masks = still_camera_scene()
    dets = ForegroundSegmenter().segment(frames)
    assert all(d.source == "foreground" for ds in dets for d in ds)
    best = [max([mask_iou(d.mask, masks[t]) for d in dets[t]] + [0.0]) for t in range(len(frames))]
    assert np.mean(np.array(best) > 0.8) >= 0.9
    assert sum(len(ds) for ds in dets) <= len(frames) + 1  # the square, not the background around it


def test_foreground_gives_nothing_when_the_camera_moves():
    frames, masks = panning_scene(pan=2, speed=5, textured=True)
    assert sum(len(d) for d in ForegroundSegmenter().segment(frames)) == 0


def test_flow_is_shared_and_warping_follows_it():
    frames, masks = panning_scene(pan=2, speed=5, textured=True)
    flows = optical_flow(frames)
    assert flows.shape == (T - 1, SIZE, SIZE, 2) and flows.dtype == np.float32
    assert np.median(flows[0][..., 0][~masks[0]]) == pytest.approx(-2, abs=0.5)  # camera pan, px/frame
    assert mask_iou(warp_mask(masks[0], flows[0]), masks[1]) > mask_iou(masks[0], masks[1])
    given = MotionSegmenter().segment(frames, flows=flows)
    own = MotionSegmenter().segment(frames)
    assert [[(d.frame, d.score) for d in ds] for ds in given] == [[(d.frame, d.score) for d in ds] for ds in own]


def test_supervoxel_regions_cover_the_volume_and_find_a_uniform_object():
    rng = np.random.default_rng(1)
    frames = np.zeros((T, SIZE, SIZE, 3), np.uint8)
    frames[:] = (90, 140, 160)
    frames[:, SIZE // 2:] = (150, 150, 80)  # two background halves
    frames = (frames.astype(int) + rng.integers(-4, 5, frames.shape)).clip(0, 255).astype(np.uint8)
    disc = np.zeros((T, SIZE, SIZE), bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for t in range(T):
        disc[t] = (xx - 15 - 3 * t) ** 2 + (yy - 20) ** 2 <= 7 ** 2
        frames[t][disc[t]] = (30, 200, 40)
    segmenter = SupervoxelSegmenter(segments_per_frame=40)
    dets = segmenter.segment(frames)
    assert len(dets) == T
    for t in range(T):
        best = max(dets[t], key=lambda d: mask_iou(d.mask, disc[t]))
        assert mask_iou(best.mask, disc[t]) > 0.8
        masks = np.array([d.mask for d in dets[t]])
        assert masks.sum(0).max() <= 1  # regions of one frame never overlap
    # every detection of the disc is one region, so it carries one score
    assert len({d.score for t in range(T) for d in dets[t] if mask_iou(d.mask, disc[t]) > 0.8}) == 1


def test_region_merging_partitions_the_volume():
    labels = np.arange(4 * 6 * 6).reshape(4, 6, 6) % 7
    image = np.zeros(labels.shape + (3,), np.float32)
    image[..., 0] = (labels >= 3) * 50.0  # two colour groups
    merged = merge_similar_regions(labels, image, max_delta=10)
    assert merged.shape == labels.shape and merged.min() == 0
    assert len(np.unique(merged)) == 2
    assert np.array_equal(merged == merged.flat[0], (labels < 3) == (labels.flat[0] < 3))


def test_segmenters_are_deterministic():
    frames, _ = panning_scene()
    for segmenter in build_segmenters("motion,supervoxel", seed=3):
        a, b = segmenter.segment(frames), segmenter.segment(frames)
        assert [[(d.score, d.mask.tobytes()) for d in x] for x in a] == [[(d.score, d.mask.tobytes()) for d in x] for x in b]


def tiny_sam():
    """A randomly initialised SAM with a 64-px, 2-block, 32-dim encoder: fast, no weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    img, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(img_size=img, patch_size=patch, embed_dim=dim, depth=2, num_heads=2,
                                      out_chans=dim, window_size=0),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img // patch, img // patch),
                                     input_image_size=(img, img), mask_in_chans=8),
        mask_decoder=MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                                                                   num_heads=2, mlp_dim=64),
                                 iou_head_hidden_dim=32),
    )


def test_sam_path_runs_end_to_end_with_a_tiny_random_sam():
    frames, _ = panning_scene()
    frames = frames[:6]
    segmenter = SamSegmenter(model_factory=tiny_sam, keyframe_every=4, points_per_side=4, min_area_frac=0.0,
                             max_area_frac=1.0, generator_kwargs=dict(pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                                   points_per_batch=16))
    assert segmenter.keyframes(6) == [0, 4, 5]
    dets = segmenter.segment(frames)
    assert len(dets) == 6
    assert all(len(dets[t]) == 0 for t in (1, 2, 3))  # the tracker fills non-keyframes
    produced = [d for t in (0, 4, 5) for d in dets[t]]
    assert produced, "the random SAM produced no masks at all"
    for t in (0, 4, 5):
        for d in dets[t]:
            assert isinstance(d, Detection) and d.frame == t and d.source == "sam"
            assert d.mask.shape == (SIZE, SIZE) and d.mask.dtype == bool and 0.0 <= d.score <= 1.0
    again = SamSegmenter(model_factory=tiny_sam, keyframe_every=4, points_per_side=4, min_area_frac=0.0,
                         max_area_frac=1.0, generator_kwargs=dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)).segment(frames)
    assert [[d.mask.tobytes() for d in x] for x in again] == [[d.mask.tobytes() for d in x] for x in dets]


def test_sam_without_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError, match="--sam-checkpoint PATH"):
        build_segmenters("sam,motion")
    with pytest.raises(ConfigError, match="not found"):
        build_segmenters("sam", sam_checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="vit_b, vit_l, vit_h"):
        SamSegmenter(model_factory=tiny_sam, model_type="vit_xl")


def test_build_segmenters_by_name():
    assert default_segmenter_names(None) == "motion,supervoxel,foreground"
    assert default_segmenter_names("sam.pth") == "sam,motion"
    assert [s.name for s in build_segmenters(" motion , supervoxel,foreground ")] == ["motion", "supervoxel",
                                                                                       "foreground"]
    with pytest.raises(ConfigError, match="motion, supervoxel, foreground, sam"):
        build_segmenters("motion,optical")
    with pytest.raises(ConfigError):
        build_segmenters("")
    frames, _ = panning_scene()
    merged = run_segmenters(build_segmenters("motion,supervoxel"), frames)
    assert {d.source for ds in merged for d in ds} <= {"motion", "supervoxel"} and len(merged) == T
    with pytest.raises(ConfigError, match="uint8"):
        MotionSegmenter().segment(frames.astype(np.float32))


def test_a_uniform_mat_touching_many_blocks_at_1280x720_merges_into_background_and_keeps_the_blocks(tmp_path):
    """The scene that stalled region merging (issue 20): one large uniform region adjacent to
    thousands of small pieces of the volume. Encoded and decoded like a user's video."""
    from conceptgen.synth import uniform_mat_frames
    from conceptgen.videoio import read_frames, write_video

    path = tmp_path / "mat.mp4"
    write_video(path, uniform_mat_frames(num_frames=12, n_blocks=24, block_side=80, seed=1), fps=30.0)
    frames = read_frames(path, max_side=256)
    assert frames.shape == (12, 144, 256, 3)
    dets = SupervoxelSegmenter().segment(frames)
    mat = np.all(np.abs(frames.astype(int) - np.array([70, 110, 80])) < 12, axis=-1)  # the mat's pixels
    for t in (0, 6, 11):
        # the mat is one region far above the size limit, so it gives no detection ...
        assert all((d.mask & mat[t]).sum() < 0.5 * d.mask.sum() for d in dets[t])
        # ... while most blocks (the small regions off the mat) are detected
        blocks, n = ndimage.label(~mat[t])
        found = sum(any(mask_iou(d.mask, blocks == b) > 0.5 for d in dets[t]) for b in range(1, n + 1))
        assert found >= 0.6 * n, (t, found, n)
