"""SiT's released checkpoints (willisma/SiT, e.g. ``SiT-XL-2-256.pt``) as our DiT in flow-matching time
(docs/latent.md 7).

The file is ``torch.save`` of a state dict (or of a training checkpoint holding it under ``ema``), read with
``torch.load(weights_only=True)``: tensors only, no code runs. SiT's module names are DiT's, which ours follow, so
weights load by name. Two conventions differ, and the conversion makes them ours:

- time: SiT interpolates x_s = s·data + (1 − s)·noise, noise at s = 0, and predicts dx_s/ds = data − noise; our
  flow-matching path z_t = (1 − t)·data + t·noise puts noise at t = 1, velocity noise − data. The same state is
  s = 1 − t and our velocity is minus SiT's: the network gets ``time_reversed`` (its t embedder reads 1 − t) and
  the output layer is negated;
- output: SiT (as DiT) was trained with ``learn_sigma``, 2C outputs per pixel of which the first C are the velocity;
  the output layer keeps those rows.

The architecture is read from the tensors' shapes; the head count, which no shape shows, from DiT's table of sizes.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from cmt.errors import BadInput
from cmt.nets import PRESETS, DiTConfig, build_network
from cmt.numerics.precond import Denoiser


def is_torch_archive(path: Path) -> bool:
    """A ``torch.save`` file (a zip archive), as SiT's and DiT's checkpoints are."""
    return path.is_file() and zipfile.is_zipfile(path)


def read_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a torch checkpoint: its ``ema`` state dict when it holds one (SiT's train.py), else itself."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files it refuses or cannot parse
        raise BadInput(f"{path}: not a torch checkpoint of tensors: {err}") from err
    state = state.get("ema", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BadInput(f"{path}: expected a state dict of tensors (SiT's checkpoint), got {type(state).__name__}")
    return state


def heads_of(hidden: int, path: Path) -> int:
    """Attention heads of a DiT of this width (DiT paper, Table 1, as our presets hold it)."""
    heads = {cfg.hidden_size: cfg.num_heads for cfg in PRESETS.values() if isinstance(cfg, DiTConfig)}
    if hidden not in heads:
        raise BadInput(f"{path}: a DiT of width {hidden} is none of DiT's sizes ({', '.join(map(str, sorted(heads)))})")
    return heads[hidden]


def sit_config(state: dict[str, Tensor], path: Path) -> tuple[DiTConfig, int]:
    """Our DiT config (velocity channels only, SiT's time) and the file's output channels per pixel."""
    for key in ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight", "t_embedder.mlp.0.weight"):
        if key not in state:
            raise BadInput(f"{path}: no tensor {key!r}; not a DiT / SiT state dict")
    proj = state["x_embedder.proj.weight"]
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[-2])
    out = state["final_layer.linear.weight"].shape[0] // patch**2
    if out not in (channels, 2 * channels):
        raise BadInput(f"{path}: {out} output channels for {channels} input ones; expected C or 2C (learn_sigma)")
    table = state.get("y_embedder.embedding_table.weight")
    cfg = DiTConfig(
        img_resolution=grid * patch,
        in_channels=channels,
        out_channels=channels,
        patch_size=patch,
        hidden_size=hidden,
        depth=len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        num_heads=heads_of(hidden, path),
        label_dim=0 if table is None else table.shape[0] - 1,
        time_reversed=True,
    )
    return cfg, out


def velocity_rows(weight: Tensor, patch: int, out: int, channels: int) -> Tensor:
    """The output layer's rows of the velocity (the first ``channels`` of ``out`` per pixel; layout (p, q, c)),
    negated into our time's direction."""
    return -weight.reshape(patch, patch, out, *weight.shape[1:])[:, :, :channels].reshape(-1, *weight.shape[1:])


def convert_sit(path: str | Path) -> tuple[Denoiser, dict]:
    """A SiT checkpoint as our flow-parameterised DiT: u(z, t) = −v_SiT(z, 1 − t) (docs/latent.md 7)."""
    path = Path(path)
    state = read_state(path)
    cfg, out = sit_config(state, path)
    tensors = dict(state)
    for name in ("final_layer.linear.weight", "final_layer.linear.bias"):
        tensors[name] = velocity_rows(state[name], cfg.patch_size, out, cfg.in_channels)
    tensors["pos_embed"] = state["pos_embed"].reshape(1, -1, cfg.hidden_size)
    denoiser = Denoiser(build_network(cfg))
    ours = denoiser.model.state_dict()
    wrong = sorted(set(ours) ^ set(tensors))
    shapes = [n for n in ours if n in tensors and tensors[n].shape != ours[n].shape]
    if wrong or shapes:
        raise BadInput(f"{path}: not SiT's layout: names {wrong[:5]} differ, shapes of {shapes[:5]} differ")
    denoiser.model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return denoiser.eval(), {"format": "sit", "learn_sigma": out == 2 * cfg.in_channels}
