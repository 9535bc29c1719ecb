"""`make lab` as the README says: JupyterLab serves the repository (HTTP 200 on /api/status and /lab on a loopback
port), as root too (it adds --allow-root and says so), with the project's defaults (no news prompt). The server's
whole process group (make, JupyterLab, kernels) is stopped at the end, pass or fail."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browser import free_port
from conftest import SYNTH_N

REPO = Path(__file__).resolve().parents[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_lab_serves_the_repository(synth_root, tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    lab_args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={token} --LabApp.user_settings_dir={tmp_path / 'settings'} "
                f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}")
    log_path = tmp_path / "make_lab.log"
    with open(log_path, "wb") as log:            # the session's tree stands in for data/ (generated: returns at once)
        proc = subprocess.Popen(["make", "-C", str(REPO), "lab", f"DATA={synth_root}", f"SYNTHETIC_N={SYNTH_N}",
                                 f"LAB_ARGS={lab_args}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"make lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer within 180 s:\n{log_path.read_text()[-3000:]}"
            try:
                status, _ = get(f"{base}/api/status?token={token}")
                if status == 200:
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        status, page = get(f"{base}/lab?token={token}")
        assert status == 200 and b"JupyterLab" in page
        _, body = get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}")
        assert json.loads(body)["schema"]["properties"]["fetchNews"]["default"] == "false"   # no news prompt
        _, body = get(f"{base}/api/contents/notebooks?token={token}")
        assert "05_controls_and_seeds.ipynb" in {item["name"] for item in json.loads(body)["content"]}   # the repo
        text = log_path.read_text()
        note = "make lab: running as root, so JupyterLab gets --allow-root (Jupyter refuses root without it)"
        assert (note in text) == (os.geteuid() == 0), text[-2000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
