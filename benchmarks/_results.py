"""What every benchmark does last: write its JSON result and print its table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(path: str | Path, result: dict[str, Any], table: str) -> None:
    """Write `result` as JSON to `path` (creating its folder) and print the Markdown `table`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table)
