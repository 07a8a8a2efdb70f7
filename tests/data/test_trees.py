"""Constituency trees as bracket sequences (transformer.data.trees): reading and writing trees,
their words, linearise / delinearise, and the repairs of ill-formed model outputs.

Every expected value below is worked out by hand from the input written next to it.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from transformer.data.errors import DataError
from transformer.data.trees import (
    PLACEHOLDER,
    ROOT,
    UNKNOWN_LABEL,
    Delinearised,
    Tree,
    TreeError,
    delinearise,
    escape,
    linearise,
    parse_tree,
    read_trees,
    sentence,
    strip_function_tags,
    to_string,
    unescape,
)

GUM = Path(__file__).resolve().parents[2] / "data" / "gum"  # the project's copy


def pt(tag: str, word: str) -> Tree:
    return Tree(tag, [word])


# --------------------------------------------------------------------------- parse_tree


def test_parse_tree_builds_nested_trees():
    tree = parse_tree("(ROOT (S (NP (DT The) (NN dog)) (VP (VBZ barks))))")
    assert tree == Tree(
        "ROOT",
        [
            Tree(
                "S",
                [Tree("NP", [pt("DT", "The"), pt("NN", "dog")]), Tree("VP", [pt("VBZ", "barks")])],
            )
        ],
    )
    assert tree.leaves() == ["The", "dog", "barks"]
    assert tree.tagged_words() == [("DT", "The"), ("NN", "dog"), ("VBZ", "barks")]
    assert tree.children[0].children[0].children[0].is_preterminal
    assert not tree.children[0].children[0].is_preterminal


def test_parse_tree_ignores_extra_whitespace():
    text = "  (ROOT\n\t(S   (NP (NN a))\n (VP (VB b)) ) )  "
    assert to_string(parse_tree(text)) == "(ROOT (S (NP (NN a)) (VP (VB b))))"


def test_penn_treebank_outer_bracket_without_label_is_root():
    tree = parse_tree("( (S (NP-SBJ (PRP He)) (VP (VBD left)) (. .)))")
    assert tree.label == ROOT == "ROOT"
    assert len(tree.children) == 1 and tree.children[0].label == "S"
    assert to_string(tree) == "(ROOT (S (NP-SBJ (PRP He)) (VP (VBD left)) (. .)))"


def test_parse_tree_keeps_function_tags_and_bracket_leaves():
    tree = parse_tree("(ROOT (PRN (-LRB- -LRB-) (NP-SBJ=2 (NN x)) (-RRB- -RRB-)))")
    prn = tree.children[0]
    assert [c.label for c in prn.children] == ["-LRB-", "NP-SBJ=2", "-RRB-"]
    assert tree.leaves() == ["-LRB-", "x", "-RRB-"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # "(S (NP (DT a)": NP opens at index 3 (character 4) and is never closed
        ("(S (NP (DT a)", "bracket opened here is never closed (NP) at character 4"),
        # the whole tree opened at character 1 and never closed
        ("(ROOT (NN b)", "bracket opened here is never closed (ROOT) at character 1"),
        ("(S", "bracket opened here is never closed (S) at character 1"),
        # a lone "(": the text ends (length 1) right after it -> character 2
        ("(", "unexpected end of the tree at character 2"),
        # "(NN a) b": "b" is at index 7
        ("(NN a) b", "unexpected 'b' after the end of the tree at character 8"),
        # 28 characters, one ")" too many at index 27
        (
            "(S (NP (DT a)) (VP (VB b))))",
            "unexpected ')' after the end of the tree at character 28",
        ),
        # a second tree after the first: its "(" is at index 13
        ("(NP (NN a)) (NP (NN b))", "unexpected '(' after the end of the tree at character 13"),
        # "(NP )" opens at index 3
        ("(S (NP ) (VP (VB go)))", "empty constituent (NP) at character 4"),
        ("()", "empty constituent (ROOT) at character 1"),
        # NP holds a constituent and a word; NP opens at index 3
        ("(S (NP (DT a) dog))", "(NP ...) mixes words and constituents at character 4"),
        ("(S (NP (DT a)) b)", "(S ...) mixes words and constituents at character 1"),
        ("dog (NN a)", "expected '(' but found 'dog' at character 1"),
        (")", "expected '(' but found ')' at character 1"),
    ],
)
def test_parse_errors_name_where_and_character(text, message):
    with pytest.raises(TreeError) as info:
        parse_tree(text, where="train.trees:7")
    assert str(info.value) == f"train.trees:7: {message}"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_parse_empty_text_is_an_error_naming_where(text):
    with pytest.raises(TreeError, match=r"^dev\.trees:3: empty, expected a bracketed tree"):
        parse_tree(text, where="dev.trees:3")


def test_parse_error_default_where_and_error_types():
    with pytest.raises(TreeError, match=r"^tree: empty constituent \(NP\) at character 1$"):
        parse_tree("(NP)")
    assert issubclass(TreeError, DataError) and issubclass(TreeError, ValueError)


def test_parse_two_words_under_one_node_is_an_error():
    with pytest.raises(TreeError, match=r"at character 1$"):
        parse_tree("(NP a b)")


# --------------------------------------------------------------------------- writing, reading


def test_to_string_of_trees_and_words():
    tree = Tree("ROOT", [Tree("S", [Tree("NP-SBJ", [pt("PRP", "It")]), pt(".", ".")])])
    assert to_string(tree) == "(ROOT (S (NP-SBJ (PRP It)) (. .)))"
    assert str(tree) == "(ROOT (S (NP-SBJ (PRP It)) (. .)))"
    assert to_string("word") == "word"


def test_to_string_parse_tree_round_trip():
    text = "(ROOT (S (NP-SBJ (DT The) (NN cat)) (PRN (-LRB- -LRB-) (NP (NNP Tom)) (-RRB- -RRB-)) (. .)))"
    assert to_string(parse_tree(text)) == text


def test_read_trees_reads_plain_and_gzip_files(tmp_path):
    lines = ["(ROOT (NP (NN Introduction)))", "( (S (NP (PRP He)) (VP (VBD left))))"]
    plain = tmp_path / "a.trees"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packed = tmp_path / "a.trees.gz"
    packed.write_bytes(gzip.compress(("\r\n".join(lines) + "\r\n").encode("utf-8")))
    for path in (plain, packed, str(plain)):
        trees = list(read_trees(path))
        assert [to_string(t) for t in trees] == [
            "(ROOT (NP (NN Introduction)))",
            "(ROOT (S (NP (PRP He)) (VP (VBD left))))",
        ]


def test_read_trees_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.trees"
    path.write_text("(ROOT (NN a))\n(ROOT (NN b)\n", encoding="utf-8")
    trees = read_trees(path)
    assert to_string(next(trees)) == "(ROOT (NN a))"
    with pytest.raises(TreeError) as info:
        next(trees)
    assert str(info.value) == f"{path}:2: bracket opened here is never closed (ROOT) at character 1"


def test_read_trees_blank_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "blank.trees"
    path.write_text("(ROOT (NN a))\n\n", encoding="utf-8")
    with pytest.raises(TreeError, match=rf"^{re.escape(str(path))}:2: empty"):
        list(read_trees(path))


# --------------------------------------------------------------------------- labels and words


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("NP", "NP"),
        ("NP-SBJ", "NP"),
        ("PP-LOC-2", "PP"),
        ("NP=1", "NP"),
        ("NP-SBJ=2", "NP"),
        ("S-NOM-SBJ", "S"),
        ("PRP$", "PRP$"),
        ("-LRB-", "-LRB-"),
        ("-RRB-", "-RRB-"),
        ("-NONE-", "-NONE-"),
    ],
)
def test_strip_function_tags(label, expected):
    assert strip_function_tags(label) == expected


@pytest.mark.parametrize(
    ("word", "plain"),
    [
        ("-LRB-", "("),
        ("-RRB-", ")"),
        ("-LSB-", "["),
        ("-RSB-", "]"),
        ("-LCB-", "{"),
        ("-RCB-", "}"),
        ("-LRB-a-RRB-", "(a)"),
        ("friend-LRB-s-RRB-", "friend(s)"),
        ("--", "--"),
        ("-LRB", "-LRB"),
        ("dog", "dog"),
    ],
)
def test_unescape(word, plain):
    assert unescape(word) == plain


def test_escape_brackets_only():
    assert escape("(") == "-LRB-"
    assert escape(")") == "-RRB-"
    assert escape("f(x)") == "f-LRB-x-RRB-"
    assert escape("[a]") == "[a]"
    assert escape("dog") == "dog"
    for word in ["(", ")", "f(x)", "((", "a)b(c"]:
        assert unescape(escape(word)) == word
        assert "(" not in escape(word) and ")" not in escape(word)


def test_sentence_unescapes_every_leaf():
    tree = parse_tree(
        "(ROOT (S (-LRB- -LRB-) (NN -LRB-a-RRB-) (-LRB- -LSB-) (NN x) (-RRB- -RSB-) "
        "(-LRB- -LCB-) (-RRB- -RCB-) (-RRB- -RRB-) (. .)))"
    )
    assert sentence(tree) == "( (a) [ x ] { } ) ."


def test_sentence_joins_words_with_single_spaces():
    tree = parse_tree("(ROOT (S (NP (DT The) (NN dog)) (VP (VBZ barks)) (. .)))")
    assert sentence(tree) == "The dog barks ."


# --------------------------------------------------------------------------- linearise

# Function tags (NP-SBJ, PP-LOC), a unary chain (S (VP (VB purring))), punctuation (, and .), and
# bracket leaves (-LRB- / -RRB-).
EXAMPLE = (
    "(ROOT (S (NP-SBJ (DT The) (NN cat)) (PRN (-LRB- -LRB-) (NP (NNP Tom)) (-RRB- -RRB-)) "
    "(VP (VBD sat) (PP-LOC (IN on) (NP (DT the) (NN mat)))) (, ,) (S-ADV (VP (VBG purring))) "
    "(. .)))"
)


def test_linearise_placeholders():
    assert linearise(parse_tree(EXAMPLE), words=False) == (
        "(S (NP XX XX ) (PRN XX (NP XX ) XX ) (VP XX (PP XX (NP XX XX ) ) ) XX (S (VP XX ) ) XX )"
    )


def test_linearise_words():
    assert linearise(parse_tree(EXAMPLE), words=True) == (
        "(S (NP The cat ) (PRN -LRB- (NP Tom ) -RRB- ) (VP sat (PP on (NP the mat ) ) ) , "
        "(S (VP purring ) ) . )"
    )


def test_linearise_function_tags():
    assert linearise(parse_tree(EXAMPLE), words=False, function_tags=True) == (
        "(S (NP-SBJ XX XX ) (PRN XX (NP XX ) XX ) (VP XX (PP-LOC XX (NP XX XX ) ) ) XX "
        "(S-ADV (VP XX ) ) XX )"
    )
    assert linearise(parse_tree(EXAMPLE), words=True, function_tags=True) == (
        "(S (NP-SBJ The cat ) (PRN -LRB- (NP Tom ) -RRB- ) (VP sat (PP-LOC on (NP the mat ) ) ) , "
        "(S-ADV (VP purring ) ) . )"
    )


def test_linearise_example_source_and_round_trip():
    tree = parse_tree(EXAMPLE)
    assert sentence(tree) == "The cat ( Tom ) sat on the mat , purring ."
    out = delinearise(linearise(tree, words=False), sentence(tree).split())
    assert out.well_formed
    assert to_string(out.tree) == (
        "(ROOT (S (NP (XX The) (XX cat)) (PRN (XX -LRB-) (NP (XX Tom)) (XX -RRB-)) "
        "(VP (XX sat) (PP (XX on) (NP (XX the) (XX mat)))) (XX ,) (S (VP (XX purring))) (XX .)))"
    )


def test_linearise_docstring_example():
    tree = parse_tree("(ROOT (S (NP-SBJ (DT The) (NN dog)) (VP (VBZ barks)) (. .)))")
    assert linearise(tree, words=False) == "(S (NP XX XX ) (VP XX ) XX )"
    assert linearise(tree, words=True) == "(S (NP The dog ) (VP barks ) . )"


def test_linearise_keeps_words_by_default():
    # the module docstring: words=True is the default (the target copies the source words)
    tree = parse_tree(EXAMPLE)
    assert linearise(tree) == linearise(tree, words=True)
    assert linearise(tree) != linearise(tree, words=False)
    assert linearise(tree, function_tags=True) == linearise(tree, words=True, function_tags=True)


def test_linearise_tree_without_root_keeps_its_top_node():
    tree = parse_tree("(S (NP (NN a)) (VP (VB b)))")
    assert linearise(tree, words=False) == "(S (NP XX ) (VP XX ) )"
    assert linearise(tree, words=True) == "(S (NP a ) (VP b ) )"


def test_linearise_root_over_a_single_word():
    tree = parse_tree("(ROOT (UH Hello))")
    assert linearise(tree, words=False) == "XX"
    assert linearise(tree, words=True) == "Hello"
    out = delinearise("XX", ["Hello"])
    assert out.well_formed and to_string(out.tree) == "(ROOT (XX Hello))"


def test_linearise_bare_word_under_a_phrase():
    tree = Tree(ROOT, [Tree("NP", ["a", pt("NN", "b")])])
    assert linearise(tree, words=False) == "(NP XX XX )"
    assert linearise(tree, words=True) == "(NP a b )"


def test_linearise_tokens_are_space_separated():
    tokens = linearise(parse_tree(EXAMPLE), words=True).split(" ")
    assert "" not in tokens
    assert all(t == ")" or t.startswith("(") or ("(" not in t and ")" not in t) for t in tokens)
    # 12 words + 9 constituents below the root, each opened once and closed once
    assert len(tokens) == 12 + 2 * 9


# --------------------------------------------------------------------------- GUM round trip


def normalise(node: Tree | str) -> Tree | str:
    """What delinearise(linearise(t)) should give back: POS tags -> XX, function tags gone."""
    if isinstance(node, str):
        return node
    if node.is_preterminal:
        return Tree("XX", list(node.children))
    label = node.label if node.label == "ROOT" else re.split("[-=]", node.label)[0]
    return Tree(label, [normalise(c) for c in node.children])


def test_normaliser_itself():
    tree = parse_tree("(ROOT (S (NP-SBJ=1 (PRP It)) (VP (VBZ works)) (. .)))")
    assert to_string(normalise(tree)) == "(ROOT (S (NP (XX It)) (VP (XX works)) (XX .)))"


def gum_dev() -> list[Tree]:
    return list(read_trees(GUM / "dev.trees.gz"))


@pytest.mark.parametrize("words", [False, True], ids=["placeholders", "words"])
def test_gum_dev_round_trip_is_exact(words):
    trees = gum_dev()
    assert len(trees) == 1575  # zcat dev.trees.gz | wc -l
    bad = []
    for i, tree in enumerate(trees, start=1):
        source = sentence(tree).split()
        out = delinearise(linearise(tree, words=words), source)
        ok = (
            out.well_formed
            and out.tree == normalise(tree)
            and parse_tree(to_string(out.tree)).leaves() == tree.leaves()
        )
        if not ok:
            bad.append(f"line {i}: {to_string(tree)}")
    assert not bad, f"{len(bad)} trees do not round-trip, first: {bad[:3]}"


def test_gum_dev_round_trip_with_function_tags():
    for tree in gum_dev()[:300]:
        source = sentence(tree).split()
        for words in (False, True):
            out = delinearise(linearise(tree, words=words, function_tags=True), source)
            assert out.well_formed
            assert [t for t, _ in out.tree.tagged_words()] == ["XX"] * len(source)
            assert normalise(out.tree) == normalise(tree)


# --------------------------------------------------------------------------- delinearise


def test_delinearise_well_formed_sequence():
    out = delinearise("(S (NP XX XX ) (VP XX ) XX )", ["The", "dog", "barks", "."])
    assert out == Delinearised(
        Tree(
            ROOT,
            [
                Tree(
                    "S",
                    [
                        Tree("NP", [pt("XX", "The"), pt("XX", "dog")]),
                        Tree("VP", [pt("XX", "barks")]),
                        pt("XX", "."),
                    ],
                )
            ],
        )
    )
    assert out.well_formed
    assert (out.unclosed, out.unopened, out.missing_words) == (0, 0, 0)
    assert (out.extra_leaves, out.empty, out.roots) == (0, 0, 0)


def test_delinearise_takes_words_from_the_source_not_the_output():
    out = delinearise("(S (NP The cat ) (VP runs ) )", ["A", "dog", "barks"])
    assert out.well_formed
    assert to_string(out.tree) == "(ROOT (S (NP (XX A) (XX dog)) (VP (XX barks))))"


def check_repaired(out: Delinearised, words: list[str]) -> None:
    """The repaired tree: rooted, readable back, leaves = the escaped source words in order."""
    assert out.tree.label == ROOT
    assert out.tree.leaves() == [escape(w) for w in words]
    reread = parse_tree(to_string(out.tree))
    assert reread == out.tree
    assert [t for t, _ in out.tree.tagged_words()] == [PLACEHOLDER] * len(words)


COUNTS = ("unclosed", "unopened", "missing_words", "extra_leaves", "empty", "roots")


@pytest.mark.parametrize(
    ("sequence", "words", "tree", "counts"),
    [
        pytest.param(
            "(S (NP XX XX",
            ["a", "b"],
            "(ROOT (S (NP (XX a) (XX b))))",
            {"unclosed": 2},
            id="missing-closing-brackets",
        ),
        pytest.param(
            "(S (NP XX ) (VP XX",
            ["a", "b"],
            "(ROOT (S (NP (XX a)) (VP (XX b))))",
            {"unclosed": 2},
            id="missing-closing-brackets-inside",
        ),
        pytest.param(
            "(S XX ) )",
            ["a"],
            "(ROOT (S (XX a)))",
            {"unopened": 1},
            id="extra-closing-bracket",
        ),
        pytest.param(
            ") ) (S XX )",
            ["a"],
            "(ROOT (S (XX a)))",
            {"unopened": 2},
            id="leading-closing-brackets",
        ),
        pytest.param(
            "(S (NP XX ) ) ) (VP XX )",
            ["a", "b"],
            "(ROOT (S (NP (XX a))) (VP (XX b)))",
            {"unopened": 1, "roots": 1},
            id="extra-closing-bracket-then-second-root",
        ),
        pytest.param(
            "(S XX )",
            ["a", "b", "c"],
            "(ROOT (S (XX a) (XX b) (XX c)))",
            {"missing_words": 2},
            id="too-few-leaves",
        ),
        pytest.param(
            "(S (NP XX ) (VP XX ) )",
            ["a", "b", "c"],
            "(ROOT (S (NP (XX a)) (VP (XX b)) (XX c)))",
            {"missing_words": 1},
            id="too-few-leaves-attached-to-top-constituent",
        ),
        pytest.param(
            "(S XX XX XX )",
            ["a", "b"],
            "(ROOT (S (XX a) (XX b)))",
            {"extra_leaves": 1},
            id="too-many-leaves",
        ),
        pytest.param(
            "(S (NP XX ) (VP XX XX XX ) )",
            ["a", "b"],
            "(ROOT (S (NP (XX a)) (VP (XX b))))",
            {"extra_leaves": 2},
            id="too-many-leaves-inside",
        ),
        pytest.param(
            "(S (NP ) (VP XX ) )",
            ["a"],
            "(ROOT (S (VP (XX a))))",
            {"empty": 1},
            id="empty-bracket",
        ),
        pytest.param(
            "(S (NP (DT ) ) XX )",
            ["a"],
            "(ROOT (S (XX a)))",
            {"empty": 2},
            id="nested-empty-brackets",
        ),
        pytest.param(
            "(S XX ) (NP XX )",
            ["a"],
            "(ROOT (S (XX a)))",
            {"extra_leaves": 1, "empty": 1},
            id="constituent-of-extra-leaves-removed",
        ),
        pytest.param(
            "(S XX ) (S XX )",
            ["a", "b"],
            "(ROOT (S (XX a)) (S (XX b)))",
            {"roots": 1},
            id="two-top-constituents",
        ),
        pytest.param(
            "(S XX ) (NP XX ) (VP XX )",
            ["a", "b", "c"],
            "(ROOT (S (XX a)) (NP (XX b)) (VP (XX c)))",
            {"roots": 2},
            id="three-top-constituents",
        ),
        pytest.param(
            "XX XX",
            ["a", "b"],
            "(ROOT (XX a) (XX b))",
            {"roots": 1},
            id="no-brackets",
        ),
        pytest.param(
            "( XX )",
            ["a"],
            f"(ROOT ({UNKNOWN_LABEL} (XX a)))",
            {},
            id="bracket-without-label",
        ),
        pytest.param(
            "(S ( XX XX ) )",
            ["a", "b"],
            "(ROOT (S (X (XX a) (XX b))))",
            {},
            id="inner-bracket-without-label",
        ),
        pytest.param(
            "(S (NP XX ) ) ) (VP XX XX XX",
            ["a", "b"],
            "(ROOT (S (NP (XX a))) (VP (XX b)))",
            {"unclosed": 1, "unopened": 1, "extra_leaves": 2, "roots": 1},
            id="several-repairs-at-once",
        ),
    ],
)
def test_delinearise_repairs(sequence, words, tree, counts):
    out = delinearise(sequence, words)
    check_repaired(out, words)
    assert to_string(out.tree) == tree
    assert {name: getattr(out, name) for name in COUNTS} == {
        name: counts.get(name, 0) for name in COUNTS
    }
    assert out.well_formed == (not counts)


def test_delinearise_empty_sequence_attaches_every_word():
    out = delinearise("", ["a", "b"])
    check_repaired(out, ["a", "b"])
    assert to_string(out.tree) == "(ROOT (XX a) (XX b))"
    assert out.missing_words == 2
    assert (out.unclosed, out.unopened, out.extra_leaves, out.empty) == (0, 0, 0, 0)
    assert not out.well_formed


def test_delinearise_empty_sequence_one_word():
    out = delinearise("   ", ["a"])
    check_repaired(out, ["a"])
    assert out.missing_words == 1 and out.roots == 0
    assert not out.well_formed


def test_delinearise_no_words_and_no_output():
    out = delinearise("", [])
    assert out.tree == Tree(ROOT, [])
    assert out.well_formed


@pytest.mark.parametrize(
    ("sequence", "words", "tree"),
    [
        ("XX", ["a", "b"], "(ROOT (XX a) (XX b))"),
        ("XX XX", ["a", "b", "c"], "(ROOT (XX a) (XX b) (XX c))"),
        ("XX (S XX )", ["a", "b", "c"], "(ROOT (XX a) (S (XX b) (XX c)))"),
    ],
)
def test_delinearise_missing_words_after_top_level_leaves(sequence, words, tree):
    out = delinearise(sequence, words)
    check_repaired(out, words)
    assert to_string(out.tree) == tree
    assert out.missing_words == 1
    assert (out.unclosed, out.unopened, out.extra_leaves, out.empty) == (0, 0, 0, 0)
    assert not out.well_formed


@pytest.mark.parametrize(
    ("sequence", "tree"),
    [
        # closing brackets glued to each other and to the last leaf
        ("(S (NP XX XX)) (VP XX))", "(ROOT (S (NP (XX a) (XX b))) (VP (XX c)))"),
        ("(S (NP XX XX))(VP XX))", "(ROOT (S (NP (XX a) (XX b))) (VP (XX c)))"),
        # a label glued to a closing bracket is ignored: ")NP" closes NP like ")"
        ("(S (NP XX XX )NP (VP XX )VP )S", "(ROOT (S (NP (XX a) (XX b)) (VP (XX c))))"),
        # an opening bracket glued to the previous one
        ("(S(NP XX XX ) (VP XX ) )", "(ROOT (S (NP (XX a) (XX b)) (VP (XX c))))"),
    ],
)
def test_delinearise_reads_glued_brackets(sequence, tree):
    out = delinearise(sequence, ["a", "b", "c"])
    check_repaired(out, ["a", "b", "c"])
    assert to_string(out.tree) == tree


def test_delinearise_glued_brackets_counts():
    # "(S (NP XX XX)) (VP XX))": S, NP opened; "XX))" closes NP and S; VP opened and closed,
    # then one ")" too many -> a second root and one unopened bracket
    out = delinearise("(S (NP XX XX)) (VP XX))", ["a", "b", "c"])
    assert {name: getattr(out, name) for name in COUNTS} == {
        "unclosed": 0,
        "unopened": 1,
        "missing_words": 0,
        "extra_leaves": 0,
        "empty": 0,
        "roots": 1,
    }
    assert delinearise("(S (NP XX XX )NP (VP XX )VP )S", ["a", "b", "c"]).well_formed


def test_delinearise_escapes_brackets_in_source_words():
    words = ["f(x)", "(", "is", ")", "[ok]"]
    out = delinearise("(S XX XX XX XX XX )", words)
    assert out.well_formed
    assert out.tree.leaves() == ["f-LRB-x-RRB-", "-LRB-", "is", "-RRB-", "[ok]"]
    assert to_string(out.tree) == (
        "(ROOT (S (XX f-LRB-x-RRB-) (XX -LRB-) (XX is) (XX -RRB-) (XX [ok])))"
    )
    assert parse_tree(to_string(out.tree)).leaves() == out.tree.leaves()
    assert sentence(out.tree) == "f(x) ( is ) [ok]"


def test_delinearise_escapes_missing_words_too():
    out = delinearise("(S XX )", ["a", "(b)"])
    assert out.missing_words == 1
    assert to_string(out.tree) == "(ROOT (S (XX a) (XX -LRB-b-RRB-)))"


def test_well_formed_is_false_for_each_single_repair():
    tree = Tree(ROOT, [])
    assert Delinearised(tree).well_formed
    for name in COUNTS:
        assert not Delinearised(tree, **{name: 1}).well_formed, name


def test_missing_words_after_two_top_constituents_stay_in_order():
    out = delinearise("(S XX ) (S XX )", ["a", "b", "c"])
    assert (out.missing_words, out.roots) == (1, 1)
    check_repaired(out, ["a", "b", "c"])


def test_missing_words_after_a_trailing_top_level_leaf_stay_in_order():
    out = delinearise("(S XX ) XX", ["a", "b", "c"])
    assert out.missing_words == 1
    check_repaired(out, ["a", "b", "c"])


# --------------------------------------------------------------------------- aligning copied words


def test_a_skipped_word_goes_before_the_next_copied_word_in_its_constituent():
    out = delinearise("(S (NP The ) (VP barks ) . )", ["The", "dog", "barks", "."])
    assert str(out.tree) == "(ROOT (S (NP (XX The)) (VP (XX dog) (XX barks)) (XX .)))"
    assert (out.missing_words, out.extra_leaves, out.changed_words) == (1, 0, 0)


def test_a_repeated_word_is_dropped_and_the_brackets_keep_their_words():
    out = delinearise("(S (NP adult - adult ) (VP ran ) )", ["adult", "-", "learned", "ran"])
    # "adult - adult": the second "adult" pairs with "learned" (miscopied), not dropped
    assert str(out.tree) == "(ROOT (S (NP (XX adult) (XX -) (XX learned)) (VP (XX ran))))"
    assert (out.missing_words, out.extra_leaves, out.changed_words) == (0, 0, 1)
    out = delinearise("(S (NP the the dog ) (VP ran ) )", ["the", "dog", "ran"])
    assert str(out.tree) == "(ROOT (S (NP (XX the) (XX dog)) (VP (XX ran))))"
    assert (out.missing_words, out.extra_leaves) == (0, 1)


def test_a_miscopied_word_keeps_its_place_and_is_counted():
    out = delinearise("(S (NP Rearch ) (VP helps ) )", ["Research", "helps"])
    assert str(out.tree) == "(ROOT (S (NP (XX Research)) (VP (XX helps))))"
    assert out.changed_words == 1 and out.well_formed  # the shape needed no repair


def test_escaped_leaves_match_their_plain_words():
    out = delinearise("(NP (PRN -LRB- L2 -RRB- ) )", ["(", "L2", ")"])
    assert str(out.tree) == "(ROOT (NP (PRN (XX -LRB-) (XX L2) (XX -RRB-))))"
    assert out.changed_words == 0 and out.well_formed
