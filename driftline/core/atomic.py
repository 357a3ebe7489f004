"""Files replaced whole: a reader sees the old content or the new, never a part.

The data goes to a temporary file in the same directory, is flushed to disk, and is renamed
over the target (``os.replace`` is atomic on POSIX). Used for every small state file Driftline
rewrites: the registry's stages, a retraining job's result, the retrain controller's state.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (the directory must exist)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: Path, value: Any, **dumps: Any) -> None:
    """`value` as JSON (``json.dumps`` options in `dumps`), replaced atomically."""
    atomic_write(path, json.dumps(value, **dumps).encode())
