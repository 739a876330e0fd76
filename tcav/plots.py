"""Matplotlib PNGs of a TCAV report (Agg backend; no display needed).

* ``scores_<class>.png``: per layer, a bar per concept (dynamic) with the std over
  random sets as error bars, the null mean as a dashed line, ``*`` on significant
  bars, hatching on unreliable CAVs, and a grey panel titled "degenerate" for
  degenerate layers.
* ``effect_<class>.png`` (``--test pseudo``): per non-degenerate layer, what the test
  ranks beside the TCAV score: each dynamic concept's statistic (the logit change) as a
  dot, its pseudo-null as a grey 1-99 % range with the median, and the two-sided
  threshold its corrected p must pass as red ticks; ``*`` on significant concepts.
* ``static_dynamic_<class>.png``: dynamic and static bars side by side.
* ``temporal_<class>.png``: the temporal TCAV curve over the layer's time slices.
* ``calibration.png``: the null p-values (flat when the test is calibrated) and the
  measured false-positive rate against alpha (:mod:`tcav.calibration`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conceptgen.experiments import safe_name
from tcav.experiment import TcavReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_safe = safe_name  # plot file names; conceptgen.experiments files plots under targets with it


def plot_report(report: TcavReport, folder: str | Path) -> list[Path]:
    """Writes every plot for every target class into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for target in report.config.targets:
        if report.config.test == "pseudo" and _effect_layers(report, target):
            out.append(plot_effects(report, target, folder / f"effect_{_safe(target)}.png"))
        out.append(plot_scores(report, target, folder / f"scores_{_safe(target)}.png"))
        if any(r.variant == "static" for r in report.tested()):
            out.append(plot_static_dynamic(report, target, folder / f"static_dynamic_{_safe(target)}.png"))
        if any(r.temporal is not None for r in report.tested()):
            out.append(plot_temporal(report, target, folder / f"temporal_{_safe(target)}.png"))
    if report.calibration is not None and report.calibration.n_null_hypotheses:
        out.append(plot_calibration(report.calibration, folder / "calibration.png"))
    return out


def _panels(plt, n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 3.6 * n), 3.8), squeeze=False, sharey=True)
    fig.suptitle(title)
    return fig, axes[0]


def _layer_state(report: TcavReport, layer: str, target: str):
    return next(lr for lr in report.layer_reports
                if (lr.layer, lr.target, lr.variant) == (layer, target, "dynamic"))


def plot_scores(report: TcavReport, target: str, path: Path) -> Path:
    plt = _pyplot()
    layers = list(report.config.layers)
    fig, axes = _panels(plt, len(layers), f"TCAV for {target} ({report.n_random_sets} random sets)")
    axes[0].set_ylim(0, 1.15)
    for ax, layer in zip(axes, layers):
        state = _layer_state(report, layer, target)
        results = [r for r in report.tested() if r.layer == layer and r.target == target and r.variant == "dynamic"]
        x = np.arange(len(results))
        for i, r in enumerate(results):
            unreliable = "unreliable CAV" in r.flags
            ax.bar(i, r.tcav_mean, yerr=r.tcav_std, capsize=3, color="#4c72b0" if r.significant else "#a6bddb",
                   hatch="//" if unreliable else None, edgecolor="black")
            if r.significant:
                ax.text(i, min(1.02, r.tcav_mean + r.tcav_std + 0.02), "*", ha="center", fontsize=14)
        ax.axhline(state.null_mean, ls="--", color="red", lw=1, label=f"null {state.null_mean:.2f}")
        ax.set_xticks(x, [r.concept for r in results], rotation=40, ha="right", fontsize=8)
        title = layer
        if state.diagnosis.degenerate:
            ax.set_facecolor("#e5e5e5")
            title += "\n(degenerate: all-or-nothing)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("TCAV score")
    fig.text(0.01, 0.01, f"* significant after {report.config.correction} correction ({_test_label(report.config)}); "
             "// unreliable CAV", fontsize=7)
    return _save(plt, fig, path)


def _effect_layers(report: TcavReport, target: str) -> list[str]:
    return [layer for layer in report.config.layers
            if not _layer_state(report, layer, target).diagnosis.degenerate
            and any(r.family and r.layer == layer and r.target == target for r in report.tested())]


def null_threshold(null: np.ndarray, family_size: int, alpha: float) -> tuple[float, float]:
    """(centre, distance): the pseudo-null's median, and how far from it a statistic must lie
    for its two-sided rank p, times ``family_size`` (Bonferroni), to fall below alpha."""
    null = np.asarray(null, float)
    centre = float(np.median(null))
    k = int(np.floor(alpha * (len(null) + 1) / max(1, family_size) - 1e-9))  # p = (1 + #beyond)/(M+1) < alpha/m
    distances = np.sort(np.abs(null - centre))[::-1]
    return centre, float(distances[k - 1]) if k >= 1 else float("inf")


def plot_effects(report: TcavReport, target: str, path: Path) -> Path:
    """The statistic the test ranks, against its pseudo-null and threshold, beside the TCAV score."""
    plt = _pyplot()
    layers = _effect_layers(report, target)
    config = report.config
    fig, axes = plt.subplots(1, 2 * len(layers), figsize=(max(6.0, 4.2 * 2 * len(layers)), 4.0), squeeze=False)
    fig.suptitle(f"{target}: {config.test_statistic} against {report.families[0].null_sets if report.families else 0}"
                 f" pseudo-concepts, and the TCAV score")
    for i, layer in enumerate(layers):
        left, right = axes[0][2 * i], axes[0][2 * i + 1]
        rows = [r for r in report.tested() if r.layer == layer and r.target == target and r.variant == "dynamic"]
        for x, r in enumerate(rows):
            null = report.null_for(r).pseudo_means.get(r.n_examples, np.zeros(0))
            if len(null):
                size = next((f.size for f in report.families if f.name == r.family), 1)
                centre, reach = null_threshold(null, size, config.alpha)
                low, high = np.percentile(null, [1, 99])
                left.plot([x, x], [low, high], color="#999999", lw=6, solid_capstyle="butt")
                left.plot([x - 0.25, x + 0.25], [centre] * 2, color="black", lw=1)
                if np.isfinite(reach):
                    left.plot([x - 0.3, x + 0.3], [centre + reach] * 2, color="red", lw=1.2, ls="--")
                    left.plot([x - 0.3, x + 0.3], [centre - reach] * 2, color="red", lw=1.2, ls="--")
            value = r.statistic(config.test_statistic)
            left.plot(x, value, "o", ms=8, color="#4c72b0" if r.significant else "white", markeredgecolor="black")
            if r.significant:
                left.annotate("*", (x, value), textcoords="offset points", xytext=(7, 0), fontsize=14)
            right.bar(x, r.tcav_mean, yerr=r.tcav_std, capsize=3, color="#4c72b0" if r.significant else "#a6bddb",
                      edgecolor="black")
        names = [r.concept for r in rows]
        for ax in (left, right):
            ax.set_xticks(np.arange(len(rows)), names, rotation=40, ha="right", fontsize=8)
        left.set_title(f"{layer}: {config.test_statistic} (dot), pseudo-null 1-99 % (grey),\n"
                       f"threshold for p_corr < {config.alpha} (red)", fontsize=8)
        left.set_ylabel("class-logit change" if config.test_statistic == "logit-change" else "TCAV score")
        right.set_ylim(0, 1.1)
        right.axhline(report.null_for(rows[0]).null_mean if rows else 0.5, ls="--", color="red", lw=1)
        right.set_title(f"{layer}: TCAV score (random-vs-random mean dashed)", fontsize=8)
    fig.text(0.01, 0.01, f"* significant: {config.correction}-corrected p < {config.alpha} within each "
             f"{config.family} family", fontsize=7)
    return _save(plt, fig, path)


def _test_label(config) -> str:
    if config.test == "pseudo":
        return f"{config.test_statistic} ranked among pseudo-concepts"
    return f"{config.test} test of TCAV scores against random-vs-random"


def plot_static_dynamic(report: TcavReport, target: str, path: Path) -> Path:
    plt = _pyplot()
    layers = list(report.config.layers)
    fig, axes = _panels(plt, len(layers), f"dynamic vs static concepts for {target}")
    for ax, layer in zip(axes, layers):
        pairs = {}
        for r in report.tested():
            if r.layer == layer and r.target == target:
                pairs.setdefault(r.concept, {})[r.variant] = r
        names = sorted(n for n, v in pairs.items() if {"dynamic", "static"} <= set(v))
        x = np.arange(len(names))
        for offset, variant, colour in ((-0.2, "dynamic", "#4c72b0"), (0.2, "static", "#dd8452")):
            vals = [pairs[n][variant] for n in names]
            ax.bar(x + offset, [v.tcav_mean for v in vals], width=0.4, yerr=[v.tcav_std for v in vals],
                   capsize=2, color=colour, label=variant, edgecolor="black")
        ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        degenerate = _layer_state(report, layer, target).diagnosis.degenerate
        ax.set_title(layer + ("\n(degenerate)" if degenerate else ""), fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("TCAV score")
    return _save(plt, fig, path)


def plot_temporal(report: TcavReport, target: str, path: Path) -> Path:
    plt = _pyplot()
    layers = [l for l in report.config.layers
              if any(r.temporal is not None and r.layer == l for r in report.tested())]
    fig, axes = _panels(plt, len(layers), f"temporal TCAV for {target}: when the concept drives the class")
    for ax, layer in zip(axes, layers):
        for r in report.tested():
            if r.layer == layer and r.target == target and r.temporal is not None and r.variant == "dynamic":
                t = np.arange(len(r.temporal.contribution))
                line, = ax.plot(t, r.temporal.contribution, marker="o", label=r.concept)
                ax.plot(t, r.temporal.fraction_positive, ls=":", color=line.get_color())
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("time slice at this layer")
        ax.set_title(layer, fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("share of S (solid), fraction S_t>0 (dotted)")
    return _save(plt, fig, path)


def plot_calibration(calibration, path: Path) -> Path:
    """Left: histogram of the null hypotheses' raw p-values against the flat density of a
    calibrated test. Right: measured false-positive rates against the nominal alpha."""
    plt = _pyplot()
    c = calibration
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.6))
    fig.suptitle(f"calibration of the {c.test} test on this experiment's null "
                 f"({c.n_null_hypotheses} pseudo-concept hypotheses)", fontsize=10)
    bins = np.linspace(0, 1, 21)
    left.hist(c.null_p_values, bins=bins, density=True, color="#a6bddb", edgecolor="black")
    left.axhline(1.0, ls="--", color="black", lw=1, label="calibrated")
    left.axvline(c.alpha, color="red", lw=1, label=f"alpha {c.alpha}")
    left.set_xlabel("raw p-value of a null hypothesis")
    left.set_ylabel("density")
    left.legend(fontsize=7)
    names = [f"family-wise\n({c.correction}, {c.family_size} per family)", "raw (uncorrected)"]
    values = [c.false_positive_rate or 0.0, c.raw_false_positive_rate or 0.0]
    right.bar([0, 1], values, color=["#dd8452" if c.exceeds_alpha else "#4c72b0", "#a6bddb"], edgecolor="black")
    right.axhline(c.alpha, ls="--", color="red", lw=1, label=f"nominal alpha {c.alpha}")
    right.set_xticks([0, 1], names, fontsize=8)
    right.set_ylabel("false-positive rate")
    stability = "n/a" if c.cav_stability is None else f"{c.cav_stability:.2f}"
    right.set_title(f"{c.families_rejected}/{c.n_families} null families significant; "
                    f"CAV stability {stability}", fontsize=8)
    right.legend(fontsize=7)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")  # suptitles wider than the axes stay whole
    plt.close(fig)
    return path
