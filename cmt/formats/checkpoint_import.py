"""Checkpoints from elsewhere: tell their format, describe them, and convert them to our denoisers.

Formats: ``cmt`` (ours: a folder with model.safetensors + meta.json, or a single .safetensors whose header
carries the meta), ``edm-pickle`` (EDM's ``edm-*.pkl`` / ``network-snapshot-*.pkl``, an ``EDMPrecond``
around a DDPM++ ``SongUNet``) and ``edm2-pickle`` (EDM2's ``Precond`` around its magnitude-preserving
``UNet``).  Pickles are read by ``cmt.formats.edm_pickle`` without running them; SiT's ``torch.save`` checkpoints
(``sit``) by ``cmt.formats.sit_checkpoint``, tensors only.

Loading is strict: every tensor of the file lands in our network under the same dotted name and shape,
and every tensor of our network comes from the file.  Tensors EDM keeps for features we do not use are
reported by name (``extras`` in the meta) instead of being dropped silently; so far the only one is
``model.map_augment.weight``, the embedding of augmentation labels, which sampling never feeds
(dropping it leaves outputs bit-identical, method.md 12.5).  Any other mismatch is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from cmt.errors import BadInput, MissingInput
from cmt.formats.checkpoints import load_denoiser, load_denoiser_file
from cmt.formats.edm_pickle import NetworkPickle, module_tensors, read_network_pickle
from cmt.formats.fetch import fetch, file_sha256
from cmt.formats.names import WEIGHTS
from cmt.formats.sit_checkpoint import convert_sit, is_torch_archive
from cmt.nets import EDM2Config, UNetConfig, build_network, count_parameters
from cmt.numerics.precond import SIGMA_DATA, Denoiser

PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2 starts with PROTO

# EDM's SongUNet constructor defaults: persistence records only the arguments actually passed (method.md 12.5).
SONGUNET_DEFAULTS = {
    "label_dim": 0,
    "augment_dim": 0,
    "model_channels": 128,
    "channel_mult": [1, 2, 2, 2],
    "channel_mult_emb": 4,
    "num_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.10,
    "label_dropout": 0,
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
}
# The DDPM++ settings our SongUNet implements (NCSN++'s Fourier embedding and residual encoder are not).
SONGUNET_SUPPORTED = {
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
}
KNOWN_EXTRAS = {"model.map_augment.weight": "augmentation-label embedding (unused without augmentation labels)"}
# EDMPrecond's defaults for the preconditioning we keep; sigma_min 0 means "EDM's sampler default", 0.002.
EDM_PRECOND_DEFAULTS = {"sigma_data": SIGMA_DATA, "sigma_min": 0.0}
EDM_SAMPLER_SIGMA_MIN = 0.002


def is_network_pickle(path: str | Path) -> bool:
    """Whether ``path`` is a pickle (EDM/EDM2) rather than our format (a folder or a .safetensors file)."""
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            raise MissingInput(f"{path}: a folder without {WEIGHTS}; not a checkpoint")
        return False
    if not path.is_file():
        raise MissingInput(f"checkpoint not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(9)
    # a safetensors file opens with its header's length (8 bytes, little-endian) and the header's "{"; the length's
    # first byte may be a pickle's 0x80, so the layout is checked first
    if len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return False
    return head[:1] == PICKLE_MAGIC


def _load_ours(path: Path) -> tuple[Denoiser, dict]:
    return load_denoiser(path) if path.is_dir() else load_denoiser_file(path)


def describe(path: str | Path) -> dict:
    """What ``python -m cmt inspect-checkpoint`` prints: format, architecture, parameter count, labels, extras."""
    path = Path(path)
    if not is_network_pickle(path):
        denoiser, meta = _load_ours(path)
        arch = meta["architecture"]
        return {
            "path": str(path),
            "format": "cmt",
            "class": type(denoiser.model).__name__,
            "architecture": arch,
            "precond": meta["precond"],
            "parameters": count_parameters(denoiser),
            "label_dim": arch.get("label_dim", 0),
            "extras": meta.get("extras", []),
        }
    pkl = read_network_pickle(path)
    tensors = module_tensors(pkl.ema)
    net = pkl.network
    return {
        "path": str(path),
        "format": pkl.format,
        "class": f"{pkl.ema.class_name}/{net.class_name}",
        "architecture": {"precond": pkl.ema.init_kwargs, "network": net.init_kwargs},
        "parameters": sum(t.numel() for t in module_tensors(pkl.ema, kinds=("_parameters",)).values()),
        "label_dim": int(net.init_kwargs.get("label_dim", pkl.ema.init_kwargs.get("label_dim", 0))),
        "extras": sorted(name for name in tensors if name in KNOWN_EXTRAS),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        "other_keys": [k for k in pkl.keys if k != "ema"],
        "refused": pkl.refused,
    }


def songunet_config(pkl: NetworkPickle) -> UNetConfig:
    """Our U-Net config from the recorded constructor arguments of EDM's SongUNet (defaults filled in)."""
    net = pkl.network
    if net.class_name != "SongUNet":
        raise BadInput(f"{pkl.path}: network class {net.class_name!r}; EDM pickles convert from SongUNet (DDPM++)")
    args = {**SONGUNET_DEFAULTS, **net.init_kwargs}
    for key, supported in SONGUNET_SUPPORTED.items():
        if args[key] != supported:
            raise BadInput(f"{pkl.path}: SongUNet {key}={args[key]!r} is not supported (ours: {supported!r})")
    return UNetConfig(
        img_resolution=int(args["img_resolution"]),
        in_channels=int(args["in_channels"]),
        out_channels=int(args["out_channels"]),
        model_channels=int(args["model_channels"]),
        channel_mult=tuple(int(m) for m in args["channel_mult"]),
        channel_mult_emb=int(args["channel_mult_emb"]),
        num_blocks=int(args["num_blocks"]),
        attn_resolutions=tuple(int(r) for r in args["attn_resolutions"]),
        dropout=float(args["dropout"]),
        label_dim=int(args["label_dim"]),
        resample_filter=tuple(int(f) for f in args["resample_filter"]),
    )


def load_strict(denoiser: Denoiser, tensors: dict[str, Tensor], source: Path) -> list[str]:
    """Copy ``tensors`` into ``denoiser`` by name; returns the known extras left out, errors on anything else."""
    ours = denoiser.state_dict()
    extras = sorted(name for name in tensors if name not in ours and name in KNOWN_EXTRAS)
    unexpected = sorted(name for name in tensors if name not in ours and name not in KNOWN_EXTRAS)
    missing = sorted(name for name in ours if name not in tensors)
    shapes = [
        f"{n}: {tuple(tensors[n].shape)} vs ours {tuple(ours[n].shape)}"
        for n in ours
        if n in tensors and tensors[n].shape != ours[n].shape
    ]
    if unexpected or missing or shapes:
        raise BadInput(
            f"{source}: weights do not fit the network its constructor arguments describe: "
            f"unexpected {unexpected[:5]}, missing {missing[:5]}, shape mismatches {shapes[:5]}"
        )
    with torch.no_grad():
        for name, value in ours.items():
            value.copy_(tensors[name].to(value.dtype))
    return extras


def convert_edm(pkl: NetworkPickle) -> tuple[Denoiser, dict]:
    """An EDM snapshot's ``ema`` as our denoiser (EDM preconditioning), with the meta that describes it."""
    if pkl.ema.class_name != "EDMPrecond":
        raise BadInput(
            f"{pkl.path}: ema is {pkl.ema.class_name}; only EDMPrecond snapshots (EDM's edm-*.pkl) are converted"
        )
    precond = {**EDM_PRECOND_DEFAULTS, **pkl.ema.init_kwargs}
    sigma_min = float(precond["sigma_min"]) or EDM_SAMPLER_SIGMA_MIN
    denoiser = Denoiser(
        build_network(songunet_config(pkl)), sigma_data=float(precond["sigma_data"]), sigma_min=sigma_min
    )
    extras = load_strict(denoiser, module_tensors(pkl.ema), pkl.path)
    edm = {"precond": pkl.ema.init_kwargs, "network": pkl.network.init_kwargs}
    return denoiser.eval(), {"format": pkl.format, "extras": extras, "edm": edm}


def edm2_config(pkl: NetworkPickle) -> EDM2Config:
    """Our EDM2 config from the recorded constructor arguments of EDM2's Precond and UNet (defaults filled in)."""
    net = pkl.network
    if net.class_name != "UNet":
        raise BadInput(f"{pkl.path}: network class {net.class_name!r}; EDM2 pickles convert from UNet")
    fields = {f.name for f in dataclasses.fields(EDM2Config)}
    ignored = {"use_fp16", "sigma_data"}  # the precision EDM2 ran in; sigma_data goes to our preconditioner
    args = {**pkl.ema.init_kwargs, **net.init_kwargs}
    unknown = sorted(set(args) - fields - ignored)
    if unknown:
        raise BadInput(f"{pkl.path}: EDM2 constructor arguments {unknown} have no counterpart in our EDM2 U-Net")
    return EDM2Config.from_dict({k: v for k, v in args.items() if k in fields})


def convert_edm2(pkl: NetworkPickle) -> tuple[Denoiser, dict]:
    """An EDM2 snapshot's ``ema`` (Precond around UNet) as our denoiser: EDM scalings, weights cast to fp32, the
    uncertainty head kept inside the network (``model.logvar_*``)."""
    if pkl.ema.class_name != "Precond":
        raise BadInput(f"{pkl.path}: ema is {pkl.ema.class_name}; EDM2 snapshots hold a Precond")
    sigma_data = float(pkl.ema.init_kwargs.get("sigma_data", SIGMA_DATA))
    denoiser = Denoiser(build_network(edm2_config(pkl)), sigma_data=sigma_data, sigma_min=EDM_SAMPLER_SIGMA_MIN)
    tensors = {f"model.{name.removeprefix('unet.')}": t for name, t in module_tensors(pkl.ema).items()}
    extras = load_strict(denoiser, tensors, pkl.path)
    edm = {"precond": pkl.ema.init_kwargs, "network": pkl.network.init_kwargs}
    return denoiser.eval(), {"format": pkl.format, "extras": extras, "edm": edm}


def load_any(path: str | Path, url: str | None = None) -> tuple[Denoiser, dict]:
    """Any supported checkpoint as our denoiser; the meta records the source file's format, sha256 and URL."""
    path = Path(path)
    if is_torch_archive(path):  # SiT's released weights (cmt.formats.sit_checkpoint)
        denoiser, info = convert_sit(path)
        return denoiser, {**info, "converted_from": {"format": "sit", "sha256": file_sha256(path), "url": url}}
    if not is_network_pickle(path):
        denoiser, meta = _load_ours(path)
        weights = path / WEIGHTS if path.is_dir() else path
        return denoiser, {**meta, "converted_from": {"format": "cmt", "sha256": file_sha256(weights), "url": url}}
    pkl = read_network_pickle(path)
    denoiser, info = convert_edm2(pkl) if pkl.format == "edm2-pickle" else convert_edm(pkl)
    source = {"format": pkl.format, "sha256": file_sha256(path), "url": url, "file": path.name}
    return denoiser, {**info, "converted_from": source}


def fetch_checkpoint(spec: dict, folder: str | Path, stem: str) -> tuple[Denoiser, dict]:
    """A single-file checkpoint at ``spec['url']`` fetched into ``folder`` (as ``<stem>-<file name>``) if and only if
    its sha256 is ``spec['sha256']``, then read like ``load_any``: ours, an EDM / EDM2 network pickle, or SiT's."""
    name = Path(urlparse(spec["url"]).path).name or "checkpoint"
    path = fetch(spec["url"], spec["sha256"], Path(folder) / f"{stem}-{name}")
    return load_any(path, url=spec["url"])
