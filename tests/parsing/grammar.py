"""A small synthetic English grammar whose trees a tiny parser learns in seconds.

Each word has one part of speech, and prepositional phrases attach to the verb phrase only, so
every sentence has exactly one tree; the structure still varies (optional adjectives, objects,
prepositional phrases, relative clauses) so that a parser must read the sentence to bracket it.
"""

from __future__ import annotations

import random

WORDS = {
    "DT": ["the", "a", "every"],
    "JJ": ["big", "red", "old"],
    "NN": ["dog", "cat", "park", "ball", "tree"],
    "NNP": ["Kim", "Lee"],
    "VBZ": ["sees", "likes", "chases"],
    "VBD": ["slept", "ran"],
    "IN": ["in", "near", "with"],
    "WDT": ["that"],
}


def _word(rng: random.Random, tag: str) -> str:
    return f"({tag} {rng.choice(WORDS[tag])})"


def _np(rng: random.Random, depth: int) -> str:
    if rng.random() < 0.25:
        return f"(NP {_word(rng, 'NNP')})"
    words = [_word(rng, "DT")]
    if rng.random() < 0.4:
        words.append(_word(rng, "JJ"))
    words.append(_word(rng, "NN"))
    inner = f"(NP {' '.join(words)})"
    if depth < 1 and rng.random() < 0.2:  # a relative clause: NP -> NP SBAR
        clause = f"(SBAR (WHNP {_word(rng, 'WDT')}) (S {_vp(rng, depth + 1)}))"
        return f"(NP {inner} {clause})"
    return inner


def _vp(rng: random.Random, depth: int) -> str:
    if rng.random() < 0.3:
        parts = [_word(rng, "VBD")]
    else:
        parts = [_word(rng, "VBZ"), _np(rng, depth + 1)]
    if depth == 0 and rng.random() < 0.4:  # main clause only: one attachment site
        parts.append(f"(PP {_word(rng, 'IN')} {_np(rng, depth + 1)})")
    return f"(VP {' '.join(parts)})"


def sample_tree(rng: random.Random) -> str:
    """One tree on one line, e.g. "(ROOT (S (NP-SBJ (NNP Kim)) (VP (VBD ran)) (. .)))"."""
    subject = _np(rng, 0).replace("(NP ", "(NP-SBJ ", 1)
    return f"(ROOT (S {subject} {_vp(rng, 0)} (. .)))"


def sample_trees(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sample_tree(rng) for _ in range(n)]
