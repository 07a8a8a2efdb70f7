"""The dynamic batcher on its own, with a fake translate function that records its calls: what
is gathered together, what is kept apart, and how it stops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from transformer.serve.batching import DynamicBatcher, ServiceUnavailable
from transformer.serve.metrics import ServerMetrics
from transformer.serve.settings import ServeSettings
from transformer.translator import DecodeOptions, Hypothesis, Translation


class FakeTranslator:
    """Upper-cases texts; `hold` keeps the first call waiting so that later requests queue up."""

    def __init__(self, hold_first: bool = True) -> None:
        self.calls: list[tuple[list[str], DecodeOptions, bool]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def translate(self, texts: list[str], options: DecodeOptions, attention: bool):
        self.calls.append((list(texts), options, attention))
        self.started.set()
        self.release.wait(10)
        if any(t == "boom" for t in texts):
            raise RuntimeError("decoder exploded")
        return [Translation(t, [Hypothesis(t.upper(), [], 0.0, 0.0)]) for t in texts]


def count_words(texts) -> int:
    return sum(len(t.split()) + 1 for t in texts)


def make_batcher(fake: FakeTranslator, **settings) -> DynamicBatcher:
    batcher = DynamicBatcher(
        fake.translate, count_words, ServeSettings(**settings), ServerMetrics()
    )
    batcher.start()
    return batcher


async def _submit_after_first(batcher: DynamicBatcher, fake: FakeTranslator, requests):
    """Submit a blocker, wait until it decodes, queue `requests`, then let everything run."""
    first = asyncio.ensure_future(batcher.submit(["first"], DecodeOptions()))
    await asyncio.to_thread(fake.started.wait, 10)
    rest = [asyncio.ensure_future(batcher.submit(texts, opts)) for texts, opts in requests]
    await asyncio.sleep(0.05)  # all queued behind the blocked batch
    fake.release.set()
    return await first, await asyncio.gather(*rest, return_exceptions=True)


def test_waiting_requests_share_one_call_and_get_their_own_results() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0)
    requests = [
        (["a b", "c"], DecodeOptions()),
        (["d"], DecodeOptions()),
        (["e f g"], DecodeOptions()),
    ]
    try:
        _, results = asyncio.run(_submit_after_first(batcher, fake, requests))
    finally:
        batcher.stop()
    assert [[t.text for t in r] for r in results] == [["A B", "C"], ["D"], ["E F G"]]
    assert [c[0] for c in fake.calls] == [["first"], ["a b", "c", "d", "e f g"]]


def test_different_options_are_decoded_apart() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0)
    beam2 = DecodeOptions(beam=2)
    requests = [
        (["a"], DecodeOptions()),
        (["b"], beam2),
        (["c"], DecodeOptions()),
        (["d"], beam2),
        (["s1"], DecodeOptions(method="sample", seed=1)),
        (["s2"], DecodeOptions(method="sample", seed=1)),
    ]
    try:
        _, results = asyncio.run(_submit_after_first(batcher, fake, requests))
    finally:
        batcher.stop()
    assert [r[0].text for r in results] == ["A", "B", "C", "D", "S1", "S2"]
    calls = {tuple(texts): opts for texts, opts, _ in fake.calls[1:]}
    # equal options share a call; sampling requests never share one, even with equal options
    assert calls == {
        ("a", "c"): DecodeOptions(),
        ("b", "d"): beam2,
        ("s1",): DecodeOptions(method="sample", seed=1),
        ("s2",): DecodeOptions(method="sample", seed=1),
    }


def test_token_budget_bounds_a_batch() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0, max_batch_tokens=6)
    # 3 tokens each (2 words + EOS by count_words): two fit in 6, the third starts a new batch
    requests = [(["a b"], DecodeOptions()), (["c d"], DecodeOptions()), (["e f"], DecodeOptions())]
    try:
        _, results = asyncio.run(_submit_after_first(batcher, fake, requests))
    finally:
        batcher.stop()
    assert [r[0].text for r in results] == ["A B", "C D", "E F"]
    assert [c[0] for c in fake.calls[1:]] == [["a b", "c d"], ["e f"]]


def test_no_batching_decodes_one_request_per_call() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, batching=False)
    requests = [(["a", "b"], DecodeOptions()), (["c"], DecodeOptions())]
    try:
        _, results = asyncio.run(_submit_after_first(batcher, fake, requests))
    finally:
        batcher.stop()
    assert [c[0] for c in fake.calls] == [["first"], ["a", "b"], ["c"]]
    assert [[t.text for t in r] for r in results] == [["A", "B"], ["C"]]


def test_a_failing_batch_fails_only_its_requests() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0)
    requests = [(["boom"], DecodeOptions()), (["fine"], DecodeOptions(beam=2))]
    try:
        _, results = asyncio.run(_submit_after_first(batcher, fake, requests))

        async def after() -> str:
            return (await batcher.submit(["later"], DecodeOptions()))[0].text

        later = asyncio.run(after())
    finally:
        batcher.stop()
    assert isinstance(results[0], RuntimeError)
    assert results[1][0].text == "FINE"
    assert later == "LATER"  # the worker survived


def test_stop_answers_waiting_requests_and_refuses_new_ones() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(["first"], DecodeOptions()))
        await asyncio.to_thread(fake.started.wait, 10)
        waiting = asyncio.ensure_future(batcher.submit(["second"], DecodeOptions()))
        await asyncio.sleep(0.05)
        # the worker is stuck in `first` past the stop timeout: `second` must get an answer
        await asyncio.to_thread(batcher.stop, 0.2)
        with pytest.raises(ServiceUnavailable):
            await batcher.submit(["third"], DecodeOptions())
        with pytest.raises(ServiceUnavailable):
            await waiting
        fake.release.set()
        return await first

    first = asyncio.run(scenario())
    assert first[0].text == "FIRST"  # the batch in progress still finished


def test_too_many_pending_requests_get_503() -> None:
    fake = FakeTranslator()
    batcher = make_batcher(fake, max_wait_ms=0, max_pending=2)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(["first"], DecodeOptions()))
        await asyncio.to_thread(fake.started.wait, 10)
        second = asyncio.ensure_future(batcher.submit(["second"], DecodeOptions()))
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceUnavailable, match="too many"):
            await batcher.submit(["third"], DecodeOptions())
        fake.release.set()
        return await first, await second

    try:
        first, second = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert (first[0].text, second[0].text) == ("FIRST", "SECOND")
