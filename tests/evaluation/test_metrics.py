"""corpus_scores is sacreBLEU's BLEU and chrF, with signatures."""

from __future__ import annotations

import pytest
import sacrebleu

from transformer.evaluation import corpus_scores


def test_corpus_scores_equal_sacrebleu_and_carry_signatures():
    hyps = ["A dog runs in the park.", "Two men talk.", "A red car."]
    refs = ["A dog is running in the park.", "Two men are talking.", "A red car."]
    scores = corpus_scores(hyps, refs)
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert f"version:{sacrebleu.__version__}" in scores.chrf_signature
    assert scores.bleu_details.startswith(f"BLEU = {scores.bleu:.2f}")
    assert corpus_scores(refs, refs).bleu == pytest.approx(100.0)


def test_corpus_scores_refuse_unpaired_lists():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_scores(["a", "b"], ["a"])
