"""The CTranslate2 engine: decode with a model exported by `transformer export --format ctranslate2`.

The Translator hands it batches of source ids; it decodes them with
`ctranslate2.Translator.translate_batch` and returns a `Generated` with the conventions of the
torch engine. The decoding options map as follows:

    ours                          CTranslate2
    method greedy                 beam_size=1
    method beam, beam K           beam_size=K, patience=p (default 1.5),
                                  num_hypotheses=round(K * p) (all it finishes)
    method sample                 beam_size=1, sampling_topk (0: whole vocabulary, as ours),
                                  sampling_topp, sampling_temperature, num_hypotheses=nbest
    seed                          set_random_seed + a freshly loaded ctranslate2.Translator
    min_len                       min_decoding_length (always passed: CTranslate2's default is 1)
    no_repeat_ngram               no_repeat_ngram_size
    max_len (per sentence)        max_decoding_length = max_len + 1 (the EOS included)
    never PAD or BOS              suppress_sequences=[[<pad>], [<s>]]
    length_penalty, alpha         our own re-ranking, see below
    attention=True, use_cache=False: refused (ConfigError); ensembles: refused at loading

Threads and batches. On CPU the engine runs `threads` CTranslate2 workers of one thread each
(inter_threads=threads, intra_threads=1) and lets CTranslate2 cut every batch the Translator
hands it into sub-batches of CPU_SUB_BATCH sentences, which the workers decode in parallel. On
the 2-core machine this was written on, that decoded Multi30k test2016 (1,000 sentences, int8,
one `translate_batch` call) 3.9x faster at beam 4 (1.53 s) and 4.5x faster greedy (0.59 s) than
one batch on one worker of two OpenMP threads (5.99 s, 2.63 s). For models this size, OpenMP's
synchronisation per operation costs more than the second thread gives, and small sub-batches
waste less on padding and on sentences already finished. On CUDA: one worker, the Translator's
batches as they are.
Seeded sampling uses one worker, so that which generator samples which sub-batch is fixed.

Length penalty. CTranslate2 divides a finished hypothesis' log-probability by
``len ** length_penalty``, len its number of tokens without the EOS (with the EOS when
return_end_token is set): neither the paper's GNMT ``((5 + |Y|) / 6) ** alpha`` nor our "power"
``|Y| ** alpha`` (|Y| counting the EOS). So we ask it for raw log-probabilities
(length_penalty=0, return_scores, return_end_token so that |Y| = tokens with the EOS) of every
hypothesis it finishes (num_hypotheses = beam x patience, all of them), and rank them ourselves
with `search.normalise` and the requested penalty, the very function the torch engine uses.

How close that is to the torch beam search. Both expand the K best of 2K candidates per step,
ranked by summed log-probability, and a candidate ending in EOS among the K best becomes a
finished hypothesis, so both find the same hypotheses in the same order (up to float rounding
and the renormalisation below). They differ in when they stop: ours once no open beam can beat
the n-th best finished score under the penalty (a bound); CTranslate2 with length_penalty=0 once
the best candidate of a step was an EOS and round(K x patience) hypotheses have finished.
Whenever it runs at least as long as ours, the re-ranked n-best is exactly ours; when ours runs
longer, a hypothesis finishing later (longer, which alpha > 0 favours) can be missed. A larger
`patience` makes CTranslate2 collect more, at some cost in speed.

Smaller differences:
- Banned tokens (PAD and BOS always, EOS before min_len, repeated n-grams) are removed before
  CTranslate2's softmax, ours after it: its log-probabilities are renormalised over the allowed
  tokens, higher than ours by -log(1 - p(banned)) per step (about 2.5e-5 per token for a model
  trained with label smoothing 0.1 over 8,000 tokens, whose p(PAD) = p(BOS) ~ 0.1 / V).
- At the length limit ours forces EOS on every open beam; CTranslate2 keeps its K best candidates
  of the last step whatever they end with. Those without EOS become prefix + EOS, the EOS
  log-probability taken from a scoring pass: exact for greedy, a subset of our forced hypotheses
  for beam search.
- CTranslate2 takes one maximum length per call, ours is per sentence: a batch is decoded at its
  largest limit and the (rare) sentences whose search went past their own are decoded again at it.
- Sampling draws from the same distributions, with another random stream; CTranslate2 seeds its
  generator when a model is loaded, so a seed costs one model load per batch.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from transformer.config import ConfigError
from transformer.ct2_format import CT2_WEIGHTS_FILE, EXPORT_FILE, INSTALL_HINT, VOCABULARY_FILE
from transformer.data.tokenizer import SubwordTokenizer
from transformer.decoding.generate import Generated
from transformer.decoding.options import DecodeOptions
from transformer.decoding.search import normalise
from transformer.model import Transformer
from transformer.modeldir import TOKENIZER_FILE, WEIGHTS_FILE, ModelDirError
from transformer.vocab import BOS, EOS_ID, PAD, PAD_ID

# Beam search collects round(beam x patience) finished hypotheses before it may stop (module doc):
# 1.5 (6 for beam 4) gave the torch engine's n-best lists on the copy model where 1.0 did not.
DEFAULT_PATIENCE = 1.5
# Sentences per CTranslate2 sub-batch on CPU (module doc). Beam 4, int8, 2 workers, test2016 in
# calls of 250 sentences: 4: 2.33 s, 8: 1.98 s, 16: 1.93 s, 32: 2.15 s; greedy 16 and 32: 0.67 s.
CPU_SUB_BATCH = 16
# A hypothesis: token ids (EOS included when it ended with one) and its summed log-probability.
Hyp = tuple[list[int], float]


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:
        raise ConfigError(
            "engine", [f"ctranslate2: the package is not installed; {INSTALL_HINT}"]
        ) from e
    return ctranslate2


def ct2_device(device: torch.device | str) -> tuple[str, int]:
    """Our device string (cpu, cuda, cuda:1) as CTranslate2's (device, device_index)."""
    d = torch.device(device)
    if d.type == "cpu":
        return "cpu", 0
    if d.type == "cuda":
        return "cuda", d.index or 0
    raise ConfigError("engine", [f"device {device}: CTranslate2 runs on cpu or cuda only"])


def _export_hint(directory: Path) -> str:
    return (
        f"export it first: `transformer export --model {directory} --format ctranslate2 "
        f"--out {directory}-ct2`, then pass the exported directory (or use --engine torch)"
    )


def load_ctranslate2_dir(
    directory: Path | str,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    patience: float = DEFAULT_PATIENCE,
) -> tuple[CTranslate2Engine, SubwordTokenizer]:
    """(engine, tokenizer) of a directory written by `transformer export --format ctranslate2`.

    Raises ModelDirError naming what is missing; a PyTorch model directory (no model.bin) gets
    the `transformer export` command to run.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: not a directory; {_export_hint(directory)}")
    if not (directory / CT2_WEIGHTS_FILE).is_file():
        what = (
            "a PyTorch model directory"
            if (directory / WEIGHTS_FILE).is_file()
            else "not a CTranslate2 model directory"
        )
        raise ModelDirError(
            f"{directory}: no {CT2_WEIGHTS_FILE} ({what}); engine ctranslate2 needs an exported "
            f"model: {_export_hint(directory)}"
        )
    missing = [
        name
        for name in (TOKENIZER_FILE, EXPORT_FILE, VOCABULARY_FILE)
        if not (directory / name).is_file()
    ]
    if missing:
        raise ModelDirError(
            f"{directory}: missing {', '.join(missing)}; it was not written by "
            "`transformer export --format ctranslate2` (export the model again)"
        )
    try:
        tokenizer = SubwordTokenizer.from_file(directory / TOKENIZER_FILE)
        tokens = json.loads((directory / VOCABULARY_FILE).read_text(encoding="utf-8"))
        meta = json.loads((directory / EXPORT_FILE).read_text(encoding="utf-8"))
        positions = int(meta["positions"])
    except Exception as e:
        raise ModelDirError(f"{directory}: cannot read the export ({e}); export it again") from e
    ours = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    if tokens != ours:
        raise ModelDirError(
            f"{directory}: {VOCABULARY_FILE} differs from {TOKENIZER_FILE}; the tokenizer does "
            "not belong to this model (export it again)"
        )
    engine = CTranslate2Engine(directory, tokens, positions, device, threads, patience)
    return engine, tokenizer


class CTranslate2Engine:
    """A CTranslate2 model decoding batches of our ids (see the module doc for the mapping)."""

    name = "ctranslate2"

    def __init__(
        self,
        directory: Path,
        tokens: list[str],
        positions: int,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        patience: float = DEFAULT_PATIENCE,
    ):
        if not patience > 0:
            raise ConfigError("engine", [f"patience: must be > 0, got {patience}"])
        self.ctranslate2 = _import_ctranslate2()
        self.directory = Path(directory)
        self.tokens = list(tokens)  # id -> token string, CTranslate2's vocabulary
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.vocab_size = len(self.tokens)
        self.max_positions: int | None = positions
        self.models: list[Transformer] = []
        self.patience = patience
        self.device = torch.device(device)
        self._device, self._index = ct2_device(device)
        # CPU threads, by default as many as torch is told to use: CTranslate2 workers on CPU.
        self.threads = threads or torch.get_num_threads()
        self.translator = self._load()

    def _load(self, workers: int | None = None):
        """A ctranslate2.Translator: on CPU `workers` (default: threads) of one thread each."""
        if self._device == "cpu":
            inter, intra = workers or self.threads, 1
        else:
            inter, intra = 1, self.threads
        try:
            return self.ctranslate2.Translator(
                str(self.directory),
                device=self._device,
                device_index=self._index,
                compute_type="default",
                inter_threads=inter,
                intra_threads=intra,
            )
        except (RuntimeError, ValueError) as e:
            raise ModelDirError(
                f"{self.directory / CT2_WEIGHTS_FILE}: CTranslate2 cannot load it ({e})"
            ) from e

    # ----------------------------------------------------------------------------- options

    def problems(self, settings: DecodeOptions, attention: bool) -> list[str]:
        problems = []
        if attention:
            problems.append(
                "attention: CTranslate2 gives no per-layer, per-head attention weights; "
                "use engine torch for attention maps"
            )
        if not settings.use_cache:
            problems.append(
                "use_cache=False: CTranslate2 always decodes with its cache; the uncached loop "
                "exists in engine torch only"
            )
        return problems

    def _candidates(self, beam: int) -> int:
        """CTranslate2's number of finished hypotheses to collect: round(beam * patience)."""
        return max(1, math.floor(beam * self.patience + 0.5))

    def _options(self, settings: DecodeOptions) -> dict:
        """translate_batch keyword arguments, but the lengths (set per call)."""
        options = dict(
            max_batch_size=CPU_SUB_BATCH if self._device == "cpu" else 0,
            batch_type="examples",
            max_input_length=0,  # no truncation: the Translator has already cut to positions
            length_penalty=0.0,  # raw log-probabilities; we rank (module doc)
            return_scores=True,
            return_end_token=True,
            suppress_sequences=[[PAD], [BOS]],
            no_repeat_ngram_size=settings.no_repeat_ngram,
        )
        if settings.method == "beam" and settings.beam > 1:
            beam = settings.beam
            options.update(
                beam_size=beam, patience=self.patience, num_hypotheses=self._candidates(beam)
            )
        elif settings.method in ("beam", "greedy"):
            options.update(beam_size=1, num_hypotheses=1, sampling_topk=1)
        else:
            options.update(
                beam_size=1,
                num_hypotheses=settings.nbest,
                sampling_topk=settings.top_k,  # 0 = the whole vocabulary, as ours
                sampling_topp=settings.top_p,
                sampling_temperature=settings.temperature,
            )
        return options

    # ---------------------------------------------------------------------------- decoding

    def _translate(
        self,
        translator,
        sources: list[list[str]],
        limit: int,
        settings: DecodeOptions,
        options: dict,
    ) -> list[list[Hyp]]:
        """Decode with hypotheses of at most `limit` tokens before the EOS."""
        length = limit + 1  # CTranslate2 counts the EOS
        try:
            results = translator.translate_batch(
                sources,
                max_decoding_length=length,
                min_decoding_length=min(settings.min_len, length),
                **options,
            )
        except ValueError as e:  # CTranslate2's own validation of the options
            raise ConfigError("decoding options for engine ctranslate2", [str(e)]) from e
        return [
            [([self.ids[t] for t in h], float(s)) for h, s in zip(r.hypotheses, r.scores)]
            for r in results
        ]

    def generate(
        self, sources: list[list[int]], max_len: Tensor, settings: DecodeOptions
    ) -> Generated:
        """Decode N sources (subword ids + EOS); max_len (N,) tokens before the EOS."""
        limits = [int(x) for x in max_len.tolist()]
        src = [[self.tokens[i] for i in seq] for seq in sources]
        options = self._options(settings)
        translator = self.translator
        if settings.method == "sample" and settings.seed is not None:
            self.ctranslate2.set_random_seed(settings.seed)
            # Its worker thread's generator is seeded on loading; one worker (module doc).
            translator = self._load(workers=1)
        top = max(limits)
        hyps = self._translate(translator, src, top, settings, options)
        # Sentences whose search ran past their own limit: again, alone with it.
        redo = [
            i
            for i, h in enumerate(hyps)
            if limits[i] < top and any(len(ids) > limits[i] for ids, _ in h)
        ]
        redo.sort(key=lambda i: limits[i])
        for limit, group in itertools.groupby(redo, key=lambda i: limits[i]):
            group = list(group)
            again = self._translate(translator, [src[i] for i in group], limit, settings, options)
            for i, h in zip(group, again):
                hyps[i] = h
        self._end_at_limit(translator, src, hyps, limits, settings)
        return self._rank(hyps, settings)

    def _end_at_limit(
        self,
        translator,
        src: list[list[str]],
        hyps: list[list[Hyp]],
        limits: list[int],
        settings: DecodeOptions,
    ) -> None:
        """In place: hypotheses stopped by the length limit (no EOS) become their first
        max_len tokens + EOS, scored by one teacher-forced pass, as ours force EOS there (with
        log-prob 0 when min_len bans it, as ours)."""
        todo = [
            (i, j)
            for i, h in enumerate(hyps)
            for j, (ids, _) in enumerate(h)
            if ids[-1:] != [EOS_ID]
        ]
        if not todo:
            return
        targets = [hyps[i][j][0][: limits[i]] for i, j in todo]
        scored = translator.score_batch(
            [src[i] for i, _ in todo],
            [[self.tokens[t] for t in target] for target in targets],
            max_input_length=0,
        )
        for (i, j), target, result in zip(todo, targets, scored):
            log_probs = result.log_probs  # len(target) + 1: the tokens, then the EOS
            eos = log_probs[len(target)] if settings.min_len <= limits[i] else 0.0
            hyps[i][j] = ([*target, EOS_ID], float(sum(log_probs[: len(target)]) + eos))

    def _rank(self, hyps: list[list[Hyp]], settings: DecodeOptions) -> Generated:
        """Our ranking of each sentence's hypotheses (duplicates merged for beam search)."""
        f = settings.n_hypotheses
        n = len(hyps)
        width = max((len(ids) for h in hyps for ids, _ in h), default=1)
        tokens = torch.full((n, f, width), PAD_ID, dtype=torch.long)
        lengths = torch.zeros(n, f, dtype=torch.long)
        log_prob = torch.full((n, f), -math.inf)
        score = torch.full((n, f), -math.inf)
        for i, h in enumerate(hyps):
            if settings.method != "sample":  # samples may repeat; beams that did are one
                best: dict[tuple[int, ...], float] = {}
                for ids, lp in h:
                    best[tuple(ids)] = max(lp, best.get(tuple(ids), -math.inf))
                h = [(list(ids), lp) for ids, lp in best.items()]
            if not h:
                continue
            lp = torch.tensor([x for _, x in h], dtype=torch.float32)
            length = torch.tensor([len(ids) for ids, _ in h])
            sc = normalise(lp, length, settings.penalty, settings.alpha)
            order = sc.argsort(descending=True, stable=True)[:f].tolist()
            for j, k in enumerate(order):
                ids = h[k][0]
                tokens[i, j, : len(ids)] = torch.tensor(ids)
                lengths[i, j], log_prob[i, j], score[i, j] = len(ids), lp[k], sc[k]
        return Generated(tokens, lengths, log_prob, score)
