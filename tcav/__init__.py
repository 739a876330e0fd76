"""Video-TCAV: concept scores for video models, with honest statistics.

Modules, in the order the method uses them:
  examples     where clips come from (DB concepts, export/plain folders, class videos, random pool)
  activations  the one activation/gradient cache (content-hashed; one forward + backward per batch)
  classifiers  CavClassifier ABC: mean-diff (default), sgd, logistic, svm; seeded, held-out accuracy
  cav          the CAV dataclass (saves/loads itself)
  scoring      directional derivatives, TCAV / magnitude / temporal TCAV (pure)
  stats        the pseudo-concept rank test, permutation / t-test, correction families, ties, z, power (pure)
  pseudo_null  the pseudo-concept null: pool candidates, prefix-stable draws, M per family, their statistic
  diagnostics  degenerate layers, the CAV quality gate, null health (pure)
  experiment   run_tcav: the orchestrator
  calibration  the test's false-positive rate on the experiment's own null, CAV stability (calibration.json)
  results      database rows, CSV and JSON;  plots: matplotlib PNGs;  workflow: the CLI's one call
  saved_cavs   every experiment's CAVs on disk (manifest + checksummed vectors)
  apply        `tcav apply`: new videos scored with saved CAVs, refused on another model
  gradcam      the Grad-CAM baseline;  toy: TCAV inputs of conceptgen.toy_model's world, for tests
"""
