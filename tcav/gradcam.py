"""Grad-CAM for video models: the baseline whose limits motivate Video-TCAV.

For a layer with activation A (C, t, h, w) and class k:

    alpha_c = mean over (t, h, w) of d logit_k / d A_c
    cam     = ReLU(sum_c alpha_c A_c)            (t, h, w), upsampled to (T, S, S)

normalised to [0, 1] by its maximum. Writes an H.264 overlay video and the
per-frame heat curve (mean heat of each input frame) as CSV and PNG.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from conceptgen.errors import ConfigError, DataError
from tcav.activations import forward_backward

OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class GradCam:
    """``heat`` (T, S, S) float32 in [0, 1] at the model input; ``frame_heat`` (T,)
    mean heat per frame; ``logit`` the class logit for the clip."""

    heat: np.ndarray
    frame_heat: np.ndarray
    logit: float


def grad_cam(loaded, clip: np.ndarray, layer: str, target: int) -> GradCam:
    """Grad-CAM of one clip, uint8 (T, S, S, 3) at the model's input spec."""
    out = forward_backward(loaded, [layer], clip[None], [target])
    act, grad = out.activations[layer][0].float(), out.gradients[(layer, target)][0].float()
    if act.ndim != 4 or act[0].numel() <= 1:  # pooled: no time or space left to localise
        why = _why_no_grid(loaded, tuple(act.shape))
        raise ConfigError(f"Grad-CAM needs a layer with time and space (C, T, H, W); {layer} gives "
                          f"{tuple(act.shape)}{f' ({why})' if why else ''}: choose an earlier layer or, in a "
                          "transformer, an encoder block (`conceptgen models --layers`)")
    weights = grad.mean(dim=(1, 2, 3))                               # (C,)
    cam = torch.relu((weights[:, None, None, None] * act).sum(0))    # (t, h, w)
    t, s = clip.shape[0], clip.shape[1]
    cam = torch.nn.functional.interpolate(cam[None, None], size=(t, s, s), mode="trilinear",
                                          align_corners=False)[0, 0]
    top = float(cam.max())
    heat = (cam / top if top > 0 else cam).cpu().numpy().astype(np.float32)
    return GradCam(heat, heat.mean(axis=(1, 2)), float(out.logits[0, target]))


def _why_no_grid(loaded, shape: tuple[int, ...]) -> str | None:
    """For a transformer's layer, why its tokens have no time grid (conceptgen.tokens)."""
    from conceptgen.tokens import why_not_grid

    grid = getattr(loaded, "tokens", None)
    return why_not_grid(shape, grid) if grid is not None else (getattr(loaded, "metadata", None) or {}).get("tokens_note")


def overlay(clip: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (T, S, S, 3): the clip blended with a JET colour map of ``heat``."""
    import cv2

    coloured = np.stack([cv2.cvtColor(cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET),
                                      cv2.COLOR_BGR2RGB) for h in heat])
    return (clip.astype(np.float32) * (1 - alpha) + coloured * alpha).clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class GradCamFiles:
    video: Path
    curve_csv: Path
    curve_png: Path
    frame_indices: np.ndarray
    result: GradCam


def gradcam_video(video: str | Path, loaded, layer: str, target: str | int, out_dir: str | Path) -> GradCamFiles:
    """Grad-CAM of a video file (uniformly sampled to the model's frame count)."""
    from conceptgen.videoio import probe_video, read_frames, resize_clip, sample_indices, write_video

    video = Path(video)
    if not video.is_file():
        raise ConfigError(f"--video {video} does not exist: give a video file")
    k = loaded.class_index(target)
    info = probe_video(video)
    if info.frame_count < loaded.spec.num_frames:
        raise DataError(f"{video} has {info.frame_count} frames, shorter than the model's input of "
                        f"{loaded.spec.num_frames} frames: use a longer video")
    indices = sample_indices(info.frame_count, loaded.spec.num_frames)
    clip = resize_clip(read_frames(video, indices=indices), loaded.spec.side)
    result = grad_cam(loaded, clip, layer, k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{video.stem}_{loaded.class_names[k]}_{layer}".replace("/", "_")
    video_path = out / f"gradcam_{stem}.mp4"
    write_video(video_path, overlay(clip, result.heat), fps=max(1.0, info.fps * len(indices) / info.frame_count))
    csv_path, png_path = out / f"heat_{stem}.csv", out / f"heat_{stem}.png"
    _write_curve(csv_path, png_path, indices, result, f"Grad-CAM heat for {loaded.class_names[k]} at {layer}")
    return GradCamFiles(video_path, csv_path, png_path, indices, result)


def _write_curve(csv_path: Path, png_path: Path, indices: np.ndarray, result: GradCam, title: str) -> None:
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clip_frame", "source_frame", "heat_mean", "heat_max"])
        for i, (src, h) in enumerate(zip(indices, result.heat)):
            writer.writerow([i, int(src), f"{float(h.mean()):.6f}", f"{float(h.max()):.6f}"])
    from tcav.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(indices, result.frame_heat, marker="o")
    ax.set_xlabel("source frame")
    ax.set_ylabel("mean Grad-CAM heat")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
