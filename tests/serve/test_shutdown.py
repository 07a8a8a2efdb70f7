"""Stopping: SIGTERM while a request decodes answers it (200, the right translations) and exits
with status 0; a model that cannot be loaded stops the server with status 2 and a message."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.serve.conftest import PRECISION, ServerProcess, free_port
from transformer import Translator
from transformer.translator import Translation

# A request that keeps the decoder busy for seconds (about 2 s on one thread of a 2-core machine):
# 64 texts, beam 8, every hypothesis forced to 160 tokens.
SLOW_TEXTS = [f"Ein Hund Nummer {i}" for i in range(64)]
SLOW_OPTIONS = {"beam": 8, "min_len": 160, "max_len_a": 0.0, "max_len_b": 160}


def metric_values(server: ServerProcess) -> dict[str, float]:
    """The server's unlabelled metrics, e.g. {"transformer_pending_requests": 1.0}."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            values[name] = float(value)
    return values


def expected_translations(model_dir: Path) -> list[Translation]:
    """What the server must answer: the Translator on the same model, one thread as the server."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Translator.from_pretrained(model_dir, precision=PRECISION).translate_nbest(
            SLOW_TEXTS, **SLOW_OPTIONS
        )
    finally:
        torch.set_num_threads(threads)


def test_sigterm_answers_the_request_in_flight(copy_model_dir: Path, tmp_path: Path) -> None:
    """A request is decoding when SIGTERM arrives (seen in /metrics before the signal; the server
    stops listening before it is answered); it still gets 200 with the right translations, and the
    server then exits with status 0."""
    server = ServerProcess(copy_model_dir, tmp_path / "server.log")
    try:
        expected = expected_translations(copy_model_dir)  # while the server starts
        server.wait_ready()
        answer: list[httpx.Response | BaseException] = []
        answered = threading.Event()

        def call() -> None:
            body = {"texts": SLOW_TEXTS, **SLOW_OPTIONS}
            try:
                answer.append(httpx.post(server.url + "/v1/translate", json=body, timeout=120))
            except BaseException as e:
                answer.append(e)
            answered.set()

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 30
        metrics: dict[str, float] = {}
        while time.monotonic() < deadline and not answered.is_set():
            metrics = metric_values(server)
            if metrics.get("transformer_pending_requests") == 1.0:
                break
            time.sleep(0.01)
        # in flight: taken by the server, not yet translated
        assert metrics.get("transformer_pending_requests") == 1.0, metrics
        assert metrics.get("transformer_sentences_total") == 0.0, metrics
        assert not answered.is_set(), answer

        server.process.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not answered.is_set():
            try:
                httpx.get(server.url + "/health", timeout=1)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                # refused, or accepted and closed unanswered: the shutdown has begun
                refused = True
                break
            time.sleep(0.01)
        still_in_flight = not answered.is_set()
        assert refused and still_in_flight, (
            "the request was answered before the server stopped listening, so this test did not "
            f"stop a server with a request in flight (refused={refused}):\n{server.log()}"
        )

        caller.join(120)
        assert answered.is_set(), "no answer to the request in flight"
        status = server.process.wait(60)
    finally:
        server.stop()
    log = server.log()
    assert status == 0, log
    assert "Traceback" not in log and "ERROR" not in log, log
    (response,) = answer
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200, response.text
    translations = response.json()["translations"]
    assert [t["text"] for t in translations] == [e.text for e in expected]
    assert [t["source"] for t in translations] == SLOW_TEXTS
    for got, want in zip(translations, expected):
        assert got["score"] == pytest.approx(want.hypotheses[0].score, abs=1e-4)
        assert got["hypotheses"][0]["length"] == len(want.hypotheses[0].tokens) == 160


def test_a_missing_model_stops_the_server_with_status_2(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "transformer", "serve",
        "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no-such-model" in result.stderr
