"""`transformer study heads`: the head statistics on hand-made attention matrices, head masking
against the explicit sum over the other heads, and the study end to end on the copy model."""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import B, D, S, T, V, tiny_config
from transformer import Transformer, Translator
from transformer.model.attention import key_mask, reference_attention
from transformer.study import heads
from transformer.study.head_report import HeadRow, heads_csv, heads_markdown, reading
from transformer.study.head_stats import (
    HeadStatistics,
    attention_module,
    is_punctuation,
    masked_heads,
    punctuation_mask,
    row_statistics,
)


def means(kind: str, weights: torch.Tensor, punctuation=None) -> dict[str, float]:
    """Every statistic of one head (weights (Q, K)) over its counted rows."""
    stats = HeadStatistics({"encoder_self": 1, "decoder_self": 1, "cross": 1}, heads=1)
    stats.add(kind, weights[None, None], punctuation)
    return {name: float(v[0, 0]) for name, v in stats.means()[kind].items()}


def shifted(n: int, by: int) -> torch.Tensor:
    """Row i attends to i + by (rows without such a key attend to themselves)."""
    w = torch.zeros(n, n)
    for i in range(n):
        j = i + by
        w[i, j if 0 <= j < n else i] = 1.0
    return w


# ---------------------------------------------------------------------------------- statistics


def test_identity_attends_to_the_same_token_at_distance_zero():
    n = 6
    m = means("encoder_self", torch.eye(n))
    assert m["distance"] == 0.0 and m["offset"] == 0.0 and m["entropy"] == 0.0
    assert m["same"] == 1.0 and m["previous"] == 0.0 and m["next"] == 0.0
    assert m["eos"] == pytest.approx(1 / n)  # only EOS (the last token) attends to EOS


def test_shifted_identity_attends_to_the_previous_and_next_token():
    n = 6
    back = means("encoder_self", shifted(n, -1))
    # Every query that has a previous token attends to it; row 0 (none) stays on itself.
    assert back["previous"] == 1.0 and back["next"] == 0.0
    assert back["same"] == pytest.approx(1 / n)
    assert back["distance"] == pytest.approx((n - 1) / n)
    assert back["offset"] == pytest.approx(-(n - 1) / n)
    ahead = means("encoder_self", shifted(n, 1))
    assert ahead["next"] == 1.0 and ahead["previous"] == 0.0
    assert ahead["offset"] == pytest.approx((n - 1) / n)
    # Decoder self-attention leaves out the BOS query (it can only see itself).
    dec = means("decoder_self", shifted(n, -1))
    assert dec["previous"] == 1.0 and dec["same"] == 0.0 and dec["distance"] == 1.0
    assert dec["eos"] == pytest.approx(1 / (n - 1))  # on BOS: only the query at position 1


def test_uniform_attention_has_entropy_log_n():
    n = 7
    m = means("encoder_self", torch.full((n, n), 1 / n))
    assert m["entropy"] == pytest.approx(math.log(n))
    assert m["distance"] == pytest.approx(
        sum(abs(i - j) for i in range(n) for j in range(n)) / n**2
    )
    assert m["same"] == pytest.approx(1 / n) and m["eos"] == pytest.approx(1 / n)
    # Causal uniform (decoder self-attention): row i spreads over i + 1 keys, and that is the
    # yardstick the report compares entropies with.
    causal = torch.tril(torch.ones(n, n))
    causal = causal / causal.sum(-1, keepdim=True)
    stats = HeadStatistics({"encoder_self": 1, "decoder_self": 1, "cross": 1}, heads=1)
    stats.add("decoder_self", causal[None, None])
    expected = sum(math.log(i + 1) for i in range(1, n)) / (n - 1)
    assert float(stats.means()["decoder_self"]["entropy"]) == pytest.approx(expected)
    assert stats.uniform_entropy("decoder_self") == pytest.approx(expected)


def test_cross_attention_distance_is_measured_from_the_scaled_diagonal():
    t, s = 4, 7  # query i sits at i * 6 / 3 = 2i on the source
    diagonal = torch.zeros(t, s)
    diagonal[torch.arange(t), 2 * torch.arange(t)] = 1.0
    m = means("cross", diagonal)
    assert m["distance"] == 0.0 and m["eos"] == pytest.approx(1 / t)
    on_eos = torch.zeros(t, s)
    on_eos[:, -1] = 1.0
    m = means("cross", on_eos)
    assert m["eos"] == 1.0
    assert m["distance"] == pytest.approx((6 + 4 + 2 + 0) / 4)
    assert m["offset"] == m["distance"]
    assert "previous" not in m  # not defined for cross attention


def test_punctuation_tokens_and_share():
    assert all(is_punctuation(t) for t in [".", "Ġ,", "Ġ-", 'Ġ"', "!"])
    assert not any(is_punctuation(t) for t in ["ĠHund", "<s>", "</s>", "Ġ", "Ġ3", "a."])
    tokens = ["ĠEin", "ĠHund", ".", "</s>"]
    mask = punctuation_mask(tokens)
    assert mask.tolist() == [False, False, True, False]
    w = torch.zeros(4, 4)
    w[:, 2] = 1.0
    assert means("encoder_self", w, mask)["punctuation"] == 1.0
    assert means("encoder_self", w)["punctuation"] == 0.0


def test_means_weigh_every_query_token_alike():
    stats = HeadStatistics({"encoder_self": 1, "decoder_self": 1, "cross": 1}, heads=1)
    stats.add("encoder_self", torch.eye(2)[None, None])  # same = 1 on 2 queries
    stats.add("encoder_self", shifted(4, -1)[None, None])  # same = 1 on 1 query of 4
    assert float(stats.means()["encoder_self"]["same"]) == pytest.approx(3 / 6)
    assert stats.queries["encoder_self"] == 6


def test_row_statistics_rejects_a_non_square_self_attention():
    with pytest.raises(ValueError, match="square"):
        row_statistics("encoder_self", torch.ones(1, 1, 3, 4) / 4)


# ------------------------------------------------------------------------------------ masking


@pytest.fixture
def model() -> Transformer:
    """A random tiny model with d_v = 5 (distinct from H and d_k) and nonzero W^O biases."""
    model = Transformer(tiny_config(d_k=3, d_v=5)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_()
    return model


def inputs():
    src = torch.randint(4, V, (B, S))
    src[0, -2:] = 0  # padding
    tgt = torch.randint(4, V, (B, T))
    return src, tgt


def attention_call(model: Transformer, kind: str):
    """(attention module, a function running it on fixed inputs, its per-head outputs (B, H, Q,
    d_v))."""
    mha = attention_module(model, kind, 1)
    x = torch.randn(B, T if kind != "encoder_self" else S, D)
    memory = torch.randn(B, S, D)
    src_mask = torch.ones(B, S, dtype=torch.bool)
    src_mask[0, -2:] = False
    mask = key_mask(src_mask)
    if kind == "encoder_self":
        q, k, v = mha.project_qkv(x)
        per_head, _ = reference_attention(q, k, v, mask)
        call = lambda: mha(x, mask=mask)[0]  # noqa: E731
    elif kind == "decoder_self":
        q, k, v = mha.project_qkv(x)
        per_head, _ = reference_attention(q, k, v, is_causal=True)
        call = lambda: mha(x, is_causal=True)[0]  # noqa: E731
    else:
        q = mha.project_q(x)
        k, v = mha.project_kv(memory)
        per_head, _ = reference_attention(q, k, v, mask)
        call = lambda: mha(x, memory, mask)[0]  # noqa: E731
    return mha, call, per_head


@pytest.mark.parametrize("kind", ["encoder_self", "decoder_self", "cross"])
@torch.no_grad()
def test_a_masked_head_leaves_the_sum_of_the_others(model, kind):
    mha, call, per_head = attention_call(model, kind)
    d_v, masked = mha.d_v, 2
    w_o, b_o = mha.out_proj.weight, mha.out_proj.bias  # (D, H*d_v), (D,)
    expected = b_o + sum(
        per_head[:, h] @ w_o[:, h * d_v : (h + 1) * d_v].T
        for h in range(mha.n_heads)
        if h != masked
    )
    seen = []  # what W^O receives: Concat(heads) after the mask
    capture = mha.out_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        plain = call()
        with masked_heads(model, [(kind, 1, masked)]):
            out = call()
        after = call()
    finally:
        capture.remove()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)
    concat_plain, concat_masked, _ = seen
    head = slice(masked * d_v, (masked + 1) * d_v)
    assert torch.equal(concat_masked[..., head], torch.zeros_like(concat_masked[..., head]))
    others = torch.ones(mha.n_heads * d_v, dtype=torch.bool)
    others[head] = False
    assert torch.equal(concat_masked[..., others], concat_plain[..., others])
    assert torch.equal(after, plain)  # the hook is gone


@torch.no_grad()
def test_masking_all_heads_of_a_layer_leaves_the_bias(model):
    mha, call, _ = attention_call(model, "cross")
    with masked_heads(model, [("cross", 1, h) for h in range(mha.n_heads)]):
        out = call()
    assert torch.equal(out, mha.out_proj.bias.expand_as(out))


@torch.no_grad()
def test_masking_nothing_is_the_plain_model_and_masking_a_head_changes_it(model):
    src, tgt = inputs()
    plain = model(src, tgt)
    with masked_heads(model, []):
        assert torch.equal(model(src, tgt), plain)
    with masked_heads(model, [("encoder_self", 0, 1)]):
        changed = model(src, tgt)
    assert not torch.allclose(changed, plain, atol=1e-4)
    assert torch.equal(model(src, tgt), plain)
    with (
        pytest.raises(ValueError, match="head 4 out of range"),
        masked_heads(model, [("cross", 0, 4)]),
    ):
        pass


def test_masked_heads_apply_to_cached_decoding(copy_model_dir, one_thread):
    translator = Translator.from_pretrained(copy_model_dir)
    texts = ["Ein Hund läuft.", "Zwei Männer"]
    model = translator.models[0]
    plain = translator.translate_nbest(texts, beam=2)
    masked = [("decoder_self", 1, h) for h in range(4)] + [("cross", 1, h) for h in range(4)]
    with masked_heads(model, masked):
        cached = translator.translate_nbest(texts, beam=2)
        uncached = translator.translate_nbest(texts, beam=2, use_cache=False)
    for a, b in zip(cached, uncached):
        assert a.hypotheses[0].tokens == b.hypotheses[0].tokens
        assert a.hypotheses[0].score == pytest.approx(b.hypotheses[0].score, abs=1e-4)
    assert [r.hypotheses[0].score for r in cached] != [r.hypotheses[0].score for r in plain]


# ------------------------------------------------------------------------------------- report


def test_reading_names_the_dominant_pattern():
    stats = {name: 0.1 for name in ("previous", "same", "next", "punctuation", "eos")}
    stats.update(distance=1.0, offset=-0.7, entropy=0.9, previous=0.71)
    row = HeadRow("encoder_self", 1, 2, stats, bleu_without=30.0, delta=-1.25)
    assert reading(row, 2.5) == (
        "encoder layer 1 head 2 attends to the previous token 71% of the time; "
        "without it BLEU changes by -1.25"
    )
    row.stats["previous"] = 0.3
    assert "spreads its attention widely" in reading(row, 1.0)


# ------------------------------------------------------------------------------ end to end


# Four words (a 4-gram for BLEU) in at most 8 subwords of the copy model's tokenizer.
SHORT = [
    "Ein Mann in einem",
    "a man in a",
    "Ein Mann und ein",
    "a man on a",
    "Ein Mann mit einem",
    "a dog in the",
]


def write_test_set(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """n short phrases as sources and references (the copy model copies up to 8 subwords)."""
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(SHORT[:n]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(SHORT[:n]) + "\n", encoding="utf-8")
    return src, ref


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    heads.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_study_heads_on_the_copy_model_writes_every_output(
    copy_model_dir, tmp_path, capsys, one_thread
):
    src, ref = write_test_set(tmp_path, 6)
    out = tmp_path / "out"
    args = parse("--model", str(copy_model_dir), "--src", str(src), "--ref", str(ref),
                 "--sentences", "5", "--beam", "2", "--out", str(out))  # fmt: skip
    assert heads.run(args) == 0
    printed = capsys.readouterr().out
    names = ["heads.csv", "heads.md", "heads_encoder_self.png", "heads_decoder_self.png",
             "heads_cross.png", "heads_examples.png"]  # fmt: skip
    for name in names:
        assert (out / name).stat().st_size > 0, name
    for name in names[2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "heads.csv").open(encoding="utf-8")))
    assert len(rows) == (2 + 2 + 2) * 4  # 2 encoder + 2 decoder layers, self and cross, 4 heads
    assert {(r["kind"], r["layer"], r["head"]) for r in rows} >= {("cross", "2", "4")}
    markdown = (out / "heads.md").read_text(encoding="utf-8")
    assert printed == markdown
    assert "5 sentences" in markdown and "beam 2, alpha 0.6" in markdown
    bleu = float(markdown.split("**")[1])
    assert bleu > 50  # the copy model copies
    for r in rows:
        assert float(r["bleu_delta"]) == pytest.approx(float(r["bleu_without"]) - bleu, abs=0.02)
        shares = [float(r[k]) for k in ("punctuation", "eos") if r[k]]
        assert all(0.0 <= s <= 1.0 for s in shares)
    assert all(r["previous"] == "" for r in rows if r["kind"] == "cross")
    assert markdown.count("## ") == 5  # three kinds, most/least, plain words
    costliest = min(rows, key=lambda r: float(r["bleu_delta"]))
    ranked = markdown.split("costs the most BLEU:")[1]
    assert f"layer {costliest['layer']} head {costliest['head']}" in ranked.split("\n")[4]


def test_study_heads_without_ablation_and_bad_input(copy_model_dir, tmp_path, capsys, one_thread):
    translator = Translator.from_pretrained(copy_model_dir)
    options = heads.decode_options(parse("--model", "m", "--out", "o", "--greedy"))
    study = heads.study_heads(translator, SHORT[:3], SHORT[:3], options, ablation=False)
    assert all(r.bleu_without is None and r.delta is None for r in study.rows)
    assert study.statistics.sentences == 3
    rows = list(csv.DictReader(io.StringIO(heads_csv(study.rows))))
    assert all(r["bleu_without"] == "" and r["bleu_delta"] == "" for r in rows)
    context = study.context("m", "s", "r")
    assert context.decoding == "greedy decoding"
    assert "BLEU without" not in heads_markdown(study.rows, context)
    capsys.readouterr()

    src, ref = write_test_set(tmp_path, 3)
    out = tmp_path / "out"
    common = ["--model", str(copy_model_dir), "--src", str(src), "--out", str(out)]
    short = tmp_path / "short.txt"
    short.write_text("one line\n", encoding="utf-8")
    for extra, message in [
        (["--ref", str(ref), "--sentences", "0"], "--sentences 0"),
        (["--ref", str(short)], "line i of the references"),
        (["--ref", str(tmp_path / "missing.txt")], "--ref: "),
        (["--ref", str(ref), "--beam", "0"], "beam"),
        (["--ref", str(ref), "--example", "9"], "--example 9"),
    ]:
        assert heads.run(parse(*common, *extra)) == 2
        assert message in capsys.readouterr().err
    bad = parse("--model", str(tmp_path), "--src", str(src), "--ref", str(ref), "--out", str(out))
    assert heads.run(bad) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert not out.exists()  # nothing written on bad input


def test_markdown_lists_the_costliest_heads_first():
    def row(head: int, delta: float) -> HeadRow:
        stats = dict(distance=2.0, offset=0.0, entropy=1.0, previous=0.1, same=0.1, next=0.1,
                     punctuation=0.0, eos=0.1)  # fmt: skip
        return HeadRow("encoder_self", 1, head, stats, 30.0 + delta, delta)

    from transformer.study.head_report import ReportContext

    context = ReportContext(
        model="m", src="s", ref="r", sentences=3, decoding="greedy decoding", bleu=30.0,
        bleu_signature="sig", layers={"encoder_self": 1, "decoder_self": 0, "cross": 0},
        heads=6, uniform_entropy={"encoder_self": 2.0}, ablation=True,
    )  # fmt: skip
    rows = [row(h, d) for h, d in zip(range(1, 7), [-0.5, -3.0, 0.2, -1.0, 0.0, -0.1])]
    text = heads_markdown(rows, context)
    most = text.split("costs the most BLEU:")[1].split("costs the least")[0]
    order = [line.split(" | ")[0] for line in most.splitlines() if line.startswith("| encoder")]
    assert order == [f"| encoder layer 1 head {h}" for h in (2, 4, 1, 6, 5)]
    least = text.split("costs the least (or even helps):")[1].split("##")[0]
    assert least.splitlines()[4].startswith("| encoder layer 1 head 3 | +0.20")


def test_distinctive_heads_need_a_clear_pattern():
    from transformer.study.head_report import distinctive_heads

    base = dict(distance=3.0, offset=0.0, entropy=1.0, previous=0.1, same=0.1, next=0.1,
                punctuation=0.0, eos=0.1)  # fmt: skip
    weak = HeadRow("encoder_self", 1, 1, dict(base), 30.0, -0.1)
    strong = HeadRow("encoder_self", 1, 2, dict(base, previous=0.8), 30.0, -0.2)
    far = HeadRow("cross", 1, 1, dict(base, distance=4.8), 29.0, -1.0)
    near = HeadRow("cross", 1, 2, dict(base, distance=0.4), 30.0, -0.3)
    picks = distinctive_heads([weak, strong, far, near], {"encoder_self": 2.0, "cross": 2.0})
    assert [(r.kind, r.head, why) for r, why in picks][:3] == [
        ("encoder_self", 2, "previous token 80%"),
        ("cross", 1, "costliest, BLEU -1.00"),
        ("cross", 2, "diagonal, 0.4 tokens off"),
    ]
    assert all(why != "previous token 10%" for _, why in picks)
