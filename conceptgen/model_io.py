"""How clips go into a video model and what comes out of it: the input spec (frames,
side, normalisation, pathways, axis layout), the normalisation of uint8 clips, the
model's input tensor, the rule that finds logits in a model's output, and the one-line
message for a forward that fails inside the user's model.

Layouts: ``BCTHW`` (pytorchvideo, torchvision: channels before time) is the default;
``BTCHW`` (Hugging Face video transformers' ``pixel_values``: time before channels).

The logits rule (:func:`logits_of`): a tensor is the logits; a ``ModelOutput`` or other
mapping gives its ``logits`` entry; a tuple or list gives its first element. Anything
else has no logits (:class:`ModelError` where logits are needed).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch

from conceptgen.errors import DataError, ModelError

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
LAYOUTS = ("BCTHW", "BTCHW")
SPEC_KEYS = ("num_frames", "side", "mean", "std", "pathways", "slowfast_alpha", "layout")


@dataclass(frozen=True)
class InputSpec:
    """What a model eats: ``num_frames`` x ``side`` x ``side`` RGB clips, scaled to [0, 1]
    then normalised per channel, with axes in ``layout`` order. SlowFast takes
    ``[slow, fast]`` where the slow pathway keeps every ``slowfast_alpha``-th frame.
    ``layout_stated``: whether the user wrote the layout (flags, card, sidecar); a spec
    that does not say takes the model's own layout when it is known
    (:meth:`with_model_layout`)."""

    num_frames: int
    side: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pathways: str = "single"  # "single" | "slowfast"
    slowfast_alpha: int = 4
    layout: str = "BCTHW"  # one of LAYOUTS
    layout_stated: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        """From ``{"num_frames", "side"[, "mean", "std", "pathways", "slowfast_alpha",
        "layout"]}`` (mean and std default to Kinetics'); raises ModelError naming what is wrong."""
        if not isinstance(d, dict) or not {"num_frames", "side"} <= set(d) or set(d) - set(SPEC_KEYS):
            raise ModelError(f"bad input spec {d!r}; give {{\"num_frames\": N, \"side\": S[, \"mean\": "
                             "[r, g, b], \"std\": [r, g, b], \"pathways\": \"single\"|\"slowfast\", "
                             "\"layout\": \"BCTHW\"|\"BTCHW\"]}")
        try:
            spec = cls(num_frames=int(d["num_frames"]), side=int(d["side"]),
                       mean=tuple(float(x) for x in d.get("mean", KINETICS_MEAN)),
                       std=tuple(float(x) for x in d.get("std", KINETICS_STD)),
                       pathways=d.get("pathways", "single"), slowfast_alpha=int(d.get("slowfast_alpha", 4)),
                       layout=str(d.get("layout", "BCTHW")).upper(), layout_stated="layout" in d)
        except (TypeError, ValueError) as err:
            raise ModelError(f"bad input spec {d!r} ({err}); num_frames and side are integers, "
                             "mean and std three numbers") from err
        if spec.num_frames < 1 or spec.side < 1 or len(spec.mean) != 3 or len(spec.std) != 3 \
                or spec.pathways not in ("single", "slowfast"):
            raise ModelError(f"bad input spec {d!r}; num_frames and side >= 1, mean and std three "
                             "numbers, pathways single or slowfast")
        if spec.layout not in LAYOUTS:
            raise ModelError(f"bad input spec {d!r}; layout is BCTHW (channels before time: pytorchvideo, "
                             "torchvision) or BTCHW (time before channels: Hugging Face pixel_values)")
        return spec

    def to_dict(self) -> dict:
        """Plain values; ``layout`` only when it is not the default, so the records of
        runs and checkpoints made before layouts existed read the same."""
        d = asdict(self)
        del d["layout_stated"]
        if self.layout == "BCTHW":
            del d["layout"]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def with_model_layout(self, layout: str | None) -> "InputSpec":
        """This spec with the model's own ``layout`` unless the user stated one."""
        if layout is None or self.layout_stated:
            return self
        return replace(self, layout=layout, layout_stated=True)


# --------------------------------------------------------------------------- inputs
def normalize_clips(clips: np.ndarray | torch.Tensor, spec: InputSpec,
                    device: torch.device | str = "cpu", *, what: str = "the model") -> torch.Tensor:
    """uint8 (B, T, H, W, 3) at spec size -> float (B, 3, T, S, S): scaled to [0, 1], then
    (x - mean) / std per channel. Raises DataError for clips of the wrong shape."""
    x = clips if isinstance(clips, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(clips))
    want = (spec.num_frames, spec.side, spec.side, 3)
    if x.ndim != 5 or tuple(x.shape[1:]) != want:
        raise DataError(f"{what} needs clips shaped (B, {want[0]}, {want[1]}, {want[2]}, 3), got "
                        f"{tuple(x.shape)}; sample with videoio.sample_indices and resize with "
                        "videoio.resize_clip")
    if isinstance(clips, np.ndarray) and clips.dtype == np.uint8 and torch.device(device).type == "cpu":
        # A uint8 value has 256 normalised values per channel: one table lookup (cv2.LUT)
        # gives the same floats as the arithmetic below, in a third of its time.
        table = _normalisation_table(tuple(spec.mean), tuple(spec.std))
        flat = cv2.LUT(x.numpy().reshape(-1, spec.side, 3), table)  # x: the contiguous array made above
        return torch.from_numpy(flat).view(x.shape).permute(0, 4, 1, 2, 3)
    return _normalise(x.to(device), spec.mean, spec.std)


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W): (x / 255 - mean) / std per channel."""
    x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean_t) / std_t


@functools.lru_cache(maxsize=16)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(1, 256, 3) float32: :func:`_normalise` of every uint8 value in each channel."""
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256, 1).expand(1, 1, 1, 256, 3)
    table = _normalise(values, mean, std).permute(0, 2, 3, 4, 1).reshape(1, 256, 3).contiguous().numpy()
    table.flags.writeable = False
    return table


def pack_pathways(x: torch.Tensor, spec: InputSpec) -> torch.Tensor | list[torch.Tensor]:
    """(B, 3, T, S, S) -> itself, or ``[slow, fast]`` for SlowFast (slow: T // alpha frames
    picked uniformly, as in pytorchvideo's PackPathway)."""
    if spec.pathways != "slowfast":
        return x
    t = x.shape[2]
    slow_idx = torch.linspace(0, t - 1, max(1, t // spec.slowfast_alpha), device=x.device).long()
    return [x.index_select(2, slow_idx), x]


def model_input(x: torch.Tensor, spec: InputSpec) -> torch.Tensor | list[torch.Tensor]:
    """Normalised (B, 3, T, S, S) -> what the model's forward takes: axes in
    ``spec.layout`` order, then ``[slow, fast]`` for SlowFast (:func:`pack_pathways`)."""
    packed = pack_pathways(x, spec)
    if spec.layout == "BCTHW":
        return packed
    return [p.transpose(1, 2) for p in packed] if isinstance(packed, list) else packed.transpose(1, 2)


# --------------------------------------------------------------------------- outputs
def logits_of(output: Any) -> torch.Tensor | None:
    """The logits in a model's output by the rule in the module docstring; None if none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # a Hugging Face ModelOutput is an OrderedDict
        found = output.get("logits")
        return found if isinstance(found, torch.Tensor) else None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def require_logits(output: Any) -> torch.Tensor:
    """:func:`logits_of` a classifier's output, (B, classes); ModelError otherwise."""
    logits = logits_of(output)
    if logits is None or logits.ndim != 2:
        got = type(output).__name__ if logits is None else f"{type(output).__name__} {tuple(logits.shape)}"
        raise ModelError(f"the model returned {got}, not logits (B, classes): return a tensor, a "
                         "ModelOutput or dict with 'logits', or a tuple whose first item is the logits")
    return logits


# --------------------------------------------------------------------------- failures
def forward_failure(err: Exception, spec: InputSpec | None, inputs: Any) -> ModelError:
    """A forward that raised inside the user's model as one line: the model's own
    message and the likely fix (layout, frames or side of the input spec)."""
    first = " ".join(str(err).split())[:240]
    shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else \
        [tuple(t.shape) for t in inputs] if isinstance(inputs, (list, tuple)) else type(inputs).__name__
    said = f"{type(err).__name__}: {first}"
    if spec is None:
        return ModelError(f"the model's forward failed on input {shape} ({said}); check --input-spec")
    fed = f"{spec.layout} input {shape} ({spec.num_frames} frames, side {spec.side})"
    return ModelError(f"the model's forward failed on {fed}: {said}; likely fix: {_likely_fix(first, spec)}")


def _likely_fix(message: str, spec: InputSpec) -> str:
    m = message.lower()
    other = "BTCHW" if spec.layout == "BCTHW" else "BCTHW"
    if "channel" in m:
        return (f"the model takes the other axis order: add \"layout\": \"{other}\" to --input-spec "
                "(model card or sidecar spec)")
    if "frame" in m or "tubelet" in m or "time" in m:
        return "set \"num_frames\" in --input-spec to the frame count the model was built for"
    if "size" in m or "height" in m or "width" in m or "patch" in m or "shape" in m:
        return ("set \"num_frames\" and \"side\" in --input-spec to what the model was built for "
                "(its position embeddings fix the number of tokens)")
    return (f"check --input-spec: \"layout\" ({spec.layout} now; {other} puts time before channels), "
            "\"num_frames\" and \"side\" must be what the model was built for")
