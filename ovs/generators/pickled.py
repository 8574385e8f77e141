"""Reading detectron2 / Caffe2 ``.pkl`` weight files without running arbitrary code (shared by the detectron2 adapter
and the native generators)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


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


def load_pickled_weights(path: Path) -> Any:
    """The object stored in the ``.pkl`` weights file ``path`` (Python 2 pickles decoded as latin-1)."""
    with path.open("rb") as handle:
        return WeightsUnpickler(io.BufferedReader(handle), encoding="latin1").load()  # type: ignore[arg-type]
