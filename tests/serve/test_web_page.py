"""The web page in a real headless browser (Debian's chromium, driven by Playwright): type a
sentence, translate, and see the translation and an attention heat map; nothing is fetched from
outside the server."""

from __future__ import annotations

from pathlib import Path

from tests.optional import require, require_executable
from tests.serve.conftest import PRECISION, ServerProcess, ready_page
from transformer import Translator

# Skipped without them, failed in strict mode (CI): `make test` installs both.
CHROMIUM = require_executable("/usr/bin/chromium")
sync_api = require("playwright.sync_api")

# Distinct colours of the heat map, counted in the page (a blank or one-colour canvas has <= 2).
COUNT_COLOURS = """(canvas) => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4) seen.add(data[i] * 65536 + data[i + 1] * 256 + data[i + 2]);
  return seen.size;
}"""
CANVAS_PIXELS = """(canvas) => Array.from(
  canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data
).join(",")"""


def test_translate_and_see_the_attention(
    server: ServerProcess, copy_model_dir: Path, tmp_path: Path
) -> None:
    text = "Zwei Männer spielen Fußball."
    expected = Translator.from_pretrained(copy_model_dir, precision=PRECISION).translate([text])[0]

    with ready_page(CHROMIUM, sync_api, server.url) as page:
        page.fill("#source", text)
        page.select_option("#beam", "4")
        page.click("#translate")
        translation = page.locator("#translations li .tgt").first
        sync_api.expect(translation).to_contain_text(expected, timeout=30_000)
        assert translation.inner_text().startswith(expected)
        sync_api.expect(page.locator("#attention-caption")).to_contain_text(
            "Cross-attention", timeout=30_000
        )

        canvas = page.locator("#heatmap")
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50
        assert canvas.evaluate(COUNT_COLOURS) > 10  # cells in several shades, and labels
        cross = canvas.evaluate(CANVAS_PIXELS)
        page.screenshot(path=str(tmp_path / "web_page.png"), full_page=True)

        # encoder self-attention, one head: a different picture
        page.click("button[data-kind=encoder_self]")
        page.select_option("#head", "0")
        sync_api.expect(page.locator("#attention-caption")).to_contain_text("Encoder self")
        assert canvas.evaluate(CANVAS_PIXELS) != cross
        page.screenshot(path=str(tmp_path / "web_page_encoder.png"), full_page=True)
    assert (tmp_path / "web_page.png").stat().st_size > 10_000
