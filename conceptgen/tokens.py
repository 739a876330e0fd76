"""Token layers of video transformers mapped back to time and space (pure).

A transformer block's output is tokens (B, N, D): optionally ``prefix`` class tokens,
then one token per tubelet/patch of a ``frames`` x ``height`` x ``width`` grid, in the
order the model's patch embedding flattened them (``thw``: time-major, as VideoMAE's
and ViViT's Conv3d + flatten; ``hwt``: space-major, as TimeSformer's divided
attention). :func:`to_grid` turns such a tensor into (B, D, T, H, W), the class tokens
set aside, so every view made for 3-D CNN layers (temporal TCAV, Grad-CAM, pooled
embeddings) reads it the same way. A tensor that is not of that length is left as it
is, and :func:`why_not_grid` says why in one phrase.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ORDERS = ("thw", "hwt")


@dataclass(frozen=True)
class TokenGrid:
    """``frames`` x ``height`` x ``width`` patch tokens after ``prefix`` class tokens,
    flattened in ``order`` (one of :data:`ORDERS`)."""

    frames: int
    height: int
    width: int
    prefix: int = 0
    order: str = "thw"

    def __post_init__(self):
        if self.order not in ORDERS or min(self.frames, self.height, self.width) < 1 or self.prefix < 0:
            raise ValueError(f"bad token grid {self}")

    @property
    def patches(self) -> int:
        return self.frames * self.height * self.width

    @property
    def tokens(self) -> int:
        return self.prefix + self.patches

    def describe(self) -> str:
        cls = f" after {self.prefix} class token{'s' * (self.prefix > 1)}" if self.prefix else ""
        return f"T {self.frames} x H {self.height} x W {self.width}{cls}"


def regroup(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A tensor whose first axis is k * ``batch`` (a model that folds positions into the
    batch, as TimeSformer's attention does: ``x.reshape(B * k, ...)``) as (batch, k, ...),
    batch-major like the reshape that folded it; any other tensor as it is."""
    if batch >= 1 and t.ndim >= 1 and t.shape[0] != batch and t.shape[0] % batch == 0:
        return t.reshape(batch, t.shape[0] // batch, *t.shape[1:])
    return t


def to_grid(t: torch.Tensor, grid: TokenGrid) -> torch.Tensor | None:
    """(B, N, D) tokens with N == grid.tokens (or grid.patches: a block that works on
    the patch tokens alone) -> (B, D, T, H, W), class tokens dropped; None for any
    other tensor (see :func:`why_not_grid`)."""
    if t.ndim != 3 or t.shape[1] not in (grid.tokens, grid.patches):
        return None
    b, n, d = t.shape
    patches = t[:, n - grid.patches:]
    if grid.order == "thw":
        return patches.reshape(b, grid.frames, grid.height, grid.width, d).permute(0, 4, 1, 2, 3)
    return patches.reshape(b, grid.height, grid.width, grid.frames, d).permute(0, 4, 3, 1, 2)


def why_not_grid(shape: tuple[int, ...], grid: TokenGrid) -> str | None:
    """Why a per-clip output ``shape`` (without the batch axis) has no time grid; None
    when it has one: already (D, T, H, W), or tokens (N, D) that :func:`to_grid` maps."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        return None
    if len(shape) == 2 and shape[0] in (grid.tokens, grid.patches):
        return None
    if len(shape) == 2:
        return (f"its {shape[0]} tokens are not the model's {grid.patches} patch tokens of "
                f"{grid.describe()}")
    if len(shape) == 3:
        return (f"its output {shape} folds {shape[0]} positions per clip into the batch axis "
                "(attention within a frame or over time), so its tokens have no single time grid")
    if len(shape) <= 1:
        return f"its output {shape} is one vector per clip (pooled)"
    return f"its output {shape} is not (tokens, channels)"
