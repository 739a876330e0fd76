"""render.py: concept clips are deterministic, the right shape, and honour each mode's meaning."""
import cv2
import numpy as np
import pytest

from conceptgen.errors import ConfigError, DataError
from conceptgen.masks import mask_box, resize_mask
from conceptgen.render import (RENDER_MODES, fill_from_mean, highlight_full_video, render_outlined_preview,
                               render_tube_clip, tube_positions)

SIZE = 64
OBJECT_RGB = (250, 20, 20)


def scene(num_frames=10, seed=0):
    """Textured background with a red square moving right 2 px/frame; masks exact."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 200, size=(SIZE, SIZE, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    masks = np.zeros((num_frames, SIZE, SIZE), bool)
    for t in range(num_frames):
        masks[t, 20:36, 8 + 2 * t:24 + 2 * t] = True
        frames[t][masks[t]] = OBJECT_RGB
    return frames, masks


def tube_args(frames, masks, first=2, last=9):
    tube_frames = list(range(first, last))
    return frames, tube_frames, [masks[t] for t in tube_frames], [mask_box(masks[t]) for t in tube_frames]


@pytest.mark.parametrize("mode", RENDER_MODES)
@pytest.mark.parametrize("static", [False, True])
def test_every_mode_is_deterministic_and_model_sized(mode, static):
    args = tube_args(*scene())
    a = render_tube_clip(*args, mode=mode, static=static, num_frames=8, side=32)
    b = render_tube_clip(*args, mode=mode, static=static, num_frames=8, side=32)
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    frames_differ = any(not np.array_equal(a[0], a[i]) for i in range(1, 8))
    assert frames_differ != static  # static repeats one frame; the moving square changes the others


def test_static_variant_shows_the_middle_frame_of_the_tube():
    frames, masks = scene()
    args = tube_args(frames, masks)
    static = render_tube_clip(*args, mode="mask", static=True, num_frames=4, side=SIZE)
    single = render_tube_clip(frames, [args[1][3]], [args[2][3]], [args[3][3]], mode="mask", num_frames=1, side=SIZE)
    assert np.array_equal(static[0], single[0])


def test_mask_mode_fills_outside_with_the_dataset_mean():
    frames, masks = scene()
    fill = fill_from_mean((0.485, 0.456, 0.406))
    assert fill == (124, 116, 104)
    tube = tube_args(frames, masks)
    clip = render_tube_clip(*tube, mode="mask", num_frames=len(tube[1]), side=SIZE, fill=fill)
    for i, t in enumerate(tube[1]):  # side == frame size, so no resampling: exact pixels
        assert (clip[i][~masks[t]] == fill).all()
        assert np.array_equal(clip[i][masks[t]], frames[t][masks[t]])


def test_blur_mode_keeps_region_sharp_and_softens_background():
    frames, masks = scene()
    tube = tube_args(frames, masks)
    clip = render_tube_clip(*tube, mode="blur", num_frames=len(tube[1]), side=SIZE)
    t = tube[1][0]
    assert np.array_equal(clip[0][masks[t]], frames[t][masks[t]])
    outside = ~masks[t]
    # blurring a random texture lowers its local variation
    assert np.abs(np.diff(clip[0].astype(int), axis=1))[outside[:, 1:]].mean() < \
        np.abs(np.diff(frames[t].astype(int), axis=1))[outside[:, 1:]].mean() / 2


def wide_scene(num_frames=6, seed=1):
    """48 x 80 textured frames with a square near the right edge: the context window
    (the largest square, 48 px) is pinned to the frame's right side, columns 32..79."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_frames, 48, 80, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, 48, 80), bool)
    for t in range(num_frames):
        masks[t, 10 + t:30 + t, 60:76] = True
    return frames, masks


@pytest.mark.parametrize("mode", ["mask", "blur"])
@pytest.mark.parametrize("side", [20, 32])  # 48 -> 20 is not a dyadic ratio, 48 -> 32 is
def test_context_modes_equal_isolating_the_whole_frame_then_cutting_and_area_resizing(mode, side):
    frames, masks = wide_scene()
    fill = (9, 99, 199)
    clip = render_tube_clip(*tube_args(frames, masks, 0, 6), mode=mode, num_frames=6, side=side, fill=fill)
    sigma = float(np.hypot(48, 80)) / 30.0
    for t in range(6):
        background = (np.broadcast_to(np.array(fill, np.uint8), frames[t].shape) if mode == "mask" else
                      cv2.GaussianBlur(frames[t], (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT))
        isolated = np.where(masks[t][..., None], frames[t], background)
        expected = cv2.resize(np.ascontiguousarray(isolated[:, 32:80]), (side, side), interpolation=cv2.INTER_AREA)
        assert np.array_equal(clip[t], expected)


def assert_equals_per_frame_area_resizing(clip, frames, masks, fill, side):
    """Each clip frame equals filling its frame outside the mask, then one area resize."""
    for t in range(len(frames)):
        isolated = np.where(masks[t][..., None], frames[t], np.array(fill, np.uint8))
        assert np.array_equal(clip[t], cv2.resize(isolated, (side, side), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("frame_side,side", [(112, 32), (100, 32), (128, 32), (96, 24), (70, 24), (130, 64),
                                             (200, 160), (181, 160)])
def test_mask_mode_equals_per_frame_area_resizing_for_any_window_and_clip_size(frame_side, side):
    rng = np.random.default_rng(frame_side + side)
    frames = rng.integers(0, 256, size=(8, frame_side, frame_side, 3), dtype=np.uint8)
    masks = rng.random((8, frame_side, frame_side)) < 0.5  # noise: any arithmetic difference shows
    fill = (9, 99, 199)
    clip = render_tube_clip(frames, list(range(8)), list(masks), [[0.0, 0.0, frame_side, frame_side]] * 8,
                            mode="mask", num_frames=8, side=side, fill=fill)
    assert_equals_per_frame_area_resizing(clip, frames, masks, fill, side)


@pytest.mark.parametrize("frame_side,side", [(112, 32), (128, 32), (96, 24), (70, 24), (130, 64), (200, 160)])
def test_mask_mode_shrinking_only_the_region_blocks_gives_the_same_bytes(frame_side, side):
    """Small regions (an empty frame, one touching the border, ragged edges): mask mode
    resizes only the blocks holding mask pixels; it must equal resizing whole frames."""
    rng = np.random.default_rng(frame_side * side)
    frames = rng.integers(0, 256, size=(8, frame_side, frame_side, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:frame_side, :frame_side]
    masks = np.zeros((8, frame_side, frame_side), bool)
    for t in range(8):
        cy, cx = rng.integers(0, frame_side, 2)
        r = rng.integers(2, frame_side // 5)
        masks[t] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (rng.random((frame_side, frame_side)) < 0.8)
    masks[3] = False
    masks[5, -4:, :6] = True
    boxes = [mask_box(m) if m.any() else [0.0, 0.0, 1.0, 1.0] for m in masks]
    fill = (9, 99, 199)
    clip = render_tube_clip(frames, list(range(8)), list(masks), boxes, mode="mask", num_frames=8, side=side,
                            fill=fill)
    assert_equals_per_frame_area_resizing(clip, frames, masks, fill, side)


@pytest.mark.parametrize("mask_side", [37, 56, 80])
def test_mask_mode_with_masks_at_a_lower_resolution_gives_the_same_bytes(mask_side):
    """Masks at the processing resolution are rescaled to the frames (nearest
    neighbour); the region block taken from their scaled boxes must still hold them,
    wherever the scaled edges fall against the resize's periods."""
    rng = np.random.default_rng(mask_side)
    frames = rng.integers(0, 256, size=(mask_side, 112, 112, 3), dtype=np.uint8)
    masks = np.zeros((mask_side, mask_side, mask_side), bool)
    for edge in range(3, mask_side):  # a 3-pixel square ending at every row and column
        masks[edge, edge - 3:edge, edge - 3:edge] = True
    fill = (9, 99, 199)
    for edge in range(3, mask_side):
        clip = render_tube_clip(frames, [edge], [masks[edge]], [mask_box(masks[edge])], mode="mask",
                                num_frames=1, side=32, fill=fill)
        assert_equals_per_frame_area_resizing(clip, frames[edge:edge + 1], [resize_mask(masks[edge], 112, 112)],
                                              fill, 32)


def test_a_tube_shorter_than_the_clip_repeats_its_frames_in_order():
    frames, masks = scene()
    args = tube_args(frames, masks, 2, 5)  # 3 tube frames -> 8 clip frames
    clip = render_tube_clip(*args, mode="mask", num_frames=8, side=32)
    positions = tube_positions(3, 8)
    for i in range(8):
        for j in range(8):
            assert np.array_equal(clip[i], clip[j]) == (positions[i] == positions[j])


def test_crop_mode_zooms_onto_the_tube_box():
    frames, masks = scene()
    tube = tube_args(frames, masks)
    in_frame = masks[2].mean()  # the square covers 6% of the frame
    for per_frame in (False, True):
        clip = render_tube_clip(*tube, mode="crop", num_frames=4, side=32, per_frame_crop=per_frame)
        red = (clip[..., 0] > 200) & (clip[..., 1] < 60)
        assert red.mean() > 2.5 * in_frame
    # per-frame crops keep the moving object centred
    per_frame_clip = render_tube_clip(*tube, mode="crop", num_frames=4, side=32, per_frame_crop=True)
    assert all(tuple(per_frame_clip[i, 16, 16]) == OBJECT_RGB for i in range(4))


def test_crop_near_the_border_pads_with_fill():
    frames, masks = scene()
    corner = np.zeros((SIZE, SIZE), bool)
    corner[0:6, 0:6] = True
    clip = render_tube_clip(frames, [0], [corner], [mask_box(corner)], mode="crop", num_frames=2, side=16,
                            fill=(1, 2, 3), margin=0.5)
    assert tuple(clip[0, 0, 0]) == (1, 2, 3)


def test_frames_are_sampled_uniformly_over_the_tube():
    positions = tube_positions(7, 4)
    assert positions[0] == 0 and positions[-1] == 6 and np.all(np.diff(positions) > 0)
    assert np.array_equal(tube_positions(3, 6), np.sort(tube_positions(3, 6)))
    assert set(tube_positions(9, 5, static=True)) == {4}


def test_masks_at_processing_resolution_render_on_full_frames():
    frames, masks = scene()
    small = [m[::2, ::2] for m in masks[2:6]]
    clip = render_tube_clip(frames, [2, 3, 4, 5], small, [mask_box(m) for m in small], mode="mask",
                            num_frames=4, side=SIZE, fill=(0, 0, 0))
    assert (clip[0][masks[2]] == OBJECT_RGB).all()


def test_bad_arguments_raise_clear_errors():
    frames, masks = scene()
    args = tube_args(frames, masks)
    with pytest.raises(ConfigError, match="mask, crop, blur"):
        render_tube_clip(*args, mode="sparkle", num_frames=4, side=16)
    with pytest.raises(DataError):
        render_tube_clip(frames, [50], [masks[0]], [mask_box(masks[0])], mode="mask", num_frames=4, side=16)


def test_outlined_preview_draws_the_region_boundary():
    frames, masks = scene()
    big = np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2)  # 512 x 512
    preview = render_outlined_preview(big, [2, 3], [masks[2], masks[3]], max_side=256)
    assert preview.shape == (2, 256, 256, 3)
    magenta = (preview[..., 0] == 255) & (preview[..., 1] == 40) & (preview[..., 2] == 220)
    assert magenta[0].sum() > 50
    ys, xs = np.nonzero(magenta[0])
    x0, y0, x1, y1 = (np.array(mask_box(masks[2])) * 4)
    assert x0 - 4 <= xs.min() and xs.max() <= x1 + 4 and y0 - 4 <= ys.min() and ys.max() <= y1 + 4


def test_full_video_highlight_only_marks_tube_frames():
    frames, masks = scene()
    out = highlight_full_video(frames, [3, 4, 5], [masks[3], masks[4], masks[5]])
    assert out.shape == frames.shape
    for t in range(len(frames)):
        assert np.array_equal(out[t], frames[t]) == (t not in (3, 4, 5))


def test_contact_sheet_outlines_each_region_and_writes_its_caption_right_under_its_frame():
    from conceptgen.render import OUTLINE_RGB, contact_sheet

    wide, tall = np.full((224, 400, 3), 200, np.uint8), np.full((150, 200, 3), 200, np.uint8)
    wide_mask, tall_mask = np.zeros((224, 400), bool), np.zeros((150, 200), bool)
    wide_mask[40:100, 60:180] = True
    tall_mask[50:100, 50:150] = True
    sheet = contact_sheet([(tall, tall_mask, "tall"), (wide, wide_mask, "wide")], columns=2, tile_side=200)
    assert sheet.shape == (150 + 16, 400, 3)
    outline = np.all(sheet == OUTLINE_RGB, axis=-1)
    wide_h = 112  # the wide frame fitted into 200 px
    assert outline[:150, :200].any() and outline[:wide_h, 200:].any()  # each region is outlined in its own tile
    dark = sheet.sum(-1) < 200  # caption text (the frames are light grey, the sheet white)
    assert dark[wide_h:wide_h + 16, 200:].any(), "the wide frame's caption sits right under it"
    assert not dark[wide_h + 16:, 200:].any()
    assert dark[150:, :200].any()
