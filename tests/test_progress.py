"""Progress bars: widgets only for a person's front end, and nested text bars that keep to one line."""

from __future__ import annotations

import io
import sys
import types

import IPython
from tqdm import std
from tqdm.notebook import tqdm as widget_bar

from mmt_lib.runtime import progress


class _Kernel:
    """What ``progress`` reads of an ipykernel: the request it is answering."""

    def __init__(self, allow_stdin: bool) -> None:
        self.allow_stdin = allow_stdin

    def get_parent(self) -> dict:
        return {"header": {"msg_type": "execute_request"}, "content": {"allow_stdin": self.allow_stdin}}


def in_kernel(monkeypatch, allow_stdin: bool) -> None:
    shell = types.SimpleNamespace(kernel=_Kernel(allow_stdin))
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def test_text_bars_outside_jupyter():
    assert not progress.interactive_front_end()
    assert progress.bar_class() is std.tqdm


def test_widgets_for_jupyterlab_and_text_for_papermill(monkeypatch):
    in_kernel(monkeypatch, allow_stdin=True)  # JupyterLab, VS Code: the code may ask for input
    assert issubclass(progress.bar_class(), widget_bar)
    in_kernel(monkeypatch, allow_stdin=False)  # nbclient / papermill never allow input
    assert progress.bar_class() is std.tqdm


def test_without_ipywidgets_a_person_gets_text_bars_and_no_warning(monkeypatch):
    in_kernel(monkeypatch, allow_stdin=True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    assert progress.bar_class() is std.tqdm


def test_nested_text_bars_redraw_one_line_where_the_cursor_cannot_move_up():
    out = io.StringIO()  # a notebook's output or a log file: no terminal
    for _ in progress.trange(3, file=out, desc="epochs", mininterval=0):
        for _ in progress.tqdm(range(5), file=out, desc="iterations", leave=False, mininterval=0):
            pass
    text = out.getvalue()
    assert text.count("\n") == 1  # only the outer bar ends its line
    assert "\x1b[A" not in text  # no cursor movement that a notebook would print as garbage
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("epochs: 100%")



def test_a_lone_text_bar_that_would_not_stay_keeps_its_line_instead_of_blanks():
    out = io.StringIO()
    for _ in progress.tqdm(range(3), file=out, desc="evaluate", leave=False, mininterval=0):
        pass
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("evaluate: 100%")


class _Handle:
    """What IPython's ``display(..., display_id=True)`` hands back: a display that can be replaced."""

    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, data: dict, raw: bool = False) -> None:
        assert raw
        self.shown[self.shown.index(self)] = data


def test_a_finished_widget_bar_leaves_its_last_state_as_text_and_a_passing_one_nothing(monkeypatch):
    """A saved notebook then holds text where the bars were: no widget whose model is gone on reopening."""
    from IPython import display as ipython_display

    in_kernel(monkeypatch, allow_stdin=True)
    shown: list = []

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(_Handle(shown))
        return shown[-1]

    monkeypatch.setattr(ipython_display, "display", display)
    for _ in progress.trange(2, desc="epochs"):
        for _ in progress.tqdm(range(3), desc="iterations", leave=False):
            pass
    outer, *inner = shown
    assert outer["text/plain"].startswith("epochs: 100%|") and outer["text/plain"].endswith("]")
    assert [d["text/plain"] for d in inner] == ["", ""]
    bar = progress.tqdm(total=5, desc="stopped")
    bar.update(2)
    bar.close()
    assert shown[-1]["text/plain"].startswith("stopped:  40%|")  # a bar stopped short keeps its state
