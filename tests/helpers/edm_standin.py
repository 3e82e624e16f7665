"""A stand-in for EDM's persistence reducer, written from the format description (method.md 12.3, 12.5), not
from EDM's code: it pickles our networks with the globals and record layout of EDM's snapshots.

Each module becomes a call to ``torch_utils.persistence._reconstruct_persistent_obj`` with the record
``{type: 'class', version: 6, module_src, class_name, state}``, ``state`` holding ``_parameters``,
``_buffers``, ``_modules`` and the constructor arguments actually passed (``_init_args``,
``_init_kwargs``); ``enc`` / ``dec`` stay real ``torch.nn.ModuleDict`` objects; tensors pickle as torch
pickles them.  The modules EDM's pickles name (``torch_utils.persistence``, ``dnnlib.util``) exist only
while a file is being written, so the reader under test never finds them.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from cmt.nets import edm2
from cmt.nets.unet import Conv2d, GroupNorm, Linear, PositionalEmbedding, SongUNet, UNetBlock
from cmt.numerics.precond import Denoiser

EDM_CLASS = {
    Denoiser: "EDMPrecond",
    SongUNet: "SongUNet",
    UNetBlock: "UNetBlock",
    Conv2d: "Conv2d",
    Linear: "Linear",
    GroupNorm: "GroupNorm",
    PositionalEmbedding: "PositionalEmbedding",
    edm2.EDM2UNet: "UNet",
    edm2.Block: "Block",
    edm2.MPConv: "MPConv",
    edm2.MPFourier: "MPFourier",
}
BENIGN_SOURCE = "# networks.py of the training run (never executed by the reader)\n"


@contextlib.contextmanager
def edm_modules() -> Iterator[types.ModuleType]:
    """``torch_utils.persistence`` and ``dnnlib.util`` as pickle must find them while writing; removed after."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # the writer only needs its name; reading never calls it
        raise AssertionError("the stand-in reconstructor ran: a reader executed the pickle")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    names = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence}
    names |= {"dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(names)
    try:
        yield persistence
    finally:
        for name in names:
            sys.modules.pop(name, None)


class Persistent:
    """One persistent object as EDM pickles it."""

    def __init__(self, class_name: str, state: dict, module_src: str = BENIGN_SOURCE):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


def module_state(module: nn.Module, init_kwargs: dict, children: dict) -> dict:
    """An nn.Module's ``__dict__`` as pickled: parameters, buffers, children, recorded constructor arguments."""
    params = module._parameters.items()
    return {
        "training": False,
        "_parameters": OrderedDict((k, None if v is None else nn.Parameter(v.detach().clone())) for k, v in params),
        "_buffers": OrderedDict((k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict(children),
        "_init_args": (),
        "_init_kwargs": init_kwargs,
    }


def persistent(module: nn.Module, init_kwargs: dict | None = None, module_src: str = BENIGN_SOURCE) -> Any:
    """Our module tree as EDM's records (ModuleDicts as real ModuleDicts holding records)."""
    children = {name: persistent(child, module_src=module_src) for name, child in module._modules.items()}
    if isinstance(module, nn.ModuleDict):
        twin = nn.ModuleDict()
        twin._modules = OrderedDict(children)  # a real ModuleDict whose children are the records
        return twin
    return Persistent(EDM_CLASS[type(module)], module_state(module, init_kwargs or {}, children), module_src)


def songunet_kwargs(net: SongUNet, augment_dim: int = 0) -> dict:
    """The arguments EDM's training script passes for DDPM++ (the rest take SongUNet's defaults)."""
    cfg = net.cfg
    return {
        "img_resolution": cfg.img_resolution,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "label_dim": cfg.label_dim,
        "augment_dim": augment_dim,
        "model_channels": cfg.model_channels,
        "channel_mult": list(cfg.channel_mult),
        "channel_mult_emb": cfg.channel_mult_emb,
        "num_blocks": cfg.num_blocks,
        "attn_resolutions": list(cfg.attn_resolutions),
        "dropout": cfg.dropout,
        "embedding_type": "positional",
        "encoder_type": "standard",
        "decoder_type": "standard",
        "channel_mult_noise": 1,
        "resample_filter": list(cfg.resample_filter),
    }


def edm_snapshot(
    denoiser: Denoiser, *, augment_dim: int = 0, module_src: str = BENIGN_SOURCE, extra: dict | None = None
) -> dict:
    """The dict EDM's training loop pickles (``ema``, ``loss_fn``, ``augment_pipe``, ``dataset_kwargs``)."""
    net = denoiser.model
    unet = persistent(net, songunet_kwargs(net, augment_dim), module_src)
    if augment_dim:
        noise_channels = net.cfg.model_channels
        augment = nn.Linear(augment_dim, noise_channels, bias=False)
        kwargs = {"in_features": augment_dim, "out_features": noise_channels, "bias": False}
        unet.state["_modules"]["map_augment"] = Persistent("Linear", module_state(augment, kwargs, {}), module_src)
    precond_kwargs = {
        "img_resolution": net.cfg.img_resolution,
        "img_channels": net.cfg.in_channels,
        "label_dim": net.cfg.label_dim,
        "use_fp16": False,
        "sigma_data": denoiser.sigma_data,
        "model_type": "SongUNet",
    }
    ema = Persistent("EDMPrecond", module_state(denoiser, precond_kwargs, {"model": unet}), module_src)
    loss_fn = Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}, module_src)
    snapshot = {"ema": ema, "loss_fn": loss_fn, "augment_pipe": None, "dataset_kwargs": {"path": "cifar10-32x32.zip"}}
    return snapshot | (extra or {})


def half_precision(record: Any) -> None:
    """Cast every floating tensor of a record tree to float16, as EDM2 saves its snapshots."""
    for kind in ("_parameters", "_buffers"):
        for name, value in record.state[kind].items():
            if value is not None and value.is_floating_point():
                record.state[kind][name] = (
                    type(value)(value.detach().half()) if isinstance(value, nn.Parameter) else value.half()
                )
    for child in record.state["_modules"].values():
        for grandchild in child._modules.values() if isinstance(child, nn.ModuleDict) else [child]:
            half_precision(grandchild)


def edm2_snapshot(denoiser: Denoiser, module_src: str = BENIGN_SOURCE) -> dict:
    """EDM2's snapshot (an EasyDict: encoder, dataset_kwargs, loss_fn, ema); call it inside ``edm_modules``."""
    net, cfg = denoiser.model, denoiser.model.cfg
    passed = {"img_resolution": cfg.img_resolution, "img_channels": cfg.img_channels, "label_dim": cfg.label_dim}
    passed |= {"model_channels": cfg.model_channels, "dropout": cfg.dropout, "channel_mult": list(cfg.channel_mult)}
    passed |= {"num_blocks": cfg.num_blocks, "attn_resolutions": list(cfg.attn_resolutions)}
    passed |= {"channels_per_head": cfg.channels_per_head}
    unet = persistent(net, passed, module_src)
    heads = {name: unet.state["_modules"].pop(name) for name in ("logvar_fourier", "logvar_linear")}
    precond_kwargs = {
        **passed,
        "use_fp16": True,
        "sigma_data": denoiser.sigma_data,
        "logvar_channels": cfg.logvar_channels,
    }
    ema = Persistent("Precond", module_state(denoiser, precond_kwargs, {"unet": unet, **heads}), module_src)
    half_precision(ema)
    easy = sys.modules["dnnlib.util"].EasyDict
    encoder = Persistent("StandardRGBEncoder", {"init_kwargs": {}}, module_src)
    dataset = easy(class_name="training.dataset.ImageFolderDataset", path="img64.zip", use_labels=True)
    return easy(encoder=encoder, dataset_kwargs=dataset, loss_fn=Persistent("EDM2Loss", {}, module_src), ema=ema)


def write_pickle(obj: Any, path: Path) -> Path:
    """Pickle ``obj`` (or what ``obj()`` builds, for objects that need EDM's modules) as EDM's code would."""
    with edm_modules():
        path.write_bytes(pickle.dumps(obj() if callable(obj) else obj, protocol=pickle.HIGHEST_PROTOCOL))
    return path
