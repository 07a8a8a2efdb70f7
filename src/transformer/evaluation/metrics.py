"""Corpus BLEU and chrF with sacreBLEU, on detokenized output against the raw references.

The tokenizer's `decode` already returns plain text, so hypotheses go to sacreBLEU as they are;
sacreBLEU applies its own standard tokenization (13a for BLEU), which is what its signature
records and what makes numbers comparable across papers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class CorpusScores:
    """BLEU and chrF of a corpus, with sacreBLEU's signatures and BLEU's details line."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_details: str  # e.g. "BLEU = 35.21 67.2/41.5/27.3/18.2 (BP = 1.000 ratio = ...)"


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScores:
    """sacreBLEU corpus BLEU (13a tokenization, exp smoothing) and chrF2 with one reference."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; they must pair up"
        )
    hyps, refs = list(hypotheses), [list(references)]
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hyps, refs)
    chrf_score = chrf.corpus_score(hyps, refs)
    return CorpusScores(
        bleu=float(bleu_score.score),
        chrf=float(chrf_score.score),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_details=str(bleu_score),
    )
