"""Stopping: SIGTERM while a request decodes answers it and exits with status 0; a model that
cannot be loaded stops the server with status 2 and a message."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.serve.conftest import ServerProcess, free_port


def test_sigterm_answers_the_request_in_flight(copy_model_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(copy_model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        # a request that keeps the decoder busy for a while: 64 texts, beam 16, 2 hypotheses
        body = {
            "texts": [f"Ein Hund Nummer {i} läuft über die Wiese." for i in range(64)],
            "beam": 16,
        }
        answer: list[httpx.Response | BaseException] = []

        def call() -> None:
            try:
                answer.append(httpx.post(server.url + "/v1/translate", json=body, timeout=60))
            except BaseException as e:
                answer.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the request is being decoded
            metrics = httpx.get(server.url + "/metrics", timeout=5).text
            if "transformer_pending_requests 1.0" in metrics:
                break
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        caller.join(60)
    finally:
        status = server.stop()
    assert status == 0, server.log()
    (response,) = answer
    assert isinstance(response, httpx.Response), response
    assert response.status_code in (200, 503), response.text
    if response.status_code == 200:
        assert len(response.json()["translations"]) == 64
    assert "Traceback" not in server.log(), server.log()


def test_a_missing_model_stops_the_server_with_status_2(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "transformer", "serve",
        "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no-such-model" in result.stderr
