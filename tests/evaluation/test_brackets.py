"""Labeled bracket scores in the EVALB / COLLINS.prm convention
(transformer.evaluation.brackets), on small trees whose brackets are counted by hand.

Brackets are written (label, first word, one past the last word), words counted without the
punctuation the gold tags mark (, : `` '' .).
"""

from __future__ import annotations

from collections import Counter

import pytest

from transformer.data.trees import Tree, parse_tree
from transformer.evaluation.brackets import (
    BracketScores,
    SentenceCounts,
    bracket_scores,
    brackets,
    right_branching,
    sentence_counts,
)

# "The dog barks loudly": NP(0,2) ADVP(3,4) VP(2,4) S(0,4), four brackets.
DOG = "(ROOT (S (NP-SBJ (DT The) (NN dog)) (VP (VBZ barks) (ADVP (RB loudly)))))"


def p(text: str) -> Tree:
    return parse_tree(text)


def score(gold: str, test: str, labeled: bool = True) -> BracketScores:
    return bracket_scores([p(gold)], [p(test)], labeled=labeled)


def prf(s: BracketScores) -> tuple[float, float, float]:
    return (s.precision, s.recall, s.f1)


# --------------------------------------------------------------------------- the brackets


def test_brackets_of_a_tree():
    assert brackets(p(DOG), [False] * 4) == Counter(
        {("NP", 0, 2): 1, ("ADVP", 3, 4): 1, ("VP", 2, 4): 1, ("S", 0, 4): 1}
    )


def test_unlabeled_brackets_have_an_empty_label():
    assert brackets(p(DOG), [False] * 4, labeled=False) == Counter(
        {("", 0, 2): 1, ("", 3, 4): 1, ("", 2, 4): 1, ("", 0, 4): 1}
    )


@pytest.mark.parametrize("root", ["ROOT", "TOP", ""])
def test_root_and_preterminals_are_not_brackets(root):
    tree = p(f"({root} (S (NN Go) (RB away)))")
    assert brackets(tree, [False, False]) == Counter({("S", 0, 2): 1})


def test_a_top_node_is_dropped_by_its_label_root_or_top_only():
    # as EVALB's DELETE_LABEL TOP: a tree without a root wrapper has its S scored
    assert brackets(p("(S (NP (NN a)) (VP (VB b)))"), [False, False]) == Counter(
        {("S", 0, 2): 1, ("NP", 0, 1): 1, ("VP", 1, 2): 1}
    )
    assert brackets(p("(TOP (S (NP (NN a)) (VP (VB b))))"), [False, False]) == Counter(
        {("S", 0, 2): 1, ("NP", 0, 1): 1, ("VP", 1, 2): 1}
    )


def test_punctuation_positions_are_skipped():
    # "He left , then came back ." with "," and "." deleted keeps 5 words:
    # He(0) left(1) then(2) came(3) back(4)
    tree = p(
        "(ROOT (S (NP (PRP He)) (VP (VP (VBD left)) (, ,) (VP (ADVP (RB then)) (VBD came) "
        "(ADVP (RB back)))) (. .)))"
    )
    punct = [False, False, True, False, False, False, True]
    assert brackets(tree, punct) == Counter(
        {
            ("NP", 0, 1): 1,
            ("VP", 1, 2): 1,  # left
            ("ADVP", 2, 3): 1,  # then
            ("ADVP", 4, 5): 1,  # back
            ("VP", 2, 5): 1,  # then came back
            ("VP", 1, 5): 1,  # left , then came back
            ("S", 0, 5): 1,
        }
    )


# --------------------------------------------------------------------------- one sentence


def test_perfect_parse():
    test = "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (ADVP (XX loudly)))))"
    s = score(DOG, test)
    assert prf(s) == (100.0, 100.0, 100.0)
    assert s.exact_match == 100.0
    assert (s.sentences, s.matched, s.gold_brackets, s.test_brackets) == (1, 4, 4, 4)
    assert sentence_counts(p(DOG), p(test)) == SentenceCounts(4, 4, 4)
    assert sentence_counts(p(DOG), p(test)).exact


def test_gold_against_itself():
    s = score(DOG, DOG)
    assert prf(s) == (100.0, 100.0, 100.0) and s.exact_match == 100.0


def test_one_wrong_label():
    # ADVP -> PP: 3 of 4 brackets match on each side
    s = score(DOG, "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (PP (XX loudly)))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 4, 4)
    assert prf(s) == pytest.approx((75.0, 75.0, 75.0))
    assert s.exact_match == 0.0
    assert not sentence_counts(
        p(DOG), p("(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (PP (XX loudly)))))")
    ).exact


def test_one_wrong_span():
    # VP(2,3) instead of VP(2,4); ADVP(3,4) moved up to S; 3 of 4 match
    s = score(DOG, "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks)) (ADVP (XX loudly))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 4, 4)
    assert prf(s) == pytest.approx((75.0, 75.0, 75.0))
    assert s.exact_match == 0.0


def test_unlabeled_ignores_a_wrong_label_but_not_a_wrong_span():
    wrong_label = "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (PP (XX loudly)))))"
    assert prf(score(DOG, wrong_label, labeled=False)) == (100.0, 100.0, 100.0)
    wrong_span = "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks)) (ADVP (XX loudly))))"
    assert prf(score(DOG, wrong_span, labeled=False)) == pytest.approx((75.0, 75.0, 75.0))


def test_fewer_brackets_in_the_output():
    # flat output: only S(0,4) -> 1 matched; P = 1/1, R = 1/4, F1 = 2 * 1 * 0.25 / 1.25 = 0.4
    s = score(DOG, "(ROOT (S (XX The) (XX dog) (XX barks) (XX loudly)))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (1, 4, 1)
    assert prf(s) == pytest.approx((100.0, 25.0, 40.0))


def test_unary_chain_counts_as_two_brackets():
    gold = "(ROOT (S (VP (VB Go) (ADVP (RB away)))))"  # S(0,2) VP(0,2) ADVP(1,2)
    assert brackets(p(gold), [False, False]) == Counter(
        {("S", 0, 2): 1, ("VP", 0, 2): 1, ("ADVP", 1, 2): 1}
    )
    s = score(gold, "(ROOT (S (VP (XX Go) (ADVP (XX away)))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 3)
    # the output without the S: 2 of 2 output brackets right, 2 of 3 gold found
    s = score(gold, "(ROOT (VP (XX Go) (ADVP (XX away))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 3, 2)
    # P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert prf(s) == pytest.approx((100.0, 200 / 3, 80.0))
    # unlabeled: S(0,2) and VP(0,2) are still two brackets
    s = score(gold, "(ROOT (VP (XX Go) (ADVP (XX away))))", labeled=False)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 3, 2)


def test_duplicate_gold_brackets_match_one_output_bracket_each():
    # gold: NP(0,1) twice, VP(1,2), S(0,2) -> 4 brackets; output: NP(0,1) once -> 3 brackets
    gold = "(ROOT (S (NP (NP (NNP John))) (VP (VBD slept))))"
    test = "(ROOT (S (NP (XX John)) (VP (XX slept))))"
    assert brackets(p(gold), [False, False])[("NP", 0, 1)] == 2
    s = score(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 4, 3)
    # P = 3/3, R = 3/4, F1 = 2 * 0.75 / 1.75 = 6/7
    assert prf(s) == pytest.approx((100.0, 75.0, 600 / 7))
    assert s.recall < s.precision
    # the other way round: a duplicate in the output matches only one gold bracket
    s = score(test, gold)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 4)
    assert prf(s) == pytest.approx((75.0, 100.0, 600 / 7))


def test_triple_output_bracket_against_double_gold():
    gold = "(ROOT (S (NP (NP (NNP John))) (VP (VBD slept))))"  # NP x2, VP, S
    test = "(ROOT (S (NP (NP (NP (XX John)))) (VP (XX slept))))"  # NP x3, VP, S
    s = score(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (4, 4, 5)
    assert prf(s) == pytest.approx((80.0, 100.0, 2 * 80 * 100 / 180))


# --------------------------------------------------------------------------- punctuation

# "He left ." NP(0,1) VP(1,2) S(0,2): the final "." is deleted.
LEFT = "(ROOT (S (NP (PRP He)) (VP (VBD left)) (. .)))"


def test_bracket_that_differs_only_by_final_punctuation_matches():
    s = score(LEFT, "(ROOT (S (NP (XX He)) (VP (XX left) (XX .))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 3)
    assert s.exact_match == 100.0


@pytest.mark.parametrize(
    ("tag", "word"), [(",", ","), (":", ";"), (":", "--"), ("``", "``"), ("''", "''"), (".", "?")]
)
def test_every_punctuation_tag_is_deleted(tag, word):
    gold = f"(ROOT (S (NP (PRP He)) (VP (VBD left)) ({tag} {word})))"
    s = score(gold, f"(ROOT (S (NP (XX He)) (VP (XX left) (XX {word}))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 3)


def test_punctuation_inside_a_span():
    # "Hello , world": NP spans the 2 kept words Hello world
    gold = "(ROOT (NP (UH Hello) (, ,) (NN world)))"
    assert brackets(p(gold), [False, True, False]) == Counter({("NP", 0, 2): 1})
    # the output groups "," with "world" rather than with "Hello": the spans are the same
    gold = "(ROOT (S (INTJ (UH Hello) (, ,)) (NP (NN world))))"
    test = "(ROOT (S (INTJ (XX Hello)) (NP (XX ,) (XX world))))"
    # gold INTJ(0,1) NP(1,2) S(0,2); output INTJ(0,1) NP(1,2) S(0,2): all match
    s = score(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 3)


def test_punctuation_is_read_from_the_gold_tags_only():
    # the gold tags "." as NN (a word): it is not deleted, so VP(1,3) != VP(1,2)
    gold = "(ROOT (S (NP (PRP He)) (VP (VBD left)) (NN .)))"
    s = score(gold, "(ROOT (S (NP (XX He)) (VP (XX left) (XX .))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 3, 3)
    # the output's own tags (here ".") do not delete anything either
    s = score(gold, "(ROOT (S (NP (PRP He)) (VP (VBD left) (. .))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 3, 3)


def test_brackets_are_not_punctuation():
    # -LRB- / -RRB- are not in COLLINS.prm's deleted labels: "( x )" keeps 3 words
    gold = "(ROOT (S (NP (NN a)) (PRN (-LRB- -LRB-) (NP (NN b)) (-RRB- -RRB-))))"
    # NP(0,1) NP(2,3) PRN(1,4) S(0,4)
    assert brackets(p(gold), [False] * 4) == Counter(
        {("NP", 0, 1): 1, ("NP", 2, 3): 1, ("PRN", 1, 4): 1, ("S", 0, 4): 1}
    )
    test = "(ROOT (S (NP (XX a)) (PRN (XX -LRB-) (NP (XX b))) (XX -RRB-)))"  # PRN(1,3)
    s = score(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 4, 4)


def test_bracket_of_punctuation_only_is_dropped():
    # the output puts "." in its own X bracket: dropped, so 3 output brackets, all right
    s = score(LEFT, "(ROOT (S (NP (XX He)) (VP (XX left)) (X (XX .))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 3, 3)
    assert s.exact_match == 100.0
    # a gold bracket over punctuation only is dropped too
    gold = "(ROOT (S (NP (PRP He)) (VP (VBD left)) (PRN (: --) (, ,)) (. .)))"
    assert brackets(p(gold), [False, False, True, True, True]) == Counter(
        {("NP", 0, 1): 1, ("VP", 1, 2): 1, ("S", 0, 2): 1}
    )


def test_sentence_of_punctuation_only():
    gold = "(ROOT (S (. !)))"
    s = score(gold, "(ROOT (S (XX !)))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (0, 0, 0)
    assert prf(s) == (0.0, 0.0, 0.0)
    assert s.exact_match == 100.0  # nothing to find, nothing extra


# --------------------------------------------------------------------------- labels


def test_prt_and_advp_are_the_same_label():
    gold = "(ROOT (S (NP (PRP He)) (VP (VBD gave) (PRT (RP up)))))"
    s = score(gold, "(ROOT (S (NP (XX He)) (VP (XX gave) (ADVP (XX up)))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (4, 4, 4)
    s = score("(ROOT (S (NP (PRP He)) (VP (VBD gave) (ADVP (RB up)))))", gold)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (4, 4, 4)
    s = score(gold, "(ROOT (S (NP (XX He)) (VP (XX gave) (PP (XX up)))))")
    assert (s.matched, s.gold_brackets, s.test_brackets) == (3, 4, 4)


def test_function_tags_and_indices_are_ignored():
    gold = (
        "(ROOT (S (NP-SBJ-1 (PRP He)) (VP (VBD slept) (PP-LOC (IN at) (NP=2 (NN home))) "
        "(NP-TMP (NN today)))))"
    )
    # NP(0,1) NP(3,4) PP(2,4) NP(4,5) VP(1,5) S(0,5)
    test = "(ROOT (S (NP (XX He)) (VP (XX slept) (PP (XX at) (NP (XX home))) (NP (XX today)))))"
    s = score(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (6, 6, 6)
    # function tags in the output are ignored too, and a different one still matches
    s = score(test, gold.replace("PP-LOC", "PP-DIR"))
    assert (s.matched, s.gold_brackets, s.test_brackets) == (6, 6, 6)


# --------------------------------------------------------------------------- the corpus


def test_corpus_scores_sum_counts_over_sentences():
    # sentence 1: the flat output of DOG: matched 1, gold 4, test 1
    # sentence 2: LEFT parsed perfectly:   matched 3, gold 3, test 3
    # sums: matched 4, gold 7, test 4 -> P = 4/4 = 100, R = 4/7, F1 = 2 * (4/7) / (11/7) = 8/11
    # (averaging sentence scores would give P 100, R (25 + 100) / 2 = 62.5)
    gold = [p(DOG), p(LEFT)]
    test = [
        p("(ROOT (S (XX The) (XX dog) (XX barks) (XX loudly)))"),
        p("(ROOT (S (NP (XX He)) (VP (XX left)) (XX .)))"),
    ]
    s = bracket_scores(gold, test)
    assert (s.sentences, s.matched, s.gold_brackets, s.test_brackets) == (2, 4, 7, 4)
    assert s.precision == pytest.approx(100.0)
    assert s.recall == pytest.approx(400 / 7)
    assert s.f1 == pytest.approx(800 / 11)
    assert s.exact_match == pytest.approx(50.0)


def test_corpus_precision_and_recall_are_not_means():
    # sentence 1: wrong label on DOG: 3/4/4; sentence 2: unary chain missing S: 2/3/2
    # sums 5 / 7 / 6: P = 5/6, R = 5/7, F1 = 2 * 5 / (6 + 7) = 10/13
    # (means of sentence precisions: (0.75 + 1) / 2 = 0.875 != 5/6)
    gold = [p(DOG), p("(ROOT (S (VP (VB Go) (ADVP (RB away)))))")]
    test = [
        p("(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (PP (XX loudly)))))"),
        p("(ROOT (VP (XX Go) (ADVP (XX away))))"),
    ]
    s = bracket_scores(gold, test)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (5, 7, 6)
    assert prf(s) == pytest.approx((500 / 6, 500 / 7, 1000 / 13))
    assert s.exact_match == 0.0


def test_as_dict_rounds_to_two_decimals():
    gold = [p(DOG), p("(ROOT (S (VP (VB Go) (ADVP (RB away)))))")]
    test = [
        p("(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks) (PP (XX loudly)))))"),
        p("(ROOT (VP (XX Go) (ADVP (XX away))))"),
    ]
    assert bracket_scores(gold, test).as_dict() == {
        "precision": 83.33,  # 500/6 = 83.333...
        "recall": 71.43,  # 500/7 = 71.428...
        "f1": 76.92,  # 1000/13 = 76.923...
        "exact_match": 0.0,
        "sentences": 2,
        "matched_brackets": 5,
        "gold_brackets": 7,
        "test_brackets": 6,
    }


def test_empty_corpus():
    s = bracket_scores([], [])
    assert (s.precision, s.recall, s.f1, s.exact_match, s.sentences) == (0.0, 0.0, 0.0, 0.0, 0)


def test_word_count_mismatch_raises():
    with pytest.raises(ValueError, match="the output tree has 3 words but the gold tree has 4"):
        score(DOG, "(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks))))")
    with pytest.raises(ValueError, match="has 5 words but the gold tree has 4"):
        bracket_scores([p(DOG)], [right_branching(["a", "b", "c", "d", "e"])])


def test_list_length_mismatch_raises():
    with pytest.raises(ValueError, match="1 output trees but 2 gold trees"):
        bracket_scores([p(DOG), p(LEFT)], [p(DOG)])
    with pytest.raises(ValueError, match="2 output trees but 0 gold trees"):
        bracket_scores([], [p(DOG), p(LEFT)])


# --------------------------------------------------------------------------- right branching


def test_right_branching_one_word():
    assert right_branching(["Hi"]) == Tree("ROOT", [Tree("S", [Tree("XX", ["Hi"])])])


def test_right_branching_two_words():
    tree = right_branching(["a", "b"])
    assert tree == Tree("ROOT", [Tree("S", [Tree("XX", ["a"]), Tree("XX", ["b"])])])
    assert brackets(tree, [False, False]) == Counter({("S", 0, 2): 1})


def test_right_branching_four_words():
    tree = right_branching(["a", "b", "c", "d"])
    x = [Tree("XX", [w]) for w in "abcd"]
    expected = Tree("ROOT", [Tree("S", [x[0], Tree("S", [x[1], Tree("S", [x[2], x[3]])])])])
    assert tree == expected
    assert str(tree) == "(ROOT (S (XX a) (S (XX b) (S (XX c) (XX d)))))"
    # n - 1 = 3 brackets below the root
    assert brackets(tree, [False] * 4) == Counter({("S", 0, 4): 1, ("S", 1, 4): 1, ("S", 2, 4): 1})
    assert tree.leaves() == ["a", "b", "c", "d"]


def test_right_branching_scores_against_a_gold_tree():
    tree = right_branching(["The", "dog", "barks", "loudly"])
    # gold NP(0,2) ADVP(3,4) VP(2,4) S(0,4); output S(0,4) S(1,4) S(2,4)
    # labeled: only S(0,4) matches -> P = 1/3, R = 1/4, F1 = 2 * (1/12) / (7/12) = 2/7
    s = bracket_scores([p(DOG)], [tree])
    assert (s.matched, s.gold_brackets, s.test_brackets) == (1, 4, 3)
    assert prf(s) == pytest.approx((100 / 3, 25.0, 200 / 7))
    # unlabeled: (0,4) and (2,4) match -> P = 2/3, R = 1/2, F1 = 2 * (1/3) / (7/6) = 4/7
    s = bracket_scores([p(DOG)], [tree], labeled=False)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 4, 3)
    assert prf(s) == pytest.approx((200 / 3, 50.0, 400 / 7))


def test_right_branching_with_final_punctuation():
    # "He left ." -> (S He (S left .)): S(0,2), and S(1,2) once "." is deleted
    tree = right_branching(["He", "left", "."])
    s = bracket_scores([p(LEFT)], [tree])
    # gold NP(0,1) VP(1,2) S(0,2): only S(0,2) matches labeled -> P 1/2, R 1/3, F1 2/5
    assert (s.matched, s.gold_brackets, s.test_brackets) == (1, 3, 2)
    assert prf(s) == pytest.approx((50.0, 100 / 3, 40.0))
    # unlabeled: (0,2) and (1,2) both match -> P 1, R 2/3, F1 4/5
    s = bracket_scores([p(LEFT)], [tree], labeled=False)
    assert (s.matched, s.gold_brackets, s.test_brackets) == (2, 3, 2)
    assert prf(s) == pytest.approx((100.0, 200 / 3, 80.0))


def test_bare_words_under_a_phrase_follow_the_gold_punctuation():
    gold = p("(ROOT (S (NN a) (. .)))")  # S(0,1)
    test = Tree("ROOT", [Tree("S", ["a", "."])])  # not PTB style: words without tags
    assert brackets(test, [False, True]) == Counter({("S", 0, 1): 1})
    assert sentence_counts(gold, test) == SentenceCounts(1, 1, 1)
