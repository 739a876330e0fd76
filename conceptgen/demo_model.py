"""The demo model: a small 3D CNN, built from pytorchvideo's builders, trained on the
synthetic set (:mod:`conceptgen.synth`) to tell the four actor motions apart.

Network (``build_demo_network``; input (B, 3, 8, 32, 32), output logits (B, 4))::

    motion       parameter-free: appends frame differences x[t] - x[t-1]  -> (B, 6, 8, 32, 32)
    stem         conv 3x5x5 stride (1,2,2) + BN + ReLU                     -> (B, 24, 8, 16, 16)
    stage1       conv 3x3x3 stride (1,2,2) + BN + ReLU                     -> (B, 32, 8, 8, 8)
    stage2       conv 3x3x3 stride (2,2,2) + BN + ReLU                     -> (B, 48, 4, 4, 4)
    stage3       conv 3x3x3 stride (2,2,2) + BN + ReLU                     -> (B, 64, 2, 2, 2)
    head.pool    global spatiotemporal average pool                        -> (B, 64, 1, 1, 1) [pooled]
    head.proj    linear classifier                                         -> logits (B, 4)    [pooled]

Conv stages for TCAV: ``stem``, ``stage1``, ``stage2``, ``stage3`` (outputs keep T, H, W).
``head.pool`` and ``head.proj`` come after global pooling (see registry.pooled_layers).
The frame-difference input makes motion, the only class cue, explicit: a small network
trained from scratch on CPU learns it in a few epochs instead of hundreds.

Clips without class evidence. Every training video has a moving actor, so a network trained
on them alone must file a clip in which nothing moves under some class, and it learned a
shortcut: "nothing translates" meant ``growing`` (static clips, textures and frozen objects
all read as growing, and growth itself was barely learned). Beside each batch it therefore
trains, towards the uniform distribution over the classes (outlier exposure, Hendrycks et
al. 2019), one clip per batch clip that carries no class evidence: the clip frozen (its
middle frame repeated: no motion), or the same video without its actor
(:func:`conceptgen.synth.render_without_actor`: static and drifting distractors on the
background), moving or frozen, or a tracked crop of one of its distractors (from the video
without its actor), moving or frozen. Absent translation is then no evidence for
``growing``; growth has to be.

Decoys and object crops. A third of the time a training video is seen with one more
object of the actor's size that neither moves nor grows (:func:`conceptgen.synth.render_with_decoy`):
a large still object is then no evidence for ``growing`` in videos of any class. Another
third of the time it is seen as the tracked crop around its actor (the same motion, the
same label): TCAV and the engine show the model such crops of single objects (render's
``crop`` mode), at a scale the whole videos never show, so the class is learnt from the
actor's motion at either scale; the distractor crops above say the same of objects that
are not the actor.

Counterfactual twins (``TrainConfig.counterfactual_weight``, off by default). Each class
view can be paired with its twin: the same video, or the same actor crop, painted again on
a new background (:func:`conceptgen.synth.render_on_new_background`) or with 1-3 still
objects added (:func:`conceptgen.synth.render_with_still_objects`), with the same
augmentation; the squared difference of the two views' logits is added to the loss. What
the twins change carries no class evidence, so the logits should not move with it.
``empty_background_share`` also puts the videos' empty backgrounds (every object masked
out, as ``mask`` rendering shows a background) among the clips without class evidence.
Measured by ``benchmarks/tcav_training_seeds.py`` over five training seeds (weight 1, share
0.4): the TCAV benchmark's false discoveries fall from 3-5 to 1-3 per model, but the demo's
small sets learn less (20 videos: held-out accuracy 0.50, and no cluster holds a class's
actors) and the demo's distractor cluster turns significant for ``moving_left``, so they
stay off (README, Known limits).

Small sets train for more epochs: at least ``TrainConfig.min_steps`` optimiser steps (unless
``epochs`` is given, which is then exactly the number trained).

Training is seeded and idempotent: a checkpoint already trained on the same data, seed,
configuration and code is reused unless ``force``. Each finished epoch is saved beside the
checkpoint, so an interrupted run resumes from the last epoch with identical results.
"""
from __future__ import annotations

import inspect
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conceptgen.errors import DataError
from conceptgen.hashing import sha256_bytes, sha256_json
from conceptgen.progress import progress
from conceptgen.registry import DEMO_FILE, InputSpec, KINETICS_MEAN, KINETICS_STD, \
    normalize_clips, save_checkpoint
from conceptgen.render import render_background_clip, render_object_clip
from conceptgen.synth import (load_ground_truth, render_on_new_background, render_with_decoy,
                              render_with_still_objects, render_without_actor)
from conceptgen.videoio import read_clip, read_frames, resize_clip, sample_indices, write_video

BUILDER = "demo_net"
DEMO_SPEC = InputSpec(num_frames=8, side=32, mean=KINETICS_MEAN, std=KINETICS_STD)
CONV_STAGES = ("stem", "stage1", "stage2", "stage3")
POOLED_LAYER = "head.pool"
# Mirroring a clip left-right swaps these two classes; every other class keeps its label.
_MIRROR_SWAP = {"moving_right": "moving_left", "moving_left": "moving_right"}
NO_EVIDENCE_WEIGHT = 0.5  # the uniform-target loss beside the class loss (outlier exposure's weight)


class TemporalDifference(nn.Module):
    """(B, C, T, H, W) -> (B, 2C, T, H, W): the input followed by x[t] - x[t-1]
    (zero at t = 0). No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = torch.cat([torch.zeros_like(x[:, :, :1]), x[:, :, 1:] - x[:, :, :-1]], dim=2)
        return torch.cat([x, diff], dim=1)


def build_demo_network(*, num_classes: int = 4, widths: tuple[int, int, int, int] = (24, 32, 48, 64)
                       ) -> nn.Sequential:
    """The demo 3D CNN (see module docstring for shapes). Logits out, no softmax."""
    from pytorchvideo.models.head import create_res_basic_head
    from pytorchvideo.models.stem import create_res_basic_stem

    def conv_unit(dim_in, dim_out, kernel, stride):
        # pytorchvideo's basic stem without its pool is exactly conv + BN + ReLU.
        return create_res_basic_stem(in_channels=dim_in, out_channels=dim_out, conv_kernel_size=kernel,
                                     conv_stride=stride, conv_padding=tuple(k // 2 for k in kernel),
                                     pool=None)

    w0, w1, w2, w3 = widths
    return nn.Sequential(OrderedDict([
        ("motion", TemporalDifference()),
        ("stem", conv_unit(6, w0, (3, 5, 5), (1, 2, 2))),
        ("stage1", conv_unit(w0, w1, (3, 3, 3), (1, 2, 2))),
        ("stage2", conv_unit(w1, w2, (3, 3, 3), (2, 2, 2))),
        ("stage3", conv_unit(w2, w3, (3, 3, 3), (2, 2, 2))),
        ("head", create_res_basic_head(in_features=w3, out_features=num_classes,
                                       pool=nn.AdaptiveAvgPool3d, output_size=(1, 1, 1),
                                       dropout_rate=0.0, activation=None,
                                       output_with_global_average=True)),
    ]))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    widths: tuple[int, int, int, int] = (24, 32, 48, 64)
    min_steps: int = 200  # a small set trains for more epochs than ``epochs`` to reach this many steps
    # Counterfactual twins (module docstring), off by default: the weight of the squared
    # logit difference between a class view and its twin, and the share of clips without
    # class evidence that are the video's empty background (``mask`` rendering).
    counterfactual_weight: float = 0.0
    empty_background_share: float = 0.0

    def epochs_for(self, n_train: int) -> int:
        """Epochs over ``n_train`` clips: ``epochs``, or more to make ``min_steps`` steps."""
        steps_per_epoch = int(np.ceil(n_train / self.batch_size))
        return max(self.epochs, int(np.ceil(self.min_steps / steps_per_epoch)))


@dataclass(frozen=True)
class TrainReport:
    checkpoint: Path
    train_accuracy: float
    test_accuracy: float  # held-out split of the synthetic set
    epochs: int
    seconds: float        # wall time of this call
    reused: bool          # an existing checkpoint matched and was kept
    fingerprint: str
    n_train: int
    n_test: int


@dataclass
class _Split:
    clips: np.ndarray   # (N, T, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    no_actor: np.ndarray | None = None     # (N, T, S, S, 3) uint8: the same videos without their actor
    actor_crops: np.ndarray | None = None  # (N, T, S, S, 3) uint8: tracked crops of their actors
    decoys: np.ndarray | None = None       # (N, T, S, S, 3) uint8: the same videos with a still decoy
    other_crops: np.ndarray | None = None  # (M, T, S, S, 3) uint8: tracked crops of distractors, actor left out
    # counterfactual twins (TrainConfig.counterfactual_weight): (N, T, S, S, 3) uint8 each
    new_background: np.ndarray | None = None        # the video on another background
    new_background_crops: np.ndarray | None = None  # ... as the tracked crop of its actor
    still_objects: np.ndarray | None = None         # the video with still objects added
    still_objects_crops: np.ndarray | None = None
    empty_backgrounds: np.ndarray | None = None     # its background, every object masked out


def train_demo_model(data_dir: str | Path, workspace, *, seed: int = 0, epochs: int | None = None,
                     force: bool = False, config: TrainConfig | None = None) -> TrainReport:
    """Train the demo network on ``data_dir`` (a synthetic set) and save
    ``WORKSPACE/models/demo.pt``. Returns held-out accuracy among other figures."""
    started = time.monotonic()
    config = config or TrainConfig()
    if epochs is not None:  # asked for: exactly that many, however small the set
        config = TrainConfig(**{**asdict(config), "epochs": int(epochs), "min_steps": 0})
    dataset = load_ground_truth(data_dir)
    class_names = list(dataset.class_names)
    key = sha256_json({"data": dataset.manifest_hash, "seed": seed, "config": asdict(config),
                       "spec": DEMO_SPEC.to_dict(), "builder": BUILDER, "code": _code_hash()})
    workspace.ensure_dirs()
    path = Path(workspace.models) / DEMO_FILE
    if not force and (report := _reuse(path, key, started)) is not None:
        return report

    train = _load_split(dataset, "train", class_names, extra=True, twins=config.counterfactual_weight > 0,
                        empty_backgrounds=config.empty_background_share > 0)
    test = _load_split(dataset, "test", class_names)
    torch.manual_seed(seed)
    kwargs = {"num_classes": len(class_names), "widths": list(config.widths)}
    model = build_demo_network(num_classes=len(class_names), widths=config.widths)
    _fit(model, train, config, seed, class_names, resume_path=path.with_name(".demo.resume.pt"), key=key)
    train_acc, test_acc = accuracy(model, train), accuracy(model, test)
    fingerprint = save_checkpoint(
        path, builder=BUILDER, builder_kwargs=kwargs, model=model, spec=DEMO_SPEC,
        class_names=class_names, train_accuracy=train_acc, test_accuracy=test_acc, seed=seed,
        data_manifest_hash=dataset.manifest_hash, data_dir=str(Path(data_dir).resolve()),
        training_key=key, config=asdict(config), n_train=len(train.labels), n_test=len(test.labels))
    path.with_name(".demo.resume.pt").unlink(missing_ok=True)
    return TrainReport(checkpoint=path, train_accuracy=train_acc, test_accuracy=test_acc,
                       epochs=config.epochs_for(len(train.labels)), seconds=time.monotonic() - started, reused=False,
                       fingerprint=fingerprint, n_train=len(train.labels), n_test=len(test.labels))


def _code_hash() -> str:
    """This module's source: a change to the network or the loop invalidates old checkpoints."""
    return sha256_bytes(inspect.getsource(sys.modules[__name__]).encode())


def _reuse(path: Path, key: str, started: float) -> TrainReport | None:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable old checkpoint is simply retrained
        return None
    if not isinstance(ckpt, dict) or ckpt.get("training_key") != key:
        return None
    config = TrainConfig(**{**ckpt["config"], "widths": tuple(ckpt["config"]["widths"])})
    return TrainReport(checkpoint=path, train_accuracy=ckpt["train_accuracy"],
                       test_accuracy=ckpt["test_accuracy"], epochs=config.epochs_for(ckpt["n_train"]),
                       seconds=time.monotonic() - started, reused=True,
                       fingerprint=ckpt["fingerprint"], n_train=ckpt["n_train"], n_test=ckpt["n_test"])


def _load_split(dataset, split: str, class_names: list[str], *, extra: bool = False,
                twins: bool = False, empty_backgrounds: bool = False) -> _Split:
    """The split's clips and labels; with ``extra`` also the clips the module docstring
    lists beside them (videos without actor, with a decoy, actor and distractor crops),
    with ``twins`` the counterfactual twins, with ``empty_backgrounds`` the empty backgrounds."""
    videos = dataset.split(split)
    if not videos:
        raise DataError(f"{dataset.root}: no {split} videos; generate more with "
                        "`conceptgen synth --videos N` (N >= 20)")
    labels = np.array([class_names.index(v.class_name) for v in videos], dtype=np.int64)
    if not extra:
        clips = np.stack([read_clip(v.video_path, DEMO_SPEC.num_frames, DEMO_SPEC.side)
                          for v in progress(videos, desc=f"decode {split}", unit="video")])
        return _Split(clips=clips, labels=labels)
    clips, no_actor, actor_crops, other_crops, decoys = [], [], [], [], []
    twin_clips: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="demo-no-actor-") as tmp:
        path = Path(tmp) / "clip.mp4"

        def encoded(frames: np.ndarray) -> np.ndarray:
            # through the same H.264 encoding and decoding as the video (compression never tells them apart)
            write_video(path, frames, fps=dataset.fps)
            return read_frames(path)

        for v in progress(videos, desc=f"decode and crop {split}", unit="video"):
            frames, full = read_frames(v.video_path), v.load_masks(visible=False)
            clips.append(_whole_clip(frames))
            actor_crops.append(_crop(frames, full[v.actor.index]))
            bare = encoded(render_without_actor(dataset, v))
            decoys.append(_whole_clip(encoded(render_with_decoy(dataset, v))))
            no_actor.append(_whole_clip(bare))
            other_crops += [c for o in v.objects if o.role != "actor"
                            if (c := _crop(bare, full[o.index])) is not None]
            if twins:
                for name, render in (("new_background", render_on_new_background),
                                     ("still_objects", render_with_still_objects)):
                    twin = encoded(render(dataset, v))
                    twin_clips.setdefault(name, []).append(_whole_clip(twin))
                    twin_clips.setdefault(f"{name}_crops", []).append(_crop(twin, full[v.actor.index]))
            if empty_backgrounds:
                twin_clips.setdefault("empty_backgrounds", []).append(
                    render_background_clip(bare, full, num_frames=DEMO_SPEC.num_frames, side=DEMO_SPEC.side))
    return _Split(clips=np.stack(clips), labels=labels, no_actor=np.stack(no_actor),
                  actor_crops=np.stack(actor_crops), decoys=np.stack(decoys),
                  other_crops=np.stack(other_crops or no_actor),  # no distractor shows in 2 frames: none to crop
                  **{name: np.stack(c) for name, c in twin_clips.items()})


def _whole_clip(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) decoded frames -> the clip ``read_clip`` gives of the same video."""
    return resize_clip(frames[sample_indices(len(frames), DEMO_SPEC.num_frames)], DEMO_SPEC.side)


def _crop(frames: np.ndarray, masks: np.ndarray) -> np.ndarray | None:
    return render_object_clip(frames, masks, mode="crop", num_frames=DEMO_SPEC.num_frames, side=DEMO_SPEC.side)


def _augment(clips: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, swap: torch.Tensor,
             twins: torch.Tensor | None = None):
    """Label-preserving augmentations of (B, 3, T, H, W) clips, drawn from ``gen``:
    left-right mirror (swapping the direction labels), up-down flip, and a random
    permutation of the colour channels (colour never tells the class). ``twins`` (same
    shape) get the same draws. Returns (clips, labels, twins)."""
    b = len(labels)
    mirror = torch.rand(b, generator=gen) < 0.5
    updown = torch.rand(b, generator=gen) < 0.5
    perms = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])

    def apply(c: torch.Tensor) -> torch.Tensor:
        c = torch.where(mirror.view(-1, 1, 1, 1, 1), c.flip(-1), c)
        c = torch.where(updown.view(-1, 1, 1, 1, 1), c.flip(-2), c)
        return torch.gather(c, 1, perms.view(b, 3, 1, 1, 1).expand_as(c))

    return apply(clips), torch.where(mirror, swap[labels], labels), None if twins is None else apply(twins)


def _frozen(clips: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> the middle frame repeated T times (videoio.static_clip's rule)."""
    t = clips.shape[2]
    return clips[:, :, t // 2:t // 2 + 1].expand_as(clips)


def _no_evidence(clips: torch.Tensor, no_actor: torch.Tensor, others: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """One clip without class evidence per clip of the batch (all (B, 3, T, H, W)): the
    clip frozen, its video without the actor, a distractor crop, or either of the last
    two frozen, drawn from ``gen``."""
    kind = torch.randint(0, 5, (len(clips),), generator=gen).view(-1, 1, 1, 1, 1)
    moving = torch.where(kind % 2 == 1, no_actor, others)
    return torch.where(kind == 0, _frozen(clips), torch.where(kind >= 3, _frozen(moving), moving))


_TWIN_FIELDS = ("new_background", "new_background_crops", "still_objects", "still_objects_crops",
                "empty_backgrounds")


def _twin_views(twins: dict[str, torch.Tensor], idx: torch.Tensor, view: torch.Tensor, decoys: torch.Tensor,
                gen: torch.Generator) -> torch.Tensor:
    """Each class view's counterfactual twin: the same video (``view`` 0) or actor crop
    (``view`` 2) on a new background or with still objects added, drawn from ``gen``; a
    decoy view (1) is its own twin."""
    pick = torch.randint(0, 2, (len(idx),), generator=gen).view(-1, 1, 1, 1, 1)
    whole = torch.where(pick == 0, twins["new_background"][idx], twins["still_objects"][idx])
    crop = torch.where(pick == 0, twins["new_background_crops"][idx], twins["still_objects_crops"][idx])
    return torch.where(view == 2, crop, torch.where(view == 1, decoys[idx], whole))


def _with_empty_backgrounds(no_evidence: torch.Tensor, empty: torch.Tensor, share: float,
                            gen: torch.Generator) -> torch.Tensor:
    """``share`` of the clips without class evidence replaced by empty backgrounds, half of them frozen."""
    b = len(no_evidence)
    use = (torch.rand(b, generator=gen) < share).view(-1, 1, 1, 1, 1)
    empty = torch.where(torch.rand(b, generator=gen).view(-1, 1, 1, 1, 1) < 0.5, _frozen(empty), empty)
    return torch.where(use, empty, no_evidence)


def _fit(model: nn.Module, train: _Split, config: TrainConfig, seed: int,
         class_names: list[str], *, resume_path: Path, key: str) -> None:
    """AdamW + one-cycle LR, label-preserving augmentation, and the class loss plus
    ``NO_EVIDENCE_WEIGHT`` x the cross-entropy of clips without class evidence against
    the uniform distribution (module docstring). Saves a resume point after each epoch."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = int(np.ceil(len(train.labels) / config.batch_size))
    epochs = config.epochs_for(len(train.labels))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr,
                                                   total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.15)
    swap = torch.tensor([class_names.index(_MIRROR_SWAP.get(c, c)) for c in class_names])
    x_all = normalize_clips(train.clips, DEMO_SPEC)
    crop_all = normalize_clips(train.actor_crops, DEMO_SPEC)
    decoy_all = normalize_clips(train.decoys, DEMO_SPEC)
    free_all = normalize_clips(train.no_actor, DEMO_SPEC)
    other_all = normalize_clips(train.other_crops, DEMO_SPEC)
    y_all = torch.from_numpy(train.labels)
    twins = {name: normalize_clips(getattr(train, name), DEMO_SPEC) for name in _TWIN_FIELDS
             if getattr(train, name) is not None}
    first_epoch = _resume(resume_path, key, model, optimiser, schedule)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress(range(first_epoch, epochs), desc="train demo model", unit="epoch")
    for epoch in bar:
        model.train()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)  # per-epoch stream: resumable
        order = torch.randperm(len(y_all), generator=gen)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            view = torch.randint(0, 3, (len(idx),), generator=gen).view(-1, 1, 1, 1, 1)  # whole, decoy, crop
            x = torch.where(view == 0, x_all[idx], torch.where(view == 1, decoy_all[idx], crop_all[idx]))
            twin = _twin_views(twins, idx, view, decoy_all, gen) if config.counterfactual_weight > 0 else None
            x, y, twin = _augment(x, y_all[idx], gen, swap, twin)
            free, _, _ = _augment(free_all[idx], y_all[idx], gen, swap)
            others, _, _ = _augment(other_all[torch.randint(0, len(other_all), (len(idx),), generator=gen)],
                                    y_all[idx], gen, swap)
            no_evidence = _no_evidence(x, free, others, gen)
            if config.empty_background_share > 0:
                empty, _, _ = _augment(twins["empty_backgrounds"][idx], y_all[idx], gen, swap)
                no_evidence = _with_empty_backgrounds(no_evidence, empty, config.empty_background_share, gen)
            optimiser.zero_grad(set_to_none=True)
            b = len(y)
            logits = model(torch.cat([x, no_evidence] + ([twin] if twin is not None else [])))  # shared BatchNorm
            uniform = -torch.log_softmax(logits[b:2 * b], dim=1).mean()
            loss = loss_fn(logits[:b], y) + NO_EVIDENCE_WEIGHT * uniform
            if twin is not None:
                loss = loss + config.counterfactual_weight * (logits[2 * b:] - logits[:b]).pow(2).mean()
            loss.backward()
            optimiser.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        tmp = resume_path.with_name(resume_path.name + ".partial")
        torch.save({"key": key, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict()}, tmp)
        tmp.replace(resume_path)
    model.eval()


def _resume(path: Path, key: str, model, optimiser, schedule) -> int:
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return 0
    if state.get("key") != key:
        return 0
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    return int(state["epoch"])


@torch.no_grad()
def accuracy(model: nn.Module, split: _Split, batch_size: int = 32) -> float:
    """Fraction of clips whose arg-max logit is the true label."""
    model.eval()
    correct = 0
    for start in range(0, len(split.labels), batch_size):
        x = normalize_clips(split.clips[start:start + batch_size], DEMO_SPEC)
        correct += int((model(x).argmax(1).numpy() == split.labels[start:start + batch_size]).sum())
    return correct / len(split.labels)


__all__ = ["build_demo_network", "train_demo_model", "accuracy", "TrainConfig", "TrainReport",
           "DEMO_SPEC", "CONV_STAGES", "POOLED_LAYER"]
