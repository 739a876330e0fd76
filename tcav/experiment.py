"""Video-TCAV, the orchestrator: :func:`run_tcav` reads like the method section.

1. Draw N random sets from the random pool (stream "random-sets") and N disjoint
   random-versus-random pairs for the null (stream "null"): O(N) pairs, each set
   drawn from its own seed, so raising N or changing the concepts moves nothing.
   Random sets and the null follow the concept's variant: static concepts are
   compared with the same random clips rendered static, otherwise their CAV
   learns "frozen versus moving" rather than the concept.  (``_draw_random``)
2. Add the static counterpart of every dynamic concept.  (``_with_static_variants``)
3. Compute activations of every clip and class-logit gradients of every class
   example at all layers (one forward + one backward per batch, cached); clips
   that fail to load are skipped and reported, the rest go on.  (``_compute_concepts_and_classes``)
4. Per layer: train CAVs (concept vs each random set; random vs random; concept
   vs each other concept for relative TCAV), recording held-out accuracies.
   (``_random_vs_random``, ``_concept_vs_random``, ``_relative_cavs``)
5. Per layer and class: directional derivatives, TCAV and magnitude scores,
   temporal profiles, the gradient-consistency diagnosis and the null's health
   (``_score_layer``). With ``test="pseudo"`` (the default) also M pseudo-concepts (pool sets of each
   concept's size, stream "pseudo-concepts") against the same N random sets: the
   calibrated null, ranking the class-logit change (see :mod:`tcav.stats`;
   ``_pseudo_concept_null``); with the two-sample tests, ``config.calibration_sets``
   pseudo-concepts for the calibration report only (``_two_sample_calibration_null``).
6. Test every concept score set against the null of its variant, correct over
   the family of testable hypotheses (those in ``config.hypotheses``, at layers
   not diagnosed degenerate from the class gradients alone, so the filter is
   independent of the concept scores), and give verdicts (degenerate layers and
   unlearnable concepts are never significant).  (``_test_and_correct``)

:func:`_score` runs steps 1 and 4-6 for one N, in that order, one call per step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from conceptgen.errors import ConfigError, DataError
from conceptgen.malloc_tuning import keep_freed_memory
from tcav import diagnostics, scoring, stats
from tcav.pseudo_null import (PSEUDO_POOL_CAP, draw_pseudo_concepts, is_cheap, null_set_count,  # noqa: F401
                              pseudo_null_means, pseudo_pool_indices, pseudo_tcav_per_set, pseudo_test_fits)
from tcav.activations import ActivationStore
from tcav.calibration import CAV_STABILITY_MIN, Calibration, calibrate
from tcav.cav import CAV
from tcav.classifiers import MIN_EXAMPLES_PER_SIDE, MeanDifferenceClassifier, make_classifier
from tcav.examples import ConceptExamples, Example, check_enough, static_counterpart, static_example

DEFAULT_RANDOM_SETS = 10   # as the Video-TCAV paper
MAX_RANDOM_SETS = 500
AUTO_START = 10
AUTO_SEEDS = 3         # --seeds auto: this many when the extra draws need no model work
MAX_SEEDS = 20
CALIBRATION_NULL_SETS = 20   # two-sample tests: pseudo-concepts per cell and size scored for calibration.json


@dataclass(frozen=True)
class TcavConfig:
    """Everything that decides an experiment's numbers (stored with it)."""

    layers: tuple[str, ...]
    targets: tuple[str, ...]
    random_sets: int | str = DEFAULT_RANDOM_SETS   # an int, or "auto"
    seed: int = 0
    classifier: str = "mean-diff"   # stable across seeds (calibration.json's cav_stability); sgd as TF-TCAV
    test: str = "pseudo"
    statistic: str = "auto"         # what the test ranks: auto = logit-change for pseudo, else tcav
    correction: str = "bonferroni"
    family: str = "target-layer"    # hypotheses corrected together: per target and layer | target | experiment
    alpha: float = stats.DEFAULT_ALPHA
    random_set_size: int = 20
    render_mode: str = "crop"
    with_static: bool = True
    relative: bool = True
    max_random_sets: int = 80       # cap for "auto"
    n_resamples: int = stats.DEFAULT_RESAMPLES
    null_sets: int = 0              # test "pseudo": M pseudo-concepts; 0 = auto (smallest p_corr <= alpha/100)
    seeds: int = 0                  # K seeds of the random-set draws for stability; 0 = auto (3 when cheap)
    # two-sample tests: pseudo-concepts per (layer, class, variant, size) scored for calibration.json; 0 = none
    calibration_sets: int = CALIBRATION_NULL_SETS
    # (concept name, target class) pairs to test, stated before the run; empty: every pair.
    # Pairs outside it are still scored and reported, but neither tested nor counted.
    hypotheses: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_stored(cls, stored: dict) -> "TcavConfig":
        """The config an experiment row keeps (``config_dict`` plus the request's own keys)."""
        names = {f.name for f in fields(cls)}
        as_tuple = lambda v: tuple(as_tuple(x) for x in v) if isinstance(v, list) else v  # noqa: E731
        return cls(**{k: as_tuple(v) for k, v in stored.items() if k in names})

    @property
    def test_statistic(self) -> str:
        """The statistic the test compares (``statistic`` with auto resolved)."""
        if self.statistic != "auto":
            return self.statistic
        return "logit-change" if self.test == "pseudo" else "tcav"

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("no layers given: pass --layers NAME[,NAME...]")
        if not self.targets:
            raise ConfigError("no target class given: pass --target CLASS")
        if self.test not in stats.TESTS:
            raise ConfigError(f"unknown test {self.test!r}: use one of {', '.join(stats.TESTS)}")
        if self.family not in stats.FAMILIES:
            raise ConfigError(f"unknown correction family {self.family!r}: use one of {', '.join(stats.FAMILIES)}")
        if not 0 <= int(self.seeds) <= MAX_SEEDS:
            raise ConfigError(f"--seeds must be 0 (auto) or 1 to {MAX_SEEDS}, got {self.seeds}")
        if self.correction not in stats.CORRECTIONS:
            raise ConfigError(f"unknown correction {self.correction!r}: use one of {', '.join(stats.CORRECTIONS)}")
        if self.statistic not in ("auto", *stats.STATISTICS):
            raise ConfigError(f"unknown statistic {self.statistic!r}: use auto or one of {', '.join(stats.STATISTICS)}")
        if self.test != "pseudo" and self.statistic == "logit-change":
            raise ConfigError("--statistic logit-change is tested only against pseudo-concepts (random-vs-random "
                              "mean differences are near zero, so every distinct concept would pass): "
                              "use --test pseudo, or --statistic tcav")
        make_classifier(self.classifier)
        if self.random_sets != "auto" and not (2 <= int(self.random_sets) <= MAX_RANDOM_SETS):
            raise ConfigError(f"--random-sets must be between 2 and {MAX_RANDOM_SETS} or auto, got {self.random_sets}")
        if self.null_sets < 0:
            raise ConfigError(f"--null-sets must be 0 (auto) or a positive count, got {self.null_sets}")
        if self.calibration_sets < 0:
            raise ConfigError(f"--calibration-sets must be 0 (none) or a positive count, got {self.calibration_sets}")
        if self.random_set_size < 2:
            raise ConfigError(f"--random-set-size must be at least 2, got {self.random_set_size}")


@dataclass(frozen=True)
class TcavInputs:
    concepts: list[ConceptExamples]
    class_examples: dict[str, list[Example]]   # target class name -> example videos
    random_pool: list[Example]
    rejected: dict[str, str] = field(default_factory=dict)   # files in the folders that are not videos -> why
    # TF-TCAV's random folders used exactly as the N random sets (their clips are the pool); None: drawn
    random_sets: list[list[Example]] | None = None


@dataclass
class HypothesisResult:
    """One concept variant for one class at one layer, against random sets (or relative).

    Arrays have one entry per random set (or per other concept for relative)."""

    concept: str
    variant: str
    layer: str
    target: str
    comparison: str
    scores: np.ndarray
    magnitudes: np.ndarray
    cav_accuracies: np.ndarray
    concept_id: int | None = None
    p_value: float | None = None
    p_corrected: float | None = None
    significant: bool = False
    verdict: str = ""
    flags: list[str] = field(default_factory=list)
    temporal: scoring.TemporalProfile | None = None
    against: list[str] = field(default_factory=list)
    # per random set (or other concept): first-order class-logit change towards the concept
    logit_changes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_examples: int = 0   # concept clips that loaded
    z: float | None = None   # test "pseudo": the statistic's distance from the pseudo-null median, in its SDs
    family: str = ""         # the correction family it was tested in ("" outside every family)
    seeds_significant: int | None = None   # of ``n_seeds`` draws of the random sets, how many called it significant
    n_seeds: int = 1
    cav_stability: float | None = None     # mean cosine between its CAVs (random sets and seeds)

    @property
    def seed_share(self) -> float | None:
        """Share of the seeds in which the verdict holds (None: one seed)."""
        return None if self.seeds_significant is None else self.seeds_significant / self.n_seeds

    @property
    def tcav_mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def logit_change_mean(self) -> float:
        return float(np.mean(self.logit_changes))

    def statistic(self, name: str) -> float:
        """The tested statistic: mean TCAV score or mean logit change."""
        return self.logit_change_mean if name == "logit-change" else self.tcav_mean

    @property
    def tcav_std(self) -> float:
        return float(np.std(self.scores))


@dataclass
class LayerReport:
    """The null and the gradient diagnosis for one (layer, class)."""

    layer: str
    target: str
    diagnosis: diagnostics.LayerDiagnosis
    null_scores: np.ndarray
    null_accuracies: np.ndarray
    warning: str | None
    variant: str = "dynamic"   # the random clips' rendering, as the concepts it is the null of
    null_logit_changes: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per random-vs-random pair
    # test "pseudo": concept size -> (M,) statistic of each pseudo-concept, averaged over the N random sets
    pseudo_means: dict[int, np.ndarray] = field(default_factory=dict)
    # two-sample tests: concept size -> (M, N) TCAV scores of pseudo-concepts per random set (calibration)
    calibration_scores: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def null_mean(self) -> float:
        return float(np.mean(self.null_scores))


@dataclass(frozen=True)
class CorrectionFamily:
    """Hypotheses corrected together: ``key`` (target, layer), (target,) or () for the experiment."""

    key: tuple[str, ...]
    size: int           # m, the correction's hypothesis count
    null_sets: int      # test "pseudo": M of its null (0 otherwise)
    power: stats.PowerCheck

    @property
    def name(self) -> str:
        return "/".join(self.key) or "experiment"


def family_key(r: "HypothesisResult", family: str) -> tuple[str, ...]:
    """The correction family of a hypothesis under ``TcavConfig.family``."""
    return {"target-layer": (r.target, r.layer), "target": (r.target,), "experiment": ()}[family]


@dataclass
class TcavReport:
    config: TcavConfig
    n_random_sets: int
    results: list[HypothesisResult]
    layer_reports: list[LayerReport]
    power: stats.PowerCheck
    warnings: list[str]
    auto_history: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # example key -> "origin: reason"
    experiment_id: int | None = None
    files: list[Path] = field(default_factory=list)
    cavs: list[CAV] = field(default_factory=list)   # every concept-vs-random-set CAV (tcav.saved_cavs)
    calibration: Calibration | None = None   # the test's false-positive rate on this null
    families: list["CorrectionFamily"] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)   # why a tested row is in no family -> rows
    seeds: list[int] = field(default_factory=list)   # the random-set seeds scored (the first is config.seed)
    # (concept label, layer) -> each seed's CAV averaged over its random sets (D,)
    seed_cav_means: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)

    def tested(self) -> list[HypothesisResult]:
        return [r for r in self.results if r.comparison == "random"]

    def find(self, concept: str, layer: str, target: str, variant: str = "dynamic",
             comparison: str = "random") -> HypothesisResult:
        for r in self.results:
            if (r.concept, r.layer, r.target, r.variant, r.comparison) == (concept, layer, target, variant, comparison):
                return r
        raise KeyError((concept, layer, target, variant, comparison))

    def null_for(self, result: HypothesisResult) -> LayerReport:
        """The null (and layer diagnosis) that ``result`` was tested against."""
        return next(lr for lr in self.layer_reports
                    if (lr.layer, lr.target, lr.variant) == (result.layer, result.target, result.variant))

    def degenerate_layers(self) -> list[str]:
        return sorted({lr.layer for lr in self.layer_reports if lr.diagnosis.degenerate})


# --- the method ------------------------------------------------------------------
def run_tcav(loaded, inputs: TcavInputs, config: TcavConfig, *, cache_dir: str | Path,
             amp: bool = False, batch_size: int = 8, executor=None, spec=None, class_names=None) -> TcavReport:
    """Scores every concept (and its static counterpart) for every target class at
    every layer against random sets, with the null, tests and diagnostics.
    ``executor`` (conceptgen.executors) computes the activations: here by default, or on Ray workers.

    ``loaded``: a registry.LoadedModel, or any ``nn.Module`` returning logits with
    ``spec`` (registry.InputSpec) and optionally ``class_names`` (registry.as_loaded)."""
    from conceptgen.registry import as_loaded

    loaded = as_loaded(loaded, spec=spec, class_names=class_names)
    if inputs.random_sets is not None:   # TF-TCAV's folders are the sets: N and their size are theirs
        config = replace(config, random_sets=len(inputs.random_sets),
                         random_set_size=max(len(s) for s in inputs.random_sets))
        inputs = replace(inputs, random_pool=list({e.key: e for s in inputs.random_sets for e in s}.values()))
    config.validate()
    keep_freed_memory()  # batches of forward + backward: no page faults per batch
    targets = {name: loaded.class_index(name) for name in config.targets}
    store = ActivationStore(cache_dir, loaded, config.layers, amp=amp, batch_size=batch_size, executor=executor)
    concepts = _with_static_variants(inputs.concepts, config)
    unknown = sorted({(c, t) for c, t in config.hypotheses
                      if c not in {k.name for k in concepts} or t not in targets})
    if unknown:
        raise ConfigError(f"stated hypotheses name unknown concepts or classes: {unknown[:3]}; "
                          "use concept names being scored and classes in --target")
    for name in config.targets:  # fail fast, before any model work
        check_enough(concepts, inputs.class_examples.get(name, []), inputs.random_pool,
                     random_set_size=config.random_set_size, target=name)
    concepts, inputs = _compute_concepts_and_classes(store, concepts, inputs, targets)
    for name in config.targets:  # again, without the clips that failed to load
        check_enough(concepts, inputs.class_examples[name], inputs.random_pool,
                     random_set_size=config.random_set_size, target=name)
    pool = sorted(inputs.random_pool, key=lambda e: e.key)  # order-independent sampling
    memo: dict = {}   # grad . clip projections of the pseudo null, for every draw of this run
    if config.random_sets != "auto":
        report = _score(store, concepts, inputs, pool, targets, config, int(config.random_sets), memo=memo)
    else:
        report = _score_auto(store, concepts, inputs, pool, targets, config, memo)
    _across_seeds(report, seed_count(config, len(pool), inputs.random_sets is not None),
                  lambda s: _score(store, concepts, inputs, pool, targets, config, report.n_random_sets, seed=s,
                                   memo=memo))
    report.skipped = {**inputs.rejected, **store.failed}
    report.warnings += _no_temporal_notes(store, loaded, config.layers, inputs.class_examples, targets)
    report.calibration = calibrate(report)
    _flag_unstable_cavs(report)
    if report.calibration.warning:
        report.warnings.append(report.calibration.warning)
    if inputs.rejected:
        report.warnings.append(_skipped_warning("file(s) that are not videos", list(inputs.rejected)))
    if store.failed:
        report.warnings.append(_skipped_warning("clip(s) that failed to load", list(store.failed.values())))
    return report


def _skipped_warning(what: str, names: list[str], shown: int = 5) -> str:
    """Counted and named (the first ``shown``; all of them are in ``TcavReport.skipped``)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"skipped {len(names)} {what}: {'; '.join(names[:shown])}{more}"


def seed_count(config: TcavConfig, pool_size: int, fixed_sets: bool = False) -> int:
    """K seeds of the random-set draws: ``config.seeds``, or auto: ``AUTO_SEEDS`` when the
    extra draws need no model work and little fitting (test "pseudo", whose candidates are
    the whole pool when it is within ``PSEUDO_POOL_CAP``, and mean-difference CAVs), else 1."""
    if config.seeds:
        return int(config.seeds)
    if fixed_sets:   # TF-TCAV's folders are the sets: no other draw of them to check
        return 1
    cheap = (config.test == "pseudo" and pool_size <= PSEUDO_POOL_CAP
             and config.classifier == MeanDifferenceClassifier.name)
    return AUTO_SEEDS if cheap else 1


def _across_seeds(report: TcavReport, k: int, score_with) -> None:
    """Scores K - 1 more draws of the random sets (seeds from the stream "stability"),
    records per tested row how many of the K called it significant, and says in the
    verdict whether it is stable. The shown p-values and scores stay those of config.seed."""
    if k <= 1:
        return
    seeds = [stats.derive_seed(report.config.seed, "stability", i) for i in range(1, k)]
    counts = {key: int(v) for key, v in _verdicts(report).items()}
    for seed in seeds:
        other = score_with(seed)
        for key, significant in _verdicts(other).items():
            counts[key] = counts.get(key, 0) + int(significant)
        for key, mean in _set_averaged_cavs(other.cavs).items():
            report.seed_cav_means.setdefault(key, []).append(mean)
    report.seeds += seeds
    for r in report.tested():
        if not r.family or "unreliable CAV" in r.flags:
            continue   # degenerate, not stated or not learnable: the verdict says why already
        r.seeds_significant, r.n_seeds = counts[(r.concept, r.variant, r.layer, r.target)], k
        if r.significant and r.seeds_significant == k:
            r.verdict += f"; stable: {k}/{k} seeds"
        elif r.significant:
            r.flags.append("unstable across seeds")
            r.verdict = f"unstable: significant in {r.seeds_significant}/{k} seeds; " + r.verdict
        elif r.seeds_significant:
            r.flags.append("unstable across seeds")
            r.verdict += f" (unstable: significant in {r.seeds_significant}/{k} seeds)"
        else:
            r.verdict += f" in any of {k} seeds"


def _flag_unstable_cavs(report: TcavReport) -> None:
    """Each tested row gets its CAVs' stability (calibration.json); below
    ``CAV_STABILITY_MIN`` the row is flagged "unstable CAV" (its verdict stands)."""
    stability = {(s["concept"], s["layer"]): s["cosine"]
                 for s in (report.calibration.cav_stability_by_concept if report.calibration else [])}
    for r in report.tested():
        label = r.concept if r.variant == "dynamic" else f"{r.concept} [{r.variant}]"
        r.cav_stability = stability.get((label, r.layer))
        if r.cav_stability is not None and r.cav_stability < CAV_STABILITY_MIN:
            r.flags.append("unstable CAV")


def _no_temporal_notes(store, loaded, layers, class_examples, targets) -> list[str]:
    """For a transformer, why a layer's tokens give no temporal TCAV (conceptgen.tokens):
    read from the shape of one cached class-example gradient."""
    from conceptgen.tokens import why_not_grid

    grid, note = getattr(loaded, "tokens", None), (loaded.metadata or {}).get("tokens_note")
    name, target = next(iter(targets.items()))
    examples = class_examples[name][:1]
    if (grid is None and note is None) or not examples:
        return []
    out = []
    for layer in layers:
        shape = store.gradients(examples, layer, target).shape[1:]
        why = None if len(shape) == 4 else why_not_grid(shape, grid) if grid is not None else note
        if why:
            out.append(f"layer {layer}: no temporal TCAV, {why}; its TCAV scores are unaffected")
    return out


def _compute_concepts_and_classes(store, concepts, inputs: TcavInputs, targets):
    """Step 3 for concept clips (forward only) and class examples (forward + backward);
    drops clips that failed to load (recorded in ``store.failed``)."""
    store.ensure([e for c in concepts for e in c.examples], desc="concept clips")
    for name, index in targets.items():  # a class's examples need only its own logit's gradient
        store.ensure(inputs.class_examples[name], [index], desc=f"class examples ({name})")
    ok = lambda examples: [e for e in examples if e.key not in store.failed]  # noqa: E731
    concepts = [replace(c, examples=ok(c.examples)) for c in concepts]
    inputs = replace(inputs, class_examples={k: ok(v) for k, v in inputs.class_examples.items()})
    return concepts, inputs


def _with_static_variants(concepts: list[ConceptExamples], config: TcavConfig) -> list[ConceptExamples]:
    have = {(c.name, c.variant) for c in concepts}
    out = list(concepts)
    if config.with_static:
        out += [static_counterpart(c) for c in concepts
                if c.variant == "dynamic" and (c.name, "static") not in have]
    return sorted(out, key=lambda c: (c.name, c.variant))


def draw_random_sets(pool: Sequence[Example], n: int, size: int, seed: int) -> list[list[int]]:
    """N random sets of ``size`` pool indices; set i depends only on (seed, i)."""
    return [sorted(np.random.default_rng(stats.derive_seed(seed, "random-sets", i))
                   .choice(len(pool), size, replace=False).tolist()) for i in range(n)]


def draw_null_pairs(pool: Sequence[Example], n: int, size: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """N disjoint (A, B) pairs of pool indices for random-vs-random CAVs, own stream."""
    pairs = []
    for i in range(n):
        order = np.random.default_rng(stats.derive_seed(seed, "null", i)).permutation(len(pool))
        pairs.append((sorted(order[:size].tolist()), sorted(order[size:2 * size].tolist())))
    return pairs


def random_set_plan(pool: Sequence[Example], n: int, size: int, seed: int):
    """(random sets, null pairs, sorted pool indices used by either)."""
    random_sets = draw_random_sets(pool, n, size, seed)
    null_pairs = draw_null_pairs(pool, n, size, seed)
    used = sorted({i for s in random_sets for i in s} | {i for a, b in null_pairs for i in a + b})
    return random_sets, null_pairs, used


def _in_family(r: HypothesisResult, null: LayerReport, config: TcavConfig) -> bool:
    """Tested and corrected together: stated pairs (all if none stated) at non-degenerate layers."""
    return ((not config.hypotheses or (r.concept, r.target) in set(config.hypotheses))
            and not null.diagnosis.degenerate)


def _score(store: ActivationStore, concepts, inputs: TcavInputs, pool, targets: dict[str, int],
           config: TcavConfig, n_sets: int, *, seed: int | None = None, memo: dict | None = None) -> TcavReport:
    """Steps 1 and 4-6 with N random sets (``seed``: config.seed, or the auto check's or a
    stability seed; ``memo``: the pseudo null's grad . clip projections, shared by the calls of one run)."""
    seed = config.seed if seed is None else seed
    classifier = make_classifier(config.classifier)
    draw = _draw_random(store, concepts, pool, config, n_sets, seed, inputs.random_sets)
    results: list[HypothesisResult] = []
    layer_reports: list[LayerReport] = []
    all_cavs: list[CAV] = []
    for layer in config.layers:
        null_cavs, null_differences, random_means = _random_vs_random(store, classifier, draw, layer, seed)
        concept_cavs, concept_means = _concept_vs_random(store, classifier, concepts, draw, layer, seed)
        all_cavs += [v for c in concepts for v in concept_cavs[c.label]]
        relative_cavs = _relative_cavs(store, classifier, concepts, layer, seed) if config.relative else {}
        means = _Means(concept_means, random_means, null_differences)
        for target, k in targets.items():
            grads = store.gradients(inputs.class_examples[target], layer, k)
            reports, scored = _score_layer(layer, target, grads, concepts, concept_cavs, null_cavs, relative_cavs,
                                           config, means)
            layer_reports += reports
            results += scored
    # after the diagnosis: pseudo-concepts only in (layer, class) cells with hypotheses to test
    nulls, family = _testable_family(results, layer_reports, config)
    families = _group_families(family, config)
    null_sets = {key: null_set_count(config, len(members)) if config.test == "pseudo" else 0
                 for key, members in families.items()}
    if config.test == "pseudo":
        _pseudo_concept_null(store, classifier, draw, families, null_sets, nulls, inputs, targets, config, seed,
                             {} if memo is None else memo)
    elif config.calibration_sets:
        _two_sample_calibration_null(store, classifier, draw.pools, draw.random_sets, draw.null_pairs, family, nulls,
                                     inputs, targets, config, seed)
    corrected = _test_and_correct(results, nulls, families, null_sets, config, n_sets, seed,
                                  grid=max(len(inputs.class_examples[t]) for t in targets))
    power = _overall_power(corrected, config, n_sets)
    report = TcavReport(config, n_sets, results, layer_reports, power,
                        _report_warnings(corrected, power, layer_reports, config, classifier.name, n_sets),
                        cavs=all_cavs, families=corrected, left_out=_left_out(results, nulls, config), seeds=[seed])
    report.seed_cav_means = {key: [v] for key, v in _set_averaged_cavs(all_cavs).items()}
    return report


def _group_families(family: list[HypothesisResult], config: TcavConfig) -> dict[tuple[str, ...], list]:
    """The testable hypotheses by correction family (``config.family``), in a stable order."""
    out: dict[tuple[str, ...], list[HypothesisResult]] = {}
    for r in family:
        out.setdefault(family_key(r, config.family), []).append(r)
    return dict(sorted(out.items()))


def _left_out(results, nulls, config: TcavConfig) -> dict[str, int]:
    """Tested rows in no family, counted by why: a degenerate layer, or not a stated hypothesis."""
    out: dict[str, int] = {}
    for r in results:
        if r.comparison != "random" or _in_family(r, nulls[(r.layer, r.target, r.variant)], config):
            continue
        why = (f"degenerate layer {r.layer}" if nulls[(r.layer, r.target, r.variant)].diagnosis.degenerate
               else "not a stated hypothesis")
        out[why] = out.get(why, 0) + 1
    return dict(sorted(out.items()))


def _overall_power(families: list["CorrectionFamily"], config: TcavConfig, n_sets: int) -> stats.PowerCheck:
    """The largest family's power check (the hardest to pass); an empty run's, with none."""
    if families:
        return max(families, key=lambda f: f.size).power
    return stats.power_check(n_sets, 0, test=config.test, alpha=config.alpha, n_resamples=config.n_resamples,
                             n_null_sets=null_set_count(config, 1) if config.test == "pseudo" else 0)


def _set_averaged_cavs(cavs: list[CAV]) -> dict[tuple[str, str], np.ndarray]:
    """(concept label, layer) -> the unit mean of its CAVs over the random sets (D,)."""
    groups: dict[tuple[str, str], list[np.ndarray]] = {}
    for cav in cavs:
        groups.setdefault((cav.concept, cav.layer), []).append(cav.vector.astype(np.float64))
    out = {}
    for key, vectors in groups.items():
        mean = np.mean(vectors, axis=0)
        out[key] = mean / (np.linalg.norm(mean) or 1.0)
    return out


def _testable_family(results, layer_reports, config: TcavConfig) -> tuple[dict, list[HypothesisResult]]:
    """({(layer, class, variant): its null}, the hypotheses tested and corrected together)."""
    nulls = {(lr.layer, lr.target, lr.variant): lr for lr in layer_reports}
    family = [r for r in results if r.comparison == "random"
              and _in_family(r, nulls[(r.layer, r.target, r.variant)], config)]
    return nulls, family


@dataclass(frozen=True)
class _RandomDraw:
    """Step 1's draw: the pool rendered as each concept variant, N random sets and N
    random-vs-random pairs (pool indices), and the pseudo-concepts' candidate clips."""

    pools: dict[str, list[Example]]
    random_sets: list[list[int]]
    null_pairs: list[tuple[list[int], list[int]]]
    candidates: list[int]

    def activations(self, store: ActivationStore, variant: str, indices: Sequence[int], layer: str) -> np.ndarray:
        """One set's activations (read back from the cache: one set in RAM at a time)."""
        return store.activations([self.pools[variant][j] for j in indices], layer)


def _draw_random(store, concepts, pool, config: TcavConfig, n_sets: int, seed: int,
                 fixed: list[list[Example]] | None = None) -> _RandomDraw:
    """Step 1 (and step 3 for the drawn clips): random sets, null pairs and, for test
    "pseudo", the candidates, out of pool clips that load (``fixed``: the given sets
    themselves); a pool too small for the pseudo-concept test is a one-line error."""
    pseudo = config.test == "pseudo"
    variants = sorted({c.variant for c in concepts})
    if fixed is not None:
        draw = _RandomDraw(*_fixed_sets(store, pool, fixed, variants, seed, pseudo=pseudo))
    else:
        draw = _RandomDraw(*_draw_usable_sets(store, pool, variants, n_sets, config.random_set_size, seed,
                                              pseudo=pseudo))
    largest = max(len(c.examples) for c in concepts)
    if pseudo and not pseudo_test_fits(len(pool), largest, config.random_set_size):
        raise DataError(f"the random pool has {len(pool)} clips, too few for the pseudo-concept test with "
                        f"concepts of {largest} and random sets of {config.random_set_size} "
                        "(it needs their sum): add clips, lower --random-set-size, or use --test permutation")
    return draw


def _random_vs_random(store, classifier, draw: _RandomDraw, layer: str, seed: int):
    """Step 4, the null: per variant, one CAV per random-vs-random pair and the pair's
    mean-activation difference A - B (N, D); and each random set's mean activation (N, D).
    Returns ({variant: [CAV]}, {variant: (N, D)}, {variant: (N, D)})."""
    null_cavs, null_differences, random_means = {}, {}, {}
    for v in draw.pools:
        null_cavs[v], diffs = [], []
        for i, (a, b) in enumerate(draw.null_pairs):
            xa, xb = draw.activations(store, v, a, layer), draw.activations(store, v, b, layer)
            null_cavs[v].append(_fit(classifier, f"null:{i}a", f"null:{i}b", layer, xa, xb,
                                     stats.derive_seed(seed, "null-cav", layer, i, *([v] if v != "dynamic" else []))))
            diffs.append(scoring.mean_activation(xa) - scoring.mean_activation(xb))
        null_differences[v] = np.stack(diffs)
        random_means[v] = np.stack([scoring.mean_activation(draw.activations(store, v, rs, layer))
                                    for rs in draw.random_sets])
    return null_cavs, null_differences, random_means


def _concept_vs_random(store, classifier, concepts, draw: _RandomDraw, layer: str, seed: int):
    """Step 4: each concept against each random set of its variant (one CAV per set),
    and its mean activation (D,). Returns ({label: [CAV]}, {label: (D,)})."""
    cavs, means = {}, {}
    for c in concepts:
        acts = store.activations(c.examples, layer)
        means[c.label] = scoring.mean_activation(acts)
        cavs[c.label] = [_fit(classifier, c.label, f"random:{i}", layer, acts,
                              draw.activations(store, c.variant, rs, layer),
                              stats.derive_seed(seed, "cav", c.label, layer, i))
                         for i, rs in enumerate(draw.random_sets)]
    return cavs, means


def _pseudo_concept_null(store, classifier, draw: _RandomDraw, families, null_sets, nulls, inputs: TcavInputs,
                         targets: dict[str, int], config: TcavConfig, seed: int, memo: dict) -> None:
    """Step 5 for test "pseudo": pseudo-concepts of each tested concept size, scored
    like a concept against the same random sets, in every (layer, class, variant) cell
    that holds a hypothesis of a family; a cell keeps the first M of its family (rows
    are prefix-stable, so a cell's null does not depend on the other families).
    Fills each null's ``pseudo_means``."""
    wanted: dict[tuple[str, str, str], dict[int, int]] = {}   # cell -> concept size -> M
    for key, members in families.items():
        for r in members:
            wanted.setdefault((r.layer, r.target, r.variant), {})[r.n_examples] = null_sets[key]
    largest: dict[int, int] = {}
    for sizes in wanted.values():
        for size, m in sizes.items():
            largest[size] = max(largest.get(size, 0), m)
    pseudo_sets = {size: draw_pseudo_concepts(draw.candidates, m, size, seed) for size, m in sorted(largest.items())}
    for layer in config.layers:
        cells = {(t, v) for (cell_layer, t, v) in wanted if cell_layer == layer}
        grads = {t: store.gradients(inputs.class_examples[t], layer, targets[t])
                 for t in sorted({t for t, _ in cells})}
        for variant in sorted({v for _, v in cells}):
            for size, sets in pseudo_sets.items():
                needed = {t: wanted[(layer, t, variant)].get(size, 0) for t, v in cells if v == variant}
                if not any(needed.values()):
                    continue
                means = pseudo_null_means(store, classifier, draw.pools[variant], sets[:max(needed.values())],
                                          draw.random_sets, layer, {t: grads[t] for t in needed}, seed,
                                          config.test_statistic, memo)
                for t, m in means.items():
                    if needed[t]:
                        prefix = m[:needed[t]]
                        nulls[(layer, t, variant)].pseudo_means[size] = prefix[~np.isnan(prefix)]


def _report_warnings(families, power: stats.PowerCheck, layer_reports, config: TcavConfig, classifier: str,
                     n_sets: int) -> list[str]:
    """Power (per family), the pseudo null's cost, layer diagnoses and null health, each once, in that order."""
    n_null_sets = max((f.null_sets for f in families), default=0)
    cost = None if config.test != "pseudo" or is_cheap(config) else (
        f"the pseudo-concept null fitted {n_null_sets} x {n_sets} {classifier} CAVs per layer, variant "
        "and concept size: use --statistic logit-change or --classifier mean-diff for the nearly free path")
    powers = [f"power: family {f.name}: {f.power.warning.removeprefix('power: ')}"
              for f in families if f.power.warning] or [power.warning]
    warnings = [w for w in powers + [cost] + [lr.diagnosis.message for lr in layer_reports]
                + [lr.warning for lr in layer_reports] if w]
    return list(dict.fromkeys(warnings))


@dataclass(frozen=True)
class _Means:
    """One layer's mean activations (D,), for logit changes: per concept label, per
    variant's random sets (N, D), and per variant's random-vs-random pair A - B (N, D)."""

    concepts: dict[str, np.ndarray]
    random_sets: dict[str, np.ndarray]
    null_differences: dict[str, np.ndarray]


def _two_sample_calibration_null(store, classifier, pools, random_sets, null_pairs, family, nulls, inputs,
                                 targets, config: TcavConfig, seed: int) -> None:
    """For the calibration report of the two-sample tests (:mod:`tcav.calibration`):
    ``config.calibration_sets`` pseudo-concepts per concept size, drawn (stream
    "calibration") from the pool clips the random sets and pairs already computed,
    each scored against the N random sets exactly as a concept (N CAV fits each,
    nearly free with mean-difference CAVs); stored per cell in ``calibration_scores``."""
    used = sorted({i for rs in random_sets for i in rs} | {i for a, b in null_pairs for i in a + b})
    sets = {size: draw_pseudo_concepts(used, config.calibration_sets, size, stats.derive_seed(seed, "calibration"))
            for size in sorted({r.n_examples for r in family})
            if pseudo_test_fits(len(used), size, config.random_set_size)}
    for layer in config.layers:
        cells = {(r.target, r.variant) for r in family if r.layer == layer}
        grads = {t: store.gradients(inputs.class_examples[t], layer, targets[t]) for t in sorted({t for t, _ in cells})}
        for variant in sorted({v for _, v in cells}):
            for size, pseudo_sets in sets.items():
                scores = pseudo_tcav_per_set(store, classifier, pools[variant], pseudo_sets, random_sets, layer,
                                             grads, seed)
                for t, m in scores.items():
                    if (t, variant) in cells:
                        nulls[(layer, t, variant)].calibration_scores[size] = m


def variant_pools(pool: Sequence[Example], variants: Sequence[str]) -> dict[str, list[Example]]:
    """The random pool rendered as each concept variant: index i is the same clip in
    every variant (static: one frame repeated, as the static concepts)."""
    return {v: list(pool) if v == "dynamic" else [static_example(e) for e in pool] for v in variants}


def _draw_usable_sets(store, pool, variants, n_sets: int, size: int, seed: int, *, pseudo: bool = False):
    """Steps 1 and 3 for the random pool: draw, compute the drawn clips (and, if
    ``pseudo``, the pseudo-concepts' candidates) in every variant, and redraw
    without any that failed to load until every set is usable.
    Returns ({variant: pool}, random sets, null pairs, pseudo candidates)."""
    while True:
        if len(pool) < 2 * size:
            raise DataError(f"the random pool has {len(pool)} usable clips, fewer than two random sets "
                            f"of {size}: add clips or lower --random-set-size")
        random_sets, null_pairs, used = random_set_plan(pool, n_sets, size, seed)
        candidates = pseudo_pool_indices(len(pool), seed) if pseudo else []
        used = sorted(set(used) | set(candidates))
        pools = variant_pools(pool, variants)
        for variant, clips in pools.items():
            store.ensure([clips[i] for i in used], desc=f"random clips ({variant})")
        bad = {i for clips in pools.values() for i in used if clips[i].key in store.failed}
        if not bad:
            return pools, random_sets, null_pairs, candidates
        pool = [e for i, e in enumerate(pool) if i not in bad]


def _fixed_sets(store, pool, fixed: list[list[Example]], variants, seed: int, *, pseudo: bool = False):
    """Steps 1 and 3 with the random sets given (TF-TCAV's random folders), used as they
    are: set i is folder i's clips that load; the null pairs are (set i, set i+1 less
    their shared clips), so the null is random-versus-random over the same folders.
    Returns what :func:`_draw_usable_sets` returns."""
    index = {e.key: i for i, e in enumerate(pool)}
    candidates = pseudo_pool_indices(len(pool), seed) if pseudo else []
    pools = variant_pools(pool, variants)
    used = sorted({index[e.key] for s in fixed for e in s} | set(candidates))
    for variant, clips in pools.items():
        store.ensure([clips[i] for i in used], desc=f"random clips ({variant})")
    bad = {i for clips in pools.values() for i in used if clips[i].key in store.failed}
    random_sets = [sorted({index[e.key] for e in s} - bad) for s in fixed]
    short = [i for i, s in enumerate(random_sets) if len(s) < MIN_EXAMPLES_PER_SIDE]
    if short:
        raise DataError(f"random set {short[0]} has {len(random_sets[short[0]])} readable clip(s) left; each "
                        f"given random set needs at least {MIN_EXAMPLES_PER_SIDE}: add clips to its folder")
    pairs = [(a, sorted(set(b) - set(a))) for a, b in zip(random_sets, random_sets[1:] + random_sets[:1])]
    if any(len(b) < MIN_EXAMPLES_PER_SIDE for _, b in pairs):
        raise DataError("two given random sets share nearly all their clips: give folders of different clips")
    return pools, random_sets, pairs, [i for i in candidates if i not in bad]


def _fit(classifier, concept: str, against: str, layer: str, x: np.ndarray, other: np.ndarray, seed: int) -> CAV:
    fit = classifier.fit(x, other, seed=seed)
    return CAV(concept, against, layer, fit.vector, fit.accuracy, classifier.name, seed, fit.bias)


def _relative_cavs(store, classifier, concepts, layer, seed) -> dict[str, list[CAV]]:
    """Concept vs each other concept of the same variant (the paper's relative sign-count)."""
    out: dict[str, list[CAV]] = {}
    for c in concepts:
        others = [d for d in concepts if d.variant == c.variant and d.name != c.name]
        if not others:
            continue
        acts = store.activations(c.examples, layer)
        out[c.label] = [_fit(classifier, c.label, d.label, layer, acts, store.activations(d.examples, layer),
                             stats.derive_seed(seed, "relative", c.label, d.label, layer)) for d in others]
    return out


def _score_layer(layer, target, grads, concepts, concept_cavs, null_cavs: dict[str, list[CAV]],
                 relative_cavs, config, means: _Means) -> tuple[list[LayerReport], list[HypothesisResult]]:
    """Step 5 for one (layer, class): one null per variant, then every concept."""
    flat = grads.reshape(len(grads), -1)
    earlier = list(config.layers[:config.layers.index(layer)])
    diagnosis = diagnostics.diagnose_layer(layer, target, flat, earlier)
    reports = []
    for variant, cavs in null_cavs.items():
        null_scores = scoring.tcav_score(scoring.directional_derivatives(flat, np.stack([c.vector for c in cavs])))
        warning = diagnostics.null_warning(layer, target, null_scores)
        reports.append(LayerReport(layer, target, diagnosis, null_scores, np.array([c.accuracy for c in cavs]),
                                   warning and (warning if variant == "dynamic" else f"{variant} {warning}"),
                                   variant, scoring.logit_changes(flat, means.null_differences[variant])))
    results = []
    for c in concepts:
        for comparison, cavs in (("random", concept_cavs[c.label]), ("relative", relative_cavs.get(c.label))):
            if not cavs:
                continue
            s = scoring.directional_derivatives(flat, np.stack([v.vector for v in cavs]))
            others = means.random_sets[c.variant] if comparison == "random" else \
                np.stack([means.concepts[v.against] for v in cavs])
            result = HypothesisResult(
                c.name, c.variant, layer, target, comparison, scoring.tcav_score(s),
                scoring.magnitude_score(s), np.array([v.accuracy for v in cavs]), c.concept_id,
                against=[v.against for v in cavs], n_examples=len(c.examples),
                logit_changes=scoring.logit_changes(flat, means.concepts[c.label] - others))
            if grads.ndim == 5 and grads.shape[2] > 1:  # (N, C, T, H, W) with time left
                result.temporal = _temporal(grads, cavs)
            results.append(result)
    return reports, results


def _temporal(grads: np.ndarray, cavs: list[CAV]) -> scoring.TemporalProfile:
    """Temporal TCAV averaged over the CAVs (random sets)."""
    profiles = [scoring.temporal_profile(scoring.temporal_derivatives(grads, v.vector)) for v in cavs]
    return scoring.TemporalProfile(np.mean([p.contribution for p in profiles], axis=0),
                                   np.mean([p.fraction_positive for p in profiles], axis=0))


def _test_and_correct(results, nulls, families, null_sets, config: TcavConfig, n_sets: int, seed: int, *,
                      grid: int) -> list[CorrectionFamily]:
    """Step 6: p-values (and, for test "pseudo", z) against the variant's null, corrected
    within each family, verdicts (significant: corrected p strictly below alpha, see
    :func:`tcav.stats.is_significant`). Hypotheses outside every family keep their raw
    p and get p_corrected 1.0."""
    tested = [r for r in results if r.comparison == "random"]
    for r in tested:
        null = nulls[(r.layer, r.target, r.variant)]
        if config.test == "pseudo":  # outside the families no null is built: p 1.0, verdict "not tested"
            m = null.pseudo_means.get(r.n_examples)
            observed = r.statistic(config.test_statistic)
            r.p_value = 1.0 if m is None else stats.pseudo_concept_p(observed, m).p_value
            r.z = None if m is None else stats.pseudo_z(observed, m)
            continue
        r.p_value = stats.compare_to_null(r.scores, null.null_scores, test=config.test,
                                          seed=stats.derive_seed(seed, "test", r.concept, r.variant, r.layer, r.target),
                                          n_resamples=config.n_resamples).p_value
    corrected, out = {}, []
    for key, members in families.items():
        for r, p in zip(members, stats.correct_p_values(np.array([r.p_value for r in members]), config.correction)):
            corrected[id(r)] = float(p)
        power = stats.power_check(n_sets, len(members), test=config.test, alpha=config.alpha, grid=grid,
                                  n_resamples=config.n_resamples, n_null_sets=null_sets[key])
        out.append(CorrectionFamily(key, len(members), null_sets[key], power))
        for r in members:
            r.family = out[-1].name
    for r in tested:
        null = nulls[(r.layer, r.target, r.variant)]
        p = r.p_corrected = corrected.get(id(r), 1.0)
        quality = diagnostics.cav_quality(r.cav_accuracies, null.null_accuracies)
        if null.diagnosis.degenerate:
            r.flags.append("degenerate layer")
            r.verdict = "degenerate layer: scores are all-or-nothing; not tested"
        elif id(r) not in corrected:
            r.flags.append("not tested")
            r.verdict = "not tested (not a stated hypothesis)"
        elif not quality.learnable:
            r.flags.append("unreliable CAV")
            r.verdict = (f"not a learnable concept at this layer (CAV accuracy {quality.concept_accuracy:.2f} "
                         f"vs random {quality.null_accuracy:.2f})")
        elif stats.is_significant(p, config.alpha):
            r.significant = True
            r.verdict = _significant_verdict(r, null, config)
        else:
            r.verdict = "not significant"
    for r in results:
        if r.comparison == "relative":
            r.verdict = "relative to " + ", ".join(r.against)
    return out


def _significant_verdict(r: HypothesisResult, null: LayerReport, config: TcavConfig) -> str:
    """Which way the concept moves the class, by the tested statistic against its
    null's centre (the pseudo-concepts' median, or the random-vs-random mean)."""
    if config.test == "pseudo":
        observed, centre = r.statistic(config.test_statistic), float(np.median(null.pseudo_means[r.n_examples]))
    else:
        observed, centre = r.tcav_mean, null.null_mean
    direction = "raises" if observed > centre else "lowers"
    if config.test_statistic == "logit-change":
        z = "" if r.z is None else f", z {r.z:+.1f}"
        return (f"significant: {direction} {r.target} (logit change {observed:+.3g} vs null {centre:+.3g}{z}, "
                f"TCAV {r.tcav_mean:.2f})")
    return f"significant: {direction} {r.target} (TCAV {r.tcav_mean:.2f} vs null {centre:.2f})"


def _verdicts(report: TcavReport) -> dict[tuple, bool]:
    return {(r.concept, r.variant, r.layer, r.target): r.significant for r in report.tested()}


def _score_auto(store, concepts, inputs, pool, targets, config: TcavConfig, memo: dict | None = None) -> TcavReport:
    """--random-sets auto: double N from AUTO_START until the verdicts agree across
    two seeds (config.seed and a derived one), up to config.max_random_sets."""
    n, history = AUTO_START, []
    check_seed = stats.derive_seed(config.seed, "auto-check")
    while True:
        main = _score(store, concepts, inputs, pool, targets, config, n, memo=memo)
        other = _score(store, concepts, inputs, pool, targets, config, n, seed=check_seed, memo=memo)
        stable = _verdicts(main) == _verdicts(other)
        history.append({"n": n, "stable": stable})
        if stable or n >= config.max_random_sets:
            if not stable:
                main.warnings.append(f"verdicts still differ between two seeds at the cap of {n} random sets: "
                                     "treat borderline results as inconclusive")
            main.auto_history = history
            return main
        n = min(2 * n, config.max_random_sets)


def family_summary(report: TcavReport) -> str:
    """One line: how many hypotheses each correction used (its m) and which rows were left out, and why."""
    config = report.config
    where = {"target-layer": "each target and layer", "target": "each target", "experiment": "the experiment"}
    sizes = sorted({f.size for f in report.families})
    if not report.families:
        fams = "no testable hypotheses"
    elif len(report.families) == 1:
        fams = f"{report.families[0].size} hypotheses in family {report.families[0].name}"
    else:
        fams = (f"{sum(f.size for f in report.families)} hypotheses in {len(report.families)} families, "
                f"m = {'/'.join(map(str, sizes))} ({', '.join(f.name for f in report.families)})")
    nulls = sorted({f.null_sets for f in report.families if f.null_sets})
    null = f", M = {'/'.join(map(str, nulls))} pseudo-concepts" if nulls else ""
    out = ", ".join(f"{n} at a {why}" if why.startswith("degenerate") else f"{n} {why}"
                    for why, n in report.left_out.items())
    seeds = f"; verdicts checked over {len(report.seeds)} seeds" if len(report.seeds) > 1 else ""
    return (f"{config.correction} within {where[config.family]}: {fams}{null}"
            f"{'; left out: ' + out if out else ''}{seeds}")


def config_dict(config: TcavConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
