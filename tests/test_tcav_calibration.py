"""calibration.json: the experiment's own test run on random-pool pseudo-concepts.
The two-sample t-test of the Video-TCAV paper fires on them far above alpha where the
class gradients are alike (the toy model's conv layers); the pseudo-concept test stays
at alpha. Real mp4 files, the toy 3D CNN checkpoint, real SQLite workspaces."""
from __future__ import annotations

import json
import re

import numpy as np
from sqlalchemy import select

from annotator import create_app
from conceptgen.cli import main
from conceptgen.orm import TcavExperiment, TcavResult
from conceptgen.workspace import Workspace
from tcav.calibration import MAX_NULL_PER_CELL, Calibration, family_error_rate


def _tcav(capsys, ws, root, test, *extra):
    code = main(["--quiet", "--workspace", str(ws), "tcav", "--model", str(root / "toy.pt"),
                 "--layers", "conv1,conv2", "--target", "right", "--concepts", str(root / "concepts"),
                 "--class-examples", str(root / "classes"), "--random-sets", "6", "--random-set-size", "8",
                 "--test", test, "--seed", "1", "--classifier", "mean-diff", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out, json.loads((ws / "media" / "tcav" / "1" / "calibration.json").read_text())


def test_uniform_null_p_values_keep_the_familywise_rate_at_alpha():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50_000)
    for correction in ("bonferroni", "holm"):
        rejected, families = family_error_rate(p, 5, correction=correction, alpha=0.05, seed=0)
        assert families == 10_000 and 0.04 <= rejected / families <= 0.06
    assert family_error_rate(np.full(12, 1e-6), 5, correction="bonferroni", alpha=0.05, seed=0) == (2, 2)
    assert family_error_rate(np.array([0.9, 0.01]), 5, correction="bonferroni", alpha=0.05, seed=0) == (1, 1)
    assert family_error_rate(np.array([]), 5, correction="bonferroni", alpha=0.05, seed=0) == (0, 0)


def test_the_ttest_fires_on_pseudo_concepts_and_tcav_warns_in_one_line(toy_tcav_clips, tmp_path, capsys):
    out, cal = _tcav(capsys, tmp_path / "ws", toy_tcav_clips, "ttest", "--calibration-sets", "40")
    # 2 layers x 1 class x 2 variants, 40 pseudo-concepts of the concepts' size (8) each
    # families: each target at each layer (2 variants x 4 concepts), so 160 / 4 null families
    assert cal["n_null_hypotheses"] == 4 * 40 and cal["family_size"] == 4 and cal["n_families"] == 40
    assert cal["exceeds_alpha"] and cal["false_positive_rate"] > 0.05 and cal["binomial_p"] < 0.01
    warnings = [line for line in out.splitlines() if line.startswith("warning: calibration:")]
    assert len(warnings) == 1 and "false-positive rate" in warnings[0]
    ws = Workspace.resolve(tmp_path / "ws")
    with ws.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        stored, plots = exp.summary["calibration"], list(exp.plots)
    ws.close()
    assert stored["false_positive_rate"] == cal["false_positive_rate"] and stored["warning"] in out
    assert "tcav/1/calibration.png" in plots and (tmp_path / "ws" / "media" / "tcav" / "1" / "calibration.png").is_file()
    # every concept's CAVs are compared across seeds: cosines, one per concept variant and layer
    assert len(cal["cav_stability_by_concept"]) == 2 * 2 * 2
    assert all(-1 <= c["mean_cosine"] <= 1 and c["n_cavs"] == 6 for c in cal["cav_stability_by_concept"])


def test_the_pseudo_concept_test_is_calibrated_on_the_same_inputs(toy_tcav_clips, tmp_path, capsys):
    out, cal = _tcav(capsys, tmp_path / "ws", toy_tcav_clips, "pseudo")
    results = json.loads((tmp_path / "ws" / "media" / "tcav" / "1" / "results.json").read_text())
    # each null cell's first MAX_NULL_PER_CELL pseudo-concepts, each ranked among all the others
    m = sum(min(cell["n"], MAX_NULL_PER_CELL) for lr in results["summary"]["layers"]
            for cell in lr["pseudo_null"].values())
    assert cal["family_size"] == 4 and cal["n_null_hypotheses"] == m and cal["n_families"] == m // 4
    assert not cal["exceeds_alpha"] and cal["binomial_p"] > 0.01
    assert len(cal["null_p_values"]) == m and all(0 < p <= 1 for p in cal["null_p_values"])
    assert "warning: calibration" not in out and "calibration: false-positive rate" in out


def test_concept_library_shows_the_rate_and_warns_above_alpha(review_ws):
    ws, info = review_ws
    app = create_app(ws, {"TESTING": True})
    calibration = Calibration(test="ttest", statistic="tcav", correction="bonferroni", alpha=0.05,
                              n_null_hypotheses=80, family_size=8, n_families=10, families_rejected=8,
                              false_positive_rate=0.8, raw_false_positive_rate=0.39, binomial_p=1e-9,
                              cav_stability=0.41)
    with ws.session() as s:
        from conceptgen.orm import Concept
        concept = Concept(name="sq", description="d", source="manual", status="approved")
        s.add(concept)
        s.flush()
        exp = TcavExperiment(config={}, model_name="demo", model_fingerprint="f" * 64, target="push",
                             layers=["blocks.1"], seed=0, status="finished", plots=[],
                             summary={"calibration": calibration.summary()})
        s.add(exp)
        s.flush()
        s.add(TcavResult(experiment_id=exp.id, concept_id=concept.id, concept_name="sq", layer="blocks.1",
                         target_class="push", tcav_mean=0.83, tcav_std=0.05, magnitude_mean=0.4,
                         cav_accuracy_mean=0.9, p_value=0.001, p_corrected=0.004, significant=True,
                         verdict="significant positive"))
    client = app.test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"username": "alice", "password": "correct-horse",
                                       "csrf_token": token}).status_code == 302
    page = client.get("/concepts").text
    assert "Calibration of experiment 1 (ttest test)" in page and "false-positive rate 0.8" in page
    assert "(8/10 null families, 80 null hypotheses) vs alpha 0.05" in page
    assert "CAV stability across seeds 0.41" in page and 'class="calibration warn"' in page
    assert "fires on random concepts more often than alpha" in page
    entry = client.get("/api/concepts").get_json()["concepts"][0]
    assert entry["calibrations"][0]["exceeds_alpha"] is True
