"""A real `transformer serve` process over the tiny copy model, for the server tests.

`ServerProcess` starts `python -m transformer serve` on a free port of 127.0.0.1, waits for
/health, and stops it with SIGTERM; the module-scoped `server` fixture asserts that it then exits
cleanly (status 0).

`classifier_dir` is a tiny classification model directory (random weights: the API tests need no
training), and `docs_screenshot` saves a page's picture for the README when UPDATE_DOCS=1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import torch

from transformer import ModelConfig
from transformer.data import SubwordTokenizer
from transformer.model import TransformerClassifier
from transformer.modeldir import save_model_dir

START_TIMEOUT = 90.0  # importing torch on a busy shared core can take a while


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The precision of the test servers and of the in-process references they are compared with:
# exact float32 (the default, "auto", is bf16 on a CPU with bf16 units; tests/decoding covers it).
PRECISION = "fp32"


class ServerProcess:
    """One `transformer serve` subprocess; `url` is its base address."""

    def __init__(self, model_dir: Path, log_path: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            "-m",
            "transformer",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(self.port),
            "--threads",
            "1",
            "--precision",
            PRECISION,
            *extra_args,
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll /health until it answers 200; fail with the server's log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (killed and failed after `timeout` s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout} s:\n{self.log()}") from None
        finally:
            self._log.close()


@contextlib.contextmanager
def running_server(model_dir: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A ready server over `model_dir`; on exit, stopped by SIGTERM, which must end it cleanly
    (exit 0, no traceback in its log)."""
    proc = ServerProcess(model_dir, log_dir / "server.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        status = proc.stop()
    assert status == 0, f"server exited with {status} on SIGTERM:\n{proc.log()}"
    assert "Traceback" not in proc.log(), proc.log()


@pytest.fixture(scope="module")
def server(
    copy_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with the default settings over the copy model."""
    with running_server(copy_model_dir, tmp_path_factory.mktemp("server")) as proc:
        yield proc


# ---------------------------------------------------------------------------- classification

CLASSIFIER_LABELS = ["alpha", "beta", "gamma"]
DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE_DOCS = "UPDATE_DOCS"  # UPDATE_DOCS=1 pytest ...: the browser tests refresh docs/*.png


@pytest.fixture(scope="session")
def classifier_dir(
    copy_tokenizer: SubwordTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A classification model directory of 3 classes over the copy model's tokenizer, with
    random weights (seeded); its head is scaled up so that the classes' probabilities differ
    clearly (no near-ties for float rounding to flip between batched and single runs)."""
    torch.manual_seed(1)
    config = ModelConfig(
        vocab_size=copy_tokenizer.vocab_size,
        d_model=16,
        n_heads=4,
        d_ff=24,
        n_encoder_layers=2,
        n_decoder_layers=1,
        dropout=0.0,
    )
    model = TransformerClassifier(config, len(CLASSIFIER_LABELS))
    with torch.no_grad():
        model.head.weight.mul_(4.0)
    out = tmp_path_factory.mktemp("classifier") / "model"
    task = {"name": "classification", "labels": CLASSIFIER_LABELS}
    return save_model_dir(out, model, copy_tokenizer, task)


def post(client: httpx.Client, path: str, body: dict | bytes) -> httpx.Response:
    """POST `body` to the server: a dict as JSON, bytes as they are (malformed JSON)."""
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"Content-Type": "application/json"})
    return client.post(path, json=body)


@contextlib.contextmanager
def ready_page(chromium: Path, sync_api, url: str) -> Iterator:
    """The server's web page at `url` in headless chromium, once it says "ready"; on leaving, the
    browser is closed and the page must have fetched nothing from outside the server and logged no
    error."""
    host = urlparse(url).netloc
    outside: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on(
                "request",
                lambda r: None if urlparse(r.url).netloc == host else outside.append(r.url),
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(url + "/")
            sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
            yield page
        finally:
            browser.close()
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert not problems, problems


def docs_screenshot(page, name: str) -> Path | None:
    """With UPDATE_DOCS=1 (or true, yes, on) in the environment, a full-page screenshot of the
    Playwright `page` saved as docs/NAME (the README shows it); otherwise nothing is written."""
    if os.environ.get(UPDATE_DOCS, "").strip().lower() not in {"1", "true", "yes", "on"}:
        return None
    path = DOCS / name
    page.screenshot(path=str(path), full_page=True)
    return path
