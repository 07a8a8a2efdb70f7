"""Constituency trees as sequences: the paper's parsing set-up (section 6.3, after Vinyals et al.).

A parser is a translation model whose source is a sentence (its words, separated by spaces) and
whose target is the sentence's tree written as a bracket sequence:

    (ROOT (S (NP-SBJ (DT The) (NN dog)) (VP (VBZ barks)) (. .)))
    source: The dog barks .
    target: (S (NP The dog ) (VP barks ) . )         # words=True (the default)
    target: (S (NP XX XX ) (VP XX ) XX )             # words=False: placeholders

The target leaves out the root node (every tree has one, with one child) and the part-of-speech
tags (as Vinyals et al. do; bracket F1 does not score them); function tags (`NP-SBJ`) are
stripped unless `function_tags=True`. Brackets are closed by a bare ")". Every token is separated
by a space, so that each word, each ")" and each "(LABEL" is a whole pre-token for the subword
tokenizer. Words are kept by default: Vinyals et al. replace them by XX, but then the decoder
must count words to know where it is, which small models trained briefly learn badly (on the
synthetic grammar of the tests, a tiny parser of 2 + 2 layers reached 77 F1 with words and 31
without, after 400 updates); copying the words gives every step an alignment to the source.

`delinearise` turns any model output back into a tree: always a well-formed one, whose leaves are
the source words in order (the output's leaf tokens are aligned with them, and only say where
each word goes). What was repaired is counted, and `Delinearised.well_formed` says whether
anything had to be.

Treebank leaves escape brackets as in the Penn Treebank (`-LRB-` for "(" and "[", `-RRB-` ...);
`sentence` undoes the escapes so that the source is plain text, and `delinearise` escapes "(" and
")" again inside leaves so that the tree can be written and read back.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from transformer.data.errors import DataError
from transformer.data.textfiles import read_lines

ROOT = "ROOT"
PLACEHOLDER = "XX"  # the predicted part-of-speech tag, and the leaf token with words=False
UNKNOWN_LABEL = "X"  # the label of an opening bracket without one (the Penn Treebank's "X")
PARSING_TASK = "parsing"  # the task name a parser's data and model directories record
# The decoding the paper used for parsing: beam 21, alpha 0.3, maximum output length input + 300.
PARSING_DECODING = {"beam": 21, "alpha": 0.3, "max_len_a": 1.0, "max_len_b": 300}

_ESCAPES = {
    "-LRB-": "(",
    "-RRB-": ")",
    "-LSB-": "[",
    "-RSB-": "]",
    "-LCB-": "{",
    "-RCB-": "}",
}
_ESCAPE_RE = re.compile("|".join(re.escape(e) for e in _ESCAPES))
_TOKEN_RE = re.compile(r"\(|\)|[^\s()]+")
# A model output's tokens: "(LABEL", ")" (a label glued to it, as in ")NP", is ignored), a leaf.
_OUTPUT_TOKEN_RE = re.compile(r"\([^\s()]*|\)[^\s()]*|[^\s()]+")


class TreeError(DataError):
    """A bracketed tree that cannot be read; the message says where."""


@dataclass
class Tree:
    """A constituent: a label and its children, each a Tree or (at a preterminal) a word."""

    label: str
    children: list[Tree | str] = field(default_factory=list)

    @property
    def is_preterminal(self) -> bool:
        return len(self.children) == 1 and isinstance(self.children[0], str)

    def leaves(self) -> list[str]:
        """The words, left to right."""
        return [word for _, word in self.tagged_words()]

    def tagged_words(self) -> list[tuple[str, str]]:
        """(part-of-speech tag, word) of each word, left to right."""
        out: list[tuple[str, str]] = []
        stack: list[Tree | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):  # a word directly under a phrase (not PTB style)
                out.append((PLACEHOLDER, node))
            elif node.is_preterminal:
                out.append((node.label, node.children[0]))  # type: ignore[arg-type]
            else:
                stack.extend(reversed(node.children))
        return out

    def __str__(self) -> str:
        return to_string(self)


# --------------------------------------------------------------------------- reading, writing


def parse_tree(text: str, where: str = "tree") -> Tree:
    """Read one bracketed tree, e.g. "(ROOT (S (NP (DT The) (NN dog)) (VP (VBZ barks))))".

    A node with no label, e.g. the outer "( (S ...))" of the Penn Treebank files, is called ROOT.
    Raises TreeError naming `where` and the character position of the problem.
    """
    tokens = [(m.group(), m.start()) for m in _TOKEN_RE.finditer(text)]
    if not tokens:
        raise TreeError(f"{where}: empty, expected a bracketed tree such as (ROOT (NN word))")
    pos = 0

    def fail(message: str, at: int) -> TreeError:
        return TreeError(f"{where}: {message} at character {at + 1}")

    def node() -> Tree:
        nonlocal pos
        tok, at = tokens[pos]
        if tok != "(":
            raise fail(f"expected '(' but found {tok!r}", at)
        pos += 1
        if pos >= len(tokens):
            raise fail("unexpected end of the tree", len(text))
        label = ROOT
        if tokens[pos][0] not in "()":
            label = tokens[pos][0]
            pos += 1
        children: list[Tree | str] = []
        while True:
            if pos >= len(tokens):
                raise fail(f"bracket opened here is never closed ({label})", at)
            tok = tokens[pos][0]
            if tok == ")":
                pos += 1
                break
            if tok == "(":
                children.append(node())
            else:
                children.append(tok)
                pos += 1
        if not children:
            raise fail(f"empty constituent ({label})", at)
        if any(isinstance(c, str) for c in children) and len(children) > 1:
            raise fail(f"({label} ...) mixes words and constituents", at)
        return Tree(label, children)

    tree = node()
    if pos != len(tokens):
        raise fail(f"unexpected {tokens[pos][0]!r} after the end of the tree", tokens[pos][1])
    return tree


def to_string(tree: Tree | str) -> str:
    """The tree on one line, e.g. "(ROOT (S (NP (DT The) (NN dog)) (VP (VBZ barks))))"."""
    if isinstance(tree, str):
        return tree
    return f"({tree.label} {' '.join(to_string(c) for c in tree.children)})"


def read_trees(path: Path | str) -> Iterator[Tree]:
    """The trees of a treebank file (plain or .gz), one per line; errors name the file and line."""
    for lineno, line in enumerate(read_lines(Path(path)), start=1):
        yield parse_tree(line, f"{path}:{lineno}")


# --------------------------------------------------------------------------- labels and words


def strip_function_tags(label: str) -> str:
    """ "NP-SBJ" -> "NP", "PP-LOC-2" -> "PP", "NP=1" -> "NP"; "-LRB-" and "-NONE-" stay."""
    if label.startswith("-"):
        return label
    return re.split(r"[-=]", label, maxsplit=1)[0] or label


def unescape(word: str) -> str:
    """A treebank leaf as plain text: "-LRB-" -> "(", "-LRB-a-RRB-" -> "(a)"."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], word)


def escape(word: str) -> str:
    """A word as a leaf that a bracket reader can read back: "(" -> "-LRB-", ")" -> "-RRB-"."""
    return word.replace("(", "-LRB-").replace(")", "-RRB-")


def sentence(tree: Tree) -> str:
    """The source side: the tree's words as plain text, separated by single spaces."""
    return " ".join(unescape(w) for w in tree.leaves())


# --------------------------------------------------------------------------- tree <-> sequence


def linearise(tree: Tree, *, words: bool = True, function_tags: bool = False) -> str:
    """The target side: the tree without its root and part-of-speech tags, as bracket tokens."""
    top = tree.children if tree.label == ROOT else [tree]
    out: list[str] = []

    def walk(node: Tree | str) -> None:
        if isinstance(node, str) or node.is_preterminal:
            word = node if isinstance(node, str) else node.children[0]
            out.append(str(word) if words else PLACEHOLDER)
            return
        out.append("(" + (node.label if function_tags else strip_function_tags(node.label)))
        for child in node.children:
            walk(child)
        out.append(")")

    for node in top:
        walk(node)
    return " ".join(out)


@dataclass(frozen=True)
class Delinearised:
    """A tree rebuilt from a target sequence, and what had to be repaired to build it.

    unclosed: brackets closed at the end; unopened: ")" without an open bracket (ignored);
    missing_words: source words for which the output had no leaf (placed before the next word it
    has, or at the end of the last top constituent, or of the root when the last top item is a
    word, so that the words stay in order); extra_leaves: leaf tokens that stand for no source
    word (dropped); empty: brackets without a word (removed); roots: top items (constituents or
    words) beyond the first (kept under ROOT); changed_words: leaves that are a source word
    miscopied (the source word is used; not a flaw of the tree's shape, so not counted by
    `well_formed`).
    """

    tree: Tree
    unclosed: int = 0
    unopened: int = 0
    missing_words: int = 0
    extra_leaves: int = 0
    empty: int = 0
    roots: int = 0
    changed_words: int = 0

    @property
    def well_formed(self) -> bool:
        """True when the output needed no repair: balanced, one leaf per word, one top node."""
        return not (
            self.unclosed
            or self.unopened
            or self.missing_words
            or self.extra_leaves
            or self.empty
            or self.roots
        )


def delinearise(sequence: str, words: list[str]) -> Delinearised:
    """The tree of a target `sequence` over the source `words`, repaired if it is ill-formed.

    The leaf tokens of the sequence (those that are not "(LABEL" or ")") are aligned with the
    source words, in order (`_align`: equal words first, then the others pairwise), and each takes
    its word, under the part-of-speech placeholder XX. A word the output skipped goes just before
    the next word it did write (in the same constituent), or at the end; a leaf with no word is
    dropped. With the placeholder XX as leaves, that is simply the i-th leaf for the i-th word.
    The result always has the root ROOT and the source words as its leaves, in order.
    """
    tokens = _OUTPUT_TOKEN_RE.findall(sequence)
    leaves = [tok for tok in tokens if not tok.startswith(("(", ")"))]
    aligned = iter(_align(leaves, words))
    root = Tree(ROOT, [])
    stack = [root]
    unopened = extra = changed = missing = 0
    placed = 0  # words placed so far (the next word to place is words[placed])
    for tok in tokens:
        if tok.startswith("("):
            node = Tree(tok[1:] or UNKNOWN_LABEL, [])
            stack[-1].children.append(node)
            stack.append(node)
        elif tok.startswith(")"):
            if len(stack) > 1:
                stack.pop()
            else:
                unopened += 1
        else:
            j = next(aligned)
            if j is None:
                extra += 1
                continue
            missing += j - placed  # words the output skipped, placed before this one
            stack[-1].children.extend(Tree(PLACEHOLDER, [escape(w)]) for w in words[placed : j + 1])
            changed += tok != PLACEHOLDER and unescape(tok) != words[j]
            placed = j + 1
    unclosed = len(stack) - 1
    empty = _drop_empty(root)
    if placed < len(words):
        missing += len(words) - placed
        last = root.children[-1] if root.children else None
        host = last if isinstance(last, Tree) and not last.is_preterminal else root
        host.children.extend(Tree(PLACEHOLDER, [escape(w)]) for w in words[placed:])
    roots = max(0, len(root.children) - 1)
    return Delinearised(root, unclosed, unopened, missing, extra, empty, roots, changed)


def _align(leaves: list[str], words: list[str]) -> list[int | None]:
    """For each output leaf, the index of the source word it stands for, or None; increasing.

    Leaves equal to their word are matched first (the longest common runs, difflib); between
    them, leaves and words are paired in order (a miscopied word, or the placeholder XX), and what
    is left over on either side is unmatched.
    """
    matcher = difflib.SequenceMatcher(None, [unescape(t) for t in leaves], words, autojunk=False)
    out: list[int | None] = []
    for _, i1, i2, j1, j2 in matcher.get_opcodes():  # equal, replace, delete or insert
        paired = min(i2 - i1, j2 - j1)
        out.extend(range(j1, j1 + paired))
        out.extend([None] * (i2 - i1 - paired))
    return out


def _drop_empty(node: Tree) -> int:
    """Remove the constituents below `node` that hold no word; returns how many were removed."""
    removed = 0
    kept: list[Tree | str] = []
    for child in node.children:
        if isinstance(child, Tree) and not child.is_preterminal:
            removed += _drop_empty(child)
            if not child.children:
                removed += 1
                continue
        kept.append(child)
    node.children = kept
    return removed
