"""One call from a workspace and names to a stored, exported, plotted TCAV experiment.

The ``conceptgen tcav`` command is a thin adapter over :func:`run_experiment`:
it loads the model, gathers concepts / class examples / the random pool (see
:mod:`tcav.examples` for the rules), runs :func:`tcav.experiment.run_tcav`, and
stores the experiment, its CSV/JSON and its plots under media/tcav/<id>/.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conceptgen.errors import ConceptgenError, ConfigError
from tcav import examples as ex
from tcav.experiment import (CALIBRATION_NULL_SETS, DEFAULT_RANDOM_SETS, TcavConfig, TcavInputs, TcavReport,
                             run_tcav)
from tcav.plots import plot_report
from tcav.results import fail_experiment, finish_experiment, media_folder, start_experiment, write_exports
from tcav.saved_cavs import save_cavs

if TYPE_CHECKING:
    from conceptgen.registry import ModelSource


@dataclass(frozen=True)
class TcavRequest:
    """What the user asked for, as the CLI spells it."""

    model: "str | ModelSource"          # a name, path, card or package.module:function; or the flags' source
    layers: tuple[str, ...]
    targets: tuple[str, ...]
    concepts: str                      # names, "all-approved" or a folder
    random_sets: int | str = DEFAULT_RANDOM_SETS
    seed: int = 0
    device: str = "cpu"
    classifier: str = "sgd"
    test: str = "pseudo"              # pseudo-concept null; or "permutation", "ttest" (random-vs-random)
    null_sets: int = 0                 # test "pseudo": M pseudo-concepts; 0 = auto
    statistic: str = "auto"            # test "pseudo": "logit-change" (auto) or "tcav"
    calibration_sets: int = CALIBRATION_NULL_SETS   # two-sample tests: pseudo-concepts for calibration.json
    correction: str = "bonferroni"
    mode: str = "crop"
    class_examples: str | None = None  # folder; default: labelled videos in the DB
    random_pool: str | None = None     # folder; default: random* sub-folders, else DB tubes
    random_set_size: int = 20
    weights: str | None = None
    amp: bool = False
    batch_size: int = 8


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

    if request.mode not in RENDER_MODES:
        raise ConfigError(f"unknown --mode {request.mode!r}: use one of {', '.join(RENDER_MODES)}")
    folder = Path(request.concepts)
    if folder.is_dir():
        concepts = ex.concepts_from_folder(folder, spec)
        if not concepts:
            raise ConfigError(f"{folder} has no concept sub-folders: put each concept's clips in its own folder")
    else:
        concepts = ex.concepts_from_db(workspace, request.concepts, spec, render_mode=request.mode)
    if request.random_pool:
        pool = ex.random_pool_from_folder(request.random_pool, spec)
    elif folder.is_dir() and any(p.is_dir() and p.name.startswith(ex.RANDOM_PREFIX) for p in folder.iterdir()):
        pool = ex.random_pool_from_folder(folder, spec)
    else:
        pool = ex.random_pool_from_db(workspace, spec, render_mode=request.mode)
    classes = {t: (ex.class_examples_from_folder(request.class_examples, t, spec) if request.class_examples
                   else ex.class_examples_from_db(workspace, t, spec)) for t in request.targets}
    return TcavInputs(concepts, classes, pool)


def run_experiment(workspace, request: TcavRequest, *, executor=None) -> TcavOutcome:
    """Load, gather, score, store, export and plot. The experiment row is 'failed'
    with the reason if scoring stops on a user error."""
    from conceptgen.registry import ModelSource, get_layer, load_model

    check_devices(request.device, request.amp)
    source = ModelSource.of(request.model, weights=request.weights)
    loaded = load_model(source, device=request.device, workspace=workspace)
    for layer in request.layers:  # fail fast on names, before decoding any video
        get_layer(loaded, layer)
    for target in request.targets:
        loaded.class_index(target)
    config = TcavConfig(layers=tuple(request.layers), targets=tuple(request.targets),
                        random_sets=request.random_sets, seed=request.seed, classifier=request.classifier,
                        test=request.test, null_sets=request.null_sets, statistic=request.statistic,
                        correction=request.correction, render_mode=request.mode,
                        random_set_size=request.random_set_size, calibration_sets=request.calibration_sets)
    config.validate()
    inputs = gather_inputs(workspace, request, loaded.spec)
    experiment_id = start_experiment(workspace, config, loaded, {
        **source.to_dict(),  # `tcav apply` loads the same model from it
        "concepts": request.concepts, "device": request.device, "amp": request.amp,
        "class_examples": request.class_examples, "random_pool": request.random_pool})
    try:
        report = run_tcav(loaded, inputs, config, cache_dir=Path(workspace.cache) / "tcav",
                          amp=request.amp, batch_size=request.batch_size, executor=executor)
    except ConceptgenError as err:
        fail_experiment(workspace, experiment_id, str(err))
        raise
    report.experiment_id = experiment_id
    folder = media_folder(workspace, experiment_id)
    files = write_exports(report, folder)
    files.append(save_cavs(report.cavs, inputs.concepts, model_name=loaded.name, model_fingerprint=loaded.fingerprint,
                           experiment_folder=folder, experiment_id=experiment_id))
    plots = plot_report(report, folder)
    finish_experiment(workspace, experiment_id, report,
                      [str(p.relative_to(workspace.media)) for p in plots])
    return TcavOutcome(report, experiment_id, folder, files, plots)
