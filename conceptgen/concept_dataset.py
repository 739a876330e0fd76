"""Interoperability: a PyTorch ``Dataset`` over a concept export, and Captum ``Concept``s.

    ds = ConceptClipDataset("exports/my-concepts", spec)     # spec: registry.InputSpec
    x, label = ds[0]            # x: (3, T, S, S) float32 normalised; label: concept index
    concepts = captum_concepts("exports/my-concepts", spec)  # for captum.concept.TCAV

Clips are read from the export (checksums verified once, on opening), sampled
uniformly to ``spec.num_frames`` frames and resized/centre-cropped to ``spec.side``,
exactly as conceptgen feeds its own models. Captum is imported lazily: it is an
optional dependency.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from conceptgen.concepts import VARIANTS
from conceptgen.errors import ConfigError, DataError, NotFoundError
from conceptgen.export import read_manifest
from conceptgen.videoio import clip_from_file

if TYPE_CHECKING:  # pragma: no cover
    from conceptgen.registry import InputSpec


@dataclass(frozen=True)
class ClipItem:
    """One clip of an export: which concept (name and index), which file, which variant."""

    concept: str
    label: int
    path: Path
    variant: str
    position: int


class ConceptClipDataset(Dataset):
    """Clips of an export folder rendered to a model's input spec.

    ``__getitem__`` returns ``(x, label)``: ``x`` is a float32 tensor
    ``(3, spec.num_frames, spec.side, spec.side)`` normalised with the spec's
    mean/std (for ``pathways == "slowfast"`` a list ``[slow, fast]``, slow having
    ``num_frames // slowfast_alpha`` frames); ``label`` indexes :attr:`concepts`.
    """

    def __init__(self, export_dir: str | Path, spec: "InputSpec", *, concepts: Sequence[str] | None = None,
                 variant: str = "dynamic", verify: bool = True):
        if variant not in VARIANTS:
            raise ConfigError(f"unknown variant '{variant}'; use one of {', '.join(VARIANTS)}")
        self.root = Path(export_dir)
        self.spec = spec
        self.variant = variant
        manifest = read_manifest(self.root, verify=verify)
        entries = {c["name"]: c for c in manifest["concepts"]}
        names = list(concepts) if concepts is not None else list(entries)
        missing = [n for n in names if n not in entries]
        if missing:
            raise NotFoundError(f"concept(s) {', '.join(missing)} not in {self.root}; "
                                f"it holds: {', '.join(entries) or 'none'}")
        self.concepts: list[str] = names
        self.items: list[ClipItem] = [
            ClipItem(name, label, self.root / ex["clip"], ex["variant"], ex["position"])
            for label, name in enumerate(names)
            for ex in entries[name]["examples"] if ex["variant"] == variant
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.items[index]
        return clip_to_input(load_clip(item.path, self.spec), self.spec), item.label

    def subset(self, concept: str) -> "ConceptClipDataset":
        """The same dataset restricted to one concept (labels keep their meaning)."""
        if concept not in self.concepts:
            raise NotFoundError(f"concept '{concept}' not in this dataset; it holds: {', '.join(self.concepts)}")
        sub = object.__new__(ConceptClipDataset)
        sub.__dict__.update(self.__dict__)
        sub.items = [i for i in self.items if i.concept == concept]
        return sub


def load_clip(path: str | Path, spec: "InputSpec") -> np.ndarray:
    """Read a clip as ``(spec.num_frames, spec.side, spec.side, 3)`` uint8 RGB, exactly as
    tcav/ reads concept clip files (uniform sampling, short-side resize, centre crop)."""
    return clip_from_file(Path(path), spec.num_frames, spec.side)


def clip_to_input(clip: np.ndarray, spec: "InputSpec") -> Any:
    """uint8 ``(T, S, S, 3)`` -> the model's float input for one clip, no batch dimension:
    ``(3, T, S, S)``, or ``[slow, fast]`` for SlowFast."""
    from conceptgen.registry import LoadedModel

    # LoadedModel.prepare owns the normalisation; a model-less instance reuses it as is.
    preparer = LoadedModel(name="export", model=torch.nn.Identity(), spec=spec, class_names=[],
                           fingerprint="", device=torch.device("cpu"))
    batch = preparer.prepare(clip[None])
    if isinstance(batch, (list, tuple)):
        return [b[0] for b in batch]
    return batch[0]


class _InputsOnly(Dataset):
    """Drops the labels: Captum's concept iterators yield model inputs only."""

    def __init__(self, dataset: ConceptClipDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0]


def captum_concepts(export_dir: str | Path, spec: "InputSpec", *, concepts: Sequence[str] | None = None,
                    variant: str = "dynamic", batch_size: int = 8, first_id: int = 0,
                    verify: bool = True) -> list:
    """Captum ``Concept`` objects (ids ``first_id, first_id+1, ...``) over an export.

    Each concept's ``data_iter`` is a DataLoader yielding float batches
    ``(B, 3, T, S, S)``, ready for ``captum.concept.TCAV(model, layers).interpret``.
    Single-pathway models only (Captum's TCAV feeds one tensor to the model).
    """
    try:
        from captum.concept import Concept
    except ImportError as err:  # pragma: no cover - captum is an optional dependency
        raise ConfigError("captum is not installed; `pip install captum` to use captum_concepts") from err
    if getattr(spec, "pathways", "single") != "single":
        raise ConfigError("captum_concepts supports single-pathway models only; use ConceptClipDataset "
                          "for slowfast and feed both pathways yourself")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
    dataset = ConceptClipDataset(export_dir, spec, concepts=concepts, variant=variant, verify=verify)
    out = []
    for i, name in enumerate(dataset.concepts):
        sub = dataset.subset(name)
        if len(sub) == 0:
            raise DataError(f"concept '{name}' has no {variant} clips in {dataset.root}; "
                            f"export it again{' with --static' if variant == 'static' else ''}")
        loader = DataLoader(_InputsOnly(sub), batch_size=batch_size, shuffle=False)
        out.append(Concept(first_id + i, name, loader))
    return out
