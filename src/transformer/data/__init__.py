"""Data: joint BPE tokenizer, binarized memory-mapped dataset, token-budget batching.

transformer prepare ...                      # text -> data directory (see prepare.py)
tok = load_tokenizer(data_dir)
train = load_split(data_dir, "train")
sampler = TokenBatchSampler(train.src_lengths, train.tgt_lengths, max_tokens=4096)
loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate)
"""

from transformer.data.batching import Batch, TokenBatchSampler, collate, pack_batches
from transformer.data.dataset import ParallelDataset, load_split, load_tokenizer, read_manifest
from transformer.data.errors import DataError
from transformer.data.prepare import prepare
from transformer.data.tokenizer import SubwordTokenizer

__all__ = [
    "Batch",
    "DataError",
    "ParallelDataset",
    "SubwordTokenizer",
    "TokenBatchSampler",
    "collate",
    "load_split",
    "load_tokenizer",
    "pack_batches",
    "prepare",
    "read_manifest",
]
