"""Starts `tandem serve` on a fixture model for the tests (one server per
configuration, on a free loopback port) and stops it with SIGTERM."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures/models/tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf"
BIN = Path(os.environ.get("TANDEM_BIN", ROOT / "target/debug/tandem"))
KEY = "test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra, ctx=1024):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--model", str(MODEL), "--port", str(self.port),
             "--api-key", KEY, "--threads", "2", "--ctx-size", str(ctx), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tandem serve exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("tandem serve did not become healthy")

    def client(self, **kw):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, **kw)

    def get(self, path):
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)

    def post(self, path, body):
        return httpx.post(self.url + path, json=body,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def metric(self, name):
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server("--max-batch", "16")
    yield s
    s.stop()
    assert s.proc.returncode == 0, s.proc.stderr.read()


@pytest.fixture(scope="session")
def small_server():
    # A long context, so a held request keeps the one batch slot busy for
    # seconds even on a fast machine.
    s = Server("--max-batch", "1", "--max-queue", "1", ctx=8192)
    yield s
    s.stop()
