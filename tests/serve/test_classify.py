"""Serving a classification model: `transformer serve` picks the Classifier facade from task.json;
/v1/classify answers what the in-process Classifier answers, through the same dynamic batching,
limits, errors and metrics as /v1/translate; /v1/attention returns the encoder's self-attention
and the classes; /health names the task and the labels; each task's endpoint refuses the other
task's model; and the web page classifies and draws bars and a heat map in a real browser."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from tests.optional import require, require_executable
from tests.serve.conftest import (
    CLASSIFIER_LABELS,
    PRECISION,
    ServerProcess,
    docs_screenshot,
    post,
    ready_page,
    running_server,
)
from tests.serve.test_server import metric_samples, multi_request_batches
from tests.serve.test_web_page import COUNT_COLOURS
from transformer import hardware
from transformer.classifier import Classifier
from transformer.config import ConfigError
from transformer.serve.app import create_app
from transformer.serve.cli import load_model
from transformer.serve.settings import ServeSettings
from transformer.translator import Translator

TEXTS = [
    "Stocks rally as oil prices fall.",
    "The team won the final match in the last minute.",
    "A new phone was presented today",
    "Rain",
]
# 32 texts of different lengths for the concurrency test
MANY = [f"{TEXTS[i % 4]} {' '.join(['and more news'] * (i % 5))}".strip() for i in range(32)]


@pytest.fixture(scope="module")
def classifier(classifier_dir: Path) -> Classifier:
    return Classifier.from_pretrained(classifier_dir, precision=PRECISION)


@pytest.fixture(scope="module")
def classifier_server(
    classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(classifier_dir, tmp_path_factory.mktemp("classifier-server")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(classifier_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=classifier_server.url, timeout=60) as c:
        yield c


def as_pairs(classes: list[dict]) -> list[tuple[str, float]]:
    return [(c["label"], c["probability"]) for c in classes]


def assert_same_classes(got: list[tuple[str, float]], want) -> None:
    assert [label for label, _ in got] == [label for label, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-5)


# ------------------------------------------------------------------------------------ results


def test_health_names_the_task_and_the_labels(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["task"] == "classification"
    assert body["labels"] == CLASSIFIER_LABELS
    assert body["decoding"] is None  # a classifier does not decode
    assert body["precision"] == PRECISION
    assert body["batching"] is True and body["max_texts"] == 64


@pytest.mark.parametrize("top_k", [None, 1, 2, 3])
def test_classify_equals_the_in_process_classifier(
    client: httpx.Client, classifier: Classifier, top_k: int | None
) -> None:
    body = {"texts": TEXTS} if top_k is None else {"texts": TEXTS, "top_k": top_k}
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    expected = classifier.classify(TEXTS, top_k=top_k or 1)  # default: the best class only
    got = response.json()["classifications"]
    assert len(got) == len(TEXTS)
    for out, text, want in zip(got, TEXTS, expected):
        assert out["source"] == text
        assert len(out["top"]) == (top_k or 1)
        assert_same_classes(as_pairs(out["top"]), want.top)
        assert out["label"] == want.label == out["top"][0]["label"]
        assert out["probability"] == pytest.approx(want.probability, abs=1e-5)
        assert out["truncated"] is False
    if top_k == len(CLASSIFIER_LABELS):  # every class: a distribution
        for out in got:
            assert sum(c["probability"] for c in out["top"]) == pytest.approx(1.0, abs=1e-5)


def test_attention_is_the_encoders_with_the_classes(
    client: httpx.Client, classifier: Classifier
) -> None:
    text = TEXTS[1]
    response = client.post("/v1/attention", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    ref = classifier.attention(text)
    (prediction,) = classifier.classify([text], top_k=len(CLASSIFIER_LABELS))
    assert body["source"] == text
    assert body["source_tokens"] == ref.tokens and body["source_tokens"][-1] == "</s>"
    assert len(body["source_display"]) == len(ref.tokens)
    assert not any("Ġ" in token for token in body["source_display"])
    assert_same_classes(as_pairs(body["top"]), prediction.top)  # every class, best first
    assert body["label"] == prediction.label
    s = len(body["source_tokens"])
    assert (body["encoder_layers"], body["heads"]) == (2, 4)
    weights = torch.tensor(body["encoder_self"], dtype=torch.float64)
    assert weights.shape == (2, 4, s, s)  # layers x heads x S x S
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, s, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(weights, torch.stack(ref.layers).double(), atol=1e-4)
    for absent in ("cross", "decoder_self", "translation", "target_tokens"):
        assert absent not in body  # a classifier has no decoder


def test_metrics_count_classify_requests_and_labels(
    client: httpx.Client, classifier: Classifier
) -> None:
    key = (
        "transformer_http_requests_total",
        (("method", "POST"), ("path", "/v1/classify"), ("status", "200")),
    )
    before = metric_samples(client)
    for _ in range(2):
        assert client.post("/v1/classify", json={"texts": TEXTS[:2]}).status_code == 200
    after = metric_samples(client)
    assert after[key] == before.get(key, 0) + 2
    latency = ("transformer_http_request_duration_seconds_count", (("path", "/v1/classify"),))
    assert after[latency] == before.get(latency, 0) + 2
    sentences = ("transformer_sentences_total", ())
    assert after[sentences] == before[sentences] + 4
    batches = ("transformer_batch_requests_count", ())
    assert after[batches] >= before[batches] + 2
    for p in classifier.classify(TEXTS[:2]):
        label = ("transformer_classified_total", (("label", p.label),))
        assert after[label] >= before.get(label, 0) + 2
    counted = sum(
        after.get(("transformer_classified_total", (("label", c),)), 0)
        - before.get(("transformer_classified_total", (("label", c),)), 0)
        for c in CLASSIFIER_LABELS
    )
    assert counted == 4


def test_32_concurrent_clients_get_the_sequential_results(client: httpx.Client) -> None:
    sequential = []
    for text in MANY:
        response = client.post("/v1/classify", json={"texts": [text], "top_k": 3})
        assert response.status_code == 200, response.text
        sequential.append(response.json()["classifications"][0])
    before = multi_request_batches(metric_samples(client))

    results: list[dict | None] = [None] * len(MANY)
    errors: list[BaseException] = []
    start = threading.Barrier(len(MANY))

    def call(i: int) -> None:
        try:
            with httpx.Client(base_url=client.base_url, timeout=60) as own:
                start.wait()
                response = own.post("/v1/classify", json={"texts": [MANY[i]], "top_k": 3})
                assert response.status_code == 200, response.text
                results[i] = response.json()["classifications"][0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(MANY))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for got, want in zip(results, sequential):
        assert got is not None and got["source"] == want["source"]
        assert_same_classes(as_pairs(got["top"]), as_pairs(want["top"]))
    assert multi_request_batches(metric_samples(client)) > before, "no batch held 2+ requests"


# --------------------------------------------------------------------------------- refusals


def test_translate_on_a_classifier_is_refused_clearly(client: httpx.Client) -> None:
    for body in ({"texts": ["Ein Hund"]}, {"texts": []}, {"nonsense": 1}):
        response = client.post("/v1/translate", json=body)
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert "classifies" in detail and "/v1/classify" in detail, detail


def test_classify_on_a_translation_model_is_refused_clearly(copy_model_dir: Path) -> None:
    with TestClient(create_app(Translator.from_pretrained(copy_model_dir))) as client:
        response = client.post("/v1/classify", json={"texts": ["Ein Hund"]})
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert "translation model" in detail and "does not classify" in detail, detail
        assert "/v1/translate" in detail
        assert client.get("/health").json()["labels"] is None
        assert client.post("/v1/translate", json={"texts": ["Ein Hund"]}).status_code == 200


TOO_MANY = {"texts": ["a"] * 65}
TOO_LONG = {"texts": ["ok", "a" * 1001]}

BAD_CLASSIFY = [
    ("non-JSON body", b'{"texts": ["Stocks"', 400, "body"),
    ("not an object", b"[1, 2]", 422, "body"),
    ("missing texts", {}, 422, "texts"),
    ("texts not a list", {"texts": "Stocks"}, 422, "texts"),
    ("text not a string", {"texts": ["ok", 3]}, 422, "texts.1"),
    ("empty list", {"texts": []}, 422, "texts"),
    ("an empty text", {"texts": ["ok", ""]}, 422, "texts.1"),
    ("a text of spaces", {"texts": ["  "]}, 422, "texts.0"),
    ("too many texts", TOO_MANY, 422, "texts"),
    ("too long a text", TOO_LONG, 422, "texts.1"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', 422, "texts.0"),
    ("top_k 0", {"texts": ["ok"], "top_k": 0}, 422, "top_k"),
    ("top_k over the classes", {"texts": ["ok"], "top_k": 4}, 422, "top_k"),
    ("top_k as a string", {"texts": ["ok"], "top_k": "2"}, 422, "top_k"),
    ("top_k as a bool", {"texts": ["ok"], "top_k": True}, 422, "top_k"),
    ("unknown field", {"texts": ["ok"], "beam": 4}, 422, "beam"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [case[1:] for case in BAD_CLASSIFY],
    ids=[case[0] for case in BAD_CLASSIFY],
)
def test_bad_classify_request_names_the_field(
    client: httpx.Client, body: dict | bytes, status: int, field: str
) -> None:
    response = post(client, "/v1/classify", body)
    assert response.status_code == status, response.text
    error = response.json()
    assert field in [e["field"] for e in error["errors"]], error
    assert error["detail"]


BAD_ATTENTION = [
    ("missing text", {}, "text"),
    ("empty text", {"text": " "}, "text"),
    ("too long text", {"text": "a" * 1001}, "text"),
    ("a decoding option", {"text": "Stocks", "beam": 4}, "beam"),
    ("unknown field", {"text": "Stocks", "layer": 1}, "layer"),
]


@pytest.mark.parametrize(
    ("body", "field"), [case[1:] for case in BAD_ATTENTION], ids=[c[0] for c in BAD_ATTENTION]
)
def test_bad_attention_request_names_the_field(
    client: httpx.Client, body: dict, field: str
) -> None:
    response = client.post("/v1/attention", json=body)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_oversized_body_is_refused(client: httpx.Client) -> None:
    body = json.dumps({"texts": ["a" * 1000] * 1000}).encode()
    response = post(client, "/v1/classify", body)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_still_serving_after_bad_input(client: httpx.Client, classifier: Classifier) -> None:
    """Runs after the bad-input tests (file order): the server answers as before."""
    assert client.get("/health").status_code == 200
    response = client.post("/v1/classify", json={"texts": TEXTS[:1]})
    assert response.status_code == 200
    assert response.json()["classifications"][0]["label"] == classifier.classify(TEXTS[:1])[0].label


def test_openapi_documents_classify(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/translate", "/v1/attention"} <= set(schema["paths"])
    schemas = schema["components"]["schemas"]
    request = schemas["ClassifyRequest"]["properties"]
    assert request["top_k"]["default"] == 1 and request["top_k"]["minimum"] == 1
    assert request["top_k"]["description"]
    # the texts field is declared once and shared with translation
    assert request["texts"] == schemas["TranslateRequest"]["properties"]["texts"]
    assert set(schemas["ClassificationOut"]["properties"]) == {
        "source",
        "label",
        "probability",
        "top",
        "truncated",
    }


# ------------------------------------------------------------------------- in-process and CLI


class GatedClassifier(Classifier):
    """Holds every classification until `release` is set, so that requests pile up."""

    started = threading.Event()
    release = threading.Event()

    def classify(self, texts, top_k=1):
        self.started.set()
        assert self.release.wait(30)
        return super().classify(texts, top_k)


def test_too_many_waiting_requests_get_503(classifier_dir: Path) -> None:
    gated = GatedClassifier.from_pretrained(classifier_dir)
    gated.started.clear()
    gated.release.clear()
    first: list[httpx.Response] = []
    with TestClient(create_app(gated, ServeSettings(max_pending=1))) as client:
        waiting = threading.Thread(
            target=lambda: first.append(client.post("/v1/classify", json={"texts": ["a b"]}))
        )
        waiting.start()
        try:
            assert gated.started.wait(30)
            refused = client.post("/v1/classify", json={"texts": ["c d"]})
            assert refused.status_code == 503, refused.text
            assert "too many requests waiting" in refused.json()["detail"]
        finally:
            gated.release.set()
            waiting.join(30)
        assert first[0].status_code == 200, first[0].text
        assert client.post("/v1/classify", json={"texts": ["c d"]}).status_code == 200


def test_a_classifier_loaded_in_the_background(classifier_dir: Path) -> None:
    may_load = threading.Event()

    def load() -> Classifier:
        assert may_load.wait(30)
        return Classifier.from_pretrained(classifier_dir, precision=PRECISION)

    with TestClient(create_app(load)) as client:
        assert client.get("/health").status_code == 503
        assert client.post("/v1/classify", json={"texts": ["a"]}).status_code == 503
        may_load.set()
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert client.get("/health").json()["labels"] == CLASSIFIER_LABELS
        assert client.post("/v1/classify", json={"texts": ["a"]}).status_code == 200


def serve_args(*model_dirs: Path, **overrides) -> argparse.Namespace:
    """The arguments `transformer serve` parses, for `load_model`."""
    values = {"threads": None, "engine": "torch", "device": "cpu", "precision": "fp32"}
    return argparse.Namespace(model=[str(d) for d in model_dirs], **{**values, **overrides})


def test_the_cli_picks_the_facade_from_task_json(
    classifier_dir: Path, copy_model_dir: Path
) -> None:
    assert isinstance(load_model(serve_args(classifier_dir)), Classifier)
    assert isinstance(load_model(serve_args(copy_model_dir)), Translator)
    with pytest.raises(ConfigError, match="--model"):
        load_model(serve_args(classifier_dir, classifier_dir))
    with pytest.raises(ConfigError, match="--engine"):
        load_model(serve_args(classifier_dir, engine="ctranslate2"))
    assert load_model(serve_args(copy_model_dir, precision="bf16")).precision == "bf16"
    assert load_model(serve_args(classifier_dir, precision="bf16")).precision == "bf16"


@pytest.mark.parametrize("units", ["AVX512-BF16", None])
def test_the_cli_logs_what_auto_precision_chose(
    classifier_dir: Path,
    copy_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    units: str | None,
) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda cpuinfo=None: units)
    chosen = "bf16" if units else "fp32"
    with caplog.at_level(logging.INFO, logger="transformer.serve"):
        assert load_model(serve_args(copy_model_dir, precision="auto")).precision == chosen
        assert load_model(serve_args(classifier_dir, precision="auto")).precision == chosen
        load_model(serve_args(copy_model_dir))  # fp32 as asked: nothing to say
    notes = [r.getMessage() for r in caplog.records if r.name == "transformer.serve"]
    assert len(notes) == 2
    assert all(n.startswith(f"precision {chosen} (auto: the CPU has ") for n in notes)


# ---------------------------------------------------------------------------------- web page


def test_the_web_page_classifies_and_shows_bars_and_attention(
    classifier_server: ServerProcess, classifier: Classifier, tmp_path: Path
) -> None:
    chromium = require_executable("/usr/bin/chromium")
    sync_api = require("playwright.sync_api")
    text = TEXTS[0]
    (expected,) = classifier.classify([text], top_k=len(CLASSIFIER_LABELS))
    with ready_page(chromium, sync_api, classifier_server.url) as page:
        sync_api.expect(page.locator("#translate")).to_have_text("Classify")
        assert not page.locator("#beam").is_visible()  # no decoding for a classifier
        assert not page.locator("button[data-kind=cross]").is_visible()
        assert not page.locator("button[data-kind=decoder_self]").is_visible()

        page.fill("#source", text)
        page.click("#translate")
        rows = page.locator("#classes .class-row")
        sync_api.expect(rows).to_have_count(3, timeout=30_000)
        labels = page.locator("#classes .class-label").all_inner_texts()
        assert labels == [label for label, _ in expected.top]  # best first
        percents = [
            float(t.rstrip("%")) for t in page.locator("#classes .class-percent").all_inner_texts()
        ]
        assert sum(percents) == pytest.approx(100.0, abs=0.2)
        assert percents == pytest.approx([100 * p for _, p in expected.top], abs=0.051)
        widths = [
            bar.evaluate("(e) => e.getBoundingClientRect().width")
            for bar in page.locator("#classes .class-fill").all()
        ]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] > 0
        sync_api.expect(page.locator("#translations li .tgt").first).to_contain_text(expected.label)

        caption = page.locator("#attention-caption")
        sync_api.expect(caption).to_contain_text("Encoder self-attention", timeout=30_000)
        sync_api.expect(caption).to_contain_text(f"Class: {expected.label}")
        canvas = page.locator("#heatmap")
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50
        assert canvas.evaluate(COUNT_COLOURS) > 10  # cells in several shades, and labels
        assert page.locator("#layer option").count() == 2
        assert page.locator("#head option").count() == 5  # average + 4 heads
        page.screenshot(path=str(tmp_path / "classify_page.png"), full_page=True)
        docs_screenshot(page, "classify_page.png")
    assert (tmp_path / "classify_page.png").stat().st_size > 10_000
