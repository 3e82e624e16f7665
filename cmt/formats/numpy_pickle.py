"""A pickle of plain data read without running any of its code: dicts, lists, numbers, strings and numpy arrays
only (EDM2's published reference statistics, ``dataset-refs/img512.pkl``: docs/latent.md 8.6).

Python's unpickler calls whatever callable a pickle names. This one resolves only the names numpy's own array
pickling uses (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar`` and ``_codecs.encode`` for the raw bytes) and
refuses every other, naming the file and what it asked for; nothing it names is imported or called.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cmt.errors import BadInput

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's multiarray._reconstruct (rebuilds an array)
_SCALAR = np.float64(0.0).__reduce__()[0]  # numpy's multiarray.scalar (rebuilds a numpy scalar)
MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # where numpy 1 and numpy 2 pickles name them
ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
    **{(module, "_reconstruct"): _RECONSTRUCT for module in MULTIARRAY},
    **{(module, "scalar"): _SCALAR for module in MULTIARRAY},
}


class _PlainData(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise BadInput(
                f"{self.path}: the pickle asks for {module}.{name}; only numpy arrays and plain data are read"
            )
        return ALLOWED[(module, name)]


def load_plain_pickle(path: str | Path) -> Any:
    """The data in the pickle at ``path`` (dicts, lists, numbers, strings, numpy arrays); anything else is refused
    before it runs."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _PlainData(file, path).load()
    except BadInput:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise BadInput(f"{path}: not a readable pickle of plain data ({err})") from err
