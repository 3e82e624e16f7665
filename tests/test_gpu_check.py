"""benchmarks/gpu_check.py --quick: every row of the GPU table is measured by the real code paths (on CPU)."""

import os
import re
import subprocess
import sys

import pytest
from helpers.project import ROOT


@pytest.mark.slow  # bf16 on a CPU without bf16 units is slow: about a minute
def test_gpu_check_quick_prints_every_row_of_its_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for method in ("cmt", "ect", "ecd", "meanflow"):
        for label in ("fp32", "fast"):
            assert re.search(r"\| [0-9.]+ ms \|", rows[f"{method} step, {label}"])
    assert re.search(r"error vs fp32 [0-9.]+e-0[1-4]", rows["trajectories 16 NFE, teacher bf16"])  # bf16 did run
    assert "GPU-h" in rows["CIFAR-10 schedule, fast"] and "forward+backward fp32" in rows
    for mode in ("fp32", "bf16"):
        for name in ("MeanFlow", "flow matching"):
            assert re.search(r"[0-9.]+ TFLOP/s", rows[f"{name} step, dit-digits-tiny batch 8, {mode}"])
        assert re.search(r"\| [0-9.]+x \|", rows[f"MeanFlow / flow-matching step, {mode}"])
    assert re.search(r"\| [0-9]+ img/s \| n/a \| 3 x 50k: [0-9.]+ h \|", rows["FD_DINOv2 features, width 64, 32px"])
