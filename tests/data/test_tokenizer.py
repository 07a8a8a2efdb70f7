"""SubwordTokenizer: exact round trip on any script, fixed special ids, atomic save, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import random
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from tests.data.conftest import MULTI30K, VOCAB, read_gz, write_lines
from transformer.data import DataError, SubwordTokenizer
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID

HARD_TEXTS = [
    "Zwei junge weiße Männer sind im Freien.",
    "我爱北京天安门，天安门上太阳升。",  # Chinese, no spaces
    "東京スカイツリーは高さ634メートルです",  # Japanese, mixed scripts
    "👩‍👩‍👧 family, 🇩🇪 flag, 👍🏽 thumbs, 🫠",  # ZWJ sequences, flags, skin tones
    "Cafe\u0301 vs Café; A\u030a vs Å",  # decomposed forms NFC composes
    "q\u0307\u0323 and e\u0301\u0302",  # combining marks with no precomposed form
    "\u1100\u1161\u11a8 한국어 텍스트",  # Hangul jamo (composed by NFC) and syllables
    "مرحبا بالعالم",  # Arabic
    "नमस्ते दुनिया",  # Devanagari with combining vowel signs
    "สวัสดีชาวโลก",  # Thai, no spaces
    "  leading, double  and trailing spaces  ",
    "tab\there\u00a0nbsp\u2028line-sep\u200bzwsp",
    "literal specials: <s> </s> <pad> <unk> stay text",
    "",
    " ",
    "\x00\x01 control \x7f",
]


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_on_hard_scripts(tokenizer: SubwordTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == nfc(text)
    assert tokenizer.normalize(text) == nfc(text)
    assert UNK_ID not in ids  # byte-level: nothing is unknown
    assert not set(ids) & {PAD_ID, BOS_ID, EOS_ID}  # no special tokens added or matched


def test_round_trip_on_random_unicode(tokenizer: SubwordTokenizer) -> None:
    """Random strings drawn from many blocks (incl. astral planes and combining marks)."""
    rng = random.Random(0)
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x400, 0x4FF), (0x600, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1FAFF), (0x10000, 0x1007F), (0x9, 0xA), (0x2000, 0x206F)]  # fmt: skip
    texts = []
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(0, 30)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        texts.append("".join(chars))
    decoded = tokenizer.decode_batch(tokenizer.encode_batch(texts))
    assert decoded == [nfc(t) for t in texts]


def test_exact_round_trip_on_whole_shipped_test_set(tokenizer: SubwordTokenizer) -> None:
    for lang in ("de", "en"):
        lines = read_gz(MULTI30K / f"test_2016_flickr.{lang}.gz")
        assert len(lines) == 1000
        encoded = tokenizer.encode_batch(lines)
        assert all(UNK_ID not in ids for ids in encoded)
        assert tokenizer.decode_batch(encoded) == [nfc(line) for line in lines]


def test_encode_batch_equals_encode_one_by_one(tokenizer: SubwordTokenizer) -> None:
    texts = [*HARD_TEXTS, *read_gz(MULTI30K / "val.de.gz", 50)]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_bpe_merges_frequent_words(tokenizer: SubwordTokenizer) -> None:
    """Subwords, not bytes: a frequent word is a single token, so training did its job."""
    assert len(tokenizer.encode("Ein Mann")) < len(b"Ein Mann")
    assert len(tokenizer.encode("Ein")) == 1


def test_special_tokens_at_fixed_ids(tokenizer: SubwordTokenizer) -> None:
    assert [tokenizer.id_to_token(i) for i in range(4)] == SPECIAL_TOKENS
    assert tokenizer.vocab_size == VOCAB


def test_decode_skips_special_tokens(tokenizer: SubwordTokenizer) -> None:
    ids = tokenizer.encode("Ein Hund läuft.")
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "Ein Hund läuft."
    assert tokenizer.decode_batch([[BOS_ID, *ids], [EOS_ID]]) == ["Ein Hund läuft.", ""]


def test_save_load_preserves_everything(tokenizer: SubwordTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = SubwordTokenizer.from_file(path)
    assert loaded.sha256 == tokenizer.sha256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tokenizer.sha256
    assert loaded.encode_batch(HARD_TEXTS) == tokenizer.encode_batch(HARD_TEXTS)
    assert loaded.encode("</s>") == tokenizer.encode("</s>") != [EOS_ID]
    assert os.listdir(tmp_path) == ["tokenizer.json"]  # no temporary file left


def test_save_is_atomic(
    tokenizer: SubwordTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while saving leaves the previous file intact and no temporary file behind."""
    path = tmp_path / "tokenizer.json"
    path.write_text("previous")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tokenizer.save(path)
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["tokenizer.json"]


def test_training_reads_gzip_and_plain_alike(tmp_path: Path) -> None:
    lines = read_gz(MULTI30K / "val.en.gz", 200)
    plain = write_lines(tmp_path / "a.txt", lines)
    gz = write_lines(tmp_path / "a.txt.gz", lines, newline="\r\n")  # CRLF too
    assert SubwordTokenizer.train([plain], 300).sha256 == SubwordTokenizer.train([gz], 300).sha256


def test_from_file_missing_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json: tokenizer file not found"):
        SubwordTokenizer.from_file(tmp_path / "nope.json")


@pytest.mark.parametrize("content", ["{not json", '{"version": "1.0"}', ""])
def test_from_file_corrupt_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(DataError, match=r"broken\.json: not a valid tokenizer file"):
        SubwordTokenizer.from_file(path)


def test_from_file_rejects_other_special_token_ids(tmp_path: Path) -> None:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4}
    other = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    path = tmp_path / "other.json"
    path.write_text(other.to_str())
    with pytest.raises(DataError, match=r"other\.json: special tokens are not at their fixed"):
        SubwordTokenizer.from_file(path)
    json.loads(path.read_text())  # the file itself was fine JSON: the check is semantic


def test_vocab_size_below_byte_alphabet_is_refused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.txt", ["hello"])
    with pytest.raises(DataError, match="vocab size must be at least 260"):
        SubwordTokenizer.train([path], 100)


def test_training_on_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: invalid UTF-8"):
        SubwordTokenizer.train([path], 300)
