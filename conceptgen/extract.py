"""Extraction runs: every ingested video -> region tubes -> embeddings + previews.

Recipe per video (the method section, in order):
  1. decode, downscaled so max(H, W) <= ``max_side``;
  2. segment with the chosen segmenters (one optical flow shared by all);
  3. track detections into tubes;
  4. render each tube into a model-sized clip (``render_mode``) and embed it,
     batch by batch, at the chosen layers;
  5. write an H.264 preview with the region outlined, per tube;
  6. commit the video's tubes, embeddings and RunVideo row in ONE transaction.

A run is identified by the hash of everything that changes its results (config +
model fingerprint). Running the same config again resumes that run and skips the
videos already 'done'; failed videos are retried. Each video's randomness is seeded
from (run seed, video sha256), so a killed-and-resumed run ends with exactly the
tubes an uninterrupted run makes. One failing video is recorded on its RunVideo
row with the reason and the run goes on.
"""
from __future__ import annotations

import random
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import cv2
import numpy as np
import sqlalchemy.exc
import torch
from sqlalchemy import func, select

import conceptgen
from conceptgen.embed import POOLINGS, HookEmbedder, embed_clips, vector_to_blob
from conceptgen.errors import ConceptgenError, ConfigError, NotFoundError, StoreUnavailableError
from conceptgen.hashing import sha256_file, sha256_json
from conceptgen.ingest import select_videos
from conceptgen.masks import encode_rle
from conceptgen.orm import Clustering, Embedding, Run, RunVideo, Tube, Video, utcnow
from conceptgen.progress import progress, stage_progress
from conceptgen.workspace import Workspace

if TYPE_CHECKING:
    from conceptgen.executors import Executor

DEFAULT_RENDER_MODE = "mask"  # keeps position and scale, so motion survives (benchmarks/discovery.py)
PREVIEW_MAX_SIDE = 256
# Config fields left out of a run's identity: the model's weight fingerprint already says which weights.
IDENTITY_EXCLUDED = ("pretrained",)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides a run's tubes and embeddings (units: pixels, frames)."""

    model: str = "demo"  # a registry.ModelSource: name, checkpoint, model card or package.module:function
    weights: str | None = None
    pretrained: bool = False  # a registry model's published weights
    model_kwargs: dict | None = None
    input_spec: dict | None = None  # InputSpec.to_dict()
    class_names: tuple[str, ...] | None = None
    segmenters: str = "motion,supervoxel,foreground"
    sam_checkpoint: str | None = None
    sam_model: str = "vit_b"
    keyframe_every: int = 4
    min_tube_length: int = 8  # shorter tubes (< 0.3 s) were fragments on real clips (benchmarks/real_discovery.py)
    layers: tuple[str, ...] = ()  # empty: the model's default layer (see default_layers)
    pooling: str = "mean"
    render_mode: str = DEFAULT_RENDER_MODE
    amp: bool = False
    seed: int = 0
    max_side: int = 256
    max_frames: int | None = None  # process only the first N decoded frames (None: all)
    videos: str = "all"

    @classmethod
    def from_options(cls, *, segmenter: str | None = None, layers: str | Sequence[str] | None = None,
                     mode: str | None = None, source=None, **kwargs) -> "ExtractConfig":
        """From CLI-style options: comma-separated strings, None meaning the default;
        ``source`` a registry.ModelSource (the model flags)."""
        from conceptgen.segment import default_segmenter_names

        if source is not None:
            kwargs.update(model=source.model, weights=source.weights, pretrained=source.pretrained,
                          model_kwargs=source.model_kwargs,
                          input_spec=source.spec.to_dict() if source.spec else None,
                          class_names=source.class_names)
        if Path(kwargs.get("model", "")).is_file():  # a checkpoint or card: the same file from any folder
            kwargs["model"] = str(Path(kwargs["model"]).resolve())
        if isinstance(layers, str):
            layers = [x.strip() for x in layers.split(",") if x.strip()]
        segmenters = segmenter or default_segmenter_names(kwargs.get("sam_checkpoint"))
        for key in ("weights", "sam_checkpoint"):
            if kwargs.get(key) is not None:
                kwargs[key] = str(Path(kwargs[key]).resolve())
        config = cls(segmenters=segmenters, layers=tuple(layers or ()),
                     render_mode=mode or DEFAULT_RENDER_MODE, **kwargs)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["layers"] = tuple(kwargs.get("layers") or ())
        if kwargs.get("class_names") is not None:
            kwargs["class_names"] = tuple(kwargs["class_names"])
        return cls(**kwargs)

    def build_segmenters(self, device: str = "cpu") -> list:
        """The segmenters this config names (segment.Segmenter), as every video of its run uses them."""
        from conceptgen.segment import build_segmenters

        return build_segmenters(self.segmenters, sam_checkpoint=self.sam_checkpoint, sam_model=self.sam_model,
                                device=device, keyframe_every=self.keyframe_every, seed=self.seed)

    def model_source(self):
        """The model this config names, as a registry.ModelSource."""
        from conceptgen.registry import InputSpec, ModelSource

        return ModelSource(self.model, weights=self.weights, pretrained=self.pretrained, model_kwargs=self.model_kwargs,
                           spec=InputSpec.from_dict(self.input_spec) if self.input_spec else None,
                           class_names=self.class_names)

    def validate(self) -> None:
        from conceptgen.render import RENDER_MODES

        if self.pooling not in POOLINGS:
            raise ConfigError(f"--pooling {self.pooling!r} unknown; use one of {', '.join(POOLINGS)}")
        if self.render_mode not in RENDER_MODES:
            raise ConfigError(f"--mode {self.render_mode!r} unknown; use one of {', '.join(RENDER_MODES)}")
        if self.max_side < 16:
            raise ConfigError(f"--max-side {self.max_side} is too small; use at least 16 pixels")
        if self.max_frames is not None and self.max_frames < 2:
            raise ConfigError(f"--max-frames {self.max_frames} is too small; use at least 2 frames")
        if self.min_tube_length < 1 or self.keyframe_every < 1:
            raise ConfigError("min_tube_length and keyframe_every must be at least 1")


@dataclass
class ExtractReport:
    run_id: int
    resumed: bool
    n_done: int = 0
    n_failed: int = 0
    n_skipped: int = 0  # already done before this call, or claimed by another driver
    n_discarded: int = 0  # computed, but another driver had taken the video over (nothing written)
    n_tubes: int = 0
    lost_workers: int = 0  # Ray workers (or their nodes) that died during this call
    n_retried: int = 0  # videos handed to another worker after theirs died
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video path, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (video path, note) for done videos
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    seconds: float = 0.0

    def add(self, outcome: "VideoOutcome") -> None:
        for stage, secs in outcome.stage_seconds.items():
            self.stage_seconds[stage] += secs
        if outcome.status == "lost":
            self.n_discarded += 1
        elif outcome.status == "failed":
            self.n_failed += 1
            self.failures.append((outcome.path, outcome.reason))
        else:
            self.n_done += 1
            self.n_tubes += outcome.n_tubes
            if outcome.note:
                self.notes.append((outcome.path, outcome.note))

    def summary_lines(self) -> list[str]:
        lines = [f"run {self.run_id} ({'resumed' if self.resumed else 'new'}): {self.n_done} videos done, "
                 f"{self.n_failed} failed, {self.n_skipped} already done (here or by another driver); {self.n_tubes} tubes "
                 f"in {self.seconds:.1f}s"]
        if self.n_discarded:
            lines.append(f"  {self.n_discarded} video(s) computed but discarded: another driver had taken "
                         "them over and stored them")
        if self.lost_workers or self.n_retried:
            lines.append(f"  {self.lost_workers} worker(s) lost (process or node died); {self.n_retried} video(s) "
                         "retried on the other workers")
        lines += [f"  note: {p}: {n}" for p, n in self.notes]
        lines += [f"  failed: {p}: {r}" for p, r in self.failures]
        return lines


@dataclass
class VideoTubes:
    """One video's extraction result, before it is stored. frames (T, H, W, 3) uint8 at
    the processing size; embeddings {layer: (n_tubes, D) float32}."""

    frames: np.ndarray
    tubes: list  # track.Tube
    embeddings: dict[str, np.ndarray]
    note: str | None = None
    objectness: list = field(default_factory=list)  # objectness.TubeObjectness per tube


DEFAULT_VIDEO_TIME_LIMIT = 1800.0  # seconds per video; past it the video is recorded as failed


@dataclass
class StageClock:
    """One video's stages: wall seconds per stage in ``totals``, a progress bar per stage
    (``label``: the video), and the video's time budget (``start_video`` arms it)."""

    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    label: str = ""
    budget: float | None = DEFAULT_VIDEO_TIME_LIMIT
    deadline: float | None = None

    def start_video(self, label: str) -> None:
        self.totals.clear()
        self.label = label
        self.deadline = None if self.budget is None else time.monotonic() + self.budget

    @contextmanager
    def __call__(self, stage: str, total: int = 0, unit: str = "frame", *,
                 budgeted: bool = True) -> Iterator[Callable[[int], None]]:
        """Times the block as ``stage``; yields ``tick(n)`` for its ``total`` units of work.
        ``budgeted=False``: the time budget is not enforced (storing finished work)."""
        t0 = time.perf_counter()
        try:
            with stage_progress(stage, total, unit=unit, label=self.label, budget=self.budget,
                                deadline=self.deadline if budgeted else None) as tick:
                yield tick
        finally:
            self.totals[stage] += time.perf_counter() - t0


# --- identity ------------------------------------------------------------------
def code_version() -> str:
    """Package version, plus the git commit when the code runs from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(conceptgen.__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{conceptgen.__version__}+g{sha}" if sha else conceptgen.__version__


def run_identity(config: ExtractConfig, model_fingerprint: str) -> str:
    """sha256 of the result-determining config, the model weights and how clips go
    through the model (conceptgen.capture.FORWARD_CONTRACT)."""
    from conceptgen.capture import FORWARD_CONTRACT

    fields_ = {k: v for k, v in asdict(config).items() if k not in IDENTITY_EXCLUDED}
    return sha256_json({"config": fields_, "model_fingerprint": model_fingerprint,
                        "forward": FORWARD_CONTRACT})


def video_seed(run_seed: int, video_sha256: str) -> int:
    """Per-video seed: independent of processing order, so resume is exact."""
    return int(sha256_json([int(run_seed), video_sha256])[:8], 16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    cv2.setRNGSeed(seed % (2**31))


def default_layers(loaded) -> tuple[str, ...]:
    """The model's own choice (checkpoint metadata ``concept_layers``), else the last
    module, in execution order, whose output still has time and space (B, C, T, H, W)
    with H, W > 1: the deepest spatiotemporal features, found by one probe forward."""
    meta = getattr(loaded, "metadata", {}) or {}
    if meta.get("concept_layers"):
        return tuple(meta["concept_layers"])
    from conceptgen.capture import capture_layers
    from conceptgen.registry import layer_names

    spec = loaded.spec
    probe = np.zeros((1, spec.num_frames, spec.side, spec.side, 3), dtype=np.uint8)
    with capture_layers(loaded.model, layer_names(loaded), require_all=False) as capture, \
            torch.inference_mode():
        seen = capture.forward(loaded.prepare(probe)).layers  # in the order the layers finished
    finished = [n for n, ts in seen.items() if len(ts) == 1 and ts[0].dim() == 5 and min(ts[0].shape[3:]) > 1]
    if not finished:
        raise ConfigError(f"cannot choose a layer for model {loaded.name}; pass --layers NAME")
    # A container finishes after its children, so the last entry is the outermost module.
    return (finished[-1],)


# --- one video (pure of the database) ----------------------------------------------
class VideoProcessor:
    """Turns one video's frames into tubes and embeddings (steps 2-4 of the recipe)."""

    def __init__(self, config: ExtractConfig, loaded, *, batch_size: int, clock: StageClock | None = None):
        from conceptgen.render import fill_from_mean

        self.config, self.loaded, self.batch_size = config, loaded, batch_size
        self.clock = clock or StageClock(budget=None)
        self.segmenters = config.build_segmenters(str(loaded.device))
        self.embedder = HookEmbedder(loaded, config.layers, pooling=config.pooling, amp=config.amp)
        self.fill = fill_from_mean(loaded.spec.mean)

    def __call__(self, frames: np.ndarray) -> VideoTubes:
        from conceptgen.segment import optical_flow, run_segmenters
        from conceptgen.track import build_tubes

        from conceptgen.objectness import score_tubes
        from conceptgen.track import tracking_work_units

        t = len(frames)
        with self.clock("segment", total=t - 1 + sum(s.work_units(t) for s in self.segmenters)) as tick:
            flows = optical_flow(frames, tick=tick)
            detections = run_segmenters(self.segmenters, frames, flows=flows, tick=tick)
        observed = {s.name: set(s.keyframes(t)) for s in self.segmenters if len(s.keyframes(t)) < t}
        # A video shorter than the minimum tube length still yields (shorter) tubes.
        min_length = min(self.config.min_tube_length, t)
        with self.clock("track", total=tracking_work_units(detections)) as tick:
            tubes = build_tubes(frames, detections, flows=flows, observed=observed or None,
                                min_length=min_length, tick=tick)
        with self.clock("objectness", total=max(t - 1, 0) + len(tubes), unit="step") as tick:
            objectness = score_tubes(tubes, flows, seed=self.config.seed, tick=tick) if tubes else []
        with self.clock("embed", total=len(tubes), unit="tube") as tick:
            embeddings = embed_clips(self.embedder, self._rendered(frames, tubes, tick),
                                     batch_size=self.batch_size) if tubes else {}
        n = self.loaded.spec.num_frames
        notes = [f"short video: {t} frames < clip length {n}, frames repeated"] if t < n else []
        if tubes and all(o.background for o in objectness):
            notes.append(f"all {len(tubes)} tubes are background (large, static, edge-touching or weak-edged "
                         "regions): no candidates from this video")
        return VideoTubes(frames, tubes, embeddings, "; ".join(notes) or None, objectness)

    def _rendered(self, frames: np.ndarray, tubes: list, tick: Callable[[int], None]) -> Iterator[np.ndarray]:
        for tube in tubes:
            yield self.render(frames, tube)
            tick(1)

    def render(self, frames: np.ndarray, tube) -> np.ndarray:
        from conceptgen.render import render_tube_clip

        spec = self.loaded.spec
        return render_tube_clip(frames, tube.frames, tube.masks, tube.boxes, mode=self.config.render_mode,
                                num_frames=spec.num_frames, side=spec.side, fill=self.fill)


# --- one video, start to finish (the same code on every executor) ----------------------
@dataclass(frozen=True)
class ExtractTask:
    """What a worker needs besides the model: where to write, which run, and whose claim."""

    workspace: Workspace
    run_id: int
    config: ExtractConfig
    batch_size: int
    owner: str  # the driver's claim token (conceptgen.claims)
    video_time_limit: float | None = DEFAULT_VIDEO_TIME_LIMIT  # seconds; None: no limit


@dataclass(frozen=True)
class VideoJob:
    video_id: int
    path: str
    sha256: str
    fps: float | None
    frame_count: int | None

    @classmethod
    def of(cls, video: Video) -> "VideoJob":
        return cls(video.id, video.path, video.sha256, video.fps, video.frame_count)


@dataclass
class VideoOutcome:
    """One video's fate: 'done', 'failed' (reason recorded on its RunVideo row) or 'lost'
    (its claim was taken over by another driver; nothing of it was written)."""

    video_id: int
    path: str
    status: str
    n_tubes: int = 0
    note: str | None = None
    reason: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


class VideoWorker:
    """Decode -> process -> store for one video at a time; built once per worker
    (process or Ray actor) with the model, writing straight to the database."""

    def __init__(self, task: ExtractTask, loaded):
        self.task = task
        self.clock = StageClock(budget=task.video_time_limit)
        self.processor = VideoProcessor(task.config, loaded, batch_size=task.batch_size, clock=self.clock)

    def __call__(self, job: VideoJob) -> VideoOutcome:
        from conceptgen.claims import AlreadyFinishedError, ClaimLostError
        from conceptgen.videoio import read_frames

        task, config, clock = self.task, self.task.config, self.clock
        clock.start_video(Path(job.path).name)
        t0 = time.perf_counter()
        seed_everything(video_seed(config.seed, job.sha256))
        try:
            with clock("decode"):
                indices = None if config.max_frames is None else range(min(job.frame_count, config.max_frames))
                frames = read_frames(job.path, indices=indices, max_side=config.max_side)
            result = self.processor(frames)
            with clock("store", total=len(result.tubes), unit="tube", budgeted=False) as tick:
                _store_video(task, job, result, seconds=time.perf_counter() - t0, tick=tick)
        except AlreadyFinishedError as stored:  # a retry after a worker died between commit and answer
            return VideoOutcome(job.video_id, job.path, "done", n_tubes=stored.n_tubes,
                                stage_seconds=dict(self.clock.totals))
        except (ClaimLostError, sqlalchemy.exc.IntegrityError):
            return VideoOutcome(job.video_id, job.path, "lost", stage_seconds=dict(self.clock.totals))
        except StoreUnavailableError:  # the database went away: no video's fault; the run stops
            raise
        except Exception as err:  # noqa: BLE001 - one bad video must not stop the run
            reason = str(err) if isinstance(err, ConceptgenError) else " ".join(f"{type(err).__name__}: {err}".split())
            _store_failure(task, job.video_id, reason, time.perf_counter() - t0)
            return VideoOutcome(job.video_id, job.path, "failed", reason=reason, stage_seconds=dict(self.clock.totals))
        return VideoOutcome(job.video_id, job.path, "done", n_tubes=len(result.tubes), note=result.note,
                            stage_seconds=dict(self.clock.totals))


# --- the run orchestrator ------------------------------------------------------------
def extract(workspace: Workspace, config: ExtractConfig | None, *, run_id: int | None = None,
            batch_size: int = 16, device: str = "cpu", only_video_ids: Sequence[int] | None = None,
            model=None, spec=None, executor: "Executor | None" = None,
            video_time_limit: float | None = DEFAULT_VIDEO_TIME_LIMIT) -> ExtractReport:
    """Create or resume a run and process every selected video not yet done.

    ``config`` None with ``run_id``: resume that run with its stored config.
    ``only_video_ids`` restricts this call to those videos (the run stays the same).
    ``model``: an ``nn.Module`` (with ``spec``, a registry.InputSpec) or LoadedModel to use
    instead of loading ``config.model``, which then only names it in the run table.
    ``executor``: where videos are processed (default: this process; see
    conceptgen.executors). Each video is claimed before it is computed, so several
    drivers, or a resumed one, never compute or write a video twice.
    ``video_time_limit``: seconds one video may take before it is recorded as failed
    (checked as each stage reports progress); None: no limit."""
    from conceptgen.claims import ClaimKeeper
    from conceptgen.doctor import check_run_media
    from conceptgen.executors import InProcessExecutor
    from conceptgen.registry import as_loaded, load_model

    started = time.perf_counter()
    executor = executor or InProcessExecutor()
    if config is None:
        if run_id is None:
            raise ConfigError("give an extraction config or --run ID to resume")
        config = _stored_config(workspace, run_id)
    config.validate()
    if device == "cuda" and executor.device == "cpu":
        raise ConfigError("--device cuda with --executor ray needs --num-gpus-per-task (e.g. 1 or 0.5)")
    if model is not None:
        loaded = as_loaded(model, spec=spec, class_names=config.class_names)
        device = str(loaded.device)
    else:
        # Remote workers get the model through the object store and move it to their own device.
        loaded = load_model(config.model_source(), device=device if executor.device is None else "cpu",
                            workspace=workspace)
    if not config.layers:
        config = replace(config, layers=default_layers(loaded))
    if config.input_spec is None:  # recorded: a model card may change it under the same flags
        config = replace(config, input_spec=loaded.spec.to_dict())
    _check_worker_options(config, executor.device or device)
    run_id, resumed = _open_run(workspace, config, loaded.fingerprint, run_id,
                                runtime={"batch_size": batch_size, "device": executor.device or device})
    if resumed:  # 'done' rows count only if their files are here (not another workspace's database)
        check_run_media(workspace, run_id)
    report = ExtractReport(run_id=run_id, resumed=resumed)
    todo, report.n_skipped = _videos_to_do(workspace, run_id, config.videos)
    if only_video_ids is not None:
        todo = [v for v in todo if v.id in set(only_video_ids)]
    lost_before, retried_before = executor.lost_workers, executor.requeued  # counted over this call
    with ClaimKeeper(workspace) as owner:
        task = ExtractTask(workspace, run_id, config, batch_size, owner, video_time_limit)
        jobs = _claimed_jobs(workspace, run_id, owner, todo, report)
        outcomes = executor.map_unordered(partial(VideoWorker, task), loaded, jobs)
        bar = progress(outcomes, total=len(todo), desc=f"extract run {run_id} ({executor.workers} worker"
                       f"{'s' if executor.workers > 1 else ''})", unit="video")
        for _job, outcome in bar:
            report.add(outcome)
    report.lost_workers = executor.lost_workers - lost_before
    report.n_retried = executor.requeued - retried_before
    _finish_run(workspace, run_id)
    report.seconds = time.perf_counter() - started
    return report


DEMO_MODEL_ON_REAL_VIDEO = (
    "the demo model knows only the synthetic shapes of `conceptgen synth` and cannot tell tubes of real video "
    "apart; on your videos use a registry model with its weights (--model x3d_s --pretrained where the network "
    "allows, or --model r3d_18 --weights r3d_18.pth), or your own model (--model package.module:function "
    "--weights PATH, or a model card; see 'Your own model' in the README); pass --model demo to use it anyway")


def check_default_model_fits(workspace: Workspace, selector: str = "all") -> None:
    """Raises ConfigError when extraction without a model would run the demo model on
    videos that are not from a synthetic set (it has only seen 32-px synthetic shapes)."""
    from conceptgen.synth import is_synthetic_video

    with workspace.session() as s:
        paths = [v.path for v in select_videos(s, selector)]
    real = [p for p in paths if not is_synthetic_video(p)]
    if real:
        raise ConfigError(f"{len(real)} of {len(paths)} videos are not synthetic (e.g. {Path(real[0]).name}): "
                          + DEMO_MODEL_ON_REAL_VIDEO)


def _check_worker_options(config: ExtractConfig, device: str) -> None:
    """Fails on options the workers would refuse, before any video is claimed."""
    config.build_segmenters()  # cheap: SAM's weights load on first use
    if config.amp and device != "cuda":
        raise ConfigError("--amp needs --device cuda; drop --amp on CPU")


def _claimed_jobs(workspace: Workspace, run_id: int, owner: str, videos: Sequence[Video],
                  report: ExtractReport) -> Iterator[VideoJob]:
    """The videos this driver claims, one by one as workers take them; a video another
    live driver holds, or finished meanwhile, is counted as skipped."""
    from conceptgen.claims import claim_video

    for video in videos:
        if claim_video(workspace, run_id, video.id, owner):
            yield VideoJob.of(video)
        else:
            report.n_skipped += 1


def _stored_config(workspace: Workspace, run_id: int) -> ExtractConfig:
    with workspace.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} does not exist; list runs with `conceptgen runs`")
        return ExtractConfig.from_dict(run.config)


def _open_run(workspace: Workspace, config: ExtractConfig, fingerprint: str, run_id: int | None,
              runtime: dict) -> tuple[int, bool]:
    """The run with this identity (resumed), or a new one."""
    identity = run_identity(config, fingerprint)
    with workspace.session() as s:
        if run_id is not None:
            run = s.get(Run, run_id)
            if run.config_hash != identity:
                raise ConfigError(f"run {run_id} was made with other settings or model weights; "
                                  "run `conceptgen extract` without --run to start a new run")
        else:
            run = s.scalars(select(Run).where(Run.config_hash == identity).order_by(Run.id.desc())).first()
        resumed = run is not None
        if run is None:
            run = Run(config={**asdict(config), "layers": list(config.layers), **runtime,
                              "model_fingerprint": fingerprint},
                      config_hash=identity, model_name=config.model, model_fingerprint=fingerprint,
                      code_version=code_version())
            s.add(run)
        run.status, run.finished_at = "running", None
        s.flush()
        return run.id, resumed


def _videos_to_do(workspace: Workspace, run_id: int, selector: str) -> tuple[list[Video], int]:
    with workspace.session() as s:
        done = set(s.scalars(select(RunVideo.video_id).where(RunVideo.run_id == run_id,
                                                             RunVideo.status == "done")))
        videos = select_videos(s, selector)
    if not videos:
        raise ConfigError(f"no ingested videos match --videos {selector}; run `conceptgen ingest PATH` first")
    return [v for v in videos if v.id not in done], sum(v.id in done for v in videos)


def preview_relpath(run_id: int, video_sha256: str, track_index: int) -> str:
    """Where a tube's preview lives, relative to WORKSPACE/media. Named by content (run,
    video, track), not by row id: a retried write lands on the same file, never an orphan."""
    return f"previews/run{run_id}/{video_sha256}-{track_index}.mp4"


def _store_video(task: ExtractTask, job: VideoJob, result: VideoTubes, *, seconds: float,
                 tick: Callable[[int], None] | None = None) -> None:
    """Tubes, embeddings, previews and the RunVideo outcome of one video, in one transaction
    that first turns this driver's claim into 'done' (ClaimLostError: nothing is written)."""
    from conceptgen.claims import finish_claim
    from conceptgen.render import render_outlined_preview
    from conceptgen.videoio import remove_partial_writes, write_video

    workspace, run_id = task.workspace, task.run_id
    config_layers = list(result.embeddings)
    h, w = result.frames.shape[1:3]
    pooling, mode = task.config.pooling, task.config.render_mode
    with workspace.session() as s:
        finish_claim(s, run_id, job.video_id, task.owner, status="done", n_tubes=len(result.tubes),
                     error=result.note, seconds=seconds)
        for i, (tube, thing) in enumerate(zip(result.tubes, result.objectness, strict=True)):
            # Written before the commit; a retry writes identical bytes to the same name. The
            # claim makes this the only writer, so partial files there are a killed worker's.
            rel = preview_relpath(run_id, job.sha256, i)
            remove_partial_writes(workspace.media / rel)
            preview = render_outlined_preview(result.frames, tube.frames, tube.masks, max_side=PREVIEW_MAX_SIDE)
            write_video(workspace.media / rel, preview, fps=float(job.fps or 8.0))
            row = Tube(run_id=run_id, video_id=job.video_id, track_index=i, start_frame=int(tube.frames[0]),
                       end_frame=int(tube.frames[-1]) + 1, frame_indices=[int(f) for f in tube.frames],
                       kind=tube.kind, mask_height=int(h), mask_width=int(w),
                       masks_rle=[encode_rle(m) for m in tube.masks],
                       boxes=[[float(v) for v in b] for b in tube.boxes],
                       area=float(tube.mean_area()), score=float(tube.score),
                       objectness=float(thing.objectness), background=bool(thing.background),
                       objectness_features={"motion": round(thing.motion, 4), "area": round(thing.area, 5),
                                            "border_sides": round(thing.border_sides, 4),
                                            "contrast": round(thing.contrast, 4)},
                       preview_path=rel, preview_sha256=sha256_file(workspace.media / rel))
            row.embeddings = [Embedding(layer=layer, pooling=pooling, render_mode=mode,
                                        dim=int(result.embeddings[layer][i].size), dtype="float16",
                                        vector=vector_to_blob(result.embeddings[layer][i]))
                              for layer in config_layers]
            s.add(row)
            if tick is not None:
                tick(1)


def _store_failure(task: ExtractTask, video_id: int, reason: str, seconds: float) -> None:
    from conceptgen.claims import ClaimLostError, finish_claim

    try:
        with task.workspace.session() as s:
            finish_claim(s, task.run_id, video_id, task.owner, status="failed", error=reason, seconds=seconds)
    except ClaimLostError:
        pass  # another driver owns this video now; its outcome stands


def _finish_run(workspace: Workspace, run_id: int) -> None:
    """Marks the run finished, unless another driver still holds claims on it."""
    with workspace.session() as s:
        run = s.get(Run, run_id)
        counts = dict(s.execute(select(RunVideo.status, func.count()).where(RunVideo.run_id == run_id)
                                .group_by(RunVideo.status)).all())
        failed = counts.get("failed", 0)
        if counts.get("claimed"):
            return
        run.status, run.finished_at = "finished", utcnow()
        run.error = f"{failed} video(s) failed; see `conceptgen runs {run_id}`" if failed else None


# --- listing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary:
    id: int
    status: str
    model_name: str
    n_done: int
    n_failed: int
    n_tubes: int
    n_clusterings: int
    created_at: object


def list_runs(workspace: Workspace) -> list[RunSummary]:
    with workspace.session() as s:
        out = []
        for run in s.scalars(select(Run).order_by(Run.id)):
            counts = dict(s.execute(select(RunVideo.status, func.count()).where(RunVideo.run_id == run.id)
                                    .group_by(RunVideo.status)).all())
            out.append(RunSummary(
                run.id, run.status, run.model_name, counts.get("done", 0), counts.get("failed", 0),
                s.scalar(select(func.count()).where(Tube.run_id == run.id)),
                s.scalar(select(func.count()).where(Clustering.run_id == run.id)), run.created_at))
        return out


def describe_run(workspace: Workspace, run_id: int) -> list[str]:
    """Human-readable lines: the run's config, identity and per-video outcome."""
    with workspace.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} does not exist; list runs with `conceptgen runs`")
        lines = [f"run {run.id}: {run.status}, model {run.model_name} ({run.model_fingerprint[:12]}), "
                 f"code {run.code_version}, config {run.config_hash[:12]}"]
        lines += [f"  {k} = {v}" for k, v in sorted(run.config.items())]
        rows = s.execute(select(RunVideo, Video.path).join(Video, Video.id == RunVideo.video_id)
                         .where(RunVideo.run_id == run_id).order_by(RunVideo.video_id)).all()
        for rv, path in rows:
            extra = f": {rv.error}" if rv.error else ""
            lines.append(f"  video {rv.video_id} {rv.status} {rv.n_tubes} tubes "
                         f"{rv.seconds or 0:.1f}s {path}{extra}")
        return lines
