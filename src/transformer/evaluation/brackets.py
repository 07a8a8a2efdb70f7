"""Labeled bracket precision, recall and F1 of constituency trees, in the EVALB convention.

EVALB (Sekine and Collins, 1997) with its standard parameter file COLLINS.prm is how parsing
results are reported, the paper's 91.3 F1 included. What it scores, and so what we score:

- a bracket is (label, first word, last word) of a phrase node: part-of-speech tags (the nodes
  right above the words) are not brackets, and the root (TOP, or ROOT in GUM) is deleted (a tree
  without such a root, "(S ...)", has its S scored);
- labels lose their function tags and indices (NP-SBJ-1 -> NP, NP=2 -> NP), and ADVP and PRT
  count as the same label;
- punctuation words, those whose gold part-of-speech tag is one of , : `` '' . , are deleted from
  both trees before spans are counted (and so are empty elements, -NONE-); a bracket left
  without words is dropped;
- brackets are matched as multisets: a bracket of the output matches at most one equal gold
  bracket, so a unary chain NP -> NP counts twice on both sides;
- corpus precision = matched / output brackets, recall = matched / gold brackets (sums over
  sentences, not means of sentence scores); exact match: every bracket of the sentence matched,
  none extra.

The output's own part-of-speech tags are never used (a parser that predicts the placeholder XX is
scored like one that predicts tags), which is also EVALB's behaviour for bracket scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from transformer.data.trees import Tree, strip_function_tags

PUNCTUATION_TAGS = frozenset({",", ":", "``", "''", "."})  # COLLINS.prm DELETE_LABEL
DELETED_LABELS = frozenset({"TOP", "ROOT", "-NONE-"})  # brackets never scored
DELETED_TAGS = PUNCTUATION_TAGS | {"-NONE-"}  # words deleted before spans are counted
EQUIVALENT_LABELS = {"PRT": "ADVP"}  # COLLINS.prm EQ_LABEL ADVP PRT

Bracket = tuple[str, int, int]  # (label, first word, one past the last word), punctuation removed


def brackets(tree: Tree, punctuation: Sequence[bool], labeled: bool = True) -> Counter[Bracket]:
    """The multiset of scored brackets of `tree`; `punctuation[i]` says whether word i is deleted.

    Word positions are counted over the words that are not deleted. Unlabeled brackets (the
    label "") score the bracketing alone.
    """
    out: Counter[Bracket] = Counter()
    position = 0  # index over all words
    kept = 0  # index over kept words

    def walk(node: Tree) -> None:
        nonlocal position, kept
        if node.is_preterminal:
            if position >= len(punctuation) or not punctuation[position]:
                kept += 1
            position += 1
            return
        start = kept
        for child in node.children:
            if isinstance(child, Tree):
                walk(child)
            else:  # a bare word under a phrase: a word with no tag
                if position >= len(punctuation) or not punctuation[position]:
                    kept += 1
                position += 1
        label = strip_function_tags(node.label)
        label = EQUIVALENT_LABELS.get(label, label)
        if label not in DELETED_LABELS and kept > start:
            out[(label if labeled else "", start, kept)] += 1

    walk(tree)
    return out


@dataclass(frozen=True)
class SentenceCounts:
    """The bracket counts of one sentence."""

    matched: int
    gold: int
    test: int

    @property
    def exact(self) -> bool:
        return self.matched == self.gold == self.test


def sentence_counts(gold: Tree, test: Tree, labeled: bool = True) -> SentenceCounts:
    """Matched, gold and output brackets of one sentence (punctuation from the gold tags)."""
    tags = [tag for tag, _ in gold.tagged_words()]
    n_test = len(test.leaves())
    if n_test != len(tags):
        raise ValueError(
            f"the output tree has {n_test} words but the gold tree has {len(tags)}; "
            "bracket scores need the same words"
        )
    punctuation = [tag in DELETED_TAGS for tag in tags]
    g, t = brackets(gold, punctuation, labeled), brackets(test, punctuation, labeled)
    return SentenceCounts(sum((g & t).values()), sum(g.values()), sum(t.values()))


@dataclass(frozen=True)
class BracketScores:
    """Corpus bracket scores (percentages), as EVALB's summary prints them."""

    precision: float
    recall: float
    f1: float
    exact_match: float
    sentences: int
    matched: int
    gold_brackets: int
    test_brackets: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 2),
            "recall": round(self.recall, 2),
            "f1": round(self.f1, 2),
            "exact_match": round(self.exact_match, 2),
            "sentences": self.sentences,
            "matched_brackets": self.matched,
            "gold_brackets": self.gold_brackets,
            "test_brackets": self.test_brackets,
        }


def bracket_scores(
    gold: Sequence[Tree], test: Sequence[Tree], labeled: bool = True
) -> BracketScores:
    """Bracket precision, recall, F1 and exact match (in %) of a corpus of trees: labeled (as
    EVALB), or unlabeled (the bracketing alone, as for baselines without labels)."""
    if len(gold) != len(test):
        raise ValueError(f"{len(test)} output trees but {len(gold)} gold trees; they must pair up")
    counts = [sentence_counts(g, t, labeled) for g, t in zip(gold, test)]
    matched = sum(c.matched for c in counts)
    n_gold = sum(c.gold for c in counts)
    n_test = sum(c.test for c in counts)
    precision = 100.0 * matched / n_test if n_test else 0.0
    recall = 100.0 * matched / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    exact = 100.0 * sum(c.exact for c in counts) / len(counts) if counts else 0.0
    return BracketScores(precision, recall, f1, exact, len(counts), matched, n_gold, n_test)


def right_branching(words: Sequence[str]) -> Tree:
    """The right-branching baseline tree: (ROOT (S w1 (S w2 (S ... wn)))), words tagged XX.

    Every bracket is an S (the commonest label of a clause); with n >= 2 words it has n - 1
    brackets below the root. Its unlabeled F1 is the classic baseline of English parsing.
    """
    leaves = [Tree("XX", [w]) for w in words]
    if not leaves:
        return Tree("ROOT", [])
    node = Tree("S", [leaves[-1]]) if len(leaves) == 1 else Tree("S", leaves[-2:])
    for leaf in reversed(leaves[:-2]):
        node = Tree("S", [leaf, node])
    return Tree("ROOT", [node])
