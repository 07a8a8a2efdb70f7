"""The one error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or a bad data directory; the message names the file (and line) and the fix."""
