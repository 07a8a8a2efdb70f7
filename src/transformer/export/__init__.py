"""Export of a model directory to other inference engines (`transformer export`).

Only CTranslate2 for now (`transformer.export.ct2`); its runtime side is
`transformer.decoding.ct2_engine`, and the directory format both share is
`transformer.ct2_format`. Nothing here imports `ctranslate2` at module level: it is an
optional dependency (`pip install '.[fast]'`).
"""

from transformer.ct2_format import (
    CT2_CONFIG_FILE,
    CT2_WEIGHTS_FILE,
    EXPORT_FILE,
    QUANTIZATIONS,
    SOURCE_CONFIG_FILE,
)
from transformer.export.ct2 import ExportError, export_ctranslate2, unsupported_options

__all__ = [
    "CT2_CONFIG_FILE",
    "CT2_WEIGHTS_FILE",
    "EXPORT_FILE",
    "QUANTIZATIONS",
    "SOURCE_CONFIG_FILE",
    "ExportError",
    "export_ctranslate2",
    "unsupported_options",
]
