"""A restricted unpickler: annotation pickles are data, never code.

The released DeepLesion annotation pickles refer only to numpy scalar and dtype
reconstruction and ``_codecs.encode``; detection pickles may also hold numpy arrays. Any other
global (``os.system``, ``builtins.eval``, a class of some package...) is refused before it is
looked up, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

from lesion_harvester.errors import DataError, UnsafePickleError

# (module, name) pairs a data pickle may use. numpy 2 renamed numpy.core to numpy._core.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and refuses persistent ids."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                self.source,
                f"refused to load: the pickle asks for the global '{module}.{name}', which could run code",
                "only numpy scalars, dtypes and arrays are allowed in annotation pickles",
            )
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self.source, "refused to load: the pickle uses persistent ids")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a data pickle through :class:`RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes()
    if not data:
        raise DataError(path, "empty file; expected a pickle")
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # any decoding failure of untrusted bytes is a data problem
        raise DataError(path, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
