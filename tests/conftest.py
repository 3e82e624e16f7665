"""Keep every tool's caches and telemetry inside a per-session temporary folder (environment.md 9)."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="cmt-tests-")
for var, sub in {
    "TORCH_HOME": "torch",
    "MPLCONFIGDIR": "matplotlib",
    "XDG_CACHE_HOME": "cache",
    "HF_HOME": "hf",
    "DVC_SITE_CACHE_DIR": "dvc-site",
}.items():
    os.environ.setdefault(var, os.path.join(_HOME, sub))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
