"""Where relative paths point: the project folder, whether a notebook runs from notebooks/ or a script from anywhere."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the project folder (so ``data`` is ``<repo>/data``)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
