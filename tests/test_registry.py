"""Model registry: names to eval-mode models returning logits, input specs, fingerprints,
layer lookup, pooled-layer detection, local checkpoints and offline failures."""
import json
import socket
import time

import numpy as np
import pytest
import torch
from torch import nn

from conceptgen.errors import ConfigError, DataError, LayerNotFoundError, ModelError, UnknownClassError
from conceptgen.registry import (ARCHITECTURES, InputSpec, available_models, get_layer,
                                 layer_names, load_model, model_fingerprint, normalize_clips, pack_pathways,
                                 pooled_layers, save_checkpoint)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def x3d_xs():
    torch.manual_seed(0)
    return load_model("x3d_xs")


def test_every_advertised_name_has_a_spec_and_demo_is_listed():
    names = available_models()
    assert {"x3d_xs", "x3d_s", "x3d_m", "slow_r50", "slowfast_r50", "mvit_base_16x4", "r3d_18", "mc3_18",
            "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t", "demo"} <= set(names)
    assert ARCHITECTURES["slowfast_r50"].spec.pathways == "slowfast"


def test_x3d_returns_logits_not_probabilities(x3d_xs):
    assert not x3d_xs.model.training
    assert not any(isinstance(m, nn.Softmax) for m in x3d_xs.model.modules())
    rng = np.random.default_rng(0)
    s = x3d_xs.spec
    clips = rng.integers(0, 256, size=(2, s.num_frames, s.side, s.side, 3), dtype=np.uint8)
    with torch.no_grad():
        out = x3d_xs.model(x3d_xs.prepare(clips))
    assert out.shape == (2, 400) == (2, len(x3d_xs.class_names))
    assert not torch.allclose(out.sum(1), torch.ones(2), atol=1e-3)


def test_prepare_normalises_and_checks_shape(x3d_xs):
    s = x3d_xs.spec
    clips = np.full((1, s.num_frames, s.side, s.side, 3), 255, dtype=np.uint8)
    x = x3d_xs.prepare(clips)
    assert x.shape == (1, 3, s.num_frames, s.side, s.side) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0, 0, 0], torch.tensor((1 - s.mean[0]) / s.std[0]))
    with pytest.raises(DataError):
        x3d_xs.prepare(clips[:, :, :10])


def test_numpy_clips_normalise_by_table_to_the_same_floats_as_tensor_arithmetic():
    """uint8 numpy clips take a cv2.LUT fast path; tensors take the arithmetic. Same bits."""
    rng = np.random.default_rng(0)
    for spec in (InputSpec(8, 32, (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),
                 InputSpec(4, 17, (0.1, 0.5, 0.9), (0.3, 0.01, 2.0))):
        clips = rng.integers(0, 256, size=(3, spec.num_frames, spec.side, spec.side, 3), dtype=np.uint8)
        by_table = normalize_clips(clips, spec)
        by_arithmetic = normalize_clips(torch.from_numpy(clips), spec)
        assert by_table.shape == (3, 3, spec.num_frames, spec.side, spec.side)
        assert torch.equal(by_table, by_arithmetic)
        expected = (clips[0, 1, 2, 3, 1] / 255.0 - spec.mean[1]) / spec.std[1]
        assert by_table[0, 1, 1, 2, 3].item() == pytest.approx(expected, rel=1e-6)
        assert torch.equal(normalize_clips(np.asfortranarray(clips), spec), by_arithmetic)


def test_slowfast_packing_keeps_every_alpha_th_frame():
    spec = InputSpec(num_frames=32, side=8, mean=(0, 0, 0), std=(1, 1, 1), pathways="slowfast")
    x = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(1, 3, 32, 8, 8)
    slow, fast = pack_pathways(x, spec)
    assert fast.shape[2] == 32 and slow.shape[2] == 8
    assert slow[0, 0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]


def test_fingerprint_is_stable_and_tracks_weights(x3d_xs):
    assert model_fingerprint(x3d_xs.model) == x3d_xs.fingerprint
    other = load_model("x3d_xs")  # new random init
    assert other.fingerprint != x3d_xs.fingerprint


def test_get_layer_and_close_matches(x3d_xs):
    assert get_layer(x3d_xs, "blocks.5.proj") is x3d_xs.model.blocks[5].proj
    with pytest.raises(LayerNotFoundError) as exc:
        get_layer(x3d_xs, "blocks.5.prj")
    assert "blocks.5.proj" in str(exc.value) and "\n" not in str(exc.value)


def test_pooled_layers_are_those_after_global_pooling(x3d_xs):
    pooled = pooled_layers(x3d_xs)
    assert {"blocks.5.proj", "blocks.5.pool.post_conv"} <= pooled
    assert not pooled & {"blocks.4", "blocks.5.pool.pre_conv", "blocks.1"}
    assert set(pooled) <= set(layer_names(x3d_xs))


def test_weights_file_loads_into_named_architecture(tmp_path, x3d_xs):
    path = tmp_path / "w.pt"
    torch.save(x3d_xs.model.state_dict(), path)
    again = load_model("x3d_xs", weights=path)
    assert again.fingerprint == x3d_xs.fingerprint
    torch.save({"model_state": x3d_xs.model.state_dict()}, tmp_path / "wrapped.pyth")
    assert load_model("x3d_xs", weights=tmp_path / "wrapped.pyth").fingerprint == x3d_xs.fingerprint
    with pytest.raises(ModelError):
        load_model("r3d_18", weights=path)  # wrong architecture
    with pytest.raises(ConfigError):
        load_model("x3d_xs", weights=path, pretrained=True)


def test_checkpoint_and_torchscript_round_trip(tmp_path):
    from conceptgen.demo_model import DEMO_SPEC, build_demo_network
    torch.manual_seed(1)
    net = build_demo_network(num_classes=3)
    ckpt = tmp_path / "mine.pt"
    fp = save_checkpoint(ckpt, builder="demo_net", builder_kwargs={"num_classes": 3}, model=net,
                         spec=DEMO_SPEC, class_names=["a", "b", "c"], note="hello")
    loaded = load_model(str(ckpt))
    assert loaded.fingerprint == fp == model_fingerprint(net)
    assert loaded.class_names == ["a", "b", "c"] and loaded.spec == DEMO_SPEC
    assert loaded.metadata["note"] == "hello"
    assert loaded.class_index("b") == 1 and loaded.class_index(2) == 2
    with pytest.raises(UnknownClassError):
        loaded.class_index("d")
    with pytest.raises(UnknownClassError):
        loaded.class_index(3)



def test_torchscript_is_refused_at_load_time_in_one_line_naming_the_forms_that_work(tmp_path):
    from conceptgen.demo_model import DEMO_SPEC, build_demo_network
    net = build_demo_network(num_classes=3).eval()
    scripted = tmp_path / "net.ts.pt"
    meta = json.dumps({"spec": DEMO_SPEC.to_dict(), "class_names": ["a", "b", "c"]})
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 32, 32)), str(scripted),
                   _extra_files={"conceptgen.json": meta})
    with pytest.raises(ModelError) as exc:
        load_model(str(scripted))
    message = str(exc.value)
    assert "\n" not in message and "TorchScript" in message
    assert "--model package.module:function" in message and "--weights" in message and "nn.Module" in message


def test_unknown_name_and_missing_files_are_one_line_model_errors(tmp_path):
    with pytest.raises(ModelError) as exc:
        load_model("x3d_xss")
    assert "x3d_xs" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ModelError):
        load_model(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_model(str(tmp_path / "junk.pt"))
    with pytest.raises(ModelError) as exc:
        load_model("demo", workspace=type("W", (), {"models": tmp_path})())
    assert "train-demo-model" in str(exc.value)


def _reachable(host):
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_pretrained_offline_fails_fast_pointing_to_weights(tmp_path, monkeypatch):
    if _reachable("download.pytorch.org"):
        pytest.skip("network is available; the offline path cannot be exercised")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    started = time.monotonic()
    with pytest.raises(ModelError) as exc:
        load_model("r3d_18", pretrained=True)
    assert time.monotonic() - started < 15
    assert "--weights PATH" in str(exc.value) and "\n" not in str(exc.value)


def test_shorten_never_cuts_a_word_and_mismatch_names_whole_keys():
    from conceptgen.errors import shorten
    from conceptgen.registry import state_dict_mismatch

    text = "alpha " * 60
    short = shorten(text, 50)
    assert len(short) <= 50 and short.endswith("…") and all(w == "alpha" for w in short[:-1].split())
    assert shorten("one\ntwo  three", 50) == "one two three"
    expected = {"a.weight": torch.zeros(3, 2), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    given = {"a.weight": torch.zeros(5, 2), "b.weight": torch.zeros(4), "extra.running_mean": torch.zeros(2)}
    message = state_dict_mismatch(expected, given)
    assert "1 missing key(s) (c.bias)" in message and "1 unexpected key(s) (extra.running_mean)" in message
    assert "a.weight (5, 2) in the file vs (3, 2) in the model" in message
