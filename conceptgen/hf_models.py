"""Hugging Face video classifiers (VideoMAE, TimeSformer, ViViT, ...) as a user has them:
a folder written by ``save_pretrained`` (``config.json`` + weights, and the image or
video processor's ``preprocessor_config.json`` when it was saved too), or a live
``transformers`` model returned by the user's own builder.

What conceptgen reads from them (:func:`facts`):

* frames and side: ``config.num_frames`` and ``config.image_size`` (the sizes the
  position embeddings were built for);
* normalisation: the processor's ``image_mean``/``image_std``, ``rescale_factor`` and
  ``offset`` turned into conceptgen's ``(x / 255 - mean) / std`` exactly; without a
  processor file, the Hugging Face video processors' default mean = std = 0.5;
* layout ``BTCHW`` (``pixel_values`` are (B, T, C, H, W));
* class names from ``config.id2label``;
* the patch-token grid (conceptgen.tokens) from the tubelet and patch sizes, for the
  model types whose token order is known (:data:`TOKEN_ORDERS`).

Loading never reaches for the network on its own: a folder is read with
``local_files_only``; a hub name (``owner/name``) is downloaded only when the network
answers and ``HF_HUB_OFFLINE`` is not set, else one line says how to download it first.
``transformers`` is the optional extra ``conceptgen[hf]``.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from conceptgen.errors import ModelError
from conceptgen.model_io import InputSpec
from conceptgen.tokens import TokenGrid

CONFIG_FILE = "config.json"
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json")
HF_DEFAULT_MEAN = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD
HF_DEFAULT_STD = (0.5, 0.5, 0.5)
HUB_HOST = "huggingface.co"
INSTALL_HINT = "install the Hugging Face extra: pip install 'conceptgen[hf]'"
# model_type -> (class tokens before the patches, patch order): how each patch embedding
# flattens its tubelets (VideoMAE and ViViT: Conv3d + flatten, time-major; TimeSformer:
# per-frame patches regrouped space-major, time innermost).
TOKEN_ORDERS = {"videomae": (0, "thw"), "vivit": (1, "thw"), "timesformer": (1, "hwt")}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OFFLINE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HfFacts:
    """What a Hugging Face model says about itself (see the module docstring).
    ``tokens`` is None with ``tokens_note`` saying why when the grid is not known."""

    spec: InputSpec
    class_names: list[str]
    tokens: TokenGrid | None
    tokens_note: str | None
    model_type: str


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a ``transformers`` model (without importing transformers)."""
    return isinstance(model, nn.Module) and hasattr(model, "config") and \
        any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def is_directory(path: str | Path) -> bool:
    """A folder written by ``save_pretrained``: it holds config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def looks_like_hub_name(name: str) -> bool:
    """``owner/name`` that is not a path on this machine."""
    return bool(_HUB_NAME.match(name)) and not Path(name).exists()


def load_directory(path: str | Path) -> tuple[nn.Module, HfFacts]:
    """The video classifier saved in ``path`` (eval mode, on CPU) and its facts.
    Reads only local files; raises ModelError in one line."""
    path = Path(path)
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # conceptgen shows its own progress
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForVideoClassification.from_pretrained(path, config=config,
                                                                             local_files_only=True)
    except Exception as err:  # a broken or foreign folder: one line
        first = " ".join(str(err).split())[:200]
        raise ModelError(f"cannot load a Hugging Face video classifier from {path} ({type(err).__name__}: "
                         f"{first}); give a folder written by save_pretrained of a *ForVideoClassification "
                         "model (config.json and its weights)") from err
    return model.eval(), facts(model, path)


def load_hub(name: str) -> tuple[nn.Module, HfFacts]:
    """A hub model by name: downloaded when the network allows (into the Hugging Face
    cache), else ModelError saying how to download it first."""
    how = (f"download it on a connected machine (`hf download {name} --local-dir DIR`, or "
           "from_pretrained(...).save_pretrained(DIR) with its image processor) and pass --model DIR "
           "(if it is meant as a local folder: no such path, check it)")
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        raise ModelError(f"{name} looks like a Hugging Face hub name and this machine is offline "
                         f"(HF_HUB_OFFLINE): {how}")
    _transformers()
    try:
        socket.create_connection((HUB_HOST, 443), timeout=_OFFLINE_TIMEOUT_S).close()
    except OSError as err:
        raise ModelError(f"{name} looks like a Hugging Face hub name but {HUB_HOST} is unreachable "
                         f"({type(err).__name__}): {how}") from err
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    except Exception as err:  # unknown repo, gated, network drop
        raise ModelError(f"cannot download {name} from the Hugging Face hub ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:150]}); {how}") from err
    return load_directory(folder)


def facts(model: nn.Module, directory: str | Path | None = None) -> HfFacts:
    """A transformers video model's spec, class names and token grid, from its config
    and (when ``directory`` holds one) its processor file."""
    config = model.config
    model_type = str(getattr(config, "model_type", type(model).__name__))
    frames, side = getattr(config, "num_frames", None), _first(getattr(config, "image_size", None))
    if not frames or not side:
        raise ModelError(f"the {model_type} config has no num_frames/image_size; pass --input-spec "
                         "'{\"num_frames\": N, \"side\": S, \"layout\": \"BTCHW\"}'")
    mean, std = normalisation(_processor_config(directory))
    spec = InputSpec(num_frames=int(frames), side=int(side), mean=mean, std=std, layout="BTCHW",
                     layout_stated=True)
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels[k]) for k in sorted(labels, key=int)] if labels else []
    tokens, note = token_grid(config)
    return HfFacts(spec, names, tokens, note, model_type)


def token_grid(config) -> tuple[TokenGrid | None, str | None]:
    """(grid, None) for a model type of :data:`TOKEN_ORDERS`, else (None, why)."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in TOKEN_ORDERS:
        return None, (f"conceptgen does not know how {model_type} orders its tokens (known: "
                      f"{', '.join(TOKEN_ORDERS)})")
    if getattr(config, "attention_type", "") == "space_only":
        return None, "this TimeSformer attends within frames only (attention_type space_only): no time axis in its tokens"
    prefix, order = TOKEN_ORDERS[model_type]
    size = _pair(config.image_size)
    if model_type == "vivit":
        t, ph, pw = (int(x) for x in config.tubelet_size)
    else:
        t = int(getattr(config, "tubelet_size", 1) or 1)
        ph, pw = _pair(config.patch_size)
    return TokenGrid(int(config.num_frames) // t, size[0] // ph, size[1] // pw, prefix, order), None


def normalisation(processor: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A processor's rescale (``x * rescale_factor``, minus 1 when ``offset``) then
    ``(x - image_mean) / image_std`` as conceptgen's ``(x / 255 - mean) / std``:
    mean = (offset + image_mean) / (255 rescale_factor), std = image_std / (255 rescale_factor)."""
    if not processor:
        return HF_DEFAULT_MEAN, HF_DEFAULT_STD
    scale = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
    offset = 1.0 if processor.get("offset", False) and processor.get("do_rescale", True) else 0.0
    if processor.get("do_normalize", True):
        m = _three(processor.get("image_mean", HF_DEFAULT_MEAN))
        s = _three(processor.get("image_std", HF_DEFAULT_STD))
    else:
        m, s = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    unit = 255.0 * scale
    return tuple((offset + x) / unit for x in m), tuple(x / unit for x in s)


def _processor_config(directory) -> dict | None:
    for name in PROCESSOR_FILES:
        path = Path(directory) / name if directory is not None else None
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ModelError(f"cannot read {path} ({type(err).__name__}); fix or remove it") from err
    return None


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ModelError(f"Hugging Face models need the transformers package: {INSTALL_HINT}") from err
    return transformers


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _three(value) -> tuple[float, float, float]:
    values = [float(x) for x in (value if isinstance(value, (list, tuple)) else [value] * 3)]
    return tuple(values)
