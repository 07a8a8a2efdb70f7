"""Where a run's numbers go: RUN_DIR/metrics.jsonl (one JSON row per event, read by
`transformer.training.plot` and the study runner) and, on request, TensorBoard.

Rows: {"kind": "train" | "valid" | "nonfinite" | "overflow", "step": update, "epoch": 1-based,
...numbers}. Only the main process writes. On resume, rows logged after the checkpoint are
dropped, since the resumed run logs them again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformer.io import atomic_write_text
from transformer.training.errors import TrainingError

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends rows to RUN_DIR/metrics.jsonl (and TensorBoard scalars); silent when not `enabled`."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self._tensorboard: Any = None

    def open_tensorboard(self) -> None:
        """Also write every numeric value as a scalar `KIND/NAME` to RUN_DIR/tensorboard."""
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrainingError(
                "train.tensorboard is true but the tensorboard package is not installed "
                "(pip install tensorboard)"
            ) from e
        self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            kind = row["kind"]
            for key, value in row.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"{kind}/{key}", value, row["step"])

    def truncate(self, step: int) -> None:
        """Forget rows logged after update `step` (a resumed run logs them again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


class LossWindow:
    """The training loss and speed over the updates since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.nll = self.tokens = 0.0
        self.updates = 0
        self.start = time.monotonic()

    def add(self, loss: float, nll_loss: float, tokens: float) -> None:
        """One update's token-mean losses and its target tokens (over all processes)."""
        self.loss += loss * tokens
        self.nll += nll_loss * tokens
        self.tokens += tokens
        self.updates += 1

    def row(self) -> dict[str, float]:
        """Mean losses, perplexity and speed of the window (then starts a new window)."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        tokens = max(self.tokens, 1.0)
        nll = self.nll / tokens
        row = {
            "loss": self.loss / tokens,
            "nll_loss": nll,
            "ppl": math.exp(min(nll, 50.0)),
            "tokens_per_s": self.tokens / elapsed,
            "updates_per_s": self.updates / elapsed,
        }
        self.reset()
        return row
