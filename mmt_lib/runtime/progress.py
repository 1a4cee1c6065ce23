"""Progress bars that suit where the code runs: a widget for a person in Jupyter, text everywhere else.

``tqdm.auto`` draws widgets in any Jupyter kernel, papermill's too, and a notebook that papermill
saves then holds one frozen "0%" widget per bar. The choice here is made per bar, from the request
the kernel is answering: an interactive front end (JupyterLab, VS Code) lets the code ask for input
(``allow_stdin``), a batch executor (papermill, nbclient) does not. The batch run gets text bars,
which its saved notebook keeps as plain text.

Where the output cannot move the cursor up (a notebook's output, a log file), a text bar that asks
not to stay (``leave=False``) redraws the line of the bar it is nested in: tqdm's one-line-per-bar
layout would print a new line on every update there. Such a bar with no bar around it stays, as
the one line that records its step (clearing it would leave a line of blanks). In a terminal tqdm
keeps its usual layout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import std


def interactive_front_end() -> bool:
    """True inside a Jupyter kernel whose current request comes from a front end a person uses."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or not hasattr(kernel, "get_parent"):
        return False
    return bool(kernel.get_parent().get("content", {}).get("allow_stdin", False))


def bar_class() -> type[std.tqdm]:
    """``tqdm.notebook.tqdm`` for an interactive front end with ipywidgets installed, else ``tqdm.std.tqdm``."""
    if interactive_front_end():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook degrades to text with a warning without it)
            from tqdm.notebook import tqdm as widget_bar
        except ImportError:
            return std.tqdm
        return widget_bar
    return std.tqdm


def tqdm(iterable: Iterable | None = None, **kwargs: Any) -> std.tqdm:
    """A progress bar (same arguments as ``tqdm.tqdm``) of the kind ``bar_class`` picks."""
    cls = bar_class()
    if cls is std.tqdm and not kwargs.get("leave", True) and not _is_terminal(kwargs.get("file")):
        if std.tqdm._instances:  # the bars open now, tqdm's own register
            kwargs.setdefault("position", 0)
        else:
            kwargs["leave"] = True
    return cls(iterable, **kwargs)


def trange(*args: int, **kwargs: Any) -> std.tqdm:
    """``tqdm(range(*args), **kwargs)``."""
    return tqdm(range(*args), **kwargs)


def _is_terminal(file: Any) -> bool:
    stream = file if file is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
