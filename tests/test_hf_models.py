"""Hugging Face video transformers as a user has them: small random VideoMAE,
TimeSformer and ViViT models (tests/hf_tiny.py) written by ``save_pretrained`` and
loaded from the folder, or returned by a ``module:function`` builder. Their inputs are
(B, T, C, H, W), their outputs ``ModelOutput``s, their layers tokens (B, N, D) mapped
back to (D, T, H, W)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

pytest.importorskip("transformers")  # the `hf` extra; CI installs it with `dev`

from conceptgen.capture import capture_layers  # noqa: E402
from conceptgen.cli import main  # noqa: E402
from conceptgen.errors import ModelError  # noqa: E402
from conceptgen.registry import InputSpec, ModelSource, as_loaded, describe_layers, load_model  # noqa: E402
from conceptgen.videoio import write_video  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import hf_tiny  # noqa: E402
from hf_tiny import BLOCKS, CLASSES, EMBEDDINGS, FOLDED, FRAMES, KINDS, SIDE  # noqa: E402

VIDEOMAE_PROCESSOR = {"do_resize": False, "do_center_crop": False, "image_mean": [0.4, 0.5, 0.6],
                      "image_std": [0.2, 0.25, 0.3]}
VIVIT_PROCESSOR = {"do_resize": False, "do_center_crop": False}  # rescale 1/127.5 with offset: [-1, 1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    processors = {"videomae": VIDEOMAE_PROCESSOR, "vivit": VIVIT_PROCESSOR, "timesformer": None}
    return {k: hf_tiny.save(k, root / k, processor=processors[k]) for k in KINDS}


def _clips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, FRAMES, SIDE, SIDE, 3), dtype=np.uint8)


def test_a_save_pretrained_folder_loads_with_its_config_labels_and_layout(folders):
    for kind, folder in folders.items():
        loaded = load_model(folder)
        assert (loaded.spec.num_frames, loaded.spec.side, loaded.spec.layout) == (FRAMES, SIDE, "BTCHW")
        assert loaded.class_names == list(CLASSES) and loaded.class_index("right") == 1
        assert loaded.fingerprint == load_model(folder).fingerprint  # the saved weights, not a fresh init
        assert loaded.prepare(_clips(2)).shape == (2, FRAMES, 3, SIDE, SIDE)
    assert load_model(folders["timesformer"]).spec.mean == (0.5, 0.5, 0.5)  # no processor file: HF default


@pytest.mark.parametrize("kind,processor_cls", [("videomae", "VideoMAEImageProcessor"),
                                                ("vivit", "VivitImageProcessor")])
def test_normalisation_read_from_the_processor_matches_what_the_processor_feeds_the_model(folders, kind,
                                                                                         processor_cls):
    import transformers

    processor = getattr(transformers, processor_cls).from_pretrained(folders[kind])
    clip = _clips(1)[0]
    theirs = processor(list(clip), return_tensors="pt")["pixel_values"]
    ours = load_model(folders[kind]).prepare(clip[None])
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_map_to_the_tubelet_they_came_from(folders, kind):
    """Change the pixels of one tubelet: at the embedding layer (no attention yet) only
    that (t, h, w) cell of the mapped grid changes; the class token is set aside."""
    loaded = load_model(folders[kind])
    grid, patch = loaded.tokens, SIDE // loaded.tokens.height
    tubelet = FRAMES // grid.frames
    clip = _clips(1)[0]
    t, h, w = grid.frames - 1, 1, grid.width - 2
    other = clip.copy()
    other[t * tubelet:(t + 1) * tubelet, h * patch:(h + 1) * patch, w * patch:(w + 1) * patch] ^= 0x55
    with capture_layers(loaded.model, [EMBEDDINGS[kind]]) as capture, torch.no_grad():
        a, b = (capture.forward(loaded.prepare(c[None])).layers[EMBEDDINGS[kind]][0][0] for c in (clip, other))
    assert a.shape == (32, grid.frames, grid.height, grid.width)
    changed = (a - b).abs().amax(dim=0) > 1e-6
    assert changed[t, h, w] and changed.sum() == 1, changed.nonzero().tolist()


def test_models_layers_lists_blocks_with_token_shapes_and_why_a_layer_has_no_time_grid(folders, capsys):
    for kind, folder in folders.items():
        assert main(["--quiet", "models", "--layers", str(folder)]) == 0
        lines = capsys.readouterr().out.splitlines()
        block = next(line for line in lines if line.startswith(BLOCKS[kind] + " "))
        assert "tokens" in block and "->" in block and "CAVs only" not in block, block
        assert "classifier [pooled]" in lines
    folded = next(i for i in describe_layers(load_model(folders["timesformer"])) if i.name == FOLDED)
    assert folded.shape == (16, FRAMES, 32) and "batch axis" in folded.note
    per_frame = next(i for i in describe_layers(load_model(folders["timesformer"]))
                     if i.name == "timesformer.embeddings.patch_embeddings.projection")
    assert per_frame.shape == (FRAMES, 32 * 4 * 4) and "patch tokens" in per_frame.note  # not (C, T, H, W)


def test_a_builder_returning_a_transformers_model_loads_the_same_way(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    built = load_model("hf_tiny:videomae")  # spec, layout, names from the model's config
    saved = load_model(folders["videomae"])
    assert built.fingerprint == saved.fingerprint and built.class_names == list(CLASSES)
    assert built.tokens == saved.tokens and built.spec.layout == "BTCHW"
    # The case: a spec without a layout takes the model's.
    flags = load_model(ModelSource("hf_tiny:videomae", spec=InputSpec.from_dict({"num_frames": 4, "side": 32})))
    assert flags.spec.layout == "BTCHW"
    # A layout written in a model card wins over the model's (here wrongly: one line says so).
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"builder": "hf_tiny:videomae",
                                "spec": {"num_frames": 4, "side": 32, "layout": "BTCHW", "mean": [0.5] * 3}}))
    assert load_model(card).spec.mean == (0.5, 0.5, 0.5)
    card.write_text(json.dumps({"builder": "hf_tiny:videomae", "spec": {"num_frames": 4, "side": 32,
                                                                        "layout": "BCTHW"}}))
    stated = load_model(card)
    assert stated.spec.layout == "BCTHW"
    with pytest.raises(ModelError, match='"layout": "BTCHW"'):
        describe_layers(stated)  # its first forward
    # An nn.Module handed to the library works as well.
    module = as_loaded(hf_tiny.videomae())
    assert module.spec.layout == "BTCHW" and module.tokens == saved.tokens


def test_errors_from_inside_the_model_are_one_line_with_the_likely_fix(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (["models", "--layers", "hf_tiny:videomae", "--input-spec",
          json.dumps({"num_frames": 4, "side": 32, "layout": "BCTHW"})], ["channel dimension", '"layout": "BTCHW"']),
        (["models", "--layers", "hf_tiny:videomae", "--input-spec", json.dumps({"num_frames": 6, "side": 32})],
         ["the model's forward failed", "num_frames"]),
        (["models", "--layers", "someone/videomae-base-finetuned"], ["hub name", "--model DIR"]),
        (["models", "--layers", str(folders["vivit"]), "--weights", str(tmp_path / "w.pt")], ["drop --weights"]),
        (["gradcam", "--model", str(folders["timesformer"]), "--layer", FOLDED, "--target", "right",
          "--video", str(_video(tmp_path))], ["batch axis", "encoder block"]),
    ]
    for argv, expected in cases:
        code = main(["--quiet", "--workspace", str(tmp_path / "ws"), *argv])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert all(e in err for e in expected), (argv, err)
    with pytest.raises(ModelError, match="not logits"):
        from conceptgen.model_io import require_logits
        require_logits({"hidden_states": torch.zeros(1, 3)})


def _video(folder: Path) -> Path:
    from tcav.toy import ToyWorld, moving_square_clip

    path = folder / "right.mp4"
    if not path.exists():
        write_video(path, moving_square_clip(np.random.default_rng(0), ToyWorld(), "right"))
    return path


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory) -> Path:
    from tcav.toy import ToyWorld, _background, class_clips, moving_square_clip, static_blob

    root, w, rng = tmp_path_factory.mktemp("hf_clips"), ToyWorld(), np.random.default_rng(0)

    def write(folder, clips):
        folder.mkdir(parents=True)
        for i, clip in enumerate(clips):
            write_video(folder / f"{i:03d}.mp4", clip)

    write(root / "concepts" / "rightward", [moving_square_clip(rng, w, "right", distractor=False) for _ in range(6)])
    write(root / "concepts" / "blob", [static_blob(_background(rng, w), rng, w) for _ in range(6)])
    write(root / "concepts" / "random", [moving_square_clip(rng, w, "static") for _ in range(12)])
    write(root / "classes" / "right", list(class_clips("right", 4, seed=3)))
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from conceptgen.synth import generate_synthetic_set

    return generate_synthetic_set(tmp_path_factory.mktemp("hf_synth"), n_videos=2, seed=3, num_frames=8,
                                  size=48).root / "videos"


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_extract_cluster_tcav_with_temporal_and_gradcam_end_to_end(folders, clip_folders, videos, tmp_path,
                                                                    kind, capsys):
    from conceptgen.embed import load_embeddings
    from conceptgen.orm import Run, TcavExperiment, TcavResult
    from conceptgen.workspace import Workspace

    ws_dir, model, block = tmp_path / "ws", str(folders[kind]), BLOCKS[kind]
    layers = f"{block},{FOLDED}" if kind == "timesformer" else block

    def cli(*argv) -> str:
        code = main(["--quiet", "--workspace", str(ws_dir), *map(str, argv)])
        out, err = capsys.readouterr()
        assert code == 0, err[-2000:]
        return out

    cli("ingest", videos)
    cli("extract", "--model", model, "--layers", block, "--max-side", 48, "--batch-size", 4)
    ws = Workspace.resolve(ws_dir)
    with ws.session() as s:
        run = s.scalars(select(Run)).one()
        emb = load_embeddings(s, run.id, layer=block, pooling="mean", render_mode="mask")
    assert len(emb.vectors) >= 2 and emb.vectors.shape[1] == 32 and np.isfinite(emb.vectors).all()
    clustered = cli("cluster", "--run", run.id, "--k", 2, "--min-size", 1, "--min-videos", 1, "--include-background")
    assert f"layer {block}, {len(emb.vectors)} tubes, k=2" in clustered, clustered

    out = cli("tcav", "--model", model, "--layers", layers, "--target", "right", "--concepts",
              clip_folders / "concepts", "--class-examples", clip_folders / "classes", "--random-sets", 3,
              "--random-set-size", 4, "--classifier", "mean-diff", "--seed", 1)
    assert "rightward" in out
    with ws.session() as s:
        exp = s.scalars(select(TcavExperiment)).one()
        results = s.scalars(select(TcavResult).where(TcavResult.comparison == "random")).all()
        assert exp.status == "finished"
        temporal = {r.layer: r.details.get("temporal") for r in results if r.variant == "dynamic"}
    ws.close()
    grid = load_model(model).tokens
    assert len(temporal[block]["contribution"]) == grid.frames  # one value per token time slice
    if kind == "timesformer":
        assert temporal[FOLDED] is None and f"layer {FOLDED}: no temporal TCAV" in out

    cli("gradcam", "--model", model, "--layer", block, "--target", "right", "--video", _video(tmp_path),
        "--out", tmp_path / "cam")
    heat = np.loadtxt(next((tmp_path / "cam").glob("heat_*.csv")), delimiter=",", skiprows=1)
    assert heat.shape == (FRAMES, 4) and (heat[:, 2] >= 0).all() and heat[:, 3].max() == pytest.approx(1.0)


def test_the_readme_hugging_face_example_runs(tmp_path):
    """The bash block of the README's "Hugging Face video transformers", as written."""
    import os
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text()
    section = text[text.index("### Hugging Face video transformers"):]
    bash = re.search(r"```bash\n(.*?)```", section[:section.index("\n## ")], re.S).group(1)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("conceptgen", f'"{sys.executable}" -m conceptgen'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CONCEPTGEN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    env.pop("CONCEPTGEN_WORKSPACE", None)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert out.stdout.strip() == "videomae.encoder.layer.1  tokens (32, 32) -> (32, 2, 4, 4)"
