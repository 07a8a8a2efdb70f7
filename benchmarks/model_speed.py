"""Training-step speed of our Transformer against torch.nn.Transformer and a naive-attention variant.

What is measured
----------------
One training step without the optimizer: ``zero_grad``, forward on a padded batch, label-smoothed
cross-entropy over the non-pad target positions, backward. Throughput is reported as *target
tokens per second*, counting real (non-pad) target tokens, median over ``--iters`` timed steps
after ``--warmup`` untimed ones. The implementations run round-robin (one step of each in turn), so
that load from other processes on a shared machine affects all of them alike.

Implementations, all with dropout on (training mode) and the same sizes:

* ``ours``: ``transformer.Transformer`` (attention through ``F.scaled_dot_product_attention``).
* ``torch.nn.Transformer``: ``nn.Transformer(batch_first=True)`` wrapped with the same shared
  sqrt(d_model)-scaled embedding, sinusoidal positions and tied output projection. Note that
  ``nn.Transformer`` also adds a final LayerNorm after the encoder and after the decoder stacks
  (two extra LayerNorms, negligible in FLOPs), and has no attention dropout either.
* ``ours-naive``: our model with every attention forced onto the reference path, explicit
  softmax(Q K^T / sqrt(d_k)) V (``reference_attention``), as ``need_weights=True`` does.

Precisions: ``fp32``, and ``bf16`` under ``torch.autocast(device_type, dtype=torch.bfloat16)``
(weights stay fp32). Our models run in the context `transformer train` gives the forward pass
(`transformer.hardware.training_context`: in fp32 on an AMD CPU, every linear map through
oneDNN, forward and backward, instead of MKL); ``torch.nn.Transformer`` runs as PyTorch runs it.

Model FLOPs utilisation (MFU): forward matmul FLOPs are counted analytically (2*m*n*k for the
Q/K/V/output projections, attention scores Q K^T and weighted sums A V, both FFN matmuls and the
output projection onto the vocabulary) on the padded batch shapes, with causal self-attention
counted in full (T x T); a training step counts 3x that (the backward pass costs two matmuls per
forward matmul). Achieved FLOP/s is divided by the FLOP/s of a large square matmul measured in the
same run in the same precision (fp32, or bf16 for the bf16 rows) through the kernel our training
uses (`matmul_flops_per_s`), so MFU is relative to what this machine's matmul actually reaches,
not to a datasheet peak.

Run (from the repository root)::

    .venv/bin/python benchmarks/model_speed.py
    .venv/bin/python benchmarks/model_speed.py --configs multi30k --precisions fp32 --iters 2 --warmup 1

Results are printed as a Markdown table and written, with torch version, device and thread count,
to ``benchmarks/results/model_speed.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer import ModelConfig, Transformer
from transformer.hardware import AUTOCAST_DTYPES, autocast, training_context
from transformer.model import MultiHeadAttention, sinusoid_table
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

IMPLS = ("ours", "torch.nn.Transformer", "ours-naive")
BASELINE = "torch.nn.Transformer"
FIRST_WORD_ID = 4  # ids below are the special tokens (pad, bos, eos, unk)
LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class BenchConfig:
    """A model size and the shape of the batch it is timed on."""

    name: str
    model: ModelConfig
    batch_size: int  # sentences per batch
    max_len: int  # source and target lengths are drawn from [min_len, max_len], then padded
    min_len: int
    iters_scale: float = 1.0  # fraction of --iters / --warmup used for this config (slow ones)


CONFIGS: dict[str, BenchConfig] = {
    # Multi30k-sized model: ~4,000 padded target tokens per batch (160 x 25).
    "multi30k": BenchConfig(
        name="multi30k",
        model=ModelConfig(
            vocab_size=8000,
            d_model=256,
            n_heads=4,
            d_ff=1024,
            n_encoder_layers=3,
            n_decoder_layers=3,
        ),
        batch_size=160,
        max_len=25,
        min_len=15,
    ),
    # The paper's base model on a WMT-sized vocabulary; a ~2,000-token batch keeps CPU runs short.
    "base": BenchConfig(
        name="base",
        model=ModelConfig.base(vocab_size=37000),
        batch_size=80,
        max_len=25,
        min_len=15,
        iters_scale=0.5,
    ),
}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class NaiveMultiHeadAttention(MultiHeadAttention):
    """Multi-head attention that always takes the explicit reference path (no fused kernel)."""

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        out, _ = super().attend(q, k, v, mask, is_causal, need_weights=True)
        return out, None


def naive_transformer(config: ModelConfig) -> Transformer:
    """Our model with every MultiHeadAttention switched to the reference (explicit) attention."""
    model = Transformer(config)
    for module in model.modules():
        if type(module) is MultiHeadAttention:
            module.__class__ = NaiveMultiHeadAttention
    return model


class TorchTransformer(nn.Module):
    """``nn.Transformer`` with our embedding scheme: one shared scaled embedding, sinusoids, tied output."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d_model = config.d_model
        self.scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(config.vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=d_model**-0.5)
        self.register_buffer(
            "positions", sinusoid_table(config.max_positions, d_model), persistent=False
        )
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = nn.Transformer(
            d_model=d_model,
            nhead=config.n_heads,
            num_encoder_layers=config.n_encoder_layers,
            num_decoder_layers=config.n_decoder_layers,
            dim_feedforward=config.d_ff,
            dropout=config.dropout,
            layer_norm_eps=config.layer_norm_eps,
            batch_first=True,
            norm_first=config.norm_position == "pre",
        )

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) -> (B, T, D)."""
        x = self.embedding(ids) * self.scale + self.positions[: ids.size(1)]
        return self.dropout(x)

    def forward(self, src_ids: Tensor, tgt_in_ids: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V), masks as in our model (pad keys, causal target)."""
        t = tgt_in_ids.size(1)
        src_pad = src_ids == PAD_ID  # True = ignore (nn.Transformer's convention)
        tgt_mask = torch.ones(t, t, dtype=torch.bool, device=tgt_in_ids.device).triu(1)
        hidden = self.transformer(
            self.embed(src_ids),
            self.embed(tgt_in_ids),
            tgt_mask=tgt_mask,
            src_key_padding_mask=src_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return F.linear(hidden, self.embedding.weight)


def build_model(impl: str, config: ModelConfig) -> nn.Module:
    if impl == "ours":
        return Transformer(config)
    if impl == "ours-naive":
        return naive_transformer(config)
    if impl == BASELINE:
        return TorchTransformer(config)
    raise ValueError(f"unknown implementation {impl!r}")


# --------------------------------------------------------------------------------------------
# Batches, FLOPs, timing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    src: Tensor  # (B, S)
    tgt_in: Tensor  # (B, T): BOS + words
    tgt_out: Tensor  # (B, T): words + EOS
    target_tokens: int  # non-pad positions of tgt_out


def random_batch(bench: BenchConfig, device: torch.device, generator: torch.Generator) -> Batch:
    """Random word ids with random lengths, padded to the longest sentence of the batch."""
    b, vocab = bench.batch_size, bench.model.vocab_size

    def lengths() -> Tensor:
        return torch.randint(bench.min_len, bench.max_len + 1, (b,), generator=generator)

    def padded(lens: Tensor, width: int) -> Tensor:
        ids = torch.randint(FIRST_WORD_ID, vocab, (b, width), generator=generator)
        return ids.masked_fill(torch.arange(width)[None, :] >= lens[:, None], PAD_ID)

    src_lens, tgt_lens = lengths(), lengths()
    src = padded(src_lens, int(src_lens.max()))
    words = padded(tgt_lens, int(tgt_lens.max()))  # (B, T - 1)
    tgt_in = torch.cat([torch.full((b, 1), BOS_ID), words], dim=1)
    tgt_out = torch.cat([words, torch.full((b, 1), PAD_ID)], dim=1)
    tgt_out[torch.arange(b), tgt_lens] = EOS_ID
    return Batch(
        src=src.to(device),
        tgt_in=tgt_in.to(device),
        tgt_out=tgt_out.to(device),
        target_tokens=int((tgt_out != PAD_ID).sum()),
    )


def forward_matmul_flops(config: ModelConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """Matmul FLOPs (2*m*n*k) of one teacher-forced forward pass on padded shapes."""
    d, h, dff, vocab = config.d_model, config.n_heads, config.d_ff, config.vocab_size
    hk, hv = h * (config.d_k or 0), h * (config.d_v or 0)

    def attention(t_q: int, t_k: int) -> int:
        projections = t_q * d * hk + t_k * d * (hk + hv) + t_q * hv * d  # Q, K+V, W^O
        scores_and_sums = t_q * t_k * (hk + hv)  # Q K^T and A V over all heads
        return 2 * batch * (projections + scores_and_sums)

    def ffn(t: int) -> int:
        return 2 * batch * t * 2 * d * dff

    encoder = config.n_encoder_layers * (attention(src_len, src_len) + ffn(src_len))
    decoder = config.n_decoder_layers * (
        attention(tgt_len, tgt_len) + attention(tgt_len, src_len) + ffn(tgt_len)
    )
    output = 2 * batch * tgt_len * d * vocab
    return encoder + decoder + output


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PRECISION_OF = {torch.float32: "fp32"} | {dtype: p for p, dtype in AUTOCAST_DTYPES.items()}


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """Median FLOP/s of a (size x size) by (size x size) product in `dtype`, through the kernel
    that training's linear maps use (`F.linear` in `hardware.training_context`: oneDNN for
    float32 on an AMD CPU, where PyTorch's own `torch.mm` would take MKL's slower one)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = []
    for i in range(reps + 2):  # two untimed warm-up products
        synchronize(device)
        start = time.perf_counter()
        with training_context(device, PRECISION_OF[dtype]):
            F.linear(a, b)
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def training_step(
    model: nn.Module, batch: Batch, device: torch.device, precision: str, ours: bool = True
) -> Callable[[], float]:
    """A closure that runs one forward+backward step and returns its wall time in seconds; in
    the trainer's context (`ours`) or in plain autocast."""
    context = training_context if ours else autocast

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with context(device, precision):
            logits = model(batch.src, batch.tgt_in)
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(),
                batch.tgt_out.flatten(),
                ignore_index=PAD_ID,
                label_smoothing=LABEL_SMOOTHING,
            )
        loss.backward()
        synchronize(device)
        return time.perf_counter() - start

    return step


@dataclass
class Result:
    config: str
    precision: str
    impl: str
    parameters: int
    batch_shape: dict[str, int]
    target_tokens: int
    step_seconds: list[float] = field(default_factory=list)
    median_seconds: float = 0.0
    tokens_per_s: float = 0.0
    train_flops_per_step: int = 0
    achieved_flops_per_s: float = 0.0
    matmul_peak_flops_per_s: float = 0.0
    mfu: float = 0.0
    ratio_vs_torch: float | None = None


def bench_config(
    bench: BenchConfig,
    precision: str,
    impls: tuple[str, ...],
    device: torch.device,
    warmup: int,
    iters: int,
    peak: float,
    seed: int,
) -> list[Result]:
    """Time every implementation on the same batch, one step of each in turn."""
    generator = torch.Generator().manual_seed(seed)
    batch = random_batch(bench, device, generator)
    b, s = batch.src.shape
    t = batch.tgt_in.size(1)
    flops = 3 * forward_matmul_flops(bench.model, b, s, t)
    models, results, steps = {}, {}, {}
    for impl in impls:
        torch.manual_seed(seed)
        model = build_model(impl, bench.model).to(device).train()
        models[impl] = model
        results[impl] = Result(
            config=bench.name,
            precision=precision,
            impl=impl,
            parameters=sum(p.numel() for p in model.parameters()),
            batch_shape={"batch": b, "src_len": s, "tgt_len": t},
            target_tokens=batch.target_tokens,
            train_flops_per_step=flops,
            matmul_peak_flops_per_s=peak,
        )
        steps[impl] = training_step(model, batch, device, precision, ours=impl != BASELINE)
    for i in range(warmup + iters):
        for impl in impls:
            seconds = steps[impl]()
            if i >= warmup:
                results[impl].step_seconds.append(seconds)
    for result in results.values():
        result.median_seconds = statistics.median(result.step_seconds)
        result.tokens_per_s = batch.target_tokens / result.median_seconds
        result.achieved_flops_per_s = flops / result.median_seconds
        result.mfu = result.achieved_flops_per_s / peak
    if BASELINE in results:
        for result in results.values():
            result.ratio_vs_torch = result.tokens_per_s / results[BASELINE].tokens_per_s
    del models
    return list(results.values())


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def csv_choices(choices: tuple[str, ...] | list[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}"
            )
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--configs", type=csv_choices(list(CONFIGS)), default=tuple(CONFIGS))
    parser.add_argument(
        "--precisions", type=csv_choices(("fp32", "bf16")), default=("fp32", "bf16")
    )
    parser.add_argument("--impls", type=csv_choices(IMPLS), default=IMPLS)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per implementation")
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side of the square matmul that sets the MFU peak (default 2048 on CPU, 8192 on CUDA)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model_speed.json"))
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.iters < 1:
        parser.error("--warmup must be >= 0 and --iters >= 1")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown_table(results: list[Result]) -> Iterator[str]:
    yield "| config | precision | impl | tokens/s | ratio vs torch.nn.Transformer | MFU |"
    yield "|---|---|---|---:|---:|---:|"
    for r in results:
        ratio = "-" if r.ratio_vs_torch is None else f"{r.ratio_vs_torch:.2f}x"
        yield (
            f"| {r.config} | {r.precision} | {r.impl} | {r.tokens_per_s:,.0f} | {ratio} "
            f"| {100 * r.mfu:.1f}% |"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    torch.manual_seed(args.seed)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_flops_per_s(device, dtypes[p], matmul_size, reps=5) for p in args.precisions}
    print(
        f"torch {torch.__version__} on {device.type} ({device_description(device)}), "
        f"{torch.get_num_threads()} threads"
    )
    for precision, peak in peaks.items():
        print(f"{matmul_size}x{matmul_size} {precision} matmul: {peak / 1e9:,.1f} GFLOP/s")

    results: list[Result] = []
    for name in args.configs:
        bench = CONFIGS[name]
        warmup = max(1 if args.warmup else 0, round(args.warmup * bench.iters_scale))
        iters = max(1, round(args.iters * bench.iters_scale))
        for precision in args.precisions:
            rows = bench_config(
                bench, precision, args.impls, device, warmup, iters, peaks[precision], args.seed
            )
            for r in rows:
                print(
                    f"  {r.config:8s} {r.precision:4s} {r.impl:21s} "
                    f"{r.tokens_per_s:>10,.0f} tok/s  ({r.median_seconds * 1e3:,.0f} ms/step)",
                    flush=True,
                )
            results.extend(rows)

    print()
    print("\n".join(markdown_table(results)))

    report = {
        "torch_version": torch.__version__,
        "device": device.type,
        "device_name": device_description(device),
        "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "matmul_size": matmul_size,
        "matmul_peak_flops_per_s": peaks,
        "configs": {
            name: {
                "model": CONFIGS[name].model.to_dict(),
                "batch_size": CONFIGS[name].batch_size,
                "min_len": CONFIGS[name].min_len,
                "max_len": CONFIGS[name].max_len,
            }
            for name in args.configs
        },
        "results": [asdict(r) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
