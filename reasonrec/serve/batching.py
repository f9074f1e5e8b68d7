"""Cross-request micro-batching: concurrent calls of one sync function coalesced into one call.

``await batcher.submit(x)`` adds ``x`` to the open batch and waits for its result. The first request of a
batch schedules its flush: the batch closes when it holds ``max_batch`` requests or ``max_wait`` seconds after it
opened, whichever is first, and — because flushes take one lock — it also keeps filling while the previous
batch's call is still running, so under load a batch is whatever arrived during one forward. The function runs
in a worker thread (the event loop keeps accepting requests) and gets the list of requests; its i-th result
goes to the i-th request. An exception fails every request of that batch.

Why not a background consumer task: the batch is flushed by a task the first request creates, on the loop
that request runs on, so the batcher works under any loop (uvicorn's, or the one-loop-per-request of a test
client) with nothing to start or stop.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Callable, Sequence
from typing import Any


class _Batch:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: list[tuple[Any, asyncio.Future]] = []
        self.full = asyncio.Event()


class MicroBatcher:
    """Coalesce concurrent ``submit`` calls into one ``fn(list_of_requests) -> list_of_results`` call."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32, max_wait: float = 0.002):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be ≥ 1 and max_wait ≥ 0 (got {max_batch}, {max_wait})")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait
        self._open: _Batch | None = None
        self._locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one lock per event loop
        self._tasks: set[asyncio.Task] = set()  # flushes in flight (a task nobody references can be collected)
        self.batches = self.requests = 0  # calls made and requests they held (/v1/model)
        self.sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # the latest batches' sizes

    async def submit(self, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        b = self._open
        if b is None or b.loop is not loop or len(b.items) >= self.max_batch:
            b = self._open = _Batch(loop)
            task = loop.create_task(self._flush(b))  # a task, so a cancelled first request cannot strand the rest
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        b.items.append((request, fut))
        if len(b.items) >= self.max_batch:
            b.full.set()
        return await fut

    async def _flush(self, b: _Batch) -> None:
        try:
            await asyncio.wait_for(b.full.wait(), self.max_wait)
        except TimeoutError:
            pass
        lock = self._locks.setdefault(b.loop, asyncio.Lock())
        async with lock:  # one call at a time; until it is this batch's turn it keeps filling
            if self._open is b:
                self._open = None
            items = [(r, f) for r, f in b.items if not f.cancelled()]
            if not items:
                return
            self.sizes.append(len(items))
            self.batches, self.requests = self.batches + 1, self.requests + len(items)
            try:
                results = await asyncio.to_thread(self.fn, [r for r, _ in items])
            except Exception as err:  # noqa: BLE001 — handed to every waiting request, raised there
                for _, f in items:
                    if not f.done():
                        f.set_exception(err)
                return
        for (_, f), res in zip(items, results, strict=True):
            if not f.done():
                f.set_result(res)
