"""JupyterLab in a real browser, as a user meets it: Lab serves a copy of the project on 127.0.0.1 (the settings of
``make lab`` and the server config ``make setup`` installs), headless Chromium (Debian's package, driven by
Playwright) opens the ><former report notebook, runs every cell on the project kernel and saves it. Asserts: no
error output, every figure rendered, the record of the run unchanged (``git status`` clean), and results/ read-only
for the server. Skipped with the reason where no Chromium or Playwright is installed (``.ci/run`` installs both).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from lmrepro import notebooks

from conftest import PIPELINE_FILES, pipeline_copy, tool_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/xformer/04_report.ipynb"
RECORD = "results/xformer/notebooks/04_report.ipynb"
CHROMIUM = os.environ.get("LMREPRO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "lmrepro-browser-test"
LAB_AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []  # CI and containers run as root (as `make lab` allows)


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "no Chromium: `apt-get install chromium` (Debian) or set LMREPRO_CHROMIUM to a Chromium binary"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the dev extra: make setup)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base}/api/contents/{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _git_status(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, project copy): ``jupyter lab`` as ``make lab`` starts it, on a committed copy of the project
    with its results, the git filter installed as ``make setup`` does."""
    if reason := _skip_reason():
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("lab")
    repo = pipeline_copy(tmp / "project", names=PIPELINE_FILES + ("results", ".gitattributes", ".gitignore"))
    notebooks.install_filter(repo)
    # Lab's own state (workspaces, user settings) outside the project; cells rendered eagerly so every output is in
    # the page (Lab virtualizes long notebooks by default).
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = _free_port()
    env = tool_env(JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "ws"))
    log = open(tmp / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.root_dir={repo}",
         "--LabApp.default_url=/lab/tree/notebooks", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", *LAB_AS_ROOT],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not (_port_open(port) and _api(base, "")[0] == 200):
            assert server.poll() is None, (tmp / "lab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not answer in 90 s:\n" + (tmp / "lab.log").read_text()
            time.sleep(0.5)
        yield base, repo
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_results_are_read_only_and_sources_are_saved_clean(lab):
    base, repo = lab
    status, model = _api(base, RECORD)
    assert status == 200 and model["writable"] is False
    status, _ = _api(base, RECORD, "PUT", {"type": "notebook", "format": "json", "content": model["content"]})
    assert status == 403
    status, model = _api(base, NOTEBOOK)
    assert status == 200 and model["writable"] is True
    executed = json.loads((repo / RECORD).read_text())  # a notebook full of outputs, saved as the source
    status, _ = _api(base, NOTEBOOK, "PUT", {"type": "notebook", "format": "json", "content": executed})
    assert status == 200
    assert (repo / NOTEBOOK).read_text() == notebooks.cleaned((repo / RECORD).read_text())
    subprocess.run(["git", "checkout", "--", NOTEBOOK], cwd=repo, check=True)


def test_report_runs_in_lab_with_figures_and_leaves_git_clean(lab):
    from playwright.sync_api import sync_playwright

    base, repo = lab
    before = _git_status(repo)
    record = nbformat.read(str(repo / RECORD), as_version=4)
    figures = sum("image/png" in o.get("data", {}) for c in record.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 5
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # the kernel the notebook names, started from its metadata
            page.wait_for_selector(".jp-Toolbar-kernelName:has-text('Python (lmrepro)')", timeout=90_000)
            page.wait_for_function("document.querySelector('.jp-Notebook-ExecutionIndicator')"
                                   "?.getAttribute('data-status') === 'idle'", timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # done when every code cell has an execution number (none waiting "[ ]" or running "[*]")
            page.wait_for_function(
                """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                           return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
                timeout=240_000)
            errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            images = page.locator(".jp-OutputArea-output img")
            assert images.count() == figures
            widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert min(widths) > 100, widths
            page.keyboard.press("Control+s")  # a user's save: stored in its clean form (lmrepro.jupyter)
            page.wait_for_function("!document.querySelector('.jp-mod-dirty')", timeout=30_000)
            page.screenshot(path=str(repo.parent / "report.png"))
        finally:
            browser.close()
    assert _git_status(repo) == before == ""
