"""Reading parallel text: plain or gzip, strict UTF-8, LF or CRLF, errors with file and line.

Lines are split on b"\\n" only (never on Unicode line separators such as U+2028 that may occur
inside a sentence), so that line *i* of a source file always pairs with line *i* of its target.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from transformer.data.errors import DataError

_BOM = "\ufeff"


def open_binary(path: Path) -> BinaryIO:
    """Open `path` for reading bytes, transparently decompressing a `.gz` file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from None


def read_lines(path: Path) -> Iterator[str]:
    """Yield the lines of `path` without their line ending (LF or CRLF), decoded as strict UTF-8.

    Raises DataError naming the file and the (1-based) line number on invalid UTF-8 or a corrupt
    gzip stream. A UTF-8 byte-order mark at the very start is dropped.
    """
    path = Path(path)
    lineno = 0
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                yield decode_line(raw, path, lineno)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot read after line {lineno}: {e}") from None


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """Line `lineno` of `path` decoded as strict UTF-8 (a byte-order mark opening line 1 dropped);
    DataError naming the file, line and byte otherwise."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{lineno}: invalid UTF-8 (byte {e.start + 1} of the line: "
            f"{raw[e.start : e.start + 4]!r}); convert the file to UTF-8, e.g. with iconv"
        ) from None
    return line[1:] if lineno == 1 and line.startswith(_BOM) else line


def count_lines(path: Path) -> int:
    """Number of lines in `path`, checking every line for valid UTF-8 on the way."""
    n = 0
    for _ in read_lines(path):
        n += 1
    return n


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """The sha256 of the file's bytes as stored on disk (what `sha256sum` prints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def resolve_prefix(prefix: str | Path, lang: str) -> Path:
    """The file `PREFIX.LANG` or `PREFIX.LANG.gz`; an error if neither or both exist."""
    plain = Path(f"{prefix}.{lang}")
    gz = Path(f"{prefix}.{lang}.gz")
    if plain.is_file() and gz.is_file():
        raise DataError(
            f"both {plain} and {gz} exist; it is unclear which to read, remove or rename one"
        )
    if plain.is_file():
        return plain
    if gz.is_file():
        return gz
    raise DataError(f"no file {plain} or {gz}: check the prefix and the language code '{lang}'")
