"""Progress bars that suit where the code runs: a widget for a person in Jupyter, text everywhere else.

``tqdm.auto`` draws widgets in any Jupyter kernel, papermill's too, and a notebook that papermill
saves then holds one frozen "0%" widget per bar. The choice here is made per bar, from the request
the kernel is answering: an interactive front end (JupyterLab, VS Code) lets the code ask for input
(``allow_stdin``), a batch executor (papermill, nbclient) does not. The batch run gets text bars,
which its saved notebook keeps as plain text.

A widget lives only as long as its kernel: a saved notebook reopened later would show "Error
displaying widget: model not found" where each bar was. So a widget bar, once closed, puts a line of
text in its own place (``WidgetThenTextBar``): its last state if it stays, nothing if it does not.

Where the output cannot move the cursor up (a notebook's output, a log file), a text bar that asks
not to stay (``leave=False``) redraws the line of the bar it is nested in: tqdm's one-line-per-bar
layout would print a new line on every update there. Such a bar with no bar around it stays, as
the one line that records its step (clearing it would leave a line of blanks). In a terminal tqdm
keeps its usual layout.
"""

from __future__ import annotations

import sys
import functools
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


@functools.cache
def widget_then_text_bar() -> type[std.tqdm]:
    """``WidgetThenTextBar``: ``tqdm.notebook.tqdm`` that leaves text, not a widget, in the saved notebook."""
    from IPython import display as ipython_display
    from tqdm.notebook import tqdm as widget_bar

    class WidgetThenTextBar(widget_bar):
        """A widget while it runs; once closed, its last state as a line of text in the same output."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            now = kwargs.get("delay", 0) <= 0
            if now:
                kwargs["display"] = False  # shown below, through a handle that can replace it
            super().__init__(*args, **kwargs)
            self._handle = None
            if now and not self.disable:
                self._handle = ipython_display.display(self.container, display_id=True)
                self.displayed = True

        def close(self) -> None:
            if self.disable:
                return
            failed = bool(self.total and self.n < self.total)
            super().close()
            if self._handle is not None:
                self._handle.update({"text/plain": str(self) if self.leave or failed else ""}, raw=True)
                self._handle = None

    return WidgetThenTextBar


def bar_class() -> type[std.tqdm]:
    """A widget bar (``widget_then_text_bar``) for an interactive front end with ipywidgets installed, else
    ``tqdm.std.tqdm``."""
    if interactive_front_end():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook degrades to text with a warning without it)
            return widget_then_text_bar()
        except ImportError:
            return std.tqdm
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
