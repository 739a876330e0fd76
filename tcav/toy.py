"""TCAV inputs of the toy world (:mod:`conceptgen.toy_model`: the clips and the tiny
3D CNN trained on them), for tests and quick checks."""
from __future__ import annotations

import numpy as np

from conceptgen.toy_model import CLASSES, ToyWorld, _background, class_clips, moving_square_clip, static_blob
from tcav.examples import ConceptExamples, Example
from tcav.experiment import TcavInputs


def toy_tcav_inputs(*, seed: int = 0, n_concept: int = 15, n_pool: int = 40, n_class: int = 12,
                    w: ToyWorld = ToyWorld()):
    """A :class:`tcav.experiment.TcavInputs` for the toy world:

    concepts ``rightward``/``leftward`` (a square moving so, on noise, no blob) and
    ``blob`` (a static blob on noise: a class-independent distractor); a random
    pool of static squares and blobs on noise; 'right' and 'left' class clips."""
    rng = np.random.default_rng(seed)

    def examples(make, n):
        return [Example.from_array(make()) for _ in range(n)]

    concepts = [
        ConceptExamples("rightward", "dynamic",
                        examples(lambda: moving_square_clip(rng, w, "right", distractor=False), n_concept)),
        ConceptExamples("leftward", "dynamic",
                        examples(lambda: moving_square_clip(rng, w, "left", distractor=False), n_concept)),
        ConceptExamples("blob", "dynamic", examples(lambda: static_blob(_background(rng, w), rng, w), n_concept)),
    ]
    pool = examples(lambda: moving_square_clip(rng, w, "static"), n_pool)
    classes = {c: [Example.from_array(x) for x in class_clips(c, n_class, seed + 100 + i, w)]
               for i, c in enumerate(CLASSES)}
    return TcavInputs(concepts, classes, pool)
