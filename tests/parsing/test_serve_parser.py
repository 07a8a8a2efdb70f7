"""Serving a parser: the server applies the model's own decoding (beam 21 even above the server's
max_beam, which bounds what clients ask for), answers trees, and the web page parses and shows
the attention between the sentence and the tree tokens in a real headless browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.optional import require, require_executable
from tests.serve.conftest import ServerProcess, running_server
from tests.serve.test_web_page import COUNT_COLOURS
from transformer.data.trees import parse_tree
from transformer.serve.app import create_app
from transformer.serve.settings import ServeSettings
from transformer.translator import Translator

SENTENCE = "Kim sees the big dog ."


@pytest.fixture(scope="module")
def parser(parser_dir: Path) -> Translator:
    return Translator.from_pretrained(parser_dir)


def test_the_server_parses_with_the_models_defaults_and_bounds_what_clients_ask(
    parser: Translator,
) -> None:
    expected = parser.translate([SENTENCE])[0]  # beam 21, alpha 0.3
    with TestClient(create_app(parser, ServeSettings(max_beam=16))) as client:
        health = client.get("/health").json()
        assert health["task"] == "parsing"
        assert health["decoding"]["beam"] == 21 and health["decoding"]["alpha"] == 0.3
        answer = client.post("/v1/translate", json={"texts": [SENTENCE]})
        assert answer.status_code == 200, answer.text
        (out,) = answer.json()["translations"]
        assert out["text"] == expected
        assert parse_tree(out["text"]).leaves() == SENTENCE.split()
        refused = client.post("/v1/translate", json={"texts": [SENTENCE], "beam": 21})
        assert refused.status_code == 422
        assert "max_beam" in refused.text
        greedy = client.post("/v1/translate", json={"texts": [SENTENCE], "method": "greedy"})
        assert (
            greedy.json()["translations"][0]["text"]
            == parser.translate([SENTENCE], method="greedy")[0]
        )


def test_the_attention_of_a_parse_pairs_the_words_with_the_tree_tokens(
    parser: Translator,
) -> None:
    with TestClient(create_app(parser)) as client:
        answer = client.post("/v1/attention", json={"text": SENTENCE})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert parse_tree(data["translation"]).leaves() == SENTENCE.split()
    (best,) = parser.translate_nbest([SENTENCE])
    assert len(data["target_display"]) == len(best.hypotheses[0].tokens) + 1  # + EOS
    assert data["source_display"][0].lstrip("▁") == "Kim"  # words on one axis
    assert "(" in data["target_display"][0]  # the tree's first bracket on the other
    layers = data["decoder_layers"]
    rows, cols = len(data["target_display"]), len(data["source_display"])
    assert torch.tensor(data["cross"]).shape == (layers, data["heads"], rows, cols)


@pytest.fixture(scope="module")
def parser_server(
    parser_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(parser_dir, tmp_path_factory.mktemp("parser-server")) as proc:
        yield proc


def test_the_web_page_parses_and_shows_the_attention(
    parser_server: ServerProcess, parser: Translator, tmp_path: Path
) -> None:
    chromium = require_executable("/usr/bin/chromium")
    sync_api = require("playwright.sync_api")
    expected = parser.translate([SENTENCE])[0]
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(parser_server.url + "/")
            sync_api.expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
            sync_api.expect(page.locator("#translate")).to_have_text("Parse")
            assert page.locator("#beam").input_value() == "21"
            page.fill("#source", SENTENCE)
            page.click("#translate")
            tree = page.locator("#translations li .tgt").first
            sync_api.expect(tree).to_contain_text(expected, timeout=30_000)
            sync_api.expect(page.locator("#attention-caption")).to_contain_text(
                "Tree: " + expected, timeout=30_000
            )
            assert page.locator("#heatmap").evaluate(COUNT_COLOURS) > 10
            page.screenshot(path=str(tmp_path / "parser_page.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
