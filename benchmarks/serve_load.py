"""Server throughput under load: `transformer serve` with dynamic batching on and off.

What is measured
----------------
The server is started twice as a subprocess (``python -m transformer serve``): once with its
default dynamic batching, once with ``--no-batching`` (each request decoded on its own), the
reference measured in the same run. Against each, client threads send one-sentence
``POST /v1/translate`` requests (source side of Multi30k test2016, in file order, cycled), each
thread with its own keep-alive connection (``http.client``), at concurrency 1, 8 and 32: ``--requests`` requests per
level after a short untimed warm-up. Reported per level: requests/s (completed requests over the
wall time of the level) and the p50 / p95 latency of one request, and the speed-up of batching
on over off at each concurrency. The goal is >= 4x at concurrency 32.

The translations of both servers are compared sentence by sentence (``same_outputs``): batching
must not change results. With ``--url`` the benchmark measures an already running server instead
(one configuration, no comparison).

Client and server share the machine; run it on a quiet one (the client threads cost little next
to decoding with a real model)::

    .venv/bin/python benchmarks/serve_load.py --model MODEL_DIR [--requests 200] [--beam 4] [--precision fp32]

Results are printed as a Markdown table and written to ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from _results import write_result
from transformer.data.textfiles import read_lines
from transformer.hardware import DEFAULT_INFERENCE_PRECISION, INFERENCE_PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT / "data" / "multi30k" / "test_2016_flickr.de.gz"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "serve_load.json"


@dataclass
class Row:
    mode: str  # "batching", "no-batching" or "url"
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    speedup_vs_no_batching: float | None = None


# -------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `transformer serve` subprocess on a free local port, stopped with SIGTERM."""

    def __init__(self, model: str, extra: list[str], threads: int | None) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            sys.executable, "-m", "transformer", "serve", "--model", model,
            "--port", self.url.rsplit(":", 1)[1], "--log-level", "warning", *extra,
        ]  # fmt: skip
        if threads:
            command += ["--threads", str(threads)]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.health = wait_ready(self.url, self.process, self.log)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


def wait_ready(url: str, process: subprocess.Popen | None = None, log=None) -> dict:
    """The server's /health answer once it is ready (it says, e.g., the precision it runs in)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            log.seek(0)
            sys.exit(f"the server exited with {process.returncode}:\n{log.read().decode()}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} not ready after 300 s")


# ---------------------------------------------------------------------------------- the load


def load(url: str, sentences: list[str], concurrency: int, n: int, beam: int):
    """Send n one-sentence requests from `concurrency` threads; latencies (s), wall time (s),
    errors, and the translation of each sentence sent.

    Each thread keeps one connection open with the standard library's `http.client`: on a small
    machine a heavier client (httpx, 32 threads) would itself cost more CPU than the server.
    """
    parsed = urlparse(url)
    work = iter(range(n))
    lock = threading.Lock()
    latencies: list[float] = []
    outputs: dict[str, str] = {}
    errors = 0

    def worker() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
        try:
            while True:
                with lock:
                    i = next(work, None)
                if i is None:
                    return
                text = sentences[i % len(sentences)]
                body = json.dumps({"texts": [text], "beam": beam})
                started = time.perf_counter()
                try:
                    conn.request(
                        "POST", "/v1/translate", body, {"Content-Type": "application/json"}
                    )
                    response = conn.getresponse()
                    payload = response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    conn.close()  # reconnects on the next request
                    ok = False
                took = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(took)
                        outputs[text] = json.loads(payload)["translations"][0]["text"]
                    else:
                        errors += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, errors, outputs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(url: str, mode: str, sentences: list[str], args: argparse.Namespace):
    load(url, sentences[-8:], min(8, max(args.concurrency)), 16, args.beam)  # warm-up, untimed
    rows, outputs = [], {}
    for c in args.concurrency:
        latencies, seconds, errors, out = load(url, sentences, c, args.requests, args.beam)
        outputs.update(out)
        rows.append(
            Row(
                mode=mode,
                concurrency=c,
                requests=len(latencies),
                errors=errors,
                seconds=round(seconds, 3),
                requests_per_s=round(len(latencies) / seconds, 2),
                p50_ms=round(1000 * percentile(latencies, 50), 1),
                p95_ms=round(1000 * percentile(latencies, 95), 1),
            )
        )
        print(f"  {mode:12s} concurrency {c:3d}: {rows[-1].requests_per_s:8.2f} req/s", flush=True)
    return rows, outputs


# -------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    sentences = [s for s in read_lines(Path(args.src)) if s.strip()]
    result: dict = {
        "benchmark": "serve_load",
        "source": str(args.src),
        "requests_per_level": args.requests,
        "beam": args.beam,
        "machine": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
    }
    if args.url:
        health = wait_ready(args.url)
        rows, _ = measure(args.url, "url", sentences, args)
        result.update(
            url=args.url, precision=health.get("precision"), rows=[asdict(r) for r in rows]
        )
        return result

    modes = {
        "batching": [
            "--max-wait-ms", str(args.max_wait_ms), "--max-batch-tokens", str(args.max_batch_tokens)
        ],
        "no-batching": ["--no-batching"],
    }  # fmt: skip
    rows: list[Row] = []
    outputs: dict[str, dict[str, str]] = {}
    statuses = {}
    precisions = set()  # what the servers report on /health (auto resolved)
    for mode, extra in modes.items():
        server = Server(args.model, [*extra, "--precision", args.precision], args.threads)
        precisions.add(server.health.get("precision"))
        try:
            mode_rows, outputs[mode] = measure(server.url, mode, sentences, args)
        finally:
            statuses[mode] = server.stop()
        rows += mode_rows
    off = {r.concurrency: r.requests_per_s for r in rows if r.mode == "no-batching"}
    for r in rows:
        if r.mode == "batching" and off.get(r.concurrency):
            r.speedup_vs_no_batching = round(r.requests_per_s / off[r.concurrency], 2)
    common = set(outputs["batching"]) & set(outputs["no-batching"])
    speedup_32 = next(
        (r.speedup_vs_no_batching for r in rows if r.mode == "batching" and r.concurrency == 32),
        None,
    )
    result.update(
        model=str(args.model),
        server_threads=args.threads,
        precision=" / ".join(sorted(map(str, precisions))),
        precision_asked=args.precision,
        max_wait_ms=args.max_wait_ms,
        max_batch_tokens=args.max_batch_tokens,
        rows=[asdict(r) for r in rows],
        speedup_at_32=speedup_32,
        goal_4x_at_32=None if speedup_32 is None else speedup_32 >= 4.0,
        same_outputs=all(outputs["batching"][s] == outputs["no-batching"][s] for s in common),
        compared_sentences=len(common),
        server_exit_status=statuses,
    )
    return result


def table(result: dict) -> str:
    lines = [
        "| mode | concurrency | requests | errors | req/s | p50 ms | p95 ms | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        speedup = "" if r["speedup_vs_no_batching"] is None else f"{r['speedup_vs_no_batching']}x"
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['requests_per_s']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {speedup} |"
        )
    if "same_outputs" in result:
        lines.append("")
        lines.append(
            f"batching on vs off at concurrency 32: {result['speedup_at_32']}x (goal >= 4x); "
            f"same outputs: {result['same_outputs']} ({result['compared_sentences']} sentences)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="model directory: start the server on it, twice")
    target.add_argument("--url", help="measure an already running server instead")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--beam", type=int, default=4, help="beam size of every request (4)")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8, 32],
        help="comma-separated client counts (1,8,32)",
    )
    p.add_argument("--src", default=str(DEFAULT_SRC), help="source sentences (plain or .gz)")
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    p.add_argument(
        "--precision",
        default=DEFAULT_INFERENCE_PRECISION,
        choices=INFERENCE_PRECISIONS,
        help="the servers' --precision (default %(default)s, as `transformer serve`)",
    )
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="batching server's wait (5)")
    p.add_argument("--max-batch-tokens", type=int, default=4096, help="batching server's budget")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    write_result(args.json, result, table(result))


if __name__ == "__main__":
    main()
