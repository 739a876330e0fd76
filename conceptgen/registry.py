"""The model registry: one call turns a name into an eval-mode video model with its
input spec, class names and a content fingerprint.

Accepted sources (see :class:`ModelSource` and :func:`available_models`):

* pytorchvideo hub architectures ``x3d_xs x3d_s x3d_m slow_r50 slowfast_r50 mvit_base_16x4``
* torchvision video architectures ``r3d_18 mc3_18 r2plus1d_18 s3d mvit_v2_s swin3d_t``
* ``demo``: ``WORKSPACE/models/demo.pt`` written by ``conceptgen train-demo-model``
* a local checkpoint path: a ``.pt`` dict written by :func:`save_checkpoint` (builder name,
  builder kwargs, state_dict, class names, input spec)
* the user's own network: ``package.module:function`` with model kwargs and a state_dict,
  or a model card file (JSON/YAML) saying the same; an ``nn.Module`` given to the library
  goes through :func:`as_loaded`.

TorchScript files are refused with one line: hooks cannot see inside them (see
conceptgen.capture). Every model returns logits (softmax heads are removed).
Architectures are built with random weights unless ``pretrained=True`` (downloads; fails
at once offline) or ``weights=PATH`` (a local state_dict for the named architecture).
"""
from __future__ import annotations

import difflib
import functools
import importlib
import json
import socket
import urllib.parse
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from conceptgen import hf_models
from conceptgen.errors import ConfigError, ModelError, UnknownClassError, shorten
from conceptgen.hashing import sha256_bytes
# The input side lives in conceptgen.model_io; these names stay importable from here.
from conceptgen.model_io import (KINETICS_MEAN, KINETICS_STD, InputSpec, forward_failure,  # noqa: F401
                                 model_input, normalize_clips, pack_pathways, require_logits)
from conceptgen.tokens import TokenGrid

TV_R3D_MEAN = (0.43216, 0.394666, 0.37645)
TV_R3D_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "conceptgen-checkpoint-v1"
_OFFLINE_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    name: str
    model: nn.Module  # in eval mode, on ``device``
    spec: InputSpec  # None only inside load_model, until flags, a card or a sidecar give it
    class_names: list[str]
    fingerprint: str  # sha256 over the state_dict (see model_fingerprint)
    device: torch.device
    metadata: dict = field(default_factory=dict)  # checkpoint extras (accuracy, seed, ...)
    tokens: TokenGrid | None = None  # a transformer's patch-token grid (conceptgen.tokens)

    def prepare(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """uint8 clips (B, T, H, W, 3) with T = spec.num_frames and H = W = spec.side
        -> normalised float (B, 3, T, S, S) on ``device``, or (B, T, 3, S, S) for layout
        BTCHW; ``[slow, fast]`` for SlowFast (slow has T // alpha frames)."""
        return model_input(normalize_clips(clips, self.spec, self.device, what=f"model {self.name}"),
                           self.spec)

    def class_index(self, name_or_index: str | int) -> int:
        """Index of a class given its name or index; raises UnknownClassError."""
        if isinstance(name_or_index, (int, np.integer)) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if 0 <= index < len(self.class_names):
                return index
            raise UnknownClassError(f"class index {index} is out of range for model {self.name} "
                                    f"({len(self.class_names)} classes)")
        if name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        close = difflib.get_close_matches(str(name_or_index), self.class_names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"classes start {', '.join(self.class_names[:5])}"
        raise UnknownClassError(f"model {self.name} has no class {name_or_index!r}; {hint}")


# --------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class _Arch:
    build: Callable[..., nn.Module]  # build(pretrained: bool, **kwargs) -> nn.Module
    spec: InputSpec
    weights_url: Callable[[], str]


def _pytorchvideo(module: str, fn: str, **fixed) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        builder = getattr(importlib.import_module(f"pytorchvideo.models.hub.{module}"), fn)
        return builder(pretrained=pretrained, progress=False, **{**fixed, **kwargs})
    return build


def _pytorchvideo_url(module: str, key: str) -> Callable[[], str]:
    return lambda: importlib.import_module(f"pytorchvideo.models.hub.{module}").checkpoint_paths[key]


def _torchvision(fn: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        import torchvision.models.video as tvv
        return getattr(tvv, fn)(weights="DEFAULT" if pretrained else None, **kwargs)
    return build


def _torchvision_url(fn: str) -> Callable[[], str]:
    def url() -> str:
        import torchvision.models as tvm
        return tvm.get_model_weights(fn).DEFAULT.url
    return url


def _spec(frames: int, side: int, mean=KINETICS_MEAN, std=KINETICS_STD, **kw) -> InputSpec:
    return InputSpec(num_frames=frames, side=side, mean=mean, std=std, **kw)


# Specs follow each model's evaluation recipe. X3D-XS/S use the builders' own crop (160)
# so the head's pooling kernel covers the whole clip.
ARCHITECTURES: dict[str, _Arch] = {
    "x3d_xs": _Arch(_pytorchvideo("x3d", "x3d_xs", head_activation=None), _spec(4, 160),
                    _pytorchvideo_url("x3d", "x3d_xs")),
    "x3d_s": _Arch(_pytorchvideo("x3d", "x3d_s", head_activation=None), _spec(13, 160),
                   _pytorchvideo_url("x3d", "x3d_s")),
    "x3d_m": _Arch(_pytorchvideo("x3d", "x3d_m", head_activation=None), _spec(16, 224),
                   _pytorchvideo_url("x3d", "x3d_m")),
    "slow_r50": _Arch(_pytorchvideo("resnet", "slow_r50", head_activation=None), _spec(8, 224),
                      _pytorchvideo_url("resnet", "slow_r50")),
    "slowfast_r50": _Arch(_pytorchvideo("slowfast", "slowfast_r50", head_activation=None),
                          _spec(32, 224, pathways="slowfast", slowfast_alpha=4),
                          _pytorchvideo_url("slowfast", "slowfast_r50")),
    "mvit_base_16x4": _Arch(_pytorchvideo("vision_transformers", "mvit_base_16x4"), _spec(16, 224),
                            _pytorchvideo_url("vision_transformers", "mvit_base_16x4")),
    "r3d_18": _Arch(_torchvision("r3d_18"), _spec(16, 112, TV_R3D_MEAN, TV_R3D_STD),
                    _torchvision_url("r3d_18")),
    "mc3_18": _Arch(_torchvision("mc3_18"), _spec(16, 112, TV_R3D_MEAN, TV_R3D_STD),
                    _torchvision_url("mc3_18")),
    "r2plus1d_18": _Arch(_torchvision("r2plus1d_18"), _spec(16, 112, TV_R3D_MEAN, TV_R3D_STD),
                         _torchvision_url("r2plus1d_18")),
    "s3d": _Arch(_torchvision("s3d"), _spec(16, 224, TV_R3D_MEAN, TV_R3D_STD), _torchvision_url("s3d")),
    "mvit_v2_s": _Arch(_torchvision("mvit_v2_s"), _spec(16, 224), _torchvision_url("mvit_v2_s")),
    "swin3d_t": _Arch(_torchvision("swin3d_t"), _spec(32, 224, IMAGENET_MEAN, IMAGENET_STD),
                      _torchvision_url("swin3d_t")),
}

# Builders a checkpoint may name: the architectures above plus project networks.
# Lazy "module:function" strings keep imports cheap and forbid arbitrary code.
PROJECT_BUILDERS = {"demo_net": "conceptgen.demo_model:build_demo_network",
                    "tcav_toy": "conceptgen.toy_model:build_toy_network"}
DEMO_NAME = "demo"
DEMO_FILE = "demo.pt"


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts besides a file path."""
    return [*ARCHITECTURES, DEMO_NAME]


def build_network(builder: str, builder_kwargs: dict | None = None, *, user_code: bool = False) -> nn.Module:
    """Build an untrained network by builder name: an architecture, a project builder, or
    (only with ``user_code``: the user named it on the command line or in a model card)
    ``package.module:function``. Checkpoint files may name only the first two."""
    kwargs = dict(builder_kwargs or {})
    if builder in ARCHITECTURES:
        return _call_builder(builder, functools.partial(ARCHITECTURES[builder].build, pretrained=False), kwargs)
    if builder in PROJECT_BUILDERS:
        return _call_builder(builder, _import_callable(PROJECT_BUILDERS[builder]), kwargs)
    if user_code and ":" in builder:
        return _call_builder(builder, _import_callable(builder), kwargs)
    raise ModelError(f"unknown builder {builder!r}; checkpoints may name one of "
                     f"{', '.join([*ARCHITECTURES, *PROJECT_BUILDERS])}; for your own network use "
                     "--model package.module:function")


def _import_callable(path: str) -> Callable[..., Any]:
    """``package.module:function`` (function may be dotted, e.g. Class.method) -> the callable."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ModelError(f"--model {path!r} is not package.module:function")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as err:
        raise ModelError(f"cannot import {module} for --model {path} ({type(err).__name__}: {err}); "
                         "install it or add its folder to PYTHONPATH") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module} has no {attr!r} for --model {path}; check the function name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{path} is not callable; --model needs a function that returns an nn.Module")
    return obj


def _call_builder(name: str, build: Callable[..., Any], kwargs: dict) -> nn.Module:
    from conceptgen.capture import TORCHSCRIPT_REFUSAL

    try:
        model = build(**kwargs)
    except Exception as err:  # user code: any failure is a one-line ModelError
        first = shorten(err)
        raise ModelError(f"building {name} with model kwargs {json.dumps(kwargs)} failed "
                         f"({type(err).__name__}: {first}); check --model-kwargs") from err
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"{name} returned TorchScript: {TORCHSCRIPT_REFUSAL}")
    if not isinstance(model, nn.Module):
        raise ModelError(f"{name} returned {type(model).__name__}, not a torch nn.Module")
    return model


# --------------------------------------------------------------------------- sources
CARD_SUFFIXES = (".json", ".yaml", ".yml")
CARD_KEYS = ("builder", "builder_kwargs", "weights", "spec", "class_names", "concept_layers")
SIDECAR_KEYS = ("spec", "class_names", "concept_layers")


@dataclass(frozen=True)
class ModelSource:
    """A model as the user names it; :func:`load_model` resolves it, for every command.

    ``model`` is one of: a registry name (``conceptgen models``); ``demo``; a conceptgen
    checkpoint path; a model card file (``.json``/``.yaml`` with :data:`CARD_KEYS`, paths
    relative to the card); or ``package.module:function``, a builder of the user's own
    network (user code, run because the user named it). ``model_kwargs`` go to the
    builder, ``weights`` is a state_dict for it. ``spec``, ``class_names`` and
    ``concept_layers`` override the card, then a sidecar JSON beside the weights or
    checkpoint (``model.pt`` -> ``model.json``, with :data:`SIDECAR_KEYS`), then the
    architecture's own. A builder without class names gets "0".."N-1"."""

    model: str
    weights: str | None = None
    model_kwargs: dict | None = None
    spec: InputSpec | None = None
    class_names: tuple[str, ...] | None = None
    concept_layers: tuple[str, ...] = ()
    pretrained: bool = False

    @classmethod
    def of(cls, model: "str | Path | ModelSource", *, weights: str | Path | None = None,
           pretrained: bool = False) -> "ModelSource":
        """A name or path (with --weights / --pretrained) as a source; a source as it is."""
        if isinstance(model, ModelSource):
            return replace(model, weights=str(weights) if weights is not None else model.weights,
                           pretrained=pretrained or model.pretrained)
        return cls(str(model), weights=None if weights is None else str(weights), pretrained=pretrained)

    def to_dict(self) -> dict:
        """Plain values, files as absolute paths (a record finds them from any folder)."""
        def path(p):
            return str(Path(p).resolve()) if p and (Path(p).is_file() or hf_models.is_directory(p)) else p
        return {"model": path(self.model), "weights": path(self.weights), "model_kwargs": self.model_kwargs,
                "input_spec": self.spec.to_dict() if self.spec else None,
                "class_names": list(self.class_names) if self.class_names else None}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSource":
        """Inverse of :meth:`to_dict` (other keys are ignored)."""
        return cls(d["model"], weights=d.get("weights"), model_kwargs=d.get("model_kwargs"),
                   spec=InputSpec.from_dict(d["input_spec"]) if d.get("input_spec") else None,
                   class_names=tuple(d["class_names"]) if d.get("class_names") else None)

    def under(self, card: "ModelSource") -> "ModelSource":
        """This source's fields where set, else the card's (flags override a card)."""
        return ModelSource(card.model, weights=self.weights or card.weights,
                           model_kwargs=self.model_kwargs if self.model_kwargs is not None else card.model_kwargs,
                           spec=self.spec or card.spec, class_names=self.class_names or card.class_names,
                           concept_layers=self.concept_layers or card.concept_layers,
                           pretrained=self.pretrained or card.pretrained)


def read_model_card(path: str | Path) -> ModelSource:
    """A model card (JSON or YAML) as a source; its paths are relative to the card."""
    path = Path(path)
    d = _read_mapping(path, CARD_KEYS, "model card")
    if "builder" not in d:
        raise ModelError(f"model card {path} has no builder; add builder: package.module:function "
                         "(or a name from `conceptgen models`)")
    weights = d.get("weights")
    if weights is not None and not Path(weights).is_absolute():
        weights = str((path.parent / weights).resolve())
    return ModelSource(str(d["builder"]), weights=weights, model_kwargs=dict(d.get("builder_kwargs") or {}),
                       **_card_extras(d, path))


def _card_extras(d: dict, path: Path) -> dict:
    """spec, class_names and concept_layers of a card or sidecar mapping."""
    try:
        return {"spec": InputSpec.from_dict(d["spec"]) if "spec" in d else None,
                "class_names": tuple(str(c) for c in d["class_names"]) if d.get("class_names") else None,
                "concept_layers": tuple(str(x) for x in d.get("concept_layers") or ())}
    except ModelError as err:
        raise ModelError(f"{path}: {err}") from None


def _read_mapping(path: Path, keys: tuple[str, ...], what: str) -> dict:
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as err:  # unreadable or malformed: one line
        raise ModelError(f"cannot read {what} {path} ({type(err).__name__}: "
                         f"{shorten(err, 150)}); fix the file") from err
    if not isinstance(d, dict):
        raise ModelError(f"{what} {path} must be a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(d) - set(keys))
    if unknown:
        raise ModelError(f"{what} {path} has unknown keys {', '.join(unknown)}; allowed: {', '.join(keys)}")
    return d


def _sidecar(path: str | Path | None) -> ModelSource:
    """The sidecar JSON beside a weights or checkpoint file (``x.pt`` -> ``x.json``),
    as a source holding only spec, class_names and concept_layers."""
    side = Path(path).with_suffix(".json") if path else None
    if side is None or side == Path(path) or not side.is_file():
        return ModelSource("")
    return ModelSource("", **_card_extras(_read_mapping(side, (*CARD_KEYS, "format"), "sidecar"), side))


def parse_model_kwargs(text: str | None) -> dict | None:
    """``--model-kwargs`` JSON -> a dict (None when not given)."""
    if text is None:
        return None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--model-kwargs is not JSON ({err.msg}); give e.g. '{{\"model_depth\": 50}}'") from err
    if not isinstance(d, dict):
        raise ConfigError("--model-kwargs must be a JSON object of keyword arguments")
    return d


def parse_input_spec(text: str | None) -> InputSpec | None:
    """``--input-spec`` JSON -> an InputSpec (None when not given)."""
    if text is None:
        return None
    try:
        return InputSpec.from_dict(json.loads(text))
    except json.JSONDecodeError as err:
        raise ConfigError(f"--input-spec is not JSON ({err.msg}); give e.g. "
                          "'{\"num_frames\": 8, \"side\": 112}'") from err


def parse_class_names(text: str | None) -> tuple[str, ...] | None:
    """``--classes`` a,b,c or a text file with one name per line -> names (None when not given)."""
    if text is None:
        return None
    names = Path(text).read_text().splitlines() if Path(text).is_file() else text.split(",")
    names = tuple(n.strip() for n in names if n.strip())
    if not names:
        raise ConfigError("--classes is empty; give names a,b,c or a file with one name per line")
    return names


def as_loaded(model: "nn.Module | LoadedModel", *, spec: InputSpec | None = None,
              class_names: Sequence[str] | None = None, name: str | None = None) -> LoadedModel:
    """An ``nn.Module`` handed to the library (as Captum users do) as a LoadedModel: put in
    eval mode on the device of its parameters. ``spec`` is required unless the module came
    from load_model; class names default to "0".."N-1". A LoadedModel is returned as is."""
    from conceptgen.capture import TORCHSCRIPT_REFUSAL

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(TORCHSCRIPT_REFUSAL)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch nn.Module or LoadedModel, got {type(model).__name__}")
    own = hf_models.facts(model) if hf_models.is_hf_model(model) else None  # transformers: its config says
    spec = spec or getattr(model, "conceptgen_spec", None) or (own and own.spec)
    if spec is None:
        raise ConfigError("pass spec=InputSpec(num_frames=..., side=..., mean=..., std=...) with an nn.Module")
    spec = spec.with_model_layout(own and own.spec.layout)
    tokens = own.tokens if own else getattr(model, "conceptgen_tokens", None)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    _attach_spec(model, spec, tokens)
    names = list(class_names) if class_names else (own and own.class_names) or _index_names(model, spec, device)
    return LoadedModel(name=name or type(model).__name__, model=model, spec=spec, class_names=names,
                       fingerprint=model_fingerprint(model), device=device, tokens=tokens)


def _index_names(model: nn.Module, spec: InputSpec, device: torch.device) -> list[str]:
    """"0".."N-1" for a model's N logits (one probe forward of a zero clip)."""
    x = model_input(torch.zeros(1, 3, spec.num_frames, spec.side, spec.side, device=device), spec)
    try:
        with torch.inference_mode():
            output = model(x)
    except Exception as err:  # inside the user's model: its message and the likely fix
        raise forward_failure(err, spec, x) from err
    return [str(i) for i in range(require_logits(output).shape[1])]


# --------------------------------------------------------------------------- loading
def load_model(source: "str | Path | ModelSource", *, weights: str | Path | None = None,
               pretrained: bool = False, device: str | torch.device = "cpu", workspace=None) -> LoadedModel:
    """Resolve a model (a name, path, card or builder: see :class:`ModelSource`) to an
    eval-mode model returning logits, on ``device``. Raises ModelError / ConfigError."""
    source = ModelSource.of(source, weights=weights, pretrained=pretrained)
    dev = _device(device)
    if source.weights is not None and source.pretrained:
        raise ConfigError("give either --pretrained or --weights PATH, not both")
    while Path(source.model).suffix.lower() in CARD_SUFFIXES and Path(source.model).is_file():
        source = source.under(read_model_card(source.model))
    loaded = _resolve(source, workspace)
    side = _sidecar(source.weights or (source.model if Path(source.model).is_file() else None))
    own_layout = loaded.spec.layout if loaded.spec else None
    loaded.spec = source.spec or side.spec or loaded.spec
    if loaded.spec is None:
        raise ModelError(f"no input spec for {source.model}; give --input-spec '{{\"num_frames\": 8, "
                         f"\"side\": 112}}', a model card with spec, or a sidecar JSON beside the weights")
    loaded.spec = loaded.spec.with_model_layout(own_layout)
    layers = source.concept_layers or side.concept_layers
    if layers:
        loaded.metadata = {**loaded.metadata, "concept_layers": list(layers)}
    loaded.model = loaded.model.to(dev).eval()
    loaded.device = dev
    names = source.class_names or side.class_names or loaded.class_names
    _attach_spec(loaded.model, loaded.spec, loaded.tokens)
    loaded.class_names = list(names) if names else _index_names(loaded.model, loaded.spec, dev)
    return loaded


def _resolve(source: ModelSource, workspace) -> LoadedModel:
    """The network, weights loaded, with its own spec and class names (None if it has none)."""
    name, path = source.model, Path(source.model)
    if name == DEMO_NAME:
        if workspace is None:
            from conceptgen.workspace import Workspace
            workspace = Workspace.resolve()
        path = Path(workspace.models) / DEMO_FILE
        if not path.is_file():
            raise ModelError(f"no demo model at {path}; train it with "
                             "`conceptgen train-demo-model --data DIR`")
        return _load_checkpoint(path, DEMO_NAME)
    if name in ARCHITECTURES:
        return _load_architecture(name, weights=source.weights, pretrained=source.pretrained,
                                  kwargs=source.model_kwargs)
    if path.is_file():
        return _load_checkpoint(path, name)
    if hf_models.is_directory(path):
        return _load_hf(source)
    if ":" in name:
        return _load_user_network(source)
    if path.suffix in (".pt", ".pth", ".pyth", ".ckpt", ".jit", *CARD_SUFFIXES):
        raise ModelError(f"{name} does not exist; check the path")
    if hf_models.looks_like_hub_name(name):
        return _load_hf(source)
    if path.is_dir():
        raise ModelError(f"{name} is a folder without config.json; give a folder written by "
                         "save_pretrained, a checkpoint file or a model card")
    close = difflib.get_close_matches(name, available_models(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(f"unknown model {name!r}; {hint}run `conceptgen models` for the names, or give a "
                     "checkpoint path, a model card or package.module:function")


def _load_user_network(source: ModelSource) -> LoadedModel:
    model = build_network(source.model, source.model_kwargs, user_code=True)
    if source.weights is not None:
        _load_state_dict(model, _read_state_dict(Path(source.weights)), f"{source.model} from {source.weights}")
    metadata = {"builder": source.model, "builder_kwargs": dict(source.model_kwargs or {})}
    if hf_models.is_hf_model(model):  # says its own spec, names and tokens; its head gives logits
        return _hf_loaded(source.model, model.eval(), hf_models.facts(model), metadata)
    _strip_softmax(model)
    return LoadedModel(name=source.model, model=model, spec=None, class_names=[],
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"), metadata=metadata)


def _load_hf(source: ModelSource) -> LoadedModel:
    """A save_pretrained folder (or, where the network allows, a hub name)."""
    for flag, value in (("--weights", source.weights), ("--model-kwargs", source.model_kwargs),
                        ("--pretrained", source.pretrained)):
        if value:
            raise ConfigError(f"{flag} does not apply to the Hugging Face model {source.model} (its folder "
                              f"holds its config and weights); drop {flag}")
    path = Path(source.model)
    model, facts = hf_models.load_directory(path) if hf_models.is_directory(path) else \
        hf_models.load_hub(source.model)
    return _hf_loaded(source.model, model, facts, {"hf_model_type": facts.model_type})


def _hf_loaded(name: str, model: nn.Module, facts: "hf_models.HfFacts", metadata: dict) -> LoadedModel:
    if facts.tokens_note:
        metadata = {**metadata, "tokens_note": facts.tokens_note}
    return LoadedModel(name=name, model=model, spec=facts.spec, class_names=facts.class_names,
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"),
                       metadata=metadata, tokens=facts.tokens)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"bad device {device!r}; use cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} requested but CUDA is not available; use --device cpu")
    return dev


def _load_architecture(name: str, *, weights, pretrained: bool, kwargs: dict | None = None) -> LoadedModel:
    arch = ARCHITECTURES[name]
    kwargs = dict(kwargs or {})
    if pretrained:
        _ensure_downloadable(name, arch.weights_url())
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            model = arch.build(pretrained=True, **kwargs)
        except Exception as err:  # any download/parse failure is a user-facing ModelError
            raise ModelError(f"could not download pretrained weights for {name} ({type(err).__name__}: "
                             f"{err}); download them elsewhere and pass --weights PATH") from err
        finally:
            socket.setdefaulttimeout(previous)
    else:
        model = build_network(name, kwargs)
    if weights is not None:
        _load_state_dict(model, _read_state_dict(Path(weights)), f"{name} from {weights}")
    _strip_softmax(model)
    return LoadedModel(name=name, model=model, spec=arch.spec, class_names=_kinetics_names(),
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"))


def _ensure_downloadable(name: str, url: str) -> None:
    """Fail in seconds, not minutes, when the weights are not cached and there is no network."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if cached.is_file():
        return
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=_OFFLINE_TIMEOUT_S).close()
    except OSError as err:
        raise ModelError(f"cannot download pretrained weights for {name}: {host} is unreachable "
                         f"({err.__class__.__name__}); fetch {url} on a connected machine and "
                         "pass --weights PATH") from err


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a raw dict or a wrapper with state_dict/model_state/model."""
    from conceptgen.capture import TORCHSCRIPT_REFUSAL

    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; check --weights PATH")
    if _is_torchscript(path):  # torch.load would fail with a RuntimeError that never says so
        raise ModelError(f"--weights {path} is a TorchScript file, not a state_dict: {TORCHSCRIPT_REFUSAL}; "
                         "save the weights with torch.save(model.state_dict(), PATH)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"cannot read weights {path} ({type(err).__name__}); give a torch.save'd "
                         "state_dict") from err
    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds no state_dict; save one with torch.save(model.state_dict(), PATH)")
    return obj


def _load_state_dict(model: nn.Module, state: dict, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"weights do not fit {what}: {state_dict_mismatch(model.state_dict(), state)}; "
                         "give weights saved from the same architecture and --model-kwargs") from err


def state_dict_mismatch(expected: dict, given: dict, *, examples: int = 2) -> str:
    """What differs between a model's state_dict and a file's, counted and named (a few
    of each kind, whole names), instead of torch's message cut at an arbitrary length."""
    def names(keys) -> str:
        keys = sorted(keys)
        more = f" and {len(keys) - examples} more" if len(keys) > examples else ""
        return ", ".join(keys[:examples]) + more

    missing, unexpected = set(expected) - set(given), set(given) - set(expected)
    shapes = [f"{k} {tuple(given[k].shape)} in the file vs {tuple(expected[k].shape)} in the model"
              for k in sorted(set(expected) & set(given))
              if hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = ([f"{len(missing)} missing key(s) ({names(missing)})"] if missing else []) + \
        ([f"{len(unexpected)} unexpected key(s) ({names(unexpected)})"] if unexpected else []) + \
        ([f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:examples])}"
          f"{f' and {len(shapes) - examples} more' if len(shapes) > examples else ''})"] if shapes else [])
    return ", ".join(parts) or "the values could not be copied"


def _load_checkpoint(path: Path, name: str) -> LoadedModel:
    if _is_torchscript(path):
        return _load_torchscript(path, name)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"cannot read checkpoint {path} ({type(err).__name__}); give a file written "
                         "by conceptgen or a TorchScript model") from err
    if not isinstance(ckpt, dict) or "builder" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(f"{path} is not a conceptgen checkpoint (needs builder, builder_kwargs, "
                         "state_dict); for a bare state_dict use `--model ARCH --weights PATH`")
    model = build_network(ckpt["builder"], ckpt.get("builder_kwargs"))
    _load_state_dict(model, ckpt["state_dict"], f"builder {ckpt['builder']}")
    _strip_softmax(model)
    spec = InputSpec.from_dict(ckpt["spec"]) if "spec" in ckpt else \
        ARCHITECTURES[ckpt["builder"]].spec if ckpt["builder"] in ARCHITECTURES else None
    class_names = list(ckpt.get("class_names") or _kinetics_names())
    metadata = {k: v for k, v in ckpt.items() if k not in ("state_dict",)}
    return LoadedModel(name=name, model=model, spec=spec, class_names=class_names,
                       fingerprint=model_fingerprint(model), device=torch.device("cpu"),
                       metadata=metadata)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _load_torchscript(path: Path, name: str) -> LoadedModel:
    from conceptgen.capture import TORCHSCRIPT_REFUSAL

    raise ModelError(f"{path} is TorchScript: {TORCHSCRIPT_REFUSAL}")


def save_checkpoint(path: str | Path, *, builder: str, builder_kwargs: dict, model: nn.Module,
                    spec: InputSpec, class_names: list[str], **metadata: Any) -> str:
    """Write a checkpoint :func:`load_model` reads back; returns the model fingerprint.
    Extra metadata must be plain Python values (loaded with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fingerprint = _fingerprint_state(state)
    payload = {"format": CHECKPOINT_FORMAT, "builder": builder, "builder_kwargs": builder_kwargs,
               "state_dict": state, "spec": spec.to_dict(), "class_names": list(class_names),
               "fingerprint": fingerprint, **metadata}
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(payload, tmp)
    tmp.replace(path)
    return fingerprint


def _kinetics_names() -> list[str]:
    from torchvision.models._meta import _KINETICS400_CATEGORIES
    return list(_KINETICS400_CATEGORIES)


def _strip_softmax(model: nn.Module) -> None:
    """Replace any softmax output activation so the model returns logits."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)):
                setattr(parent, child_name, nn.Identity())


def _attach_spec(model: nn.Module, spec: InputSpec, tokens: TokenGrid | None = None) -> None:
    """Remember the spec on the module so pooled_layers(model) can run a probe forward,
    and the token grid so conceptgen.capture maps token layers to (D, T, H, W)."""
    try:
        model.conceptgen_spec = spec
        model.conceptgen_tokens = tokens
    except (AttributeError, RuntimeError, TypeError):  # TorchScript modules refuse new attributes
        pass


# --------------------------------------------------------------------------- fingerprints
def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the state_dict: each key, dtype, shape and raw bytes, in key order."""
    return _fingerprint_state(model.state_dict())


def _fingerprint_state(state: dict[str, torch.Tensor]) -> str:
    import hashlib
    h = hashlib.sha256()
    for key in state:
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- layers
def layer_names(model: nn.Module | LoadedModel) -> list[str]:
    """Dotted names of every submodule, in registration order."""
    return [n for n, _ in _module(model).named_modules() if n]


def get_layer(model: nn.Module | LoadedModel, dotted: str) -> nn.Module:
    """The submodule at ``dotted``; raises LayerNotFoundError with close matches."""
    from conceptgen.capture import find_layer

    return find_layer(_module(model), dotted)


def pooled_layers(model: nn.Module | LoadedModel, spec: InputSpec | None = None) -> set[str]:
    """Layers whose output comes after global spatiotemporal pooling (a TCAV layer there
    has no space or time left). Found by a probe forward of one zero clip: after the last
    module whose output keeps >1 position along more than one axis, every module whose
    output is a vector per sample is pooled. Without a spec, falls back to the first
    global pooling module (adaptive 3D pool to 1) and everything registered after it."""
    module = _module(model)
    spec = spec or (model.spec if isinstance(model, LoadedModel) else getattr(module, "conceptgen_spec", None))
    if spec is None:
        return _pooled_by_type(module)
    return _pooled(_probe(module, spec).layers)


def _pooled(seen: dict[str, tuple[torch.Tensor, ...]]) -> set[str]:
    # A vector per sample: every tensor has at most one non-batch axis longer than 1.
    order = [(n, all(sum(s > 1 for s in t.shape[1:]) <= 1 for t in ts))
             for n, ts in seen.items() if ts and all(t.ndim >= 2 for t in ts)]
    last_spatial = max((i for i, (_, vec) in enumerate(order) if not vec), default=-1)
    return {n for n, vec in order[last_spatial + 1:] if vec}


@dataclass(frozen=True)
class LayerInfo:
    """One layer as a probe forward of one zero clip saw it. ``shape``: per clip, as
    every view reads it (token layers as (D, T, H, W)); None when the layer did not run
    or gave no tensor. ``tokens``: (N, D) as the model made them, for a token layer;
    ``note``: why a token-shaped layer has no time grid (CAVs still work there)."""

    name: str
    shape: tuple[int, ...] | None
    pooled: bool
    tokens: tuple[int, ...] | None = None
    note: str | None = None


def describe_layers(loaded: LoadedModel) -> list[LayerInfo]:
    """Every layer of ``loaded`` in registration order, with its output shape per clip."""
    from conceptgen.tokens import why_not_grid

    captured = _probe(loaded.model, loaded.spec)
    pooled = _pooled(captured.layers)
    tokens_note = (loaded.metadata or {}).get("tokens_note")
    out = []
    for name in layer_names(loaded):
        seen, raw = captured.layers.get(name) or (), captured.raw.get(name) or ()
        shape = tuple(seen[0].shape[1:]) if len(seen) == 1 else None
        made = tuple(raw[0].shape[1:]) if len(raw) == 1 else None
        token_layer = made is not None and len(made) == 2 and shape is not None and len(shape) == 4
        note = None
        if shape is not None and name not in pooled and len(shape) != 4 and (loaded.tokens or tokens_note):
            note = why_not_grid(shape, loaded.tokens) if loaded.tokens else tokens_note
        out.append(LayerInfo(name, shape, name in pooled, made if token_layer else None, note))
    return out


def _probe(module: nn.Module, spec: InputSpec):
    """conceptgen.capture.Captured of every layer for one zero clip."""
    from conceptgen.capture import capture_layers

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    x = model_input(torch.zeros(1, 3, spec.num_frames, spec.side, spec.side, device=device), spec)
    with capture_layers(module, layer_names(module), require_all=False) as capture, torch.no_grad():
        return capture.forward(x)  # layers in the order they finished


def _pooled_by_type(module: nn.Module) -> set[str]:
    names = [n for n, _ in module.named_modules() if n]
    mods = dict(module.named_modules())
    for i, n in enumerate(names):
        m = mods[n]
        if isinstance(m, (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)) and \
                all(s == 1 for s in np.atleast_1d(m.output_size)):
            return {x for x in names[i:] if not x.startswith(n + ".")} | {n}
    return set()


def _module(model: nn.Module | LoadedModel) -> nn.Module:
    return model.model if isinstance(model, LoadedModel) else model
