"""FastCAV speed benchmark (benchmarks/cav_speed.py) and the CAV stability measure it reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tcav.cav import mean_pairwise_cosine

REPO = Path(__file__).resolve().parents[1]


def test_mean_pairwise_cosine_is_one_for_one_direction_and_near_zero_for_random_ones():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64)
    assert mean_pairwise_cosine(np.stack([direction * s for s in (1, 2, 5)])) == pytest.approx(1.0)
    assert abs(mean_pairwise_cosine(rng.normal(size=(20, 4096)))) < 0.02
    assert mean_pairwise_cosine(np.stack([direction, -direction])) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(direction[None])


def test_cav_speed_quick_prints_the_figures_on_the_demo_models_activations(demo_report, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cav_speed.py"), "--quick", "--no-targets",
                           "--checkpoint", str(demo_report.checkpoint), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("mean_diff_seconds", "sgd_seconds", "speedup", "cosine_across_seeds_mean_diff",
                "cosine_across_seeds_sgd"):
        assert isinstance(figures[key], float), key
    assert figures["speedup"] == pytest.approx(figures["sgd_seconds"] / figures["mean_diff_seconds"])
    # both are real CAVs of separable classes: well above chance, and cosines are cosines
    assert figures["accuracy_mean_diff"] > 0.6 and figures["accuracy_sgd"] > 0.6
    assert -1 <= figures["cosine_across_seeds_sgd"] <= 1 and -1 <= figures["cosine_across_seeds_mean_diff"] <= 1
    assert set(figures["targets"]) == {"speedup", "cosine_across_seeds_mean_diff", "stability_gain"}
