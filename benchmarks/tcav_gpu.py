"""The TCAV benchmark on a GPU: the same scoring as benchmarks/tcav_synthetic.py with
``--device cuda`` (and optionally ``--amp``), for sessions lent a GPU.

    python benchmarks/tcav_gpu.py [--quick] [--amp]

The code path is the device-agnostic one the CPU tests exercise; only the device
changes. Exits with a one-line message when CUDA is not available, and with 1 when
a target of tcav_synthetic.py is missed (``--no-targets``: 0).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("error: CUDA is not available on this machine: run benchmarks/tcav_synthetic.py for the CPU figures",
              file=sys.stderr)
        return 2
    import tcav_synthetic

    from targets import exit_status

    print(f"device: {torch.cuda.get_device_name(0)}")
    return exit_status(tcav_synthetic.main(["--device", "cuda", *argv]))


if __name__ == "__main__":
    sys.exit(main())
