"""malloc_tuning: once thresholds are raised, a CPU forward stops page-faulting every batch."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAULTS_PER_FORWARD = """
import resource, sys, torch
from conceptgen.demo_model import build_demo_network
from conceptgen.malloc_tuning import keep_freed_memory
torch.set_num_threads(2)
if sys.argv[1] == "tuned":
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
model, x = build_demo_network().eval(), torch.randn(16, 3, 8, 32, 32)
with torch.inference_mode():
    for _ in range(3):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_forward(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_FORWARD, mode], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_raised_thresholds_stop_page_faults_on_every_forward():
    # glibc's defaults usually map the activations afresh each batch (~3,500 faults per forward
    # here), but its adaptive thresholds sometimes settle on their own (0 once, in a full suite
    # beside another job): the default is the motivation, the tuned process is the claim.
    default, tuned = faults_per_forward("default"), faults_per_forward("tuned")
    assert tuned < 50, f"{tuned} page faults per forward with raised thresholds (default: {default})"
