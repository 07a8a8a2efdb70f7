"""The JSON API of a real `transformer serve` process: results equal the in-process Translator's,
concurrent clients get exactly the sequential results (and were batched), every bad input gets a
4xx naming its field, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests.copy_model import MULTI30K
from tests.serve.conftest import PRECISION, ServerProcess, post
from transformer import Translator
from transformer.decoding.options import api_fields
from transformer.decoding.search import LENGTH_PENALTIES
from transformer.serve.schemas import DecodeParams

SENTENCES = [
    "Ein Hund läuft.",
    "Zwei Männer spielen Fußball im Park.",
    "Eine Frau",
    "Kinder",
]


@pytest.fixture(scope="module")
def translator(copy_model_dir: Path) -> Translator:
    return Translator.from_pretrained(copy_model_dir, precision=PRECISION)


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    """All samples of /metrics: (name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def multi_request_batches(samples: dict) -> float:
    """How many decoding batches held more than one request."""
    total = samples[("transformer_batch_requests_count", ())]
    single = samples[("transformer_batch_requests_bucket", (("le", "1.0"),))]
    return total - single


# ----------------------------------------------------------------------------------- results


def test_health_is_ready(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["batching"] is True
    assert body["max_texts"] == 64
    assert body["precision"] == PRECISION  # the server's --precision


def test_translate_equals_in_process_translator(
    client: httpx.Client, translator: Translator
) -> None:
    response = client.post("/v1/translate", json={"texts": SENTENCES})
    assert response.status_code == 200, response.text
    got = [t["text"] for t in response.json()["translations"]]
    assert got == translator.translate(SENTENCES)
    assert [t["source"] for t in response.json()["translations"]] == SENTENCES


def test_translate_options_reach_the_translator(
    client: httpx.Client, translator: Translator
) -> None:
    response = client.post("/v1/translate", json={"texts": SENTENCES, "method": "greedy"})
    assert response.status_code == 200, response.text
    got = [t["text"] for t in response.json()["translations"]]
    assert got == translator.translate(SENTENCES, method="greedy")


def test_nbest_with_scores(client: httpx.Client, translator: Translator) -> None:
    response = client.post(
        "/v1/translate", json={"texts": SENTENCES[:2], "beam": 5, "nbest": 3, "alpha": 1.0}
    )
    assert response.status_code == 200, response.text
    expected = translator.translate_nbest(SENTENCES[:2], beam=5, nbest=3, alpha=1.0)
    for out, ref in zip(response.json()["translations"], expected):
        assert len(out["hypotheses"]) == 3
        assert [h["text"] for h in out["hypotheses"]] == [h.text for h in ref.hypotheses]
        scores = [h["score"] for h in out["hypotheses"]]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([h.score for h in ref.hypotheses], abs=1e-5)
        log_probs = [h["log_prob"] for h in out["hypotheses"]]
        assert log_probs == pytest.approx([h.log_prob for h in ref.hypotheses], abs=1e-5)
        assert out["text"] == out["hypotheses"][0]["text"]
        assert out["score"] == out["hypotheses"][0]["score"]


def test_attention_shapes_and_rows(client: httpx.Client, translator: Translator) -> None:
    text = SENTENCES[1]
    response = client.post("/v1/attention", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    (ref,) = translator.translate_nbest([text], attention=True)
    maps = ref.attention_maps
    assert body["translation"] == ref.text
    assert body["source_tokens"] == maps.source_tokens
    assert body["target_tokens"] == maps.target_tokens
    assert body["decoder_tokens"] == maps.decoder_tokens
    assert body["source_tokens"][-1] == "</s>" and body["decoder_tokens"][0] == "<s>"
    s, t = len(body["source_tokens"]), len(body["target_tokens"])
    assert len(body["decoder_tokens"]) == t
    assert len(body["source_display"]) == s and len(body["target_display"]) == t
    assert not any("Ġ" in token for token in body["source_display"])
    layers_e, layers_d, heads = body["encoder_layers"], body["decoder_layers"], body["heads"]
    assert (layers_e, layers_d, heads) == (2, 2, 4)
    shapes = {
        "encoder_self": (layers_e, heads, s, s),
        "decoder_self": (layers_d, heads, t, t),
        "cross": (layers_d, heads, t, s),
    }
    for name, shape in shapes.items():
        weights = torch.tensor(body[name], dtype=torch.float64)
        assert weights.shape == shape, name
        assert torch.allclose(
            weights.sum(-1), torch.ones(shape[:-1], dtype=torch.float64), atol=1e-3
        )
        assert torch.allclose(weights, getattr(maps, name).double(), atol=1e-4), name
    causal = torch.tensor(body["decoder_self"])
    assert causal.triu(diagonal=1).abs().max() == 0  # no decoder position sees the future


def test_openapi_documents_the_fields(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/v1/translate", "/v1/attention", "/health", "/metrics"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["TranslateRequest"]["properties"]
    for field in ("texts", "beam", "alpha", "nbest", "method", "length_penalty"):
        assert request[field].get("description"), field
    assert request["method"]["enum"] == ["beam", "greedy", "sample"]
    assert request["length_penalty"]["enum"] == list(LENGTH_PENALTIES)
    # Every decoding option of the API, with the default and the description of its declaration.
    for f in api_fields():
        assert request[f.name].get("default") == f.default, f.name  # FastAPI omits a null
        assert request[f.name]["description"] == DecodeParams.model_fields[f.name].description


def test_metrics_count_requests_and_batches(client: httpx.Client) -> None:
    key = (
        "transformer_http_requests_total",
        (("method", "POST"), ("path", "/v1/translate"), ("status", "200")),
    )
    before = metric_samples(client)
    for _ in range(2):
        assert client.post("/v1/translate", json={"texts": ["Ein Hund"]}).status_code == 200
    after = metric_samples(client)
    assert after[key] == before.get(key, 0) + 2
    sentences = ("transformer_sentences_total", ())
    assert after[sentences] == before[sentences] + 2
    batches = ("transformer_batch_requests_count", ())
    assert after[batches] >= before[batches] + 2
    assert ("transformer_batch_requests_bucket", (("le", "1.0"),)) in after
    latency = (
        "transformer_http_request_duration_seconds_count",
        (("path", "/v1/translate"),),
    )
    assert after[latency] == before[latency] + 2
    assert after[("transformer_model_ready", ())] == 1


# ---------------------------------------------------------------------------- concurrency


def test_32_concurrent_clients_get_the_sequential_results(client: httpx.Client) -> None:
    lines = gzip.decompress((MULTI30K / "test_2016_flickr.de.gz").read_bytes()).decode()
    texts = lines.split("\n")[:32]
    sequential = []
    for text in texts:
        response = client.post("/v1/translate", json={"texts": [text]})
        assert response.status_code == 200, response.text
        sequential.append(response.json()["translations"][0])
    before = multi_request_batches(metric_samples(client))

    results: list[dict | None] = [None] * len(texts)
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def call(i: int) -> None:
        try:
            with httpx.Client(base_url=client.base_url, timeout=60) as own:
                start.wait()
                response = own.post("/v1/translate", json={"texts": [texts[i]]})
                assert response.status_code == 200, response.text
                results[i] = response.json()["translations"][0]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert [r["text"] for r in results] == [r["text"] for r in sequential]
    for got, want in zip(results, sequential):
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert multi_request_batches(metric_samples(client)) > before, "no batch held 2+ requests"


def test_a_stalled_client_does_not_block_others(
    client: httpx.Client, server: ServerProcess
) -> None:
    """A client that announces a body and never sends it must not hold up anyone else."""
    with socket.create_connection(("127.0.0.1", server.port)) as stalled:
        stalled.sendall(
            b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"texts": ["Ein'
        )
        response = client.post("/v1/translate", json={"texts": ["Ein Hund"]}, timeout=30)
        assert response.status_code == 200
        assert client.get("/health", timeout=10).status_code == 200


# ------------------------------------------------------------------------------ validation

TOO_MANY = {"texts": ["a"] * 65}
TOO_LONG = {"texts": ["ok", "a" * 1001]}

BAD_TRANSLATE = [
    ("malformed JSON", b'{"texts": ["Ein Hund"', 400, "body"),
    ("not an object", b"[1, 2]", 422, "body"),
    ("missing texts", b"{}", 422, "texts"),
    ("texts not a list", {"texts": "Ein Hund"}, 422, "texts"),
    ("text not a string", {"texts": ["ok", 3]}, 422, "texts.1"),
    ("beam as a string", {"texts": ["a"], "beam": "4"}, 422, "beam"),
    ("beam as a float", {"texts": ["a"], "beam": 2.5}, 422, "beam"),
    ("beam as a bool", {"texts": ["a"], "beam": True}, 422, "beam"),
    ("alpha as a string", {"texts": ["a"], "alpha": "high"}, 422, "alpha"),
    ("alpha NaN", b'{"texts": ["a"], "alpha": NaN}', 422, "alpha"),
    ("empty texts", {"texts": []}, 422, "texts"),
    ("too many texts", TOO_MANY, 422, "texts"),
    ("too long text", TOO_LONG, 422, "texts.1"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', 422, "texts.0"),
    ("beam 0", {"texts": ["a"], "beam": 0}, 422, "beam"),
    ("beam huge", {"texts": ["a"], "beam": 100000}, 422, "beam"),
    ("beam beyond int64", {"texts": ["a"], "beam": 10**30}, 422, "beam"),
    ("alpha negative", {"texts": ["a"], "alpha": -0.5}, 422, "alpha"),
    ("nbest > beam", {"texts": ["a"], "beam": 2, "nbest": 3}, 422, "nbest"),
    ("nbest 0", {"texts": ["a"], "nbest": 0}, 422, "nbest"),
    ("unknown option", {"texts": ["a"], "beem": 4}, 422, "beem"),
    ("server-side option", {"texts": ["a"], "max_tokens": 10**9}, 422, "max_tokens"),
    ("unknown method", {"texts": ["a"], "method": "oracle"}, 422, "method"),
    ("unknown length penalty", {"texts": ["a"], "length_penalty": "x"}, 422, "length_penalty"),
    ("top_p 0", {"texts": ["a"], "method": "sample", "top_p": 0.0}, 422, "top_p"),
    ("temperature 0", {"texts": ["a"], "method": "sample", "temperature": 0}, 422, "temperature"),
    ("negative seed", {"texts": ["a"], "method": "sample", "seed": -1}, 422, "seed"),
    ("huge max_len_b", {"texts": ["a"], "max_len_b": 10**9}, 422, "max_len_b"),
    ("alpha over 10", {"texts": ["a"], "alpha": 10.5}, 422, "alpha"),
    ("max_len_a over 4", {"texts": ["a"], "max_len_a": 4.5}, 422, "max_len_a"),
    ("min_len over 1024", {"texts": ["a"], "min_len": 1025}, 422, "min_len"),
    ("no_repeat_ngram over 64", {"texts": ["a"], "no_repeat_ngram": 65}, 422, "no_repeat_ngram"),
    ("nbest over max_beam", {"texts": ["a"], "method": "sample", "nbest": 17}, 422, "nbest"),
    ("seed beyond int64", {"texts": ["a"], "method": "sample", "seed": 2**63}, 422, "seed"),
]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [case[1:] for case in BAD_TRANSLATE],
    ids=[case[0] for case in BAD_TRANSLATE],
)
def test_bad_translate_request_names_the_field(
    client: httpx.Client, body: dict | bytes, status: int, field: str
) -> None:
    response = post(client, "/v1/translate", body)
    assert response.status_code == status, response.text
    error = response.json()
    assert field in [e["field"] for e in error["errors"]], error
    assert error["detail"]


BAD_ATTENTION = [
    ("missing text", {}, "text"),
    ("text not a string", {"text": ["Ein Hund"]}, "text"),
    ("empty text", {"text": "   "}, "text"),
    ("too long text", {"text": "a" * 1001}, "text"),
    ("beam huge", {"text": "Ein Hund", "beam": 17}, "beam"),
    ("unknown option", {"text": "Ein Hund", "layer": 1}, "layer"),
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
    response = post(client, "/v1/translate", body)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_unknown_path_and_method_are_json_errors(client: httpx.Client) -> None:
    assert client.get("/v2/nothing").status_code == 404
    response = client.get("/v1/translate")
    assert response.status_code == 405
    assert response.json()["detail"]


def test_still_serving_after_bad_input(client: httpx.Client, translator: Translator) -> None:
    """Runs after the bad-input tests (file order): the server answers as before."""
    assert client.get("/health").status_code == 200
    response = client.post("/v1/translate", json={"texts": SENTENCES[:1]})
    assert response.status_code == 200
    assert response.json()["translations"][0]["text"] == translator.translate(SENTENCES[:1])[0]
