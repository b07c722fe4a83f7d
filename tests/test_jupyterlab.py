"""A real JupyterLab session: start `jupyter lab` headless on a free local port, drive it in the
distribution's Chromium through Playwright, run notebook 04, move one of its sliders and check that the
figure changed. Skips, saying why, only where no browser or no Playwright can be had (never downloads one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tas_lite import config

NOTEBOOK = "04_losses.ipynb"
BROWSERS = ("chromium", "chromium-browser")
# Fresh settings: cells stay in the page (no windowing), no news or update checks (no network).
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}


PROMPTS = "const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());"
LAST_FIGURE = ("const w = [...document.querySelectorAll('.widget-interact')].pop();"
               "const img = w ? [...w.querySelectorAll('.jp-OutputArea-output img')].pop() : null;"
               "const src = img ? img.getAttribute('src') : null;")


def _browser() -> str:
    path = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if path is None:
        pytest.skip("no Chromium on this machine (the distribution's `chromium` package; .ci/run installs it)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(root: Path, port: int) -> subprocess.Popen:
    for name, values in SETTINGS.items():
        path = root / ".lab" / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel draws inline figures, as in a learner's session
    env.update(JUPYTERLAB_SETTINGS_DIR=str(root / ".lab" / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".lab" / "workspaces"),
               JUPYTER_CONFIG_DIR=str(root / ".lab" / "config"), JUPYTER_RUNTIME_DIR=str(root / ".lab" / "runtime"))
    log = (root / "lab.log").open("w")
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--IdentityProvider.token=", f"--port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
               "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_server(url: str, server: subprocess.Popen, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited with {server.returncode}:\n{(root / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{(root / 'lab.log').read_text()[-2000:]}")


def _stop_lab(url: str, server: subprocess.Popen) -> None:
    """Shut the server down (its kernels with it); kill the process group we started if it lingers."""
    if server.poll() is None:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/shutdown", method="POST"), timeout=5)
            server.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(menu)}$")).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).first.click()


def _wait_idle(page, timeout_ms: int = 60_000) -> None:
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=timeout_ms)


def _run_all_and_wait(page, timeout_ms: int) -> None:
    """Run every cell from the menu; wait until every code cell has an execution count and none is running."""
    _menu(page, "Run", "Run All Cells")
    try:
        page.wait_for_function(f"() => {{ {PROMPTS} return prompts.length > 0 && "
                               "prompts.every(t => /^\\[\\d+\\]:$/.test(t)); }", timeout=timeout_ms)
    except Exception as err:
        prompts = page.evaluate(f"() => {{ {PROMPTS} return prompts; }}")
        raise AssertionError(f"cells did not all finish within {timeout_ms / 1000:.0f} s; prompts: {prompts}") from err
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error")
    assert errors.count() == 0, errors.first.inner_text()[-2000:]


@pytest.mark.slow
def test_notebook_04_sliders_redraw_in_a_live_jupyterlab(tmp_path):
    executable = _browser()
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright; "
                                   "no browser download: the test drives the distribution's Chromium)")
    started, phases = time.perf_counter(), {}
    shutil.copy(config.notebooks_dir() / NOTEBOOK, tmp_path / NOTEBOOK)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_lab(tmp_path, port)
    screenshot = config.outputs_dir() / "jupyterlab" / "04_losses_slider.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    try:
        _wait_for_server(url, server, tmp_path)
        phases["server up"] = time.perf_counter() - started
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            try:
                page.goto(f"{url}/lab/tree/{NOTEBOOK}")
                page.locator(".jp-Notebook .jp-Cell").first.wait_for()
                _wait_idle(page)
                phases["kernel ready"] = time.perf_counter() - started
                _run_all_and_wait(page, timeout_ms=120_000)
                phases["all cells run"] = time.perf_counter() - started
                widget = page.locator(".widget-interact").last
                widget.scroll_into_view_if_needed()
                figure = widget.locator(".jp-OutputArea-output img").last
                figure.wait_for()
                before = page.evaluate(f"() => {{ {LAST_FIGURE} return src; }}")
                readout = widget.locator(".widget-readout").first
                value_before = readout.inner_text()
                handle = widget.locator(".noUi-handle").first
                box = handle.bounding_box()
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2, steps=8)
                page.mouse.up()
                page.wait_for_function(f"old => {{ {LAST_FIGURE} return src !== null && src !== old; }}",
                                       arg=before, timeout=30_000)
                _wait_idle(page)  # the last redraw (the slider's final value) has landed
                value_after = readout.inner_text()
                after = page.evaluate(f"() => {{ {LAST_FIGURE} return src; }}")
                phases["slider"] = time.perf_counter() - started
                page.screenshot(path=str(screenshot), full_page=False)
            except BaseException:
                page.screenshot(path=str(screenshot.with_name("04_losses_failure.png")), full_page=False)
                raise
            finally:
                browser.close()
    finally:
        _stop_lab(url, server)
    assert value_after != value_before, f"the slider did not move ({value_before})"
    assert before and after and after != before and screenshot.is_file(), "the figure did not change"
    timeline = ", ".join(f"{name} {t:.1f} s" for name, t in phases.items())
    print(f"JupyterLab test: slider {value_before} -> {value_after}, figure redrawn; {timeline}; "
          f"total {time.perf_counter() - started:.1f} s; screenshot {screenshot}")
