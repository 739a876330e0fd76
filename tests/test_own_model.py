"""A user's own network, the three ways researchers hold one: a builder
``package.module:function`` with kwargs and a state_dict (flags, a model card, a sidecar
JSON), an ``nn.Module`` handed to the library, and TorchScript (refused in one line).

The network is pytorchvideo's ``create_resnet`` with small kwargs: not a registry
architecture, built from its module path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from conceptgen.cli import main
from conceptgen.errors import ConfigError, ModelError
from conceptgen.registry import InputSpec, ModelSource, load_model, model_fingerprint, read_model_card
from conceptgen.videoio import write_video
from tcav.toy import ToyWorld, _background, class_clips, moving_square_clip, static_blob

REPO = Path(__file__).resolve().parents[1]
BUILDER = "pytorchvideo.models.resnet:create_resnet"
KWARGS = {"input_channel": 3, "model_depth": 50, "model_num_class": 2, "stem_dim_out": 4,
          "head_pool_kernel_size": [8, 1, 1], "dropout_rate": 0.0}
SPEC = {"num_frames": 8, "side": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
CLASSES = ["left", "right"]
W = ToyWorld()


def _network() -> torch.nn.Module:
    from pytorchvideo.models.resnet import create_resnet

    torch.manual_seed(0)  # stands in for a network trained elsewhere
    return create_resnet(**KWARGS).eval()


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """The network's state_dict (resnet.pt), its sidecar (resnet.json) and a model card."""
    root = tmp_path_factory.mktemp("own_model")
    net = _network()
    torch.save(net.state_dict(), root / "resnet.pt")
    (root / "resnet.json").write_text(json.dumps({"spec": SPEC, "class_names": CLASSES}))
    (root / "card.yaml").write_text(f"builder: {BUILDER}\nbuilder_kwargs: {json.dumps(KWARGS)}\n"
                                    f"weights: resnet.pt\nspec: {json.dumps(SPEC)}\n"
                                    "class_names: [left, right]\nconcept_layers: [blocks.3]\n")
    return root, model_fingerprint(net)


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)

    def write(folder, clips):
        folder.mkdir(parents=True)
        for i, clip in enumerate(clips):
            write_video(folder / f"{i:03d}.mp4", clip)

    write(root / "concepts" / "rightward", [moving_square_clip(rng, W, "right", distractor=False) for _ in range(8)])
    write(root / "concepts" / "blob", [static_blob(_background(rng, W), rng, W) for _ in range(8)])
    write(root / "concepts" / "random", [moving_square_clip(rng, W, "static") for _ in range(16)])
    write(root / "classes" / "right", list(class_clips("right", 6, seed=3)))
    return root


def _cli(*argv, cwd=REPO):
    env = {**os.environ, "CONCEPTGEN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "conceptgen", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_builder_kwargs_weights_and_sidecar_score_end_to_end_with_conceptgen_tcav(user_model, clip_folders, tmp_path):
    root, fingerprint = user_model
    ws = tmp_path / "ws"
    out = _cli("--workspace", ws, "--quiet", "tcav", "--model", BUILDER, "--model-kwargs", json.dumps(KWARGS),
               "--weights", root / "resnet.pt", "--layers", "blocks.3", "--target", "right",
               "--concepts", clip_folders / "concepts", "--class-examples", clip_folders / "classes",
               "--random-sets", 4, "--random-set-size", 6, "--classifier", "mean-diff", "--seed", 1)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "verdict" in out.stdout and "rightward" in out.stdout

    from conceptgen.orm import TcavExperiment, TcavResult
    from conceptgen.workspace import Workspace

    workspace = Workspace.resolve(ws)
    with workspace.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        results = s.scalars(select(TcavResult).where(TcavResult.comparison == "random")).all()
        assert exp.status == "finished" and exp.model_fingerprint == fingerprint
        assert exp.model_name == BUILDER and exp.layers == ["blocks.3"]
        assert exp.target == "right" and {r.target_class for r in results} == {"right"}  # the sidecar's names
        assert {r.concept_name for r in results} == {"rightward", "blob"}
    workspace.close()
    # The experiment records the builder, its kwargs and weights: `tcav apply` rebuilds the same network.
    applied = _cli("--workspace", ws, "--quiet", "tcav", "apply", "--experiment", exp.id,
                   "--videos", clip_folders / "classes")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert "rightward" in applied.stdout


def test_a_model_card_and_the_flags_load_the_same_network(user_model):
    root, fingerprint = user_model
    card = read_model_card(root / "card.yaml")
    assert card.model == BUILDER and card.weights == str(root / "resnet.pt")
    from_card = load_model(root / "card.yaml")
    from_flags = load_model(ModelSource(BUILDER, weights=str(root / "resnet.pt"), model_kwargs=KWARGS))
    for loaded in (from_card, from_flags):
        assert loaded.fingerprint == fingerprint
        assert loaded.spec == InputSpec.from_dict(SPEC) and loaded.class_names == CLASSES
    assert from_card.metadata["concept_layers"] == ["blocks.3"]
    # Flags override the card; without names the classes are the logit indices.
    bare = load_model(ModelSource(BUILDER, model_kwargs=KWARGS, spec=InputSpec.from_dict(SPEC)))
    assert bare.class_names == ["0", "1"] and bare.fingerprint != fingerprint  # random weights
    renamed = load_model(ModelSource(str(root / "card.yaml"), class_names=("a", "b")))
    assert renamed.class_names == ["a", "b"] and renamed.fingerprint == fingerprint


def test_models_layers_reads_a_card_and_marks_pooled_layers(user_model):
    root, _ = user_model
    out = _cli("models", "--layers", root / "card.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "blocks.3" in lines and "blocks.5.proj [pooled]" in lines


def test_an_nn_module_goes_straight_into_run_tcav_and_extract(tmp_path):
    from conceptgen.embed import load_embeddings
    from conceptgen.extract import ExtractConfig, extract
    from conceptgen.ingest import ingest
    from conceptgen.synth import generate_synthetic_set
    from conceptgen.workspace import Workspace
    from tcav.experiment import TcavConfig, run_tcav
    from tcav.toy import toy_tcav_inputs

    net, spec = _network(), InputSpec.from_dict(SPEC)
    inputs = toy_tcav_inputs(seed=0, n_concept=6, n_pool=16, n_class=4)
    config = TcavConfig(layers=("blocks.3",), targets=("right",), random_sets=3, random_set_size=6, seed=0,
                        classifier="mean-diff")
    report = run_tcav(net, inputs, config, cache_dir=tmp_path / "cache", spec=spec, class_names=CLASSES)
    assert report.results and {r.target for r in report.results} == {"right"}
    with pytest.raises(ConfigError):
        run_tcav(_network(), inputs, config, cache_dir=tmp_path / "cache")  # no spec: one line

    videos = generate_synthetic_set(tmp_path / "synth", n_videos=2, seed=3, num_frames=12, size=64)
    ws = Workspace.resolve(tmp_path / "ws")
    ws.ensure_dirs()
    ingest(ws, [videos.root / "videos"])
    rep = extract(ws, ExtractConfig.from_options(model="my-resnet", layers="blocks.3", seed=0),
                  model=net, spec=spec)
    assert rep.n_done == 2 and rep.n_tubes > 0
    with ws.session() as s:
        matrix = load_embeddings(s, rep.run_id, layer="blocks.3", pooling="mean", render_mode="mask")
    assert matrix.vectors.shape == (rep.n_tubes, 64) and np.isfinite(matrix.vectors).all()
    ws.close()


def test_torchscript_and_bad_user_input_are_one_line_errors(user_model, tmp_path, capsys):
    root, _ = user_model
    scripted = tmp_path / "model.ts.pt"
    torch.jit.save(torch.jit.trace(_network(), torch.zeros(1, 3, 8, 32, 32)), str(scripted),
                   _extra_files={"conceptgen.json": json.dumps({"spec": SPEC, "class_names": CLASSES})})
    cases = [
        (["models", "--layers", scripted], "--model package.module:function"),
        (["tcav", "--model", scripted, "--layers", "blocks.3", "--target", "right", "--concepts", tmp_path],
         "TorchScript"),
        (["models", "--layers", BUILDER, "--model-kwargs", json.dumps({**KWARGS, "model_depht": 50})],
         "--model-kwargs"),
        (["models", "--layers", BUILDER, "--model-kwargs", "{not json"], "--model-kwargs is not JSON"),
        (["models", "--layers", BUILDER, "--model-kwargs", json.dumps(KWARGS)], "--input-spec"),
        (["models", "--layers", "no_such_package.nets:build"], "PYTHONPATH"),
        (["models", "--layers", BUILDER, "--weights", root / "resnet.pt", "--model-kwargs",
          json.dumps({**KWARGS, "model_num_class": 5})], "weights do not fit"),
        (["models", "--layers", BUILDER, "--weights", scripted, "--model-kwargs", json.dumps(KWARGS)],
         "is a TorchScript file, not a state_dict"),
    ]
    for argv, expected in cases:
        code = main(["--quiet", "--workspace", str(tmp_path / "ws"), *map(str, argv)])
        err = capsys.readouterr().err.strip()
        assert code != 0 and expected in err and len(err.splitlines()) == 1, (argv, err)
        assert "Traceback" not in err
    with pytest.raises(ModelError):
        load_model(ModelSource(BUILDER, model_kwargs=KWARGS, spec=InputSpec.from_dict(SPEC)),
                   weights=root / "missing.pt")
    # a mismatch names every kind of difference with whole key names, never cut mid-word
    with pytest.raises(ModelError) as exc:
        load_model(ModelSource(BUILDER, model_kwargs={**KWARGS, "model_num_class": 5},
                               spec=InputSpec.from_dict(SPEC)), weights=root / "resnet.pt")
    message = str(exc.value)
    assert "shape mismatch" in message and "in the file vs" in message and "(5," in message, message
    assert message.endswith("--model-kwargs"), message


def _readme_blocks() -> tuple[str, str]:
    """The bash and the python block of the README's "Your own model" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own model"):]
    section = section[:section.index("\n## ", 3)]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return bash, python


def test_the_readme_example_runs(tmp_path):
    """Both blocks of the README's "Your own model", run as written (conceptgen and python on PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("conceptgen", f'"{sys.executable}" -m conceptgen'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CONCEPTGEN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("CONCEPTGEN_WORKSPACE", None)
    bash, python = _readme_blocks()
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "blocks.3" in out.stdout.splitlines() and "verdict" in out.stdout and "growing" in out.stdout
    out = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(line.startswith("rightward dynamic blocks.3 right ") for line in out.stdout.splitlines())
