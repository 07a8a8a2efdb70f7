"""`transformer serve`: the JSON API and the attention web page over a model directory.

    transformer serve --model runs/demo/model          # http://127.0.0.1:8000/ (docs at /docs)

A model directory whose task.json names the task "classification" is served by the Classifier
(POST /v1/classify, and its encoder's attention at /v1/attention); any other by the Translator
(POST /v1/translate, /v1/attention).

The server listens at once and loads the model in the background: /health answers 503 until it
is ready. Concurrent requests are decoded together (dynamic batching): a batch gathers requests
for up to --max-wait-ms after the first one arrives, within --max-batch-tokens source tokens;
--no-batching (or --max-batch-tokens 0) decodes one request at a time, the baseline of
benchmarks/serve_load.py. Decoding runs on one worker thread, so /health and /metrics answer
while it works. SIGTERM (or Ctrl-C) stops gracefully: no new connections, requests in flight
are answered (503 for any still waiting after --graceful-timeout), exit status 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from transformer.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR",
        help="model directory (config.json, model.safetensors, tokenizer.json); repeat it to "
        "serve an ensemble (translation models)",
    )
    from transformer.decoding.cli import add_device_arguments, add_engine_argument

    add_engine_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    add_device_arguments(parser)
    b = parser.add_argument_group("dynamic batching")
    b.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        metavar="N",
        help="source tokens (subwords + EOS) gathered into one decoding batch (4096; 0: no "
        "batching)",
    )
    b.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="how long the first request of a batch waits for others to join it (5)",
    )
    b.add_argument(
        "--no-batching",
        action="store_true",
        help="decode one request at a time (the same as --max-batch-tokens 0)",
    )
    lim = parser.add_argument_group("limits per request (over them: a 4xx naming the field)")
    lim.add_argument("--max-texts", type=int, default=64, help="texts per request (64)")
    lim.add_argument("--max-chars", type=int, default=1000, help="characters per text (1000)")
    lim.add_argument("--max-beam", type=int, default=16, help="largest beam and nbest (16)")
    lim.add_argument(
        "--max-pending",
        type=int,
        default=1024,
        help="requests waiting for the decoder before new ones get 503 (1024)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, how long to wait for requests in flight (30)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (info)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")


def load_model(args: argparse.Namespace):
    """The server's facade, the one place it is built from the command line: the Classifier
    when the model directory's task.json says classification, else the Translator. Raises
    ConfigError for options the chosen facade cannot honour."""
    import torch

    from transformer.decoding.cli import EXACT_HINT, precision_note
    from transformer.modeldir import is_classification, load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    if is_classification(load_task(args.model[0])):
        from transformer.classifier import Classifier

        problems = []
        if len(args.model) > 1:
            problems.append(
                f"--model: {args.model[0]} is a classification model; it is served alone, "
                "not in an ensemble"
            )
        if args.engine != "torch":
            problems.append("--engine: a classification model runs on the torch engine only")
        if problems:
            raise ConfigError("serve options", problems)
        model = Classifier.from_pretrained(
            args.model[0], device=args.device, precision=args.precision
        )
    else:
        from transformer.translator import Translator

        model = Translator.from_pretrained(
            args.model, device=args.device, engine=args.engine, precision=args.precision
        )
    if note := precision_note(model):
        logging.getLogger("transformer.serve").info("precision %s; %s", note, EXACT_HINT)
    return model


def settings_from_args(args: argparse.Namespace):
    from transformer.serve.settings import ServeSettings

    return ServeSettings(
        batching=not args.no_batching and args.max_batch_tokens > 0,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_beam=args.max_beam,
        max_pending=args.max_pending,
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        print(f"transformer serve: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from transformer.serve.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    load_failed: list[BaseException] = []

    def stop_on_load_error(error: BaseException) -> None:
        load_failed.append(error)
        server.should_exit = True

    app = create_app(lambda: load_model(args), settings, on_load_error=stop_on_load_error)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM itself (graceful shutdown), then re-raises it to the handler that was
    # there before: make that one a no-op so that a graceful stop exits with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except KeyboardInterrupt:  # SIGINT, re-raised by uvicorn after its graceful shutdown
        return 0 if not load_failed else 2
    if load_failed:
        print(f"transformer serve: {load_failed[0]}", file=sys.stderr)
        return 2
    return 0
