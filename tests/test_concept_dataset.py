"""Interop: a torch Dataset over an export, and Captum's TCAV run on exported concepts."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import build_concept_workspace
from conceptgen.concept_dataset import ConceptClipDataset, captum_concepts, load_clip
from conceptgen.errors import ConfigError, IntegrityError, NotFoundError
from conceptgen.export import export_concepts, read_manifest
from conceptgen.registry import InputSpec

SPEC = InputSpec(num_frames=8, side=32, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_synth):
    """An export of two 4-example concepts with static variants (8 frames, 32 px)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("concept-dataset")
    ws = build_concept_workspace(root / "ws", tiny_synth,
                                 concepts=(("actors", "the moving actor", 4), ("distractors", "small things", 4)))
    export_concepts(ws, "all-approved", root / "export", static=True, num_frames=8, side=32)
    ws.close()
    return root / "export"


def test_dataset_yields_normalised_clips_at_the_input_spec(export_dir):
    ds = ConceptClipDataset(export_dir, SPEC)
    assert ds.concepts == ["actors", "distractors"] and len(ds) == 8
    assert [i.label for i in ds.items] == [0] * 4 + [1] * 4
    x, label = ds[5]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 8, 32, 32) and label == 1
    mean, std = torch.tensor(SPEC.mean).view(3, 1, 1, 1), torch.tensor(SPEC.std).view(3, 1, 1, 1)
    pixels = (x * std + mean).permute(1, 2, 3, 0).numpy() * 255
    assert np.allclose(pixels, load_clip(ds.items[5].path, SPEC), atol=1e-3)


def test_dataset_resamples_to_a_larger_spec_and_selects_variants(export_dir):
    spec = InputSpec(num_frames=4, side=48, mean=SPEC.mean, std=SPEC.std)
    ds = ConceptClipDataset(export_dir, spec, concepts=["distractors"], variant="static")
    assert len(ds) == 4 and all(i.variant == "static" for i in ds.items)
    x, label = ds[0]
    assert tuple(x.shape) == (3, 4, 48, 48) and label == 0
    # a static clip repeats one frame
    assert torch.allclose(x[:, 0], x[:, -1], atol=0.2)


def test_dataset_packs_slowfast_pathways(export_dir):
    spec = InputSpec(num_frames=8, side=32, mean=SPEC.mean, std=SPEC.std, pathways="slowfast", slowfast_alpha=4)
    (slow, fast), _ = ConceptClipDataset(export_dir, spec)[0]
    assert tuple(slow.shape) == (3, 2, 32, 32) and tuple(fast.shape) == (3, 8, 32, 32)


def test_dataset_refuses_unknown_concepts_and_corrupt_exports(export_dir, tmp_path):
    with pytest.raises(NotFoundError, match="it holds: actors, distractors"):
        ConceptClipDataset(export_dir, SPEC, concepts=["nope"])
    with pytest.raises(ConfigError, match="variant"):
        ConceptClipDataset(export_dir, SPEC, variant="sideways")
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    clip = copy / read_manifest(copy)["concepts"][0]["examples"][0]["clip"]
    clip.write_bytes(clip.read_bytes()[:100])
    with pytest.raises(IntegrityError):
        ConceptClipDataset(copy, SPEC)


class TinyVideoNet(nn.Module):
    """A random 3-D CNN: (B, 3, T, S, S) -> (B, 2) logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 6, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 2))

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def test_captum_tcav_scores_exported_concepts(export_dir, tmp_path):
    from captum.concept import TCAV

    torch.manual_seed(0)
    concepts = captum_concepts(export_dir, SPEC, batch_size=4)
    assert [(c.id, c.name) for c in concepts] == [(0, "actors"), (1, "distractors")]
    assert tuple(next(iter(concepts[0].data_iter)).shape) == (4, 3, 8, 32, 32)

    model = TinyVideoNet().eval()
    tcav = TCAV(model, layers=["conv"], save_path=str(tmp_path / "cav"))
    inputs = ConceptClipDataset(export_dir, SPEC, concepts=["actors"])
    batch = torch.stack([inputs[0][0], inputs[1][0]])
    scores = tcav.interpret(batch, experimental_sets=[concepts], target=0)

    layer_scores = scores["0-1"]["conv"]
    sign = layer_scores["sign_count"]
    assert sign.shape == (2,) and torch.all((sign >= 0) & (sign <= 1))
    assert torch.isclose(sign.sum(), torch.tensor(1.0))  # each input's gradient sides with one concept
    assert torch.all(torch.isfinite(layer_scores["magnitude"]))


def test_captum_static_variant_and_slowfast_refusal(export_dir):
    statics = captum_concepts(export_dir, SPEC, variant="static", first_id=10)
    assert [c.id for c in statics] == [10, 11]
    slowfast = InputSpec(num_frames=8, side=32, mean=SPEC.mean, std=SPEC.std, pathways="slowfast")
    with pytest.raises(ConfigError, match="single-pathway"):
        captum_concepts(export_dir, slowfast)
