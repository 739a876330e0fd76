"""Benchmarks fail when they miss: each checks its stated targets (benchmarks/targets.py)
and exits 1 on a miss, 0 with --no-targets. The benchmarks themselves are too slow for
the suite; the fastest one runs on a tiny input."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from targets import Target, check, exit_status  # noqa: E402

WITH_TARGETS = ("annotator_load", "cav_speed", "cav_stability", "clustering", "discovery", "embedding",
                "real_discovery",
                "tcav_synthetic")


def test_a_missed_target_gives_exit_status_1_unless_targets_are_off(capsys):
    targets = (Target("recall", ">=", 0.9), Target("false_discoveries", "==", 0), Target("speedup", ">=", 2))
    met = {"recall": 0.95, "false_discoveries": 0, "speedup": None}  # None: not measured, not checked
    assert check(met, targets) == {"missed_targets": [], "targets_enforced": True}
    assert exit_status({**met, **check(met, targets)}) == 0
    missed = {"recall": 0.5, "false_discoveries": 1, "speedup": 3.0}
    verdict = check(missed, targets)
    assert verdict["missed_targets"] == ["recall >= 0.9 (got 0.5)", "false_discoveries == 0 (got 1)"]
    assert exit_status({**missed, **verdict}) == 1
    assert exit_status({**missed, **check(missed, targets, enforce=False)}) == 0
    assert "NO" in capsys.readouterr().out
    with pytest.raises(ValueError):
        Target("recall", "=>", 1)


@pytest.mark.parametrize("name", WITH_TARGETS)
def test_every_benchmark_with_a_stated_target_checks_it_and_exits_with_its_status(name):
    tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert {"add_flag", "check", "exit_status"} <= calls, name
    last = tree.body[-1]  # if __name__ == "__main__": ... sys.exit(...)
    assert isinstance(last, ast.If) and "sys.exit" in ast.unparse(last), name


def test_the_clustering_benchmark_exits_1_exactly_when_it_reports_a_miss(tmp_path):
    argv = [sys.executable, str(BENCHMARKS / "clustering.py"), "--n", "3000", "--d", "8", "--k", "4", "--threads", "1"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["targets_enforced"] is True
    assert run.returncode == (1 if result["missed_targets"] else 0), run.stderr
    relaxed = subprocess.run([*argv, "--no-targets"], capture_output=True, text=True, timeout=300)
    assert relaxed.returncode == 0, relaxed.stderr
    assert json.loads(relaxed.stdout.strip().splitlines()[-1])["targets_enforced"] is False


def test_tcav_benchmark_json_has_one_name_per_figure():
    """false_discoveries once (it had a twin, distractors_significant, with the same number)."""
    source = (BENCHMARKS / "tcav_synthetic.py").read_text()
    tree = ast.parse(source)
    figures = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "figures")
    returned = next(n.value for n in ast.walk(figures) if isinstance(n, ast.Return))
    keys = [k.value for k in returned.keys]
    values = [ast.unparse(v) for v in returned.values]
    assert "false_discoveries" in keys and "distractors_significant" not in keys
    assert len(set(values)) == len(values), "two keys report the same expression"
