"""Reading generator weight files without running arbitrary code: detectron2 / Caffe2 ``.pkl`` through a restricted
unpickler, ``.pth`` through ``torch.load(weights_only=True)`` (shared by the detectron2 adapter and the native
generators)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


class WeightsUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays / dtypes / scalars and ``OrderedDict``; dicts, lists, tuples, numbers and strings
    are pickle primitives. Anything else (``os.system``, ``subprocess.Popen``, ...) is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"Refusing to unpickle {module}.{name}: weights files may only hold arrays.")
        if module.startswith("numpy.core") and not hasattr(np, "core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def read_weights_file(path: str | Path, missing_hint: str) -> Any:
    """The object stored in the weights file ``path``: ``.pkl`` with :class:`WeightsUnpickler` (Python 2 pickles
    decoded as latin-1), anything else with ``torch.load(weights_only=True)``. A missing file raises
    ``FileNotFoundError`` naming it, followed by ``missing_hint`` (where to get it, which argument takes it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. {missing_hint}")
    if path.suffix == ".pkl":
        with path.open("rb") as handle:
            return WeightsUnpickler(io.BufferedReader(handle), encoding="latin1").load()  # type: ignore[arg-type]
    return torch.load(path, map_location="cpu", weights_only=True)
