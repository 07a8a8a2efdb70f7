"""Decoding speed: our cached batched decoder against itself without the cache and against
Hugging Face `MarianMTModel.generate`, greedy and beam 4, all in one run.

What is measured
----------------
The source file (default: Multi30k test2016 German, 1,000 sentences) is tokenized once and cut
into the same length-sorted batches of at most ``--max-tokens`` padded source tokens for every
decoder. Only decoding is timed (encoder + search loop, batch by batch; tokenization and
detokenization excluded), after one untimed warm-up batch per decoder.

* ``ours``: `transformer.decoding.generate` with the KV cache (cross-attention K/V computed once,
  finished sentences leave the batch), the paper's settings (GNMT alpha 0.6, max length
  source + 50).
* ``ours, bf16 autocast`` (``--bf16``): the same in bf16 autocast, as ``--precision bf16``
  decodes (over `transformer.model.autocast_copy`, which holds the linear maps in bf16 once
  instead of casting them at every step); "same tokens" says whether every hypothesis equals
  fp32's.
* ``ours, torch.compile`` (``--compile``; with ``--bf16`` also in bf16): the same with the
  model's decoder under `torch.compile` (inductor, dynamic shapes) and no oneDNN linear maps of
  our own (inductor picks its kernels), after one untimed pass over every batch that holds the
  compilation.
* ``ours-uncached``: the same loop and the same settings, but every step re-runs the decoder over
  the whole prefix (``use_cache=False``). Its output tokens are checked to equal ``ours``.
* ``marian``: `transformers.MarianMTModel` with random weights and the same sizes (d_model, heads,
  d_ff, layers, vocabulary, ReLU, scaled shared embeddings, post-norm), `generate(num_beams=...)`
  with its own KV cache. A random model would not stop where ours does, so each batch is forced
  to the length of our longest hypothesis in that batch (``min_new_tokens = max_new_tokens``).
  Hugging Face keeps every sentence of a batch until the batch ends, which is part of what is
  compared. With ``--bf16`` Marian also runs in bf16, to compare like with like: under bf16
  autocast, as ours does, and with its weights in bf16 (`model.to(torch.bfloat16)`, the usual
  way to run a Hugging Face model in bf16).

Throughput: sentences/s and target tokens/s, where target tokens are the tokens of our best
hypotheses (EOS included) — the same count for every decoder, so the ratios of the two agree.
Every decoder runs with the same ``torch.set_num_threads(--threads)``.

Run (from the repository root)::

    .venv/bin/python -m pip install -e '.[bench]'     # transformers, for the Marian baseline
    .venv/bin/python benchmarks/decode_speed.py --model MODEL_DIR

Results are printed as a Markdown table and written to ``benchmarks/results/decode_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from _results import write_result
from transformer.data.textfiles import read_lines
from transformer.decoding import DecodeOptions, generate, length_batches, max_output_lengths
from transformer.hardware import autocast, inference_context
from transformer.model import Transformer, autocast_copy, padding_mask
from transformer.modeldir import load_model_dir
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

ROOT = Path(__file__).resolve().parents[1]
# The bundled copy of Multi30k (data/multi30k).
DEFAULT_SRC = ROOT / "data" / "multi30k" / "test_2016_flickr.de.gz"


@dataclass
class Row:
    method: str
    decoder: str
    seconds: float
    sentences: int
    target_tokens: int
    sentences_per_s: float
    tokens_per_s: float
    speedup_of_ours: float = 1.0  # ours' throughput / this decoder's (1.0 on ours' own row)
    same_tokens_as_ours: bool | None = None


@dataclass
class Batch:
    src: Tensor  # (N, S) subwords + EOS, padded
    max_len: Tensor  # (N,)


def make_batches(ids: list[list[int]], max_tokens: int) -> list[Batch]:
    lengths = [len(s) + 1 for s in ids]
    batches = []
    for batch in length_batches(lengths, max_tokens):
        width = max(lengths[i] for i in batch)
        src = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        for row, i in enumerate(batch):
            src[row, : lengths[i]] = torch.tensor([*ids[i], EOS_ID])
        n_subwords = torch.tensor([lengths[i] - 1 for i in batch])
        batches.append(Batch(src, max_output_lengths(n_subwords, 1.0, 50)))
    return batches


def timed(fn: Callable[[Batch], object], batches: list[Batch]) -> tuple[float, list]:
    fn(batches[len(batches) // 2])  # warm-up, untimed
    outputs, start = [], time.perf_counter()
    for batch in batches:
        outputs.append(fn(batch))
    return time.perf_counter() - start, outputs


def marian_like(model: Transformer):
    """A randomly initialised MarianMTModel with our model's sizes."""
    from transformers import MarianConfig, MarianMTModel

    c = model.config
    config = MarianConfig(
        vocab_size=c.vocab_size,
        decoder_vocab_size=c.vocab_size,
        d_model=c.d_model,
        encoder_layers=c.n_encoder_layers,
        decoder_layers=c.n_decoder_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        activation_function="relu",
        max_position_embeddings=1024,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    return MarianMTModel(config).eval()


def with_compiled_decoder(model: Transformer) -> Transformer:
    """A copy of `model` whose decoder runs under `torch.compile` (dynamic shapes: the batch
    shrinks as sentences finish and the cache grows at every step)."""
    compiled = copy.deepcopy(model)
    compiled.decoder = torch.compile(compiled.decoder, dynamic=True)
    return compiled


def bench_method(
    model: Transformer,
    marian,
    batches: list[Batch],
    n_sentences: int,
    method: str,
    beam: int,
    uncached: bool,
    bf16: bool = False,
    compile: bool = False,
) -> list[Row]:
    """Rows for one decoding method: ours, then (optionally) ours in bf16 autocast, ours with
    a compiled decoder, ours without cache and Marian."""
    settings = DecodeOptions(method=method, beam=beam, alpha=0.6)
    name = "greedy" if method == "greedy" else f"beam {beam}"

    models = {"fp32": model, "bf16": autocast_copy(model, torch.bfloat16) if bf16 else None}

    def ours(batch: Batch, use_cache: bool = True, precision: str = "fp32"):
        # As `transformer translate --precision P` runs it (fp32: oneDNN linear maps on AMD CPUs;
        # bf16: autocast over the model's bf16 copy).
        s = settings if use_cache else replace(settings, use_cache=False)
        with inference_context("cpu", precision):
            return generate([models[precision]], batch.src, batch.max_len, s)

    seconds, outs = timed(ours, batches)
    tokens = int(sum(int(o.lengths[:, 0].sum()) for o in outs))
    ref = Row(name, "ours", seconds, n_sentences, tokens, n_sentences / seconds, tokens / seconds)
    rows = [ref]
    print(f"{name}: ours {seconds:.1f} s", flush=True)

    def add(decoder: str, seconds: float, same: bool | None) -> None:
        rows.append(
            Row(
                name,
                decoder,
                seconds,
                n_sentences,
                tokens,
                n_sentences / seconds,
                tokens / seconds,
                speedup_of_ours=seconds / ref.seconds,
                same_tokens_as_ours=same,
            )
        )
        print(f"{name}: {decoder} {seconds:.1f} s", flush=True)

    if bf16:
        seconds, rounded = timed(lambda b: ours(b, precision="bf16"), batches)
        add(
            "ours, bf16 autocast",
            seconds,
            all(torch.equal(a.tokens, b.tokens) for a, b in zip(outs, rounded)),
        )
    for precision in [p for p, m in models.items() if compile and m is not None]:
        net = with_compiled_decoder(models[precision])

        def compiled(batch: Batch, net=net, precision=precision):
            with autocast("cpu", precision):
                return generate([net], batch.src, batch.max_len, settings)

        for batch in batches:  # compilation and recompilations, untimed
            compiled(batch)
        seconds, outputs = timed(compiled, batches)
        add(
            "ours, bf16 autocast, torch.compile" if precision == "bf16" else "ours, torch.compile",
            seconds,
            all(torch.equal(a.tokens, b.tokens) for a, b in zip(outs, outputs)),
        )
    if uncached:
        seconds, slow = timed(lambda b: ours(b, use_cache=False), batches)
        add(
            "ours, no cache",
            seconds,
            all(torch.equal(a.tokens, b.tokens) for a, b in zip(outs, slow)),
        )
    if marian is not None:
        # Forced to our longest hypothesis of each batch (a random model would not stop there).
        lengths = {id(b): int(o.lengths[:, 0].max()) for b, o in zip(batches, outs)}
        extra = {"length_penalty": 0.6} if beam > 1 else {}

        @torch.inference_mode()
        def hf(batch: Batch, net=marian, precision: str = "fp32") -> Tensor:
            n = lengths[id(batch)]
            with autocast("cpu", precision):
                return net.generate(
                    input_ids=batch.src,
                    attention_mask=padding_mask(batch.src).long(),
                    num_beams=beam,
                    do_sample=False,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    use_cache=True,
                    **extra,
                )

        seconds, _ = timed(hf, batches)
        add("Hugging Face Marian", seconds, None)
        if bf16:  # like for like with ours in bf16: autocast, and the weights in bf16
            seconds, _ = timed(lambda b: hf(b, precision="bf16"), batches)
            add("Hugging Face Marian, bf16 autocast", seconds, None)
            weights = copy.deepcopy(marian).to(torch.bfloat16)
            seconds, _ = timed(lambda b: hf(b, net=weights), batches)
            add("Hugging Face Marian, bf16 weights", seconds, None)
    return rows


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)  # the same for every decoder
    model, tokenizer = load_model_dir(args.model, "cpu")
    src_path = Path(args.src)
    lines = list(read_lines(src_path))[: args.limit]
    ids = [s if s else [tokenizer.encode(".")[0]] for s in tokenizer.encode_batch(lines)]
    batches = make_batches(ids, args.max_tokens)
    marian = None if args.skip_marian else marian_like(model)
    rows: list[Row] = []
    for method, beam in (("greedy", 1), ("beam", args.beam)):
        rows += bench_method(
            model, marian, batches, len(lines), method, beam, not args.skip_uncached, args.bf16,
            args.compile,
        )  # fmt: skip
    hf_version = None
    if marian is not None:
        import transformers

        hf_version = transformers.__version__
    return {
        "model": str(args.model),
        "model_config": model.config.to_dict(),
        "src": str(src_path),
        "sentences": len(lines),
        "batches": len(batches),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": hf_version,
        "machine": platform.processor() or platform.machine(),
        "rows": [asdict(r) for r in rows],
    }


def table(result: dict) -> str:
    lines = [
        "| decoding | decoder | seconds | sentences/s | target tokens/s | ours is faster by "
        "| same tokens as ours |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    same = {True: "yes", False: "no", None: "-"}
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['decoder']} | {r['seconds']:.1f} | {r['sentences_per_s']:.1f} "
            f"| {r['tokens_per_s']:,.0f} | {r['speedup_of_ours']:.2f}x "
            f"| {same[r['same_tokens_as_ours']]} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--model", required=True, help="a model directory (a trained model)")
    parser.add_argument("--src", default=str(DEFAULT_SRC), help="source sentences (test2016 de)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, for every decoder")
    parser.add_argument("--skip-uncached", action="store_true")
    parser.add_argument(
        "--bf16", action="store_true", help="also ours in bf16 autocast (`--precision bf16`)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also ours with the decoder under torch.compile"
    )
    parser.add_argument("--skip-marian", action="store_true")
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "results" / "decode_speed.json")
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    write_result(args.json, result, table(result))


if __name__ == "__main__":
    main()
