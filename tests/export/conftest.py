"""Fixtures of the export tests: CTranslate2 exports of the copy model, and 100 source sentences.

Exports are made once per session (a second each); tests that need CTranslate2 skip when the
optional `fast` extra is not installed (and fail in strict mode: see tests/optional.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.copy_model import MULTI30K
from tests.optional import require
from transformer import Translator


def _lines(name: str) -> list[str]:
    return gzip.decompress((MULTI30K / name).read_bytes()).decode("utf-8").splitlines()


@pytest.fixture(scope="session")
def sentences(copy_tokenizer) -> list[str]:
    """100 varied German sources: 50 short line prefixes (<= 8 subwords, which the copy model
    copies decisively) and 50 whole validation lines (longer than it was trained on, so its
    outputs are far from certain: a harder test of equal decoding)."""
    lines = _lines("val.de.gz")
    short: list[str] = []
    for line in lines:
        words = line.split()
        for k in (1, 2, 3):
            text = " ".join(words[:k])
            if len(copy_tokenizer.encode(text)) <= 8 and text not in short:
                short.append(text)
                break
        if len(short) == 50:
            break
    return short + lines[:50]


def _export(copy_model_dir: Path, tmp_path_factory, quantization: str) -> Path:
    require("ctranslate2")
    from transformer.export import export_ctranslate2

    out = tmp_path_factory.mktemp("ct2") / f"copy-{quantization}"
    return export_ctranslate2(copy_model_dir, out, quantization)


@pytest.fixture(scope="session")
def ct2_float32_dir(copy_model_dir, tmp_path_factory) -> Path:
    return _export(copy_model_dir, tmp_path_factory, "float32")


@pytest.fixture(scope="session")
def ct2_int8_dir(copy_model_dir, tmp_path_factory) -> Path:
    return _export(copy_model_dir, tmp_path_factory, "int8")


@pytest.fixture(scope="session")
def torch_translator(copy_model_dir) -> Translator:
    """The PyTorch engine on the copy model, in fp32: the reference the CTranslate2 engine must
    match."""
    return Translator.from_pretrained(copy_model_dir, precision="fp32")


@pytest.fixture(scope="session")
def ct2_translator(ct2_float32_dir) -> Translator:
    """The CTranslate2 engine on the float32 export of the copy model."""
    require("ctranslate2")
    return Translator.from_pretrained(ct2_float32_dir, engine="ctranslate2")
