"""The FastAPI application: JSON API, health, metrics and the web page.

    app = create_app(Translator.from_pretrained("work/model"), ServeSettings())
    app = create_app(lambda: Translator.from_pretrained("work/model"))   # loads in the background
    app = create_app(Classifier.from_pretrained("work/ag_news-model"))   # a classifier

Endpoints: `POST /v1/translate` (translation and parsing models), `POST /v1/classify`
(classification models), `POST /v1/attention` (one text's attention weights, for either: a
classifier's response holds the encoder part and the text's classes), `GET /health` (503 until
the model is loaded, and again while stopping; it names the task, and a classifier's labels),
`GET /metrics` (Prometheus text format), `GET /` (the web page, from static/), `GET /docs` and
`/openapi.json` (generated from schemas.py).

Errors are JSON `{"detail": "...", "errors": [{"field": ..., "message": ...}]}`: 400 for a body
that is not JSON, 404 for an endpoint of another task (/v1/classify on a translation model,
/v1/translate on a classifier), 413 for a body over the size limit, 422 for a request that names
a bad field, 503 while loading or stopping or when too many requests wait, 500 if decoding itself
fails (the server keeps serving). The app uses only the facades (`Translator`, `Classifier`),
never a model directly; both go through the same dynamic batcher, limits and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transformer.classifier import Attention, Classifier, Prediction
from transformer.decoding.options import api_fields
from transformer.modeldir import CLASSIFICATION
from transformer.serve.batching import DynamicBatcher, ServiceUnavailable
from transformer.serve.metrics import ServerMetrics
from transformer.serve.schemas import (
    AttentionRequest,
    AttentionResponse,
    ClassificationOut,
    ClassifierAttentionResponse,
    ClassifyRequest,
    ClassifyResponse,
    ClassOut,
    ErrorResponse,
    HealthResponse,
    HypothesisOut,
    RequestError,
    TranslateRequest,
    TranslateResponse,
    TranslationOut,
    check_texts,
    decode_options,
)
from transformer.serve.settings import ServeSettings
from transformer.serve.tokens import readable_token
from transformer.translator import DecodeOptions, Translation, Translator
from transformer.version import __version__

log = logging.getLogger("transformer.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
ATTENTION_DECIMALS = 5  # enough for a heat map; keeps the JSON about half as long

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    413: {"model": ErrorResponse, "description": "The body is larger than the server accepts."},
    422: {
        "model": ErrorResponse,
        "description": "A field is missing, of the wrong type, unknown "
        "or out of range; `errors` names each one.",
    },
    503: {
        "model": ErrorResponse,
        "description": "Loading, stopping, or too many requests waiting.",
    },
}
WRONG_TASK_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "The model serves another task."},
}

Facade = Translator | Classifier  # what the app serves


@dataclass
class _State:
    """What the endpoints need, filled in once the model is loaded."""

    status: str = "loading"  # loading -> ready -> stopping; or failed
    detail: str | None = None
    model: Facade | None = None
    batcher: DynamicBatcher | None = None

    @property
    def translator(self) -> Translator | None:
        return None if _is_classifier(self.model) else self.model  # type: ignore[return-value]

    @property
    def classifier(self) -> Classifier | None:
        return self.model if _is_classifier(self.model) else None  # type: ignore[return-value]

    def ready_batcher(self) -> DynamicBatcher:
        if self.status != "ready" or self.batcher is None:
            raise ServiceUnavailable(
                {"loading": "the model is still loading; retry shortly"}.get(
                    self.status, f"the server is {self.status}"
                )
            )
        return self.batcher


def create_app(
    translator: Facade | Callable[[], Facade],
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The application over a Translator or a Classifier, or over a function that loads one.

    A loader runs in a thread when the app starts, so the server listens (and /health says 503)
    while the model loads; if it raises, /health reports "failed" and `on_load_error` is called
    (the CLI uses it to stop the server).
    """
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    state = _State()

    async def load() -> None:
        try:
            if hasattr(translator, "translate_nbest") or _is_classifier(translator):
                loaded = translator
            else:
                loaded = await asyncio.to_thread(translator)  # type: ignore[arg-type]
        except Exception as e:
            state.status, state.detail = "failed", f"loading the model failed: {e}"
            log.error("%s", state.detail)
            if on_load_error is not None:
                on_load_error(e)
            return
        if _is_classifier(loaded):
            work, count = _classify_fn(loaded), _count_classified_tokens_fn(loaded)
        else:
            work, count = _translate_fn(loaded), _count_tokens_fn(loaded)
        batcher = DynamicBatcher(
            translate=work, count_tokens=count, settings=settings, metrics=metrics
        )
        batcher.start()
        state.model, state.batcher = loaded, batcher
        state.status = "ready"
        metrics.ready.set(1)
        log.info("model loaded; serving")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            state.status = "stopping"
            metrics.ready.set(0)
            if not loading.done():
                loading.cancel()  # the loader thread runs on to its end; its result is dropped
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.stop)

    app = FastAPI(
        title="transformer",
        version=__version__,
        description="Translation with the Transformer of 'Attention Is All You Need': "
        "n-best translations with scores, and every attention weight of a translation; or, "
        "over a classification model, the class probabilities of texts and the encoder's "
        "attention.",
        lifespan=lifespan,
    )
    app.state.serve = state
    app.state.metrics = metrics
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    _add_error_handlers(app)

    async def translation_model() -> None:
        """404 for a translation endpoint when the model classifies (checked before the body)."""
        if state.classifier is not None:
            raise HTTPException(
                404,
                f"this server's model classifies texts (task {CLASSIFICATION}, classes "
                f"{', '.join(state.classifier.labels)}); it does not translate: use POST "
                "/v1/classify",
            )

    async def classification_model() -> None:
        """404 for /v1/classify when the model translates (checked before the body)."""
        if state.translator is not None:
            task = getattr(state.translator, "task_name", "translation")
            raise HTTPException(
                404,
                f"this server's model is a {task} model; it does not classify texts: use "
                "POST /v1/translate",
            )

    @app.post(
        "/v1/translate",
        response_model=TranslateResponse,
        responses=ERROR_RESPONSES | WRONG_TASK_RESPONSE,
        summary="Translate texts (n-best with scores)",
        dependencies=[Depends(translation_model)],
    )
    async def translate(request: TranslateRequest) -> TranslateResponse:
        options = _validated(request, request.texts, "texts", settings, state.translator)
        batcher = state.ready_batcher()
        _check_engine(state.translator, options, attention=False)
        results = await batcher.submit(request.texts, options)
        return TranslateResponse(translations=[_translation_out(r) for r in results])

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES | WRONG_TASK_RESPONSE,
        summary="Classify texts (the top_k classes of each, with probabilities)",
        dependencies=[Depends(classification_model)],
    )
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        problems = check_texts(request.texts, settings, "texts", allow_empty=False)
        problems += _top_k_problems(request.top_k, state.classifier)
        if problems:
            raise RequestError(problems)
        batcher = state.ready_batcher()
        predictions: list[Prediction] = await batcher.submit(request.texts, None)
        for p in predictions:
            metrics.classified.labels(p.label).inc()
        return ClassifyResponse(
            classifications=[
                _classification_out(text, p, request.top_k)
                for text, p in zip(request.texts, predictions)
            ]
        )

    @app.post(
        "/v1/attention",
        response_model=AttentionResponse | ClassifierAttentionResponse,
        responses=ERROR_RESPONSES,
        summary="One text's attention weights: a translation model translates it and returns "
        "every attention weight; a classifier classifies it and returns its encoder's",
    )
    async def attention(request: AttentionRequest) -> Response:
        if state.classifier is not None:
            return await classifier_attention(request)
        options = _validated(request, [request.text], "text", settings, state.translator)
        batcher = state.ready_batcher()
        _check_engine(state.translator, options, attention=True)
        (result,) = await batcher.submit([request.text], options, attention=True)
        if result.attention_maps is None:
            raise RequestError([("text", "nothing to translate (empty or only spaces)")])
        # Turning (L, H, T, S) tensors into JSON is the one heavy thing done per response: do it
        # off the event loop.
        body = await asyncio.to_thread(_attention_json, result)
        return Response(body, media_type="application/json")

    async def classifier_attention(request: AttentionRequest) -> Response:
        problems = check_texts([request.text], settings, "text", allow_empty=False)
        problems += [
            (name, "does not apply: a classification model does not decode")
            for name in sorted(request.model_fields_set - {"text"})
        ]
        if problems:
            raise RequestError(problems)
        batcher = state.ready_batcher()
        ((prediction, weights),) = await batcher.submit([request.text], None, attention=True)
        body = await asyncio.to_thread(
            _classifier_attention_json, request.text, prediction, weights
        )
        return Response(body, media_type="application/json")

    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "Not ready."}},
        summary="Ready? Which task? (503 while loading or stopping)",
    )
    async def health() -> JSONResponse:
        body = HealthResponse(
            status=state.status,
            detail=state.detail,
            max_texts=settings.max_texts,
            max_chars=settings.max_chars,
            max_beam=settings.max_beam,
            batching=settings.batching,
            **_task_fields(state.model),
        )
        return JSONResponse(body.model_dump(), status_code=200 if state.status == "ready" else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ------------------------------------------------------------------------------ translation


def _is_classifier(model: object) -> bool:
    """Whether `model` is the Classifier facade (or one like it), not a Translator."""
    return hasattr(model, "classify") and hasattr(model, "labels")


def _task_fields(model: Facade | None) -> dict[str, Any]:
    """/health's task, and a classifier's labels or a translator's default decoding (the
    request fields), and the precision it computes in, once a model is loaded."""
    if _is_classifier(model):
        return {
            "task": CLASSIFICATION,
            "labels": list(model.labels),  # type: ignore[union-attr]
            "precision": model.precision,  # type: ignore[union-attr]
        }
    translator = model
    if translator is None or not hasattr(translator, "options"):
        return {}
    options = translator.options()
    return {
        "task": translator.task_name,
        "decoding": {f.name: getattr(options, f.name) for f in api_fields(DecodeOptions)},
        "precision": translator.precision,
    }


def _translate_fn(translator: Translator):
    """The batcher's decode function: the Translator's n-best API with one set of options."""

    def translate(texts: list[str], options: DecodeOptions, attention: bool) -> list[Translation]:
        with torch.inference_mode():
            return translator.translate_nbest(
                texts, attention=attention, **dataclasses.asdict(options)
            )

    return translate


def _count_tokens_fn(translator: Translator):
    """Source tokens of texts as the model sees them (subwords + EOS), for the batch budget."""

    def count(texts: Sequence[str]) -> int:
        return sum(len(ids) + 1 for ids in translator.tokenizer.encode_batch(list(texts)))

    return count


def _validated(
    request: TranslateRequest | AttentionRequest,
    texts: list[str],
    field: str,
    settings: ServeSettings,
    translator: Translator | None,
) -> DecodeOptions:
    """The request's DecodeOptions (the model's own decoding defaults, e.g. a parser's, for the
    fields it does not set), or RequestError naming every problem at once."""
    problems = check_texts(texts, settings, field)
    defaults = getattr(translator, "decode_defaults", None)  # None: not loaded yet
    options, option_problems = decode_options(request, settings, defaults=defaults)
    problems += option_problems
    if problems or options is None:
        raise RequestError(problems)
    return options


def _check_engine(translator: Translator | None, options: DecodeOptions, attention: bool) -> None:
    """RequestError (422) for what the loaded engine cannot do, e.g. attention maps from
    CTranslate2; each engine problem reads "field: message"."""
    if translator is None:
        return
    problems = translator.engine.problems(options, attention)
    if problems:
        raise RequestError(
            [tuple(p.split(": ", 1)) if ": " in p else ("engine", p) for p in problems]
        )


def _translation_out(result: Translation) -> TranslationOut:
    best = result.hypotheses[0]
    return TranslationOut(
        source=result.source,
        text=best.text,
        score=best.score,
        truncated=result.truncated,
        hypotheses=[
            HypothesisOut(text=h.text, score=h.score, log_prob=h.log_prob, length=len(h.tokens))
            for h in result.hypotheses
        ],
    )


def _weights(t: torch.Tensor) -> list:
    """Attention weights as nested lists, rounded to ATTENTION_DECIMALS."""
    scale = 10.0**ATTENTION_DECIMALS
    return ((t.double() * scale).round() / scale).tolist()


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _attention_json(result: Translation) -> bytes:
    """The AttentionResponse of a translation with attention maps, as JSON bytes."""
    maps = result.attention_maps
    assert maps is not None
    best = result.hypotheses[0]
    payload = {
        "source": result.source,
        "translation": best.text,
        "score": best.score,
        "truncated": result.truncated,
        "source_tokens": maps.source_tokens,
        "decoder_tokens": maps.decoder_tokens,
        "target_tokens": maps.target_tokens,
        "source_display": [readable_token(t) for t in maps.source_tokens],
        "decoder_display": [readable_token(t) for t in maps.decoder_tokens],
        "target_display": [readable_token(t) for t in maps.target_tokens],
        "encoder_layers": maps.encoder_self.shape[0],
        "decoder_layers": maps.decoder_self.shape[0],
        "heads": maps.cross.shape[1],
        "encoder_self": _weights(maps.encoder_self),
        "decoder_self": _weights(maps.decoder_self),
        "cross": _weights(maps.cross),
    }
    return _json(payload)


# --------------------------------------------------------------------------- classification


def _classify_fn(classifier: Classifier):
    """The batcher's function for a classifier (its options are None): every class of each
    text, best first (each request keeps its top_k); with `attention`, each text's encoder
    self-attention too, as (Prediction, Attention) pairs."""
    every = len(classifier.labels)

    def classify(texts: list[str], options: None, attention: bool) -> list[Any]:
        with torch.inference_mode():
            predictions = classifier.classify(texts, top_k=every)
            if not attention:
                return predictions
            return [(p, classifier.attention(t)) for p, t in zip(predictions, texts)]

    return classify


def _count_classified_tokens_fn(classifier: Classifier):
    """Tokens of texts as the classifier reads them (subwords, cut as it cuts them, + EOS)."""

    def count(texts: Sequence[str]) -> int:
        return sum(len(ids) + 1 for ids in classifier.encode(list(texts))[0])

    return count


def _top_k_problems(top_k: int, classifier: Classifier | None) -> list[tuple[str, str]]:
    """top_k above the model's number of classes (the request model already bounds it below);
    unchecked while the model loads (the request then gets 503 anyway)."""
    if classifier is None or top_k <= len(classifier.labels):
        return []
    n = len(classifier.labels)
    return [("top_k", f"must be at most {n} (the model's classes), got {top_k}")]


def _classes(prediction: Prediction, top_k: int | None = None) -> list[ClassOut]:
    return [ClassOut(label=c, probability=p) for c, p in prediction.top[:top_k]]


def _classification_out(text: str, prediction: Prediction, top_k: int) -> ClassificationOut:
    return ClassificationOut(
        source=text,
        label=prediction.label,
        probability=prediction.probability,
        top=_classes(prediction, top_k),
        truncated=prediction.truncated,
    )


def _classifier_attention_json(text: str, prediction: Prediction, attention: Attention) -> bytes:
    """The ClassifierAttentionResponse of one text (every class), as JSON bytes."""
    layers = torch.stack(attention.layers)  # (L, H, S, S)
    payload = {
        **_classification_out(text, prediction, len(prediction.top)).model_dump(),
        "source_tokens": attention.tokens,
        "source_display": [readable_token(t) for t in attention.tokens],
        "encoder_layers": layers.shape[0],
        "heads": layers.shape[1],
        "encoder_self": _weights(layers),
    }
    return _json(payload)


# ----------------------------------------------------------------------------------- errors


def _error(status: int, detail: str, problems: Sequence[tuple[str, str]] = ()) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=[{"field": f, "message": m} for f, m in problems])
    return JSONResponse(body.model_dump(), status_code=status)


def _field_name(loc: Sequence[Any]) -> str:
    """pydantic's error location as the JSON field a client sent: ("body", "texts", 3) ->
    "texts.3"; the body as a whole is "body"."""
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        malformed = False
        for err in exc.errors():
            kind = err.get("type", "")
            if kind == "json_invalid":
                malformed = True
                reason = (err.get("ctx") or {}).get("error") or err.get("msg", "")
                loc = err.get("loc") or ()
                where = f" at character {loc[1]}" if len(loc) > 1 else ""
                problems.append(("body", f"malformed JSON{where}: {reason}"))
            elif kind == "extra_forbidden":
                problems.append((_field_name(err["loc"]), "unknown field"))
            else:
                problems.append((_field_name(err["loc"]), str(err.get("msg", "invalid"))))
        if malformed:
            return _error(400, "the request body is not valid JSON", problems)
        return _error(
            422, "invalid request: " + "; ".join(f"{f}: {m}" for f, m in problems), problems
        )

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return _error(422, f"invalid request: {exc}", exc.problems)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


# -------------------------------------------------------------------------------- middleware


class _Guard:
    """ASGI middleware: counts every request in the metrics (with its status and
    latency) and refuses bodies over `max_body_bytes` with 413, whether or not they announce
    their length, before anything parses them."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # if the app raises before responding, ServerErrorMiddleware sends a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                response = _error(413, f"request body larger than {limit} bytes")
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive_limited, send_status)
        finally:
            self.metrics.observe_request(
                scope.get("path", ""), scope.get("method", ""), status, time.monotonic() - started
            )
