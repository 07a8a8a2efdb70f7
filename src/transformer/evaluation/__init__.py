"""Evaluation: sacreBLEU BLEU and chrF with their signatures (`transformer evaluate`)."""

from transformer.evaluation.metrics import CorpusScores, corpus_scores

__all__ = ["CorpusScores", "corpus_scores"]
