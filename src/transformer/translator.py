"""The Translator facade: text in, text out. The one entry point of the CLI and the server.

    translator = Translator.from_pretrained("work/model", device="cpu")
    translator.translate(["Ein Hund läuft."])                     # beam 4, GNMT alpha 0.6
    translator.translate(texts, method="greedy")
    best = translator.translate_nbest(texts, nbest=4, attention=True)

The keyword options are the fields of `DecodeOptions` (declared in `transformer.decoding.options`,
importable from here too); an unknown or invalid one raises ConfigError naming it.

Several model directories (sharing one tokenizer) form an ensemble: their next-token
log-probabilities are averaged at every step.

Lengths. The source fed to the encoder is its subwords + EOS. A hypothesis holds at most
`max_len_a * |source subwords| + max_len_b` tokens before its EOS (the paper's input + 50). With
learned positional embeddings (`positional: learned`), a model cannot take more than
`max_positions` positions: longer sources are cut to `max_positions - 1` subwords (the
`Translation.truncated` flag is set and `translate` warns) and hypotheses to `max_positions - 1`
tokens. Sinusoidal models take any length. An empty (or all-whitespace) input gives empty
hypotheses without running the model.

Engines. What decodes is an engine (`transformer.decoding.engine`): "torch" (the default: our
PyTorch models, ensembles, attention maps) or "ctranslate2" (a directory written by
`transformer export --format ctranslate2`, decoded by CTranslate2; see
`transformer.decoding.ct2_engine` for how the options map and how its length penalty is
replaced by ours). Tokenization, truncation, lengths and batching stay here, the same for both;
an exported model has a fixed position table (`export.json`), so its inputs are truncated as
those of a learned-position model are.

    fast = Translator.from_pretrained("work/model-ct2", engine="ctranslate2")

Tasks. A model directory may record a task other than translation (`task.json`, see
`transformer.modeldir`): its decoding defaults replace the paper's translation defaults for every
option the caller does not give, and for a parser (`task["name"] == "parsing"`) each hypothesis's
`text` is a bracketed tree over the input's words (`transformer.data.trees.delinearise`: always
well-formed, the words restored in order), its model output kept in `Hypothesis.sequence`.

    parser = Translator.from_pretrained("work/gum-model")       # beam 21, alpha 0.3, input + 300
    parser.translate(["The dog barks ."])   # ["(ROOT (S (NP (XX The) (XX dog)) (VP (XX barks)) (XX .)))"]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transformer.config import ConfigError
from transformer.data.tokenizer import SubwordTokenizer
from transformer.data.trees import PARSING_TASK, delinearise, to_string
from transformer.decoding.engine import (
    ENGINES,
    Engine,
    TorchEngine,
    decode_batches,
    hypothesis_ids,
    max_source_subwords,
    pad_ids,
)
from transformer.decoding.generate import Generated
from transformer.decoding.options import DecodeOptions
from transformer.hardware import DEFAULT_INFERENCE_PRECISION, inference_context
from transformer.model import Transformer
from transformer.modeldir import TASK_FILE, ModelDirError, load_model_dir, load_task
from transformer.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = ["AttentionMaps", "DecodeOptions", "Hypothesis", "Translation", "Translator"]


@dataclass
class Hypothesis:
    """One output. `tokens`: subword ids without the EOS. `log_prob`: the sum of the token
    log-probabilities, EOS included. `score`: log_prob / lp(|Y|) with |Y| = len(tokens) + 1,
    the score hypotheses are ranked by (equal to log_prob with length_penalty "none")."""

    text: str
    tokens: list[int]
    log_prob: float
    score: float
    sequence: str | None = None  # a parser's decoded output, before it became the tree `text`


@dataclass
class AttentionMaps:
    """Every attention weight of one teacher-forced pass over a source and its best hypothesis.

    source_tokens: source subwords + EOS (S of them), the encoder's positions. decoder_tokens:
    BOS + hypothesis (|Y| of them), the decoder's input positions. target_tokens: hypothesis + EOS
    (|Y|), what each decoder position predicts. Weights of every layer and head:
    encoder_self (layers, H, S, S): queries and keys over source_tokens;
    decoder_self (layers, H, |Y|, |Y|): queries and keys over decoder_tokens (causal: row i sees
    keys 0..i); cross (layers, H, |Y|, S): query rows over decoder_tokens (row i predicts
    target_tokens[i]), key columns over source_tokens.
    """

    source_tokens: list[str]
    decoder_tokens: list[str]
    target_tokens: list[str]
    encoder_self: Tensor
    decoder_self: Tensor
    cross: Tensor


@dataclass
class Translation:
    """The hypotheses of one input, best first, and (on request) the best one's attention.

    attention: cross-attention weights (layers, heads, |Y|, S) of the best hypothesis, from a
    teacher-forced pass of the first model: row i is the attention while predicting token i + 1
    (the last row predicts EOS); columns are `source_tokens` (source subwords + EOS).
    attention_maps: the same pass's encoder self-, decoder self- and cross-attention.
    """

    source: str
    hypotheses: list[Hypothesis]
    truncated: bool = False
    attention: Tensor | None = None
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None
    attention_maps: AttentionMaps | None = None

    @property
    def text(self) -> str:
        return self.hypotheses[0].text


class Translator:
    """Translate text with one model or an ensemble sharing one tokenizer (or another engine)."""

    def __init__(
        self,
        models: Sequence[Transformer],
        tokenizer: SubwordTokenizer,
        device: torch.device | str = "cpu",
        task: dict[str, Any] | None = None,
        precision: str = DEFAULT_INFERENCE_PRECISION,
    ):
        if not models:
            raise ValueError("a Translator needs at least one model")
        for i, model in enumerate(models):
            if model.config.vocab_size != tokenizer.vocab_size:
                raise ModelDirError(
                    f"model {i} has vocab_size {model.config.vocab_size} but the tokenizer has "
                    f"{tokenizer.vocab_size} tokens; the tokenizer does not belong to this model"
                )
        self._attach_engine(TorchEngine(models, device, precision), tokenizer, task)

    @classmethod
    def from_engine(
        cls, engine: Engine, tokenizer: SubwordTokenizer, task: dict[str, Any] | None = None
    ) -> Translator:
        """A Translator over any engine (e.g. `CTranslate2Engine`), with this tokenizer."""
        if engine.vocab_size != tokenizer.vocab_size:
            raise ModelDirError(
                f"the {engine.name} engine's vocabulary has {engine.vocab_size} tokens but the "
                f"tokenizer has {tokenizer.vocab_size}; the tokenizer does not belong to it"
            )
        translator = cls.__new__(cls)
        translator._attach_engine(engine, tokenizer, task)
        return translator

    def _attach_engine(
        self, engine: Engine, tokenizer: SubwordTokenizer, task: dict[str, Any] | None
    ) -> None:
        self.engine = engine
        self.models = engine.models  # PyTorch models (torch engine only): attention, plots
        self.tokenizer = tokenizer
        self.device = torch.device(getattr(engine, "device", "cpu"))
        self.max_positions: int | None = engine.max_positions
        # What the models compute in, and why (as the Classifier says it): the torch engine's
        # resolved precision; None and "" for an engine without one (CTranslate2 computes in
        # the type of its export).
        self.precision: str | None = getattr(engine, "precision", None)
        self.precision_reason: str = getattr(engine, "precision_reason", "")
        self.task = task
        defaults = dict((task or {}).get("decoding", {}))
        try:
            DecodeOptions.from_kwargs(defaults)
        except ConfigError as e:
            raise ModelDirError(f"{TASK_FILE}: invalid decoding defaults ({e})") from e
        self.decode_defaults: dict[str, Any] = defaults

    @property
    def task_name(self) -> str:
        """ "translation", or the task its model directory records (e.g. "parsing")."""
        return (self.task or {}).get("name", "translation")

    def options(self, **options: Any) -> DecodeOptions:
        """The DecodeOptions of a call: `options`, then the model's task defaults, then the
        paper's. Raises ConfigError naming an unknown or invalid option."""
        return DecodeOptions.from_kwargs({**self.decode_defaults, **options})

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path | str | Sequence[Path | str],
        device: torch.device | str = "cpu",
        engine: str = "torch",
        precision: str = DEFAULT_INFERENCE_PRECISION,
    ) -> Translator:
        """Load a model directory, or several as an ensemble (they must share the tokenizer).

        engine "torch" loads model directories; "ctranslate2" loads one directory written by
        `transformer export --format ctranslate2` (CTranslate2 uses torch.get_num_threads()
        threads). precision (torch engine): "auto" (default: bf16 on a CPU with AMX-bf16 or
        AVX512-BF16, where it is faster, else fp32; `hardware.resolve_inference_precision`),
        "fp32" (exact) or "bf16" autocast (translations may differ slightly from fp32's; the
        Translator says which it runs in: `precision`, `precision_reason`). Raises ModelDirError with a
        clear message for a missing or corrupt file, a tokenizer that does
        not match the model's vocabulary, or a directory that was not exported for the engine;
        ConfigError for an unknown engine or an ensemble it cannot run.
        """
        dirs = [model_dir] if isinstance(model_dir, str | Path) else list(model_dir)
        if not dirs:
            raise ModelDirError("no model directory given")
        if engine not in ENGINES:
            raise ConfigError(
                "engine", [f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}"]
            )
        if engine == "ctranslate2":
            if precision not in ("fp32", "auto"):
                raise ConfigError(
                    "precision",
                    [
                        f"precision {precision}: applies to the torch engine; CTranslate2 "
                        "computes in the type its directory was exported with"
                    ],
                )
            if len(dirs) > 1:
                raise ConfigError(
                    "engine",
                    [
                        f"ctranslate2: decodes a single model, got {len(dirs)}; "
                        "ensembles need engine torch"
                    ],
                )
            from transformer.decoding.ct2_engine import load_ctranslate2_dir

            return cls.from_engine(*load_ctranslate2_dir(dirs[0], device), load_task(dirs[0]))
        models, tokenizer = [], None
        for d in dirs:
            model, tok = load_model_dir(d, device)
            if tokenizer is not None and tok.sha256 != tokenizer.sha256:
                raise ModelDirError(
                    f"{d}: its tokenizer differs from that of {dirs[0]}; an ensemble needs models "
                    "trained with the same tokenizer"
                )
            if load_task(d) != load_task(dirs[0]):
                raise ModelDirError(
                    f"{d}: its task ({TASK_FILE}) differs from that of {dirs[0]}; an ensemble "
                    "needs models trained for the same task"
                )
            models.append(model)
            tokenizer = tokenizer or tok
        assert tokenizer is not None
        return cls(models, tokenizer, device, load_task(dirs[0]), precision)

    # ------------------------------------------------------------------------------------ API

    def translate(self, texts: Sequence[str], **options) -> list[str]:
        """The best translation of each text, in input order. Options: see `DecodeOptions`."""
        results = self.translate_nbest(texts, **options)
        for i, r in enumerate(results):
            if r.truncated:
                warnings.warn(
                    f"input {i}: longer than the model's {self.max_positions} positions; "
                    f"translated its first {self.max_source_subwords} subwords only",
                    stacklevel=2,
                )
        return [r.text for r in results]

    def translate_nbest(
        self,
        texts: Sequence[str],
        *,
        attention: bool = False,
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> list[Translation]:
        """n-best hypotheses with scores (and optionally attention) per text, in input order.

        `progress(n)` is called after each batch with the number of inputs it held.
        """
        opts = self.options(**options)
        problems = self.engine.problems(opts, attention)
        if problems:
            raise ConfigError(f"decoding options for engine {self.engine.name}", problems)
        n_hyps = opts.n_hypotheses
        ids = self.tokenizer.encode_batch([str(t) for t in texts])
        truncated = [False] * len(texts)
        cap = self.max_source_subwords
        if cap is not None:
            for i, seq in enumerate(ids):
                if len(seq) > cap:
                    ids[i], truncated[i] = seq[:cap], True
        results: list[Translation | None] = [None] * len(texts)
        todo = []
        for i, text in enumerate(texts):
            if str(text).strip() and ids[i]:
                todo.append(i)
            else:
                empty = [Hypothesis("", [], 0.0, 0.0) for _ in range(n_hyps)]
                results[i] = Translation(str(text), empty, truncated[i])
        if progress is not None and len(todo) < len(texts):
            progress(len(texts) - len(todo))
        for batch, out in decode_batches(self.engine, [ids[i] for i in todo], opts):
            indices = [todo[j] for j in batch]
            translations = self._translations([ids[i] for i in indices], out, attention)
            for i, tr in zip(indices, translations):
                tr.source, tr.truncated = str(texts[i]), truncated[i]
                results[i] = tr
                if self.task_name == PARSING_TASK:
                    _as_trees(tr)
            if progress is not None:
                progress(len(indices))
        return results  # type: ignore[return-value]

    @property
    def max_source_subwords(self) -> int | None:
        """The most source subwords a model can take (None: unlimited, sinusoidal positions)."""
        return max_source_subwords(self.engine)

    # ------------------------------------------------------------------------------- batches

    def _translations(
        self, batch: list[list[int]], out: Generated, attention: bool
    ) -> list[Translation]:
        """The Translations of one decoded batch (sources `batch`, without their EOS)."""
        hyp_ids = hypothesis_ids(out)
        log_prob, score = out.log_prob.cpu().tolist(), out.score.cpu().tolist()
        texts = self.tokenizer.decode_batch([h for hyps in hyp_ids for h in hyps])
        f = len(hyp_ids[0]) if hyp_ids else 0
        results = []
        for i in range(len(batch)):
            hyps = [
                Hypothesis(texts[i * f + j], hyp_ids[i][j], log_prob[i][j], score[i][j])
                for j in range(f)
            ]
            results.append(Translation("", hyps))
        if attention:
            sources = [[*seq, EOS_ID] for seq in batch]
            self._attach_attention(pad_ids(sources, self.device), results)
        return results

    @torch.inference_mode()
    def _attach_attention(self, src: Tensor, results: list[Translation]) -> None:
        """Attention of each best hypothesis, by one teacher-forced pass of the first model."""
        best = [r.hypotheses[0].tokens for r in results]
        tgt_in = pad_ids([[BOS_ID, *hyp] for hyp in best], self.device)  # (N, |Y|)
        # In the engine's precision: under bf16 its models hold their linear maps in bf16.
        with inference_context(self.device, self.precision or "fp32"):
            record = self.models[0].attention_weights(src, tgt_in)
        enc = torch.stack(record.encoder_self, dim=1).float().cpu()  # (N, layers, H, S, S)
        dec = torch.stack(record.decoder_self, dim=1).float().cpu()  # (N, layers, H, T, T)
        cross = torch.stack(record.cross, dim=1).float().cpu()  # (N, layers, H, T, S)
        src_ids = src.cpu().tolist()
        for i, r in enumerate(results):
            s = sum(1 for t in src_ids[i] if t != PAD_ID)
            t = len(best[i]) + 1
            r.attention = cross[i, :, :, :t, :s].clone()  # (layers, H, |Y|, S)
            r.source_tokens = [self._token(x) for x in src_ids[i][:s]]
            r.target_tokens = [self._token(x) for x in [*best[i], EOS_ID]]
            r.attention_maps = AttentionMaps(
                source_tokens=r.source_tokens,
                decoder_tokens=[self._token(x) for x in [BOS_ID, *best[i]]],
                target_tokens=r.target_tokens,
                encoder_self=enc[i, :, :, :s, :s].clone(),
                decoder_self=dec[i, :, :, :t, :t].clone(),
                cross=r.attention,
            )

    def _token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or f"<{token_id}>"


def _as_trees(result: Translation) -> None:
    """A parser's hypotheses as bracketed trees over the source's words (the outputs kept)."""
    words = result.source.split()
    for h in result.hypotheses:
        h.sequence = h.text
        h.text = to_string(delinearise(h.text, words).tree)
