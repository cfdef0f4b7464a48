"""Response text from engine tokens: incremental decoding never splits a character, stop sequences cut even across
tokens, held-back text is released at the end, and events posted together from another thread arrive together."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shoal.data.tokenizer import train_tokenizer
from shoal.serve.completion import Completion, Dispatcher

TEXT = "naïve café: déjà vu STOP never seen"


@pytest.fixture(scope="module")
def tokenizer():
    # A byte-level vocabulary too small to merge much: accented letters span two tokens.
    return train_tokenizer(iter(["plain ascii words only\n"] * 20), 260)


def complete(tokenizer, stops: list[str], stream: bool, one_by_one: bool = True) -> tuple[Completion, list[str], int]:
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    cancelled = []
    completion = Completion(tokenizer, [1], stops, lambda: cancelled.append(True), 0.0, float("inf"), stream)

    async def main() -> list[str]:
        events: asyncio.Queue = asyncio.Queue()
        pieces = []
        if one_by_one:
            async def feed() -> None:
                for token in ids:
                    events.put_nowait(("token", token))
                    await asyncio.sleep(0)
                events.put_nowait(("finish", "length"))
            feeding = asyncio.create_task(feed())
        else:
            for token in ids:
                events.put_nowait(("token", token))
            events.put_nowait(("finish", "length"))
        async for piece in completion.run(events):
            pieces.append(piece)
        if one_by_one:
            await feeding
        return pieces

    return completion, asyncio.run(main()), len(cancelled)


def test_streamed_text_is_whole_characters_and_stops_at_the_stop_sequence(tokenizer):
    assert len(tokenizer.encode("ï", add_special_tokens=False).ids) == 2
    completion, pieces, cancels = complete(tokenizer, ["STOP"], stream=True)
    assert "".join(pieces) == completion.text == "naïve café: déjà vu "
    assert completion.finish_reason == "stop" and cancels == 1
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)
    assert not any(p.endswith(("S", "ST", "STO")) for p in pieces)  # a possible stop's start is held back


def test_held_back_text_is_released_at_the_end(tokenizer):
    completion, pieces, _ = complete(tokenizer, ["never seen!"], stream=True)
    assert "".join(pieces) == completion.text == TEXT and completion.finish_reason == "length"


def test_without_streaming_or_stops_the_text_is_decoded_once(tokenizer):
    completion, pieces, _ = complete(tokenizer, [], stream=False)
    assert pieces == [] and completion.text == TEXT and completion.usage["completion_tokens"] > len(TEXT) // 2


def test_events_that_arrive_together_make_one_piece(tokenizer):
    completion, pieces, _ = complete(tokenizer, [], stream=True, one_by_one=False)
    assert pieces == [TEXT]


def test_the_dispatcher_delivers_everything_posted_from_another_thread():
    async def main() -> list[int]:
        dispatcher = Dispatcher(asyncio.get_running_loop())
        queue: asyncio.Queue = asyncio.Queue()

        def engine() -> None:
            for i in range(5000):
                dispatcher.post(queue, i)

        thread = threading.Thread(target=engine)
        thread.start()
        received = [await asyncio.wait_for(queue.get(), 10) for _ in range(5000)]
        thread.join()
        return received

    assert asyncio.run(main()) == list(range(5000))
