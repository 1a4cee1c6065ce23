"""JupyterLab in a real browser: the data tour, in the smoke profile, runs every cell without an
error, its progress bars are widgets while they run and text once done, its figures render unshrunk,
a screenshot is saved, and the saved notebook reads the same after its kernel is gone and the page reloads.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and Selenium
(the ``dev`` extra); skipped where any is missing. JupyterLab listens on the loopback only, with a
random token, and keeps its settings, workspaces and runtime files in the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "runs" / "browser"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no Chromium and chromedriver here (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1440,900")
SETTINGS = {  # no network look-ups, and every cell kept in the page so that its outputs can be read
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
FIGURES = 4  # three identity grids (one per domain) and the style row
START_S, READY_S, RUN_S = 90, 90, 240


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab on the loopback serving a copy of 00_data_tour set to the smoke profile."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / "00_data_tour.ipynb")),
                               {"profile": "smoke", "data_root": str(tmp_path / "data"),
                                "out_dir": str(tmp_path / "tour")})
    nbformat.write(nb, folder / "00_data_tour.ipynb")
    settings = tmp_path / "lab-settings"
    for plugin, values in SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "IPYTHONDIR": str(tmp_path / "ipython")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               "--LabApp.expose_app_in_browser=True"]
    if os.getuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for("JupyterLab answering", up, START_S)
        yield f"{url}/lab/tree/00_data_tour.ipynb?token={token}", tmp_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernel it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    # Headless Chromium gives the page no focus, and JupyterLab's current notebook follows focus: without it
    # ``shell.currentWidget`` stays null and the notebook commands act on nothing.
    driver.execute_cdp_cmd("Emulation.setFocusEmulationEnabled", {"enabled": True})
    driver.set_page_load_timeout(READY_S)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


NOTEBOOK_STATE = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext) return null;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
return {
  kernel: kernel ? kernel.status : null,
  counts: cells.map(c => c.model.executionCount),
  running: cells.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
  errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                          .map(o => o.ename + ': ' + o.evalue)),
};
"""

WATCH_WIDGET_BARS = """
window.widgetBarsSeen = false;
new MutationObserver(() => {
  if (document.querySelector('.jp-Notebook .widget-hprogress')) window.widgetBarsSeen = true;
}).observe(document.body, {childList: true, subtree: true});
"""

SAVED = """
const panel = window.jupyterapp.shell.currentWidget;
return !!panel && !!panel.context && !panel.context.model.dirty;
"""

KERNEL_GONE = """
const panel = window.jupyterapp.shell.currentWidget;
return !!panel && !panel.sessionContext.session?.kernel;
"""

CELLS_SHOWN = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.content || !panel.context || !panel.context.isReady) return false;
return panel.content.widgets.length > 0 && document.querySelectorAll('.jp-Notebook .jp-OutputArea-output').length > 0;
"""

IMAGES = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-RenderedImage img')).map(img => ({
  complete: img.complete, natural: img.naturalWidth, shown: img.getBoundingClientRect().width}));
"""


def test_the_data_tour_runs_in_jupyterlab_with_widgets_and_figures(lab, browser):
    url, tmp_path = lab
    browser.get(url)
    wait_for("the notebook open with an idle kernel",
             lambda: (browser.execute_script(NOTEBOOK_STATE) or {}).get("kernel") == "idle", READY_S)
    browser.execute_script(WATCH_WIDGET_BARS)
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    def finished() -> dict | None:
        state = browser.execute_script(NOTEBOOK_STATE)
        if state["errors"]:
            return state
        done = all(c is not None for c in state["counts"]) and not state["running"] and state["kernel"] == "idle"
        return state if done else None

    state = wait_for("every cell run", finished, RUN_S, every=1.0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "00_data_tour_smoke_top.png"))
    assert not state["errors"], state["errors"]

    images = wait_for("the figures decoded", lambda: [i for i in browser.execute_script(IMAGES)
                                                      if i["complete"] and i["natural"] > 0], 30)
    assert len(images) == FIGURES, images
    assert all(i["shown"] >= 0.85 * i["natural"] for i in images), images  # at most slightly shrunk
    first = browser.find_element("css selector", ".jp-Notebook .jp-RenderedImage img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", first)
    browser.save_screenshot(str(SCREENSHOTS / "00_data_tour_smoke_figure.png"))

    text = browser.find_element("css selector", ".jp-Notebook").text
    assert "IProgress not found" not in text and "TqdmWarning" not in text
    assert browser.execute_script("return window.widgetBarsSeen;")  # data generation, as a widget while it ran
    assert not browser.find_elements("css selector", ".jp-Notebook .widget-hprogress")  # text once finished
    assert (tmp_path / "data" / "synth-msmt-tiny-seed0").is_dir()  # the smoke profile's tiny data
    assert json.loads((tmp_path / "tour" / "metrics.json").read_text())["profile"] == "smoke"

    browser.execute_script("window.jupyterapp.commands.execute('docmanager:save');")
    saved = tmp_path / "notebooks" / "00_data_tour.ipynb"
    wait_for("the notebook saved", lambda: browser.execute_script(SAVED), 30)
    outputs = [o for c in nbformat.read(saved, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert any("100%|" in o.get("data", {}).get("text/plain", "") for o in outputs), outputs

    browser.execute_script("window.jupyterapp.shell.currentWidget.sessionContext.shutdown();")
    wait_for("the kernel shut down", lambda: browser.execute_script(KERNEL_GONE), 30)
    browser.refresh()  # as a reader opening the saved notebook later: no kernel holds the bars' widgets
    wait_for("the saved notebook reopened", lambda: browser.execute_script(CELLS_SHOWN), READY_S)
    reloaded = browser.find_element("css selector", ".jp-Notebook").text
    browser.save_screenshot(str(SCREENSHOTS / "00_data_tour_smoke_reloaded.png"))
    assert "Error displaying widget" not in reloaded and "model not found" not in reloaded
    assert "100%|" in reloaded  # the finished bar, as the line of text it left
