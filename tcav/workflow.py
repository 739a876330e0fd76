"""One call from a workspace and names to a stored, exported, plotted TCAV experiment.

The ``conceptgen tcav`` command is a thin adapter over :func:`run_experiment`:
it loads the model, gathers concepts / class examples / the random pool (see
:mod:`tcav.examples` for the rules), runs :func:`tcav.experiment.run_tcav`, and
stores the experiment, its CSV/JSON and its plots under media/tcav/<id>/.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from conceptgen.errors import ConceptgenError, ConfigError
from conceptgen.progress import reporting_to
from tcav import examples as ex
from tcav.experiment import TcavConfig, TcavInputs, TcavReport, config_dict, run_tcav
from tcav.plots import plot_report
from tcav.results import (fail_experiment, finish_experiment, media_folder, record_progress, start_experiment,
                          write_exports)
from tcav.saved_cavs import save_cavs

if TYPE_CHECKING:
    from conceptgen.registry import ModelSource


STAGES = ("scoring concepts", "writing results and CAVs", "plotting")


@dataclass(frozen=True)
class TcavRequest:
    """What to score and where the clips come from. ``config`` (a :class:`TcavConfig`,
    built once by the CLI or the demo) decides the numbers; the rest says which model,
    concepts and example sources, and on what device. :meth:`stored_config` is what
    the experiment row keeps."""

    model: "str | ModelSource"         # a name, path, card or package.module:function; or the flags' source
    concepts: str                      # names or globs of names, "all-approved", a folder, folders or a glob
    config: TcavConfig
    class_examples: str | None = None  # folder; default: labelled videos in the DB
    random_pool: str | None = None     # folder; default: random* sub-folders, else DB tubes
    random_set_folders: str | None = None   # folders or a glob used exactly as the N random sets (TF-TCAV's)
    weights: str | None = None
    device: str = "cpu"
    amp: bool = False
    batch_size: int = 8

    def stored_config(self) -> dict:
        """The experiment's stored config: every TcavConfig field plus the model, the sources
        and the device (the whole model source, files as absolute paths, so `tcav apply`
        rebuilds the same network)."""
        return {**config_dict(self.config), **self.source().to_dict(), "concepts": self.concepts,
                "device": self.device, "amp": self.amp, "class_examples": self.class_examples,
                "random_pool": self.random_pool, "random_set_folders": self.random_set_folders}

    def source(self) -> "ModelSource":
        from conceptgen.registry import ModelSource

        return ModelSource.of(self.model, weights=self.weights)


@dataclass
class TcavOutcome:
    report: TcavReport
    experiment_id: int
    folder: Path
    files: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def check_devices(device: str, amp: bool) -> None:
    """Conflicting device options fail before any work."""
    import torch

    if amp and not str(device).startswith("cuda"):
        raise ConfigError("--amp needs --device cuda: drop --amp on CPU")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but CUDA is not available: use --device cpu")


def gather_inputs(workspace, request: TcavRequest, spec) -> TcavInputs:
    """Concepts, class examples per target and the random pool, by the stated rules."""
    from conceptgen.render import RENDER_MODES

    mode = request.config.render_mode
    if mode not in RENDER_MODES:
        raise ConfigError(f"unknown --mode {mode!r}: use one of {', '.join(RENDER_MODES)}")
    rejected: dict[str, str] = {}   # files in concept or random folders that are not videos
    folders = ex.is_folder_spec(request.concepts)
    if folders:
        concepts = ex.concepts_from_spec(request.concepts, spec, rejected=rejected)
        if not concepts:
            raise ConfigError(f"{request.concepts} has no concept sub-folders: put each concept's clips in its "
                              "own folder")
    else:
        concepts = ex.concepts_from_db(workspace, request.concepts, spec, render_mode=mode)
    random_sets = (ex.random_sets_from_folders(request.random_set_folders, spec, rejected=rejected)
                   if request.random_set_folders else None)
    home = _random_home(request.concepts) if folders else None
    if random_sets is not None:
        pool = [e for s in random_sets for e in s]   # the sets' clips are the pool
    elif request.random_pool:
        pool = ex.random_pool_from_folder(request.random_pool, spec, rejected=rejected)
    elif home is not None:
        pool = ex.random_pool_from_folder(home, spec, rejected=rejected)
    else:
        pool = ex.random_pool_from_db(workspace, spec, render_mode=mode)
    classes = {t: (ex.class_examples_from_folder(request.class_examples, t, spec) if request.class_examples
                   else ex.class_examples_from_db(workspace, t, spec)) for t in request.config.targets}
    return TcavInputs(concepts, classes, pool, rejected=rejected, random_sets=random_sets)


def _random_home(concepts: str) -> Path | None:
    """The folder whose random* sub-folders are the default pool: the concepts' root folder,
    or the parent of concept folders named one by one or by glob."""
    folders = ex.folders_matching(concepts, "--concepts")
    for folder in ([folders[0]] if len(folders) == 1 else []) + [folders[0].parent]:
        if any(p.is_dir() and p.name.startswith(ex.RANDOM_PREFIX) for p in folder.iterdir()):
            return folder
    return None


def _stage_reporter(workspace, experiment_id: int, every_s: float = 1.0):
    """Scoring's progress bars (activations per batch) into the stored stage, at most once a second."""
    import time

    last = [0.0]

    def report(desc: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or (total is not None and done >= total):
            last[0] = now
            of = f"/{total}" if total else ""
            record_progress(workspace, experiment_id, 0, len(STAGES), f"{STAGES[0]}: {desc} {done}{of}")

    return report


def run_experiment(workspace, request: TcavRequest, *, executor=None) -> TcavOutcome:
    """Load, gather, score, store, export and plot. The experiment row is 'failed'
    with the reason if scoring stops on a user error."""
    from conceptgen.registry import get_layer, load_model

    check_devices(request.device, request.amp)
    loaded = load_model(request.source(), device=request.device, workspace=workspace)
    config = request.config
    for layer in config.layers:  # fail fast on names, before decoding any video
        get_layer(loaded, layer)
    for target in config.targets:
        loaded.class_index(target)
    config.validate()
    inputs = gather_inputs(workspace, request, loaded.spec)
    if inputs.random_sets is not None:   # the folders are the sets: N and their size are theirs
        config = replace(config, random_sets=len(inputs.random_sets),
                         random_set_size=max(len(s) for s in inputs.random_sets))
        request = replace(request, config=config)
    experiment_id = start_experiment(workspace, request.stored_config(), loaded)
    record_progress(workspace, experiment_id, 0, len(STAGES), STAGES[0])  # the annotator shows the stage
    try:
        with reporting_to(_stage_reporter(workspace, experiment_id)):
            report = run_tcav(loaded, inputs, config, cache_dir=Path(workspace.cache) / "tcav",
                              amp=request.amp, batch_size=request.batch_size, executor=executor)
    except ConceptgenError as err:
        fail_experiment(workspace, experiment_id, str(err))
        raise
    report.experiment_id = experiment_id
    folder = media_folder(workspace, experiment_id)
    record_progress(workspace, experiment_id, 1, len(STAGES), STAGES[1])
    files = write_exports(report, folder)
    files.append(save_cavs(report.cavs, inputs.concepts, model_name=loaded.name, model_fingerprint=loaded.fingerprint,
                           experiment_folder=folder, experiment_id=experiment_id))
    record_progress(workspace, experiment_id, 2, len(STAGES), STAGES[2])
    plots = plot_report(report, folder)
    finish_experiment(workspace, experiment_id, report,
                      [str(p.relative_to(workspace.media)) for p in plots])
    return TcavOutcome(report, experiment_id, folder, files, plots)
