"""Atomic files: a run killed at any moment leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmt_lib.runtime.paths import project_path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
"""What ``open`` would give a new file; mkstemp's 0600 would otherwise survive the rename."""


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write: renamed onto ``path`` if the block ends without an
    error, deleted otherwise. Missing parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")


def temp_token() -> str:
    """``<pid>-<random>``: names a temp folder so that ``remove_dead_temps`` can tell whose it is."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_dead_temps(root: Path, folder_name: str) -> None:
    """Delete ``.<folder_name>.<kind>-<temp_token>`` folders left by killed processes (their pid is gone)."""
    for path in Path(root).glob(f".{folder_name}.*-*-*"):
        try:
            os.kill(int(path.name.split("-")[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OverflowError, PermissionError):
            continue


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save tensors and plain Python values only, so that ``load_checkpoint`` never needs pickle."""
    import torch  # here, not at the top: the batch driver reads metrics without paying for torch

    with replacing(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: a file holding arbitrary pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot load checkpoint {path} with weights_only=True (only tensors and plain Python values "
            f"are accepted): {err}"
        ) from err


METRICS_FILE = "metrics.json"


def save_metrics(out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """The last act of a run: the batch driver trusts a run only once this file exists."""
    return write_json_atomic(project_path(out_dir) / METRICS_FILE, metrics)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json``; a file that is not a JSON object (truncated, hand-edited) is refused by name."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): delete it and rerun its notebook") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} holds a JSON {type(metrics).__name__}, not an object of metrics")
    return metrics


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and write a file there: an output folder that cannot be written is refused
    before any data loads, not at the first checkpoint after an epoch of training."""
    folder = project_path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        raise ValueError(f"output folder {folder} cannot be written: {err.strerror or err}") from None
    return folder


def save_arrays_atomic(path: str | Path, **arrays: Any) -> Path:
    """A compressed ``.npz`` of plain arrays (no pickled objects), written atomically."""
    import numpy as np

    with replacing(path) as tmp, open(tmp, "wb") as fh:  # a file object: a path would gain ".npz"
        np.savez_compressed(fh, **arrays)
    return Path(path)
