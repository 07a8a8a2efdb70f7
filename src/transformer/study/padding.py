"""How is padding masked? Measured on a trained model: each validation sentence's log-probability
(teacher forcing) computed alone, then in padded batches with the key padding mask and in the
same batches without it.

A batch pads every source sentence to its longest with PAD tokens. The mask gives those
positions no attention weight (their scores are set to -inf before the softmax), so a real
token's representation is the same whatever its batch-mates are. Without it the real tokens also
attend to the padding, so the same sentence gets a different representation, and a different
probability, in every batch: the more padding, the larger the change. The target side needs no
key padding mask of its own: its padding comes after the real tokens, where the causal mask
already hides it from them (and the loss ignores padded positions).

The probe runs in fp32, where "the same" can be checked to rounding: alone and masked differ by
float reordering only. Batches: by length (as training batches them: little padding) and in
random order (much padding), `batch_size` sentences each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transformer.data.batching import Batch, collate
from transformer.data.dataset import ParallelDataset
from transformer.model import Transformer
from transformer.model.attention import padding_mask
from transformer.vocab import PAD_ID

ARRANGEMENTS = ("by length", "random order")
CHANGED_NATS = 0.01  # a sentence whose log-probability moved more than this "changed"


@torch.no_grad()
def sentence_nll(model: Transformer, batch: Batch, masked: bool = True) -> torch.Tensor:
    """(B,) summed negative log-likelihood (nats) of each target sentence, teacher-forced; with
    `masked` False the source padding is not masked (every key position counts as real)."""
    src_mask = padding_mask(batch.src)
    if not masked:
        src_mask = torch.ones_like(src_mask)
    memory = model.encode(batch.src, src_mask)
    logits = model.decode(batch.tgt_in, memory, src_mask).float()
    nll = F.cross_entropy(
        logits.transpose(1, 2), batch.tgt_out, ignore_index=PAD_ID, reduction="none"
    )
    return nll.sum(dim=1)


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_probe(
    model: Transformer,
    dataset: ParallelDataset,
    batch_size: int = 32,
    seed: int = 1,
    limit: int = 0,
) -> dict[str, Any]:
    """Every sentence's NLL alone and in batches (by length, random order) with and without the
    mask; per arrangement: the share of padding, dev perplexity, and how far each sentence moved
    from its value alone. `limit` > 0 uses the first `limit` pairs only."""
    model = model.float().eval()
    n = min(len(dataset), limit) if limit > 0 else len(dataset)
    pairs = [dataset[i] for i in range(n)]
    tokens = sum(len(t) + 1 for _, t in pairs)  # + </s>
    alone = torch.cat([sentence_nll(model, collate([p])) for p in pairs]).double()
    rows: list[dict[str, Any]] = [
        {
            "batches": "one sentence at a time",
            "masked": None,
            "padding": 0.0,
            "ppl": math.exp(alone.sum().item() / tokens),
            "max_change": 0.0,
            "mean_change": 0.0,
            "changed": 0.0,
        }
    ]
    scatter: dict[str, list[list[float]]] = {}
    lengths = np.array([len(s) for s, _ in pairs])
    orders = {
        "by length": np.argsort(lengths, kind="stable"),
        "random order": np.random.default_rng(seed).permutation(n),
    }
    for arrangement in ARRANGEMENTS:
        groups = _batches(orders[arrangement], batch_size)
        batches = [collate([pairs[i] for i in g]) for g in groups]
        padded = sum(b.src.numel() for b in batches)
        real = sum(int(padding_mask(b.src).sum()) for b in batches)
        # each sentence's padding: source positions of its batch beyond its own length + </s>
        pads = np.zeros(n)
        for g, b in zip(groups, batches):
            pads[g] = b.src.shape[1] - (lengths[g] + 1)
        for masked in (True, False):
            nll = torch.zeros(n, dtype=torch.float64)
            for g, b in zip(groups, batches):
                nll[torch.from_numpy(g)] = sentence_nll(model, b, masked).double()
            change = (nll - alone).abs()
            rows.append(
                {
                    "batches": f"{arrangement}, {batch_size} per batch",
                    "masked": masked,
                    "padding": 1 - real / padded,
                    "ppl": math.exp(nll.sum().item() / tokens),
                    "max_change": change.max().item(),
                    "mean_change": change.mean().item(),
                    "changed": (change > CHANGED_NATS).double().mean().item(),
                }
            )
            if arrangement == "random order":
                per_token = ((nll - alone) / torch.tensor([len(t) + 1 for _, t in pairs])).tolist()
                scatter["masked" if masked else "unmasked"] = [
                    [float(p), float(c)] for p, c in zip(pads, per_token)
                ]
    return {"sentences": n, "batch_size": batch_size, "rows": rows, "scatter": scatter}


PROBE = "padding.json"  # in the questions study's output directory


def probe_run(run_dir: Path, data_dir: Path, split: str, **kwargs: Any) -> dict[str, Any]:
    """`padding_probe` of a run's newest checkpoint on `split` of `data_dir`."""
    from transformer.data.dataset import load_split
    from transformer.modeldir import load_model_dir
    from transformer.training.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to probe")
    path, state = found
    model, _ = load_model_dir(path)
    result = padding_probe(model, load_split(data_dir, split), **kwargs)
    return {"checkpoint": str(path), "step": int(state.get("step", 0)), **result}


def study_probe(out: Path, run_dir: Path, data_dir: Path, split: str) -> dict[str, Any]:
    """The probe of the questions study's base row (`run_dir`), kept in OUT/padding.json and
    measured again only when that row has a newer checkpoint."""
    import json

    from transformer.io import atomic_write_json
    from transformer.training.checkpoint import list_checkpoints

    newest = list_checkpoints(run_dir)[-1:]
    try:
        kept = json.loads((out / PROBE).read_text(encoding="utf-8"))
        if newest and kept.get("checkpoint") == str(newest[0][1]):
            return kept
    except (OSError, ValueError):
        pass
    result = probe_run(run_dir, data_dir, split)
    atomic_write_json(out / PROBE, result)
    return result
