"""Joint subword tokenizer: byte-level BPE over source and target text (Sennrich et al., 2016).

The paper uses a shared source-target BPE vocabulary (about 37,000 tokens for EN-DE). We wrap
Hugging Face `tokenizers` with choices that make the round trip exact on any script, so no
detokenizer is ever needed:

- normalizer NFC: canonically equal strings get the same tokens; `normalize(text)` is NFC;
- pre-tokenizer ByteLevel (GPT-2 regex, no prefix space): every string is a byte sequence, so
  Chinese without spaces, emoji and combining characters all map to tokens and never to `<unk>`;
- decoder ByteLevel: bytes back to text, spaces included, so `decode(encode(t)) == normalize(t)`.

Special tokens are fixed (`transformer.vocab`): `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3. They are
never added by `encode`, and a literal "</s>" in the input text is encoded as ordinary text, so it
cannot smuggle an end-of-sentence into the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from transformer.data.errors import DataError
from transformer.data.textfiles import read_lines
from transformer.io import atomic_write_text
from transformer.vocab import SPECIAL_TOKENS

# 4 special tokens + the 256 byte symbols: the smallest vocabulary that can encode everything.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


class SubwordTokenizer:
    """Text <-> subword ids with the project's fixed special tokens; saved as one tokenizer.json."""

    def __init__(self, tokenizer: Tokenizer, source: str = "<memory>") -> None:
        _check_special_tokens(tokenizer, source)
        # Not serialised by `tokenizers`, hence set on every construction: special-token strings
        # in the input are plain text.
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def train(
        cls, files: Sequence[Path], vocab_size: int, min_frequency: int = 2
    ) -> SubwordTokenizer:
        """Learn a joint BPE vocabulary of `vocab_size` tokens over all lines of `files`.

        Pass the source and the target training files together to get one shared vocabulary.
        Files may be plain or gzip-compressed UTF-8 text.
        """
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise DataError(
                f"vocab size must be at least {MIN_VOCAB_SIZE} (4 special tokens + 256 bytes), "
                f"got {vocab_size!r}"
            )
        if min_frequency < 1:
            raise DataError(f"min_frequency must be at least 1, got {min_frequency}")
        if not files:
            raise DataError("no training files given for the tokenizer")
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[3]))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )

        def lines() -> Iterator[str]:
            for path in files:
                yield from read_lines(Path(path))

        tok.train_from_iterator(lines(), trainer)
        return cls(tok, source="trained tokenizer")

    @classmethod
    def from_file(cls, path: Path | str) -> SubwordTokenizer:
        """Load a tokenizer.json written by `save`; a clear error if it is missing or corrupt."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found")
        try:
            text = path.read_text(encoding="utf-8")
            tok = Tokenizer.from_str(text)
        except Exception as e:  # OSError, UnicodeDecodeError, or the plain Exception of tokenizers
            raise DataError(
                f"{path}: not a valid tokenizer file ({e}); re-create it with `transformer prepare`"
            ) from None
        return cls(tok, source=str(path))

    def save(self, path: Path | str) -> None:
        """Write tokenizer.json atomically (temporary file + rename): never a half-written file."""
        atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        """The serialised tokenizer (the exact content `save` writes)."""
        return self._tok.to_str(pretty=True)

    # ---------------------------------------------------------------------------------- use

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (NFC); `decode(encode(text))` returns exactly this."""
        normalizer = self._tok.normalizer
        return text if normalizer is None else normalizer.normalize_str(text)

    def encode(self, text: str) -> list[int]:
        """Subword ids of one text, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids of many texts, encoded in parallel (no offsets computed); no special tokens."""
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids; special tokens (padding, <s>, </s>) are skipped."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """Texts of many id sequences; special tokens are skipped."""
        return self._tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    def id_to_token(self, token_id: int) -> str | None:
        """The (byte-level) token string of an id, for inspection and visualisation."""
        return self._tok.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; the model's `vocab_size`."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def sha256(self) -> str:
        """Hash of the serialised JSON: identifies the vocabulary a dataset or model was built with."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _check_special_tokens(tok: Tokenizer, source: str) -> None:
    """The special tokens must sit at their fixed ids, or ids would mean different things."""
    wrong = [
        f"{token!r} has id {tok.token_to_id(token)}, expected {i}"
        for i, token in enumerate(SPECIAL_TOKENS)
        if tok.token_to_id(token) != i
    ]
    if wrong:
        raise DataError(
            f"{source}: special tokens are not at their fixed ids ({'; '.join(wrong)}); "
            "train the tokenizer with `transformer prepare`"
        )
    if not isinstance(tok.model, models.BPE):
        raise DataError(f"{source}: expected a BPE tokenizer, got {type(tok.model).__name__}")
