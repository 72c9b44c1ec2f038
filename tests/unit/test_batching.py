"""Micro-batching logic, driven by a small deterministic encode function that records its calls.

The real encoder is exercised end to end in test_embedder_service.py; here the point is the
queueing rules, which need precise control over timing.
"""

import threading
import time

import numpy as np
import pytest

from dc.errors import NotReady, Overloaded
from dc.nlp.batching import MicroBatcher


class RecordingEncoder:
    """Maps a text to a vector derived from its characters; records each batch it is given."""

    def __init__(self, delay_s=0.0, gate=None):
        self.batches = []
        self.delay_s = delay_s
        self.gate = gate

    def __call__(self, texts):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        return np.array([[len(t), sum(map(ord, t)) % 997, 1.0] for t in texts], dtype=np.float32)


def expected(text):
    return np.array([len(text), sum(map(ord, text)) % 997, 1.0], dtype=np.float32)


def test_results_come_back_in_order_and_duplicates_share_one_computation():
    encoder = RecordingEncoder()
    batcher = MicroBatcher(encoder, max_batch_size=8, max_queue=64).start()
    texts = ["b", "a", "b", "c", "a"]
    results = [f.result(5) for f in batcher.submit(texts)]
    for text, vector in zip(texts, results, strict=True):
        np.testing.assert_array_equal(vector, expected(text))
    assert sorted(t for batch in encoder.batches for t in batch) == ["a", "b", "c"]
    batcher.close()


def test_concurrent_submissions_are_batched_and_bounded_by_max_batch_size():
    gate = threading.Event()
    encoder = RecordingEncoder(gate=gate)
    batcher = MicroBatcher(encoder, max_batch_size=4, max_queue=64).start()
    first = batcher.submit(["warm"])  # occupies the worker until the gate opens
    time.sleep(0.05)
    futures = [batcher.submit([f"text {i}"])[0] for i in range(10)]
    gate.set()
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(5), expected(f"text {i}"))
    first[0].result(5)
    sizes = [len(b) for b in encoder.batches]
    assert sizes == [1, 4, 4, 2]  # the 10 waiting texts went in full batches, FIFO
    batcher.close()


def test_same_text_in_flight_is_computed_once():
    gate = threading.Event()
    encoder = RecordingEncoder(gate=gate)
    batcher = MicroBatcher(encoder, max_batch_size=4, max_queue=64).start()
    running = batcher.submit(["shared"])  # taken by the worker, blocked on the gate
    time.sleep(0.05)
    again = batcher.submit(["shared", "other"])
    assert again[0] is running[0]
    gate.set()
    np.testing.assert_array_equal(again[0].result(5), expected("shared"))
    again[1].result(5)
    assert sum(b.count("shared") for b in encoder.batches) == 1
    batcher.close()


def test_full_queue_raises_overloaded_at_once_and_queues_nothing():
    gate = threading.Event()
    encoder = RecordingEncoder(gate=gate)
    batcher = MicroBatcher(encoder, max_batch_size=2, max_queue=3, retry_after_s=2).start()
    batcher.submit(["busy"])
    time.sleep(0.05)
    batcher.submit(["a", "b"])
    assert batcher.queue_depth == 2
    started = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        batcher.submit(["c", "d"])  # 2 + 2 > 3: all or nothing
    assert time.perf_counter() - started < 0.1
    assert info.value.retry_after_s == 2
    assert batcher.queue_depth == 2
    batcher.submit(["a", "c"])  # "a" is already waiting, so only "c" is new: fits
    assert batcher.queue_depth == 3
    gate.set()
    batcher.close()


def test_a_failing_batch_fails_its_callers_and_the_worker_survives():
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("encoder exploded")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = MicroBatcher(flaky, max_batch_size=4, max_queue=8).start()
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.submit(["x"])[0].result(5)
    np.testing.assert_array_equal(batcher.submit(["y"])[0].result(5), [1, 1])
    batcher.close()


def test_close_fails_waiting_texts_and_refuses_new_ones():
    gate = threading.Event()
    batcher = MicroBatcher(RecordingEncoder(gate=gate), max_batch_size=1, max_queue=8).start()
    batcher.submit(["running"])
    time.sleep(0.05)
    waiting = batcher.submit(["waiting"])[0]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(NotReady):
        waiting.result(5)
    gate.set()
    closer.join(5)
    with pytest.raises(NotReady):
        batcher.submit(["late"])


def closed_loop(batcher, clients, rounds, think_s=0.005):
    """`clients` threads, each sending its next text `think_s` after the previous one returned
    (an HTTP round trip, in the service)."""

    def client(c):
        for r in range(rounds):
            batcher.submit([f"client {c} round {r}"])[0].result(10)
            time.sleep(think_s)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_busy_window_keeps_batches_full_under_closed_loop_load():
    encoder = RecordingEncoder(delay_s=0.05)
    batcher = MicroBatcher(encoder, max_batch_size=32, max_queue=64, max_wait_s=0.5).start()
    closed_loop(batcher, clients=8, rounds=6)
    sizes = [len(b) for b in encoder.batches]
    assert sum(sizes) == 48
    # The first texts find an idle encoder and go at once (one or a few, as threads start);
    # the last batch is short because those clients finish their rounds one batch early. In
    # between, every caller is back within the window: full batches.
    assert set(sizes[1:-1]) == {8}, sizes
    batcher.close()


def test_without_the_busy_window_closed_loop_batches_split():
    encoder = RecordingEncoder(delay_s=0.05)
    batcher = MicroBatcher(encoder, max_batch_size=32, max_queue=64, max_wait_s=0.0).start()
    closed_loop(batcher, clients=8, rounds=6)
    assert max(len(b) for b in encoder.batches[2:]) < 8  # the load splits into smaller batches
    batcher.close()


def test_an_idle_encoder_takes_a_lone_text_at_once_despite_a_long_window():
    encoder = RecordingEncoder()
    batcher = MicroBatcher(encoder, max_batch_size=32, max_queue=64, max_wait_s=30.0).start()
    started = time.perf_counter()
    for i in range(5):  # one sequential caller: each batch ends with nobody else waiting
        batcher.submit([f"alone {i}"])[0].result(10)
    time.sleep(0.05)
    batcher.submit(["after a pause"])[0].result(10)
    assert time.perf_counter() - started < 5.0  # a 30 s window was never waited on
    assert [len(b) for b in encoder.batches] == [1] * 6
    batcher.close()


def test_two_workers_run_two_batches_at_once():
    """Each call waits at a two-party barrier: it only passes if both batches run together."""
    barrier = threading.Barrier(2, timeout=5)
    sizes = []

    def paired(texts):
        sizes.append(len(texts))
        barrier.wait()
        return np.zeros((len(texts), 2), dtype=np.float32)

    batcher = MicroBatcher(paired, max_batch_size=1, max_queue=8, workers=2).start()
    futures = batcher.submit(["one", "two"])
    assert [f.result(10).shape for f in futures] == [(2,), (2,)]
    assert sizes == [1, 1]
    batcher.close()


def test_workers_never_encode_an_empty_batch():
    """With a busy window and two workers, one worker may find the queue emptied by the other.

    A race detector: with that check removed from `_take_batch` it fails in about one run in
    three; with it, it cannot fail."""
    encoder = RecordingEncoder(delay_s=0.01)
    batcher = MicroBatcher(encoder, max_batch_size=4, max_queue=64, max_wait_s=0.05, workers=2)
    batcher.start()
    closed_loop(batcher, clients=6, rounds=40, think_s=0.002)
    assert all(encoder.batches), [len(b) for b in encoder.batches]
    assert sum(len(b) for b in encoder.batches) == 240
    batcher.close()
