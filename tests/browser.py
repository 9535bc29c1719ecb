"""Drive JupyterLab in a real Chromium with Playwright: tests/test_browser.py and the README screenshot.

    with JupyterLab(root_dir) as lab:                    # test_browser.py takes ``page`` from pytest-playwright
        run_all(page, lab, "notebook.ipynb")            # open it, Run > Run All Cells
        img = wait_for_widget_image(page)                # the first ipywidgets Image on the page

    .venv/bin/python tests/browser.py screenshot --runs runs/default --out figures/attention_explorer.png

Nothing is downloaded: the browser is Debian's ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's
own browsers are never installed), started with the background-networking features off; JupyterLab runs on
127.0.0.1 with a random token, with the news feed URL, update checks and the PyPI extension manager off, and with
its own temporary config, data, runtime and settings folders (a first visit), and with the project's
``jupyter_server_config.py`` (what ``make lab`` uses; it turns the "get notified about official Jupyter news?"
prompt off, which the browser test checks). Its ``python3`` kernel is the Python that runs this module
(a kernelspec installed with ``ipykernel install --prefix`` into a temporary folder put first on JUPYTER_PATH).
Every wait has a timeout; the server's whole process group (server and kernels) is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("VFU_NB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--disable-default-apps", "--disable-extensions", "--no-default-browser-check"]
REPO = Path(__file__).resolve().parents[1]
LAB_CONFIG = REPO / "jupyter_server_config.py"
WIDGET_IMAGE = "img.widget-image"


def chromium_path() -> str | None:
    """The Chromium executable, or None where it is not installed."""
    return CHROMIUM if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK) else None


def playwright_missing() -> str | None:
    """Why Playwright cannot be used here (None when it can be imported)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}); pip install playwright (never `playwright install`)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path, cells: list[str]) -> Path:
    """A notebook of code cells with the ``python3`` kernelspec (so JupyterLab asks no kernel question)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = Path(path)
    nbformat.write(nb, path)
    return path


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 (free port, random token) serving ``root_dir``; a context manager."""

    def __init__(self, root_dir, python: str = sys.executable, startup_timeout: float = 120.0, config=LAB_CONFIG):
        self.root_dir, self.python, self.startup_timeout = Path(root_dir).resolve(), python, startup_timeout
        self.config = config
        self.port = self.token = self.proc = None
        self.home = None
        self.log_path = None

    # ----- lifecycle --------------------------------------------------------------------------
    def start(self) -> "JupyterLab":
        self.home = Path(tempfile.mkdtemp(prefix="vfu_nb_lab_"))
        self.log_path = self.home / "jupyterlab.log"
        prefix = self.home / "kernel_prefix"
        subprocess.run([self.python, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3",
                        "--display-name", "Python 3 (ipykernel)"], check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # a fresh user's settings (a first visit: the news prompt is left to the server config)
        settings = self.home / "settings"
        tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True)
        tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))   # no "Select Kernel" dialog
        env = dict(os.environ)
        env.update({
            "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(self.home / "config"),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "IPYTHONDIR": str(self.home / "ipython"),
            "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("MPLBACKEND", None)        # the kernel's inline backend, as for a user
        env.pop("JUPYTER_CONFIG_PATH", None)   # only `config` (which sets it again) brings the project's settings
        self.port, self.token = free_port(), secrets.token_hex(16)
        cmd = [self.python, "-m", "jupyterlab", "--no-browser", *([f"--config={self.config}"] if self.config else []),
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
               "--ServerApp.terminals_enabled=False",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly",
               f"--LabApp.workspaces_dir={self.home / 'workspaces'}", f"--LabApp.user_settings_dir={settings}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")      # CI containers run as root
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self._wait_until_up()
        return self

    def _wait_until_up(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=3) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self):
        """Stop the server and its kernels (its process group), then remove the temporary folders."""
        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(pgid, signal.SIGKILL)      # kernels left behind, or a server that did not stop
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # ----- helpers ----------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return "(no log)"


@contextmanager
def chromium_page(width: int = 1400, height: int = 1200, timeout_s: float = 60.0):
    """A headless Debian Chromium page (Playwright); the browser and driver are closed on exit."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            yield page
        finally:
            browser.close()


def run_all(page, lab: JupyterLab, notebook: str, timeout_s: float = 120.0):
    """Open ``notebook`` (relative to the server root) in JupyterLab and choose Run > Run All Cells."""
    page.goto(lab.url(f"lab/tree/{notebook}"), wait_until="domcontentloaded", timeout=timeout_s * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_s * 1000)
    # the kernel must be connected: the toolbar names it (not "No Kernel") and its status is idle
    page.wait_for_function(
        """() => { const p = document.querySelector('.jp-NotebookPanel');
                   const s = p && p.querySelector('.jp-Notebook-ExecutionIndicator');
                   const k = p && p.querySelector('.jp-Toolbar-kernelName');
                   return s && k && s.getAttribute('data-status') === 'idle' && !/no kernel/i.test(k.innerText); }""",
        timeout=timeout_s * 1000)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _attempt in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        _accept_kernel_dialog(page)
        try:   # running (or ran): some prompt is no longer empty
            page.wait_for_function(
                """() => Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-InputArea-prompt'))
                          .some(e => /\\[(\\*|\\d+)\\]/.test(e.innerText))""", timeout=20_000)
            return
        except PlaywrightTimeout:   # Run All was swallowed (kernel still settling): try again
            continue
    raise TimeoutError("Run All Cells did not start the notebook (3 tries)")


def _accept_kernel_dialog(page):
    """Should JupyterLab still ask for a kernel, take its preferred one (the notebook's python3)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(state="visible", timeout=2000)
    except PlaywrightTimeout:      # no dialog: the usual case
        return
    if "kernel" in dialog.inner_text().lower():
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()


NEWS_PROMPT = "Would you like to get notified about official Jupyter news?"


def news_prompt_shown(page, wait_s: float = 8.0) -> bool:
    """Whether JupyterLab's news prompt (a toast) appears within ``wait_s`` seconds of now."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(NEWS_PROMPT).first.wait_for(state="visible", timeout=wait_s * 1000)
    except PlaywrightTimeout:
        return False
    return True


def notebook_errors(page) -> list[str]:
    """Texts of the tracebacks shown in the notebook's outputs."""
    texts = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    return [t for t in texts if "Traceback" in t]


def wait_for_widget_image(page, timeout_s: float = 240.0, index: int = 0):
    """The ``index``-th ipywidgets Image once it shows a decoded picture; fails early on a notebook traceback."""
    deadline = time.monotonic() + timeout_s
    images = page.locator(WIDGET_IMAGE)
    while time.monotonic() < deadline:
        if images.count() > index and images.nth(index).evaluate("img => img.complete && img.naturalWidth > 0"):
            return images.nth(index)
        errors = notebook_errors(page)
        if errors:
            raise RuntimeError("the notebook failed:\n" + errors[0][-3000:])
        page.wait_for_timeout(500)
    raise TimeoutError(f"no widget image within {timeout_s:.0f} s; notebook errors: {notebook_errors(page)}")


def image_digest(img) -> str:
    """SHA-256 of the bytes an <img> shows (ipywidgets 8 serves them from a blob: URL)."""
    return img.evaluate("""async img => {
        const buf = await (await fetch(img.src)).arrayBuffer();
        const hash = await crypto.subtle.digest('SHA-256', buf);
        return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
    }""")


def wait_for_new_image(img, old_digest: str, timeout_s: float = 60.0) -> str:
    """Poll until the image's bytes differ from ``old_digest``; the new digest."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if img.evaluate("img => img.complete && img.naturalWidth > 0"):
            digest = image_digest(img)
            if digest != old_digest:
                return digest
        img.page.wait_for_timeout(250)
    raise TimeoutError(f"the widget image did not change within {timeout_s:.0f} s")


def widget_output(img):
    """The output area element that holds a widget image (for an element screenshot)."""
    return img.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")


def screenshot_widget(cells: list[str], out, timeout: float = 300.0, keep_dir=None, width: int = 1400,
                      height: int = 1600) -> dict:
    """Run ``cells`` in JupyterLab + Chromium and save a screenshot of the first widget's output area to ``out``."""
    start = time.monotonic()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="vfu_nb_shot_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        write_notebook(root / "screenshot.ipynb", cells)
        with JupyterLab(root) as lab, chromium_page(width, height) as page:
            run_all(page, lab, "screenshot.ipynb")
            img = wait_for_widget_image(page, timeout)
            page.wait_for_timeout(500)              # let the controls' layout settle
            area = widget_output(img)
            area.scroll_into_view_if_needed()
            area.screenshot(path=str(out))
            box = area.bounding_box() or {"width": 0, "height": 0}
    finally:
        if not keep_dir:
            shutil.rmtree(root, ignore_errors=True)
    return {"out": str(out), "width": round(box["width"]), "height": round(box["height"]),
            "seconds": time.monotonic() - start}


def screenshot(out, runs=None, data_root=None, split="test", index=0, untrained=False, image_size=128,
               width=0.25, timeout: float = 300.0, keep_dir=None) -> dict:
    """Render :func:`vfu_nb.widgets.explorer_from_runs` in JupyterLab + Chromium and save its screenshot to ``out``."""
    args = dict(runs=None if runs is None else str(Path(runs).resolve()),
                data_root=None if data_root is None else str(Path(data_root).resolve()),
                split=split, index=index, untrained=untrained, image_size=image_size, width=width)
    cells = ["from vfu_nb.widgets import explorer_from_runs\n"
             f"explorer = explorer_from_runs(**{args!r})\n"
             "explorer"]
    return screenshot_widget(cells, out, timeout=timeout, keep_dir=keep_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tests/browser.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser("screenshot", help="render the attention explorer in JupyterLab+Chromium and save a PNG")
    shot.add_argument("--runs", help="folder holding trained run directories (config.json + checkpoints/)")
    shot.add_argument("--out", default="figures/attention_explorer.png")
    shot.add_argument("--data-root", help="DeepFashion-C tree (default: the runs' data_root)")
    shot.add_argument("--split", default="test", choices=("train", "val", "test"))
    shot.add_argument("--index", type=int, default=0, help="which image of the split")
    shot.add_argument("--untrained", action="store_true", help="random MTL and CAT models instead of runs")
    shot.add_argument("--image-size", type=int, default=128, help="--untrained: input size")
    shot.add_argument("--width", type=float, default=0.25, help="--untrained: channel width")
    shot.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not args.untrained and not args.runs:
        parser.error("give --runs DIR, or --untrained --data-root DIR")
    info = screenshot(args.out, args.runs, args.data_root, args.split, args.index, args.untrained, args.image_size,
                      args.width, args.timeout)
    print(f"wrote {args.out} ({info['width']}x{info['height']} px) in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
