"""What ``make lab`` starts: JupyterLab on ``notebooks/`` whose default kernel is the
project's interpreter, started with the caller's ``FLEETLENS_*`` environment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from fleetlens.workbench import NOTEBOOKS, NOTEBOOKS_DIR
from ports import free_port

JUPYTER = Path(sys.executable).with_name("jupyter")
MAKEFILE = NOTEBOOKS_DIR.parent / "Makefile"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    port, token = free_port(), "lab-test"
    env = os.environ | {
        "FLEETLENS_LAKE__ROOT": str(tmp_path / "lake"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path),
    }
    server = subprocess.Popen(
        [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--notebook-dir={NOTEBOOKS_DIR}",
         *(["--allow-root"] if os.getuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        try:
            if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).is_success:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "JupyterLab did not start"
        time.sleep(0.3)
    yield url, token, server
    server.terminate()
    server.wait(timeout=20)


def test_lab_serves_the_notebooks_with_the_project_kernel(
    lab: tuple[str, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, token, server = lab
    auth = {"token": token}
    contents = httpx.get(f"{url}/api/contents", params=auth, timeout=10).json()
    assert {f"{name}.ipynb" for name in NOTEBOOKS} <= {item["name"] for item in contents["content"]}

    # Start the default kernel, as opening a notebook does, and look at the process.
    kernel = httpx.post(f"{url}/api/kernels", params=auth, json={}, timeout=30).json()
    deadline = time.monotonic() + 30
    while not (children := psutil.Process(server.pid).children(recursive=True)):
        assert time.monotonic() < deadline, "no kernel process"
        time.sleep(0.2)
    process = children[0]
    # This virtualenv's interpreter (where fleetlens is installed), with the caller's settings.
    assert Path(process.cmdline()[0]).parent == Path(sys.executable).parent, process.cmdline()
    assert "ipykernel_launcher" in " ".join(process.cmdline())
    assert process.environ()["FLEETLENS_LAKE__ROOT"] == str(tmp_path / "lake")
    httpx.delete(f"{url}/api/kernels/{kernel['id']}", params=auth, timeout=30)

    recipe = MAKEFILE.read_text()
    # The same server as this one (root, as on CI machines, needs --allow-root).
    assert (
        "jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)"
        in recipe
    )
