"""benchmarks/gpu.py on a machine without CUDA says so and exits 0 (on a CUDA machine it runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_without_cuda_it_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run benchmarks/gpu.py itself")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device" in done.stdout
    assert "Traceback" not in done.stderr
