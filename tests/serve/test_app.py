"""The application in-process (FastAPI's TestClient): readiness while the model loads, a model
that fails to load, and the byte-level tokens made readable."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient

from tests.optional import require
from transformer import Translator
from transformer.hardware import resolve_inference_precision
from transformer.modeldir import ModelDirError
from transformer.serve.app import create_app
from transformer.serve.settings import ServeSettings
from transformer.serve.tokens import readable_token


def test_health_is_503_until_the_model_is_loaded(copy_model_dir: Path) -> None:
    may_load = threading.Event()

    def load() -> Translator:
        assert may_load.wait(30)
        return Translator.from_pretrained(copy_model_dir)

    with TestClient(create_app(load, ServeSettings())) as client:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "loading"
        refused = client.post("/v1/translate", json={"texts": ["Ein Hund"]})
        assert refused.status_code == 503
        assert "loading" in refused.json()["detail"]
        assert client.get("/metrics").status_code == 200  # metrics answer while loading
        may_load.set()
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        health = client.get("/health").json()
        assert health["status"] == "ready"
        # The default precision, auto: bf16 on a CPU with bf16 units, else fp32.
        assert health["precision"] == resolve_inference_precision("auto", "cpu")[0]
        response = client.post("/v1/translate", json={"texts": ["Ein Hund"]})
        assert response.status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def load() -> Translator:
        return Translator.from_pretrained(tmp_path / "missing")

    with TestClient(create_app(load, on_load_error=errors.append)) as client:
        for _ in range(300):
            if errors:
                break
            threading.Event().wait(0.05)
        assert len(errors) == 1 and isinstance(errors[0], ModelDirError)
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert "missing" in response.json()["detail"]


def test_web_page_and_its_files_are_served(copy_model_dir: Path) -> None:
    app = create_app(Translator.from_pretrained(copy_model_dir))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<canvas" in page.text
        for name, kind in [("app.js", "javascript"), ("style.css", "css")]:
            response = client.get(f"/static/{name}")
            assert response.status_code == 200 and kind in response.headers["content-type"]
        # offline: the page loads nothing from elsewhere
        for text in (page.text, client.get("/static/style.css").text):
            assert "http://" not in text.replace("http://127.0.0.1", "")
            assert "https://" not in text


def test_readable_tokens() -> None:
    assert readable_token("Ġdog") == "▁dog"
    assert readable_token("Ã¤") == "ä"  # two byte symbols, one character
    assert readable_token("Ã") == "\\xc3"  # half a character
    assert readable_token("Ċ") == "\\n"
    assert readable_token("Ć") == "\\x06"  # a control character, escaped
    assert readable_token("</s>") == "</s>"
    assert readable_token("Hund") == "Hund"


def test_ctranslate2_engine_translates_and_refuses_attention_with_a_422(
    copy_model_dir: Path, tmp_path: Path
) -> None:
    require("ctranslate2")
    from transformer.export import export_ctranslate2

    exported = export_ctranslate2(copy_model_dir, tmp_path / "ct2", "float32")
    translator = Translator.from_pretrained(exported, engine="ctranslate2")
    with TestClient(create_app(translator, ServeSettings())) as client:
        response = client.post("/v1/translate", json={"texts": ["Ein Hund"], "beam": 2})
        assert response.status_code == 200
        expected = translator.translate(["Ein Hund"], beam=2)
        assert [t["text"] for t in response.json()["translations"]] == expected
        assert client.get("/health").json()["precision"] is None  # its export's type
        refused = client.post("/v1/attention", json={"text": "Ein Hund"})
        assert refused.status_code == 422
        assert [e["field"] for e in refused.json()["errors"]] == ["attention"]
        assert client.post("/v1/translate", json={"texts": ["Ein Hund"]}).status_code == 200
