"""The package version, read from the installed distribution's metadata.

pyproject.toml is the one place the version is written; everything that reports it (`transformer
--version`, the server's OpenAPI document, an export's `export.json`) imports it from here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "transformer"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["DISTRIBUTION", "__version__"]
