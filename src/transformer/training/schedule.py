"""The paper's learning rate (§5.3, equation 3).

    lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

It rises linearly for `warmup_steps` and then decays with the inverse square root of the step.
`step` counts optimizer updates (starting at 1), never micro-batches: under gradient accumulation
the rate changes once per update.
"""

from __future__ import annotations


def noam_learning_rate(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The rate for the `step`-th optimizer update (1-based)."""
    if step < 1:
        raise ValueError(f"step counts updates from 1, got {step}")
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
