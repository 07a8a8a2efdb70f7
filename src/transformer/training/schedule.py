"""The paper's learning rate (§5.3, equation 3).

    lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

It rises linearly for `warmup_steps` and then decays with the inverse square root of the step.
`step` counts optimizer updates (starting at 1), never micro-batches: under gradient accumulation
the rate changes once per update.

Not in the paper: an optional cooldown lowers the rate linearly towards zero over the last
`cooldown` updates of a run of `max_updates`, or over its last `cooldown_minutes` of
`max_minutes` (the "decay" of warmup-stable-decay schedules), so that a run stopped at its budget
ends annealed. On a model still improving quickly it costs progress: the study model on all of
Multi30k, 1,600 updates, ended at validation perplexity 10.68 with a 400-update cooldown and
10.19 without (same seed). At the end of an hour on Multi30k, where the model has plateaued, it
helps (README, "An hour in bf16").
"""

from __future__ import annotations


def noam_learning_rate(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The rate for the `step`-th optimizer update (1-based)."""
    if step < 1:
        raise ValueError(f"step counts updates from 1, got {step}")
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def cooldown_factor(left: float, cooldown: float) -> float:
    """The multiplier of the rate with `left` of the budget still to train (updates, this one
    included, or minutes): 1 until `left` falls under `cooldown`, then left / cooldown (updates:
    down to 1 / cooldown at the last); always 1 with `cooldown` 0."""
    if cooldown <= 0:
        return 1.0
    return min(1.0, max(0.0, left) / cooldown)
