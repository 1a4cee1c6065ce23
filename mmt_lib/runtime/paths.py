"""Where relative paths point.

Library functions, notebooks and the batch driver resolve a relative path against the *project
folder* (``data`` is ``<project>/data`` whether a notebook runs from ``notebooks/`` or a script from
anywhere). Command-line arguments are different: a relative ``--out`` means relative to the current
directory, as with every command-line tool, so the command lines turn them absolute first
(``from_command_line``).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent

PROJECT_ROOT = _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").is_file() else Path.cwd()
"""The source checkout that holds ``mmt_lib``; for an installed (non-editable) package, which lives in
site-packages, the directory the process started in instead, so that nothing is written into site-packages."""


def project_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the project folder (so ``data`` is ``<repo>/data``)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def from_command_line(path: str | None) -> str | None:
    """A path typed on a command line, made absolute against the current directory (``None`` stays ``None``)."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))
