"""Conversion of a model directory into a CTranslate2 model directory (`transformer export`).

The directory written (model.bin, config.json, shared_vocabulary.json, tokenizer.json,
transformer_config.json, export.json, and task.json when the model has one) is described in `transformer.ct2_format`, whose names the
engine reads too.

How our Transformer maps onto CTranslate2's `TransformerSpec` (checked against the ctranslate2 4.x
sources: specs/transformer_spec.py, src/layers/{transformer,attention_layer,common}.cc):

- Positions: CTranslate2's built-in sinusoids are fairseq's ``[sin | cos]`` halves, and they
  start at position 1; ours are the paper's interleaved sin/cos starting at 0. So the table is
  always given explicitly (`position_encodings.encodings`, looked up at positions 0, 1, ...):
  our `sinusoid_table` for sinusoids (at least `MIN_SINUSOID_POSITIONS` rows), the learned
  matrix for learned positions, zeros for `positional: none` (and for the kinds that live inside
  attention, refused by `unsupported_options`). Its row count is the engine's hard length limit,
  written to export.json; the Translator truncates longer inputs as it does for learned positions.
- Embedding scale: `scale_embeddings = True` multiplies by sqrt(embedding width) = sqrt(d_model),
  before the positions are added, as `ScaledEmbedding` does.
- Norm position: post-norm is `pre_norm=False` (LayerNorm(x + Sublayer(x)), no final LayerNorm);
  pre-norm is `pre_norm=True` with the final LayerNorm of each stack. The epsilon is
  `config.layer_norm_epsilon` (CTranslate2 otherwise defaults to 1e-5 with a bias, 1e-6 without).
- Attention: q/k/v projections are fused into one matrix (self-attention) and k/v into one
  (cross-attention), in that order, as CTranslate2 expects. d_k = d_v other than d_model / h is
  the spec's `head_dim`; queries are scaled by 1/sqrt(head_dim) as ours are (by 1 through
  `queries_scale` for `scale_attention: false`). With `shared_query_key`, W^Q is written as W^K.
- Embeddings: with `share_embeddings` the source and target embeddings and the output projection
  are the same array; CTranslate2's `optimize()` stores it once (aliases) and quantizes it once.
  The output projection has no bias, as ours.
- Source EOS: not added by CTranslate2 (`add_source_eos` false); the engine passes our ids with
  the EOS already appended, exactly what the PyTorch encoder sees.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from transformer.config import ModelConfig
from transformer.ct2_format import EXPORT_FILE, INSTALL_HINT, QUANTIZATIONS, SOURCE_CONFIG_FILE
from transformer.data.tokenizer import SubwordTokenizer
from transformer.io import atomic_directory
from transformer.model import Transformer
from transformer.model.attention import MultiHeadAttention
from transformer.model.embeddings import sinusoid_table
from transformer.modeldir import (
    CONFIG_FILE,
    TASK_FILE,
    TOKENIZER_FILE,
    ModelDirError,
    load_model_config,
    load_model_dir,
)
from transformer.version import __version__
from transformer.vocab import BOS, EOS, UNK

# Sinusoids have no inherent limit, but CTranslate2 needs a finite table: at least this many rows.
MIN_SINUSOID_POSITIONS = 1024


class ExportError(ValueError):
    """The model cannot be exported as asked; `problems` lists every reason, one line each."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"cannot {what} ({len(self.problems)} problem(s)):\n{lines}")


# ------------------------------------------------------------------------------------ checks


def unsupported_options(config: ModelConfig) -> list[str]:
    """Every option of `config` that CTranslate2's TransformerSpec cannot represent (empty: OK).

    One function over ModelConfig, so that a new model option gets its line here. What
    CTranslate2 (4.x) can and cannot do, from its sources:
    - one head size per attention layer (`head_dim`), used for queries, keys and values alike,
      so d_k must equal d_v (any value: d_k = d_v != d_model / n_heads is fine);
    - `num_heads` is stored as int16;
    - `layer_norm_epsilon` is read as a float32, so it must be a positive normal float32;
    - the feed-forward activation is a choice (ReLU or GELU map), the sqrt(d_model) embedding
      scale is a switch, post- and pre-norm, learned or explicit sinusoidal tables, shared or
      separate embeddings all map (see the module doc); dropout does not exist at inference;
    - its Transformer layers always normalise with LayerNorm and always add the residual;
    - its attention scores are scaled dot products (no additive scoring); its encoder has no
      ALiBi (offered for decoders only); it has relative (Shaw et al. 2018) and rotary positions
      of its own, but this exporter writes absolute position tables only and does not map ours
      onto them.
    """
    problems = []
    if config.norm != "layer":
        problems.append(
            f"norm={config.norm}: CTranslate2's Transformer layers normalise with LayerNorm only"
        )
    if not config.residual:
        problems.append(
            "residual=false: CTranslate2's Transformer layers always add the residual connection"
        )
    if config.d_k != config.d_v:
        problems.append(
            f"d_k={config.d_k} != d_v={config.d_v}: CTranslate2 has a single per-head size for "
            "queries, keys and values (set d_v equal to d_k)"
        )
    if config.n_heads > np.iinfo(np.int16).max:
        problems.append(
            f"n_heads={config.n_heads}: CTranslate2 stores the number of heads as int16 "
            f"(at most {np.iinfo(np.int16).max})"
        )
    eps32 = np.float32(config.layer_norm_eps)
    if not (np.isfinite(eps32) and eps32 >= np.finfo(np.float32).tiny):
        problems.append(
            f"layer_norm_eps={config.layer_norm_eps!r}: CTranslate2 reads it as a float32, in "
            f"which it is not a positive normal number (use one >= {np.finfo(np.float32).tiny:.3g})"
        )
    if config.positional in ("relative", "rotary"):
        problems.append(
            f"positional={config.positional}: not exported; this exporter writes absolute "
            "position tables only and does not map these positions onto CTranslate2's own"
        )
    if config.positional == "alibi":
        problems.append(
            "positional=alibi: CTranslate2's TransformerSpec has ALiBi in decoders only, "
            "not in the encoder"
        )
    if config.attention == "additive":
        problems.append(
            "attention=additive: CTranslate2's attention layers score by dot products only"
        )
    return problems


def vocabulary_problems(tokenizer: SubwordTokenizer) -> list[str]:
    """CTranslate2 maps token strings to ids: every id needs a string, and no two the same one."""
    problems, seen = [], {}
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(i)
        if token is None:
            problems.append(f"tokenizer: id {i} has no token string")
        elif token in seen:
            problems.append(f"tokenizer: ids {seen[token]} and {i} share the token {token!r}")
        else:
            seen[token] = i
    return problems


def _output_problems(model_dir: Path, out: Path) -> list[str]:
    """Refuse outputs whose replacement would destroy something that is not an earlier export."""
    if out.resolve() == model_dir.resolve():
        return [f"--out {out}: is the model directory itself; choose another directory"]
    if out.exists() and not out.is_dir():
        return [f"--out {out}: exists and is not a directory"]
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        return [
            f"--out {out}: exists, is not empty and is not an earlier export (no {EXPORT_FILE}); "
            "choose another directory or remove it"
        ]
    return []


# ------------------------------------------------------------------------------------- spec


def _array(t: Tensor) -> np.ndarray:
    """A float32 numpy copy of a parameter (CTranslate2 keeps references to what it is given)."""
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _set_linear(spec, layers: tuple[nn.Linear, ...]) -> None:
    """One CTranslate2 linear from one or several of ours stacked along the output dimension."""
    spec.weight = np.concatenate([_array(layer.weight) for layer in layers])
    spec.bias = np.concatenate([_array(layer.bias) for layer in layers])


def _set_layer_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma = _array(norm.weight)
    spec.beta = _array(norm.bias)


def _key_projection(attn: MultiHeadAttention) -> nn.Linear:
    """W^K, which is W^Q itself in a model with `shared_query_key` (written out twice)."""
    return attn.q_proj if attn.k_proj is None else attn.k_proj


def _set_scale(spec, attn: MultiHeadAttention) -> None:
    """Unscaled dot products (`scale_attention: false`): CTranslate2's queries_scale = 1."""
    if attn.scale is not None:
        spec.queries_scale = np.float32(attn.scale)


def _set_self_attention(spec, attn: MultiHeadAttention) -> None:
    _set_linear(spec.linear[0], (attn.q_proj, _key_projection(attn), attn.v_proj))
    _set_linear(spec.linear[1], (attn.out_proj,))
    _set_scale(spec, attn)


def _set_cross_attention(spec, attn: MultiHeadAttention) -> None:
    _set_linear(spec.linear[0], (attn.q_proj,))
    _set_linear(spec.linear[1], (_key_projection(attn), attn.v_proj))
    _set_linear(spec.linear[2], (attn.out_proj,))
    _set_scale(spec, attn)


def _set_feed_forward(spec, layer) -> None:
    _set_layer_norm(spec.layer_norm, layer.feed_forward_sublayer.norm)
    _set_linear(spec.linear_0, (layer.feed_forward.linear1,))
    _set_linear(spec.linear_1, (layer.feed_forward.linear2,))


def position_table(model: Transformer) -> Tensor:
    """(P, D) position vectors for positions 0..P-1, as the model adds them; P = the limit."""
    config = model.config
    if config.positional == "learned":
        return model.encoder.embed.positional.weight
    rows = max(config.max_positions, MIN_SINUSOID_POSITIONS)
    if config.positional != "sinusoidal":  # nothing added to the embeddings: a table of zeros
        return torch.zeros(rows, config.d_model)
    return sinusoid_table(rows, config.d_model)


def build_spec(model: Transformer, tokens: list[str]):
    """The `ctranslate2.specs.TransformerSpec` of `model`, weights set, vocabulary registered."""
    from ctranslate2.specs import TransformerDecoderSpec, TransformerEncoderSpec, TransformerSpec
    from ctranslate2.specs.common_spec import Activation

    config = model.config
    pre = config.norm_position == "pre"
    # head_dim only when it is not CTranslate2's default d_model / n_heads.
    default_head = config.d_model // config.n_heads
    same = config.d_k == default_head and config.d_model % config.n_heads == 0
    head_dim = None if same else config.d_k
    activation = Activation.GELU if config.activation == "gelu" else Activation.RELU
    common = dict(num_heads=config.n_heads, pre_norm=pre, activation=activation)
    spec = TransformerSpec(
        TransformerEncoderSpec(config.n_encoder_layers, head_dim=head_dim, **common),
        TransformerDecoderSpec(config.n_decoder_layers, head_dim=head_dim, **common),
    )
    positions = _array(position_table(model))

    encoder, enc = spec.encoder, model.encoder
    encoder.embeddings[0].weight = _array(enc.embed.token.weight)
    encoder.scale_embeddings = config.scale_embedding  # x sqrt(d_model)
    encoder.position_encodings.encodings = positions
    for layer_spec, layer in zip(encoder.layer, enc.layers):
        _set_self_attention(layer_spec.self_attention, layer.self_attn)
        _set_layer_norm(layer_spec.self_attention.layer_norm, layer.self_attn_sublayer.norm)
        _set_feed_forward(layer_spec.ffn, layer)
    if pre:
        _set_layer_norm(encoder.layer_norm, enc.final_norm)

    decoder, dec = spec.decoder, model.decoder
    decoder.embeddings.weight = _array(dec.embed.token.weight)
    decoder.scale_embeddings = config.scale_embedding
    decoder.position_encodings.encodings = (
        _array(dec.embed.positional.weight) if config.positional == "learned" else positions
    )
    for layer_spec, layer in zip(decoder.layer, dec.layers):
        _set_self_attention(layer_spec.self_attention, layer.self_attn)
        _set_layer_norm(layer_spec.self_attention.layer_norm, layer.self_attn_sublayer.norm)
        _set_cross_attention(layer_spec.attention, layer.cross_attn)
        _set_layer_norm(layer_spec.attention.layer_norm, layer.cross_attn_sublayer.norm)
        _set_feed_forward(layer_spec.ffn, layer)
    if pre:
        _set_layer_norm(decoder.layer_norm, dec.final_norm)
    decoder.projection.weight = _array(model.output_weight)  # (V, D), no bias

    spec.config.layer_norm_epsilon = float(config.layer_norm_eps)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = BOS, EOS, UNK
    spec.config.decoder_start_token = BOS
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    return spec


# ----------------------------------------------------------------------------------- export


def export_ctranslate2(
    model_dir: Path | str, out_dir: Path | str, quantization: str = "int8"
) -> Path:
    """Convert a model directory into a CTranslate2 model directory `out_dir`.

    Everything is checked first and every problem reported at once (ExportError); the output is
    written to a temporary sibling and renamed into place, so a refusal or a crash leaves
    nothing behind. An earlier export at `out_dir` is replaced; any other non-empty directory is
    refused.
    """
    model_dir, out = Path(model_dir), Path(out_dir)
    what = f"export {model_dir} to CTranslate2"
    problems = []
    if quantization not in QUANTIZATIONS:
        problems.append(f"--quantization {quantization}: not one of {', '.join(QUANTIZATIONS)}")
    problems += _output_problems(model_dir, out)
    try:
        import ctranslate2
    except ImportError:
        problems.append(f"the ctranslate2 package is not installed; {INSTALL_HINT}")
        ctranslate2 = None
    try:
        problems += unsupported_options(load_model_config(model_dir))
    except ModelDirError as e:  # a missing or invalid config.json, named
        problems.append(str(e))
    if problems:
        raise ExportError(what, problems)

    model, tokenizer = load_model_dir(model_dir)
    problems = vocabulary_problems(tokenizer)
    if problems:
        raise ExportError(what, problems)
    tokens = [str(tokenizer.id_to_token(i)) for i in range(tokenizer.vocab_size)]
    spec = build_spec(model, tokens)
    spec.validate()
    spec.optimize(quantization=quantization)

    with atomic_directory(out) as tmp:
        spec.save(str(tmp))  # model.bin, config.json, shared_vocabulary.json
        shutil.copyfile(model_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        shutil.copyfile(model_dir / CONFIG_FILE, tmp / SOURCE_CONFIG_FILE)
        if (model_dir / TASK_FILE).is_file():  # a parser stays a parser (its decoding defaults)
            shutil.copyfile(model_dir / TASK_FILE, tmp / TASK_FILE)
        meta = {
            "format": "ctranslate2",
            "quantization": quantization,
            "positions": int(position_table(model).size(0)),
            "source_model": str(model_dir.resolve()),
            "tokenizer_sha256": tokenizer.sha256,
            "ctranslate2_version": ctranslate2.__version__,
            "transformer_version": __version__,
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out
