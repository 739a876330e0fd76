"""`conceptgen synth`, `train-demo-model` and `models` through the CLI, plus one-line errors
(non-zero exit, no traceback) for bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conceptgen.cli import main
from conceptgen.synth import load_ground_truth


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "conceptgen", *args], capture_output=True, text=True)


def _one_line_error(res):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_synth_writes_a_set_the_library_reads_back(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["--quiet", "synth", "--out", str(out), "--videos", "4", "--seed", "2",
                 "--frames", "6", "--size", "48"]) == 0
    assert "wrote 4 videos" in capsys.readouterr().out
    ds = load_ground_truth(out)
    assert len(ds.videos) == 4 and ds.seed == 2 and ds.num_frames == 6


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.split()
    assert {"x3d_xs", "swin3d_t", "slowfast_r50", "demo"} <= set(out)


def test_models_layers_marks_pooled_layers(demo_workspace, capsys):
    assert main(["--workspace", str(demo_workspace.root), "models", "--layers", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "stage3" in lines and "head.pool [pooled]" in lines and "head.proj [pooled]" in lines


def test_train_demo_model_prints_held_out_accuracy(demo_workspace, synth_dir, capsys):
    assert main(["--workspace", str(demo_workspace.root), "--quiet", "train-demo-model",
                 "--data", str(synth_dir)]) == 0
    out = capsys.readouterr().out
    assert "reused existing checkpoint" in out
    accuracy = float(out.split("held-out accuracy")[1].split()[0])
    assert accuracy >= 0.95


@pytest.mark.parametrize("args, expected", [
    (["models", "--layers", "x3d_xss"], "unknown model"),
    (["models", "--layers", "r3d_18", "--pretrained"], "--weights PATH"),
    (["train-demo-model", "--data", "/nonexistent/folder"], "ground_truth.json"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, expected):
    if "--pretrained" in args:
        import socket
        try:
            socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
            pytest.skip("network is available; the offline path cannot be exercised")
        except OSError:
            pass
    res = _cli("--workspace", str(tmp_path / "ws"), *args)
    assert expected in _one_line_error(res)


def test_wrong_layer_name_and_bad_synth_args_are_one_line_errors(tmp_path, demo_workspace, capsys):
    from conceptgen.errors import LayerNotFoundError
    from conceptgen.registry import get_layer, load_model
    with pytest.raises(LayerNotFoundError) as exc:
        get_layer(load_model("demo", workspace=demo_workspace), "stage9")
    assert "stage1" in str(exc.value) and "\n" not in str(exc.value)
    assert main(["synth", "--out", str(tmp_path / "s"), "--videos", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
