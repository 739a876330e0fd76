"""Tiny, randomly initialised Hugging Face video classifiers built from configs (no
download): VideoMAE, TimeSformer and ViViT at 4 frames of 32 x 32, two blocks of
width 32. ``videomae`` is also a ``module:function`` builder, as a user's three-line
module would be."""
from __future__ import annotations

from pathlib import Path

import torch

CLASSES = ("left", "right", "still")
FRAMES, SIDE = 4, 32
KINDS = ("videomae", "timesformer", "vivit")
# A block whose patch tokens reach the logits (a class-token head reads only the class
# token after the last block) and a layer inside TimeSformer whose tokens fold time
# into the batch axis (no time grid).
BLOCKS = {"videomae": "videomae.encoder.layer.1", "timesformer": "timesformer.encoder.layer.0",
          "vivit": "vivit.layers.0"}
EMBEDDINGS = {"videomae": "videomae.embeddings", "timesformer": "timesformer.embeddings",
              "vivit": "vivit.embeddings"}
FOLDED = "timesformer.encoder.layer.0.temporal_attention"


def config(kind: str, **overrides):
    import transformers as tf

    common = dict(image_size=SIDE, num_frames=FRAMES, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=len(CLASSES),
                  id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    extra = {"videomae": dict(patch_size=8, tubelet_size=2), "timesformer": dict(patch_size=8),
             "vivit": dict(tubelet_size=[2, 8, 8])}[kind]
    cls = {"videomae": tf.VideoMAEConfig, "timesformer": tf.TimesformerConfig, "vivit": tf.VivitConfig}[kind]
    return cls(**{**common, **extra, **overrides})


def build(kind: str = "videomae", seed: int = 0, **overrides) -> torch.nn.Module:
    from transformers import AutoModelForVideoClassification

    torch.manual_seed(seed)  # stands in for a model fine-tuned elsewhere
    return AutoModelForVideoClassification.from_config(config(kind, **overrides)).eval()


def videomae(**overrides) -> torch.nn.Module:
    """The builder a user would write: `--model hf_tiny:videomae`."""
    return build("videomae", **overrides)


def save(kind: str, folder: Path, *, processor: dict | None = None) -> Path:
    """``save_pretrained`` the model (and, given its settings, its image processor)."""
    build(kind).save_pretrained(folder)
    if processor is not None:
        import transformers as tf

        cls = tf.VivitImageProcessor if kind == "vivit" else tf.VideoMAEImageProcessor
        cls(**processor).save_pretrained(folder)
    return folder
