"""How a workflow job starts ``-m cmt <verb>``: plain python, or ``accelerate launch`` for a training job given more
than one GPU (workflow.md 6). No torch here: the Snakefile imports it to write its shell commands."""

from __future__ import annotations

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16"}  # config compute.precision -> accelerate's --mixed_precision


def launcher(gpus: int, precision: str) -> str:
    """``python`` for 0 or 1 GPU; else accelerate with every flag explicit (no hidden default_config.yaml), a free
    rendezvous port (two jobs on one node) and ``--multi_gpu``, which on a machine without CUDA runs gloo on CPU."""
    if gpus <= 1:
        return "python"
    return (
        f"accelerate launch --multi_gpu --num_processes {gpus} --num_machines 1 --main_process_port 0"
        f" --mixed_precision {MIXED_PRECISION[precision]} --dynamo_backend no"
    )


def training_launcher(gpus: int, precision: str) -> str:
    """The shell words that start a training verb: ``$CMT_LAUNCH`` when set (an override), else ``launcher``."""
    return f"${{CMT_LAUNCH:-{launcher(gpus, precision)}}}"
