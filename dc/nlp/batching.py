"""Micro-batching: texts that miss the cache in concurrent requests reach the encoder as one batch.

A few worker threads (`workers`) call the encoder. Requests put their texts in a bounded queue
and wait on one future per text. Whenever a worker is free it takes everything waiting (up to the
batch size) at once. A text already waiting or being encoded is not queued again: its callers
share the same future. More than one worker lets encoder calls overlap: on a small machine two
single-threaded TensorFlow calls side by side outrun one call spread over both cores, whose
every op waits for its slowest thread (see the README's figures).

Busy window: when a batch ends, its callers are likely to come straight back with their next
texts (clients wait for an answer before sending again). So the next pickup may wait, at most
`max_wait_s` after the previous batch ended, until the queue holds as many texts as the previous
batch plus those that were already waiting. Without it, a steady load of N one-phrase clients
splits into two alternating batches of N/2, which costs about a third of the throughput at
N = 16. An encoder that has been idle longer than `max_wait_s` takes the first text at once: an
idle service adds no wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from dc.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]
BatchHook = Callable[[list[str], np.ndarray, float], None]


class MicroBatcher:
    """Bounded queue + one worker thread turning concurrent texts into encoder batches.

    Args:
        encode: the encoder call, list of texts -> float32 array [len, dim].
        max_batch_size: most texts in one encoder call.
        max_queue: most distinct texts waiting; `submit` raises `Overloaded` beyond it.
        retry_after_s: advice carried by the `Overloaded` error.
        on_batch: called by the worker after each batch with (texts, vectors, seconds), before
            the waiting futures are resolved (the engine fills its cache there).
        max_wait_s: the busy window (see the module docstring); 0 turns it off.
        workers: encoder calls that may run at once (worker threads).
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_size: int,
        max_queue: int,
        retry_after_s: int = 1,
        on_batch: BatchHook | None = None,
        max_wait_s: float = 0.0,
        workers: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size, max_queue, workers must be >= 1, max_wait_s >= 0")
        self._encode = encode
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._on_batch = on_batch
        self.max_wait_s = max_wait_s
        self._last_end = float("-inf")  # when the previous batch finished
        self._expected = 0  # texts expected back: previous batch + those waiting at its end
        self._cond = threading.Condition()
        self._waiting: OrderedDict[str, Future] = OrderedDict()
        self._running: dict[str, Future] = {}
        self._closed = False
        self.workers = workers
        self._threads: list[threading.Thread] = []

    def start(self) -> MicroBatcher:
        """Start the worker threads (idempotent)."""
        with self._cond:
            while len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._run, name=f"embedder-batcher-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    @property
    def queue_depth(self) -> int:
        """Distinct texts waiting for the encoder (not counting the batch being encoded)."""
        return len(self._waiting)

    def submit(self, texts: Sequence[str]) -> list[Future]:
        """Queue texts for encoding; returns one future per text, in order.

        All or nothing: if the new distinct texts do not fit in the queue, nothing is queued
        and `Overloaded` is raised at once.
        """
        with self._cond:
            if self._closed:
                raise NotReady("the embedder is shutting down", retry_after_s=self._retry_after_s)
            new = [
                text
                for text in dict.fromkeys(texts)
                if text not in self._waiting and text not in self._running
            ]
            if len(self._waiting) + len(new) > self.max_queue:
                raise Overloaded(
                    f"the embedder queue is full ({len(self._waiting)} of {self.max_queue} "
                    "texts waiting); retry shortly",
                    retry_after_s=self._retry_after_s,
                )
            for text in new:
                self._waiting[text] = Future()
            if new:
                self._cond.notify()
            return [self._waiting.get(text) or self._running[text] for text in texts]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers after the batches in progress; waiting texts fail with `NotReady`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiting, self._waiting = self._waiting, OrderedDict()
        for future in waiting.values():
            future.set_exception(NotReady("the embedder is shutting down"))
        for thread in self._threads:
            thread.join(timeout)

    def _take_batch(self) -> list[str] | None:
        with self._cond:
            while True:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                target = min(self.max_batch_size, self._expected)
                deadline = self._last_end + self.max_wait_s
                while len(self._waiting) < target and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return None
                if self._waiting:  # during the window another worker may have taken them all
                    break
            batch = []
            while self._waiting and len(batch) < self.max_batch_size:
                text, future = self._waiting.popitem(last=False)
                self._running[text] = future
                batch.append(text)
            if self._waiting:
                # submit() wakes one worker; pass the wake-up on so that an idle worker takes
                # what this batch could not hold instead of sleeping until the next submit.
                self._cond.notify()
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            started = time.perf_counter()
            try:
                vectors = self._encode(batch)
                if self._on_batch is not None:
                    self._on_batch(batch, vectors, time.perf_counter() - started)
            except Exception as exc:  # the worker must survive any failure of one batch
                log.exception("encoding a batch of %d texts failed", len(batch))
                self._finish(batch, error=exc)
            else:
                self._finish(batch, vectors=vectors)

    def _finish(
        self, batch: list[str], *, vectors: np.ndarray | None = None, error: Exception | None = None
    ) -> None:
        with self._cond:
            futures = [self._running.pop(text) for text in batch]
            self._last_end = time.perf_counter()
            self._expected = len(batch) + len(self._waiting)
        for i, future in enumerate(futures):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(vectors[i])
