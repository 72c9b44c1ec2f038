"""Synthetic request traffic and LRU cache sizing: the pure logic behind the load-test scripts.

`scripts/make_requests.py` builds a request stream with `build_stream` (phrases ranked by a
Zipf law, some turned into near duplicates); `scripts/tune_cache.py` replays a stream with
`stack_distances` / `hit_rate_curve` and picks `DC_CACHE_SIZE` with `knee`.

Everything here is deterministic for a given `numpy.random.Generator` and has no side effect on
import.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAILING_PUNCTUATION = ".?!"
NEAR_DUPLICATE_KINDS = ("case", "punctuation", "typo")


# --- request streams ------------------------------------------------------------------------


def load_phrases(paths: Iterable[Path]) -> list[str]:
    """The distinct non-empty `text` values of CSV files (header `text,label`), in file order."""
    seen: dict[str, None] = {}
    for path in sorted(paths):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                text = (row.get("text") or "").strip()
                if text:
                    seen.setdefault(text, None)
    return list(seen)


def parse_mix(spec: str) -> dict[str, float]:
    """Parse `"banking77=0.6,clinc150=0.4"` into normalised weights (they need not sum to 1)."""
    mix: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"bad mix entry {part!r}: expected model=weight")
        value = float(weight)
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"bad weight for {name.strip()!r}: {weight!r}")
        mix[name.strip()] = value
    total = sum(mix.values())
    if not mix or total <= 0:
        raise ValueError(f"mix {spec!r} has no positive weight")
    return {name: value / total for name, value in mix.items()}


def zipf_probabilities(n_items: int, exponent: float) -> np.ndarray:
    """P(rank r) ∝ 1 / r**exponent for r = 1..n_items (index 0 is rank 1)."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def zipf_sample(n_items: int, size: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Draw `size` 0-based ranks out of `n_items`, rank r+1 with probability ∝ 1/(r+1)**exponent.

    A truncated Zipf law (numpy's own `zipf` is unbounded and needs exponent > 1): exponent 0 is
    uniform, about 1 is typical of search and chat-bot queries, larger is more skewed.
    """
    return rng.choice(n_items, size=size, p=zipf_probabilities(n_items, exponent))


def _swap_positions(text: str) -> list[int]:
    """Positions i where swapping text[i] and text[i+1] is a visible letter transposition."""
    return [
        i
        for i in range(len(text) - 1)
        if text[i].isalpha() and text[i + 1].isalpha() and text[i] != text[i + 1]
    ]


def _change_case(text: str, rng: np.random.Generator) -> str:
    # What users actually do: type all lower case, or capitalise the first letter.
    candidates = {text.lower(), text[:1].upper() + text[1:], text[:1].lower() + text[1:]}
    candidates.discard(text)
    return sorted(candidates)[rng.integers(len(candidates))] if candidates else text


def _change_punctuation(text: str, rng: np.random.Generator) -> str:
    stripped = text.rstrip(TRAILING_PUNCTUATION)
    if stripped != text and stripped:
        return stripped
    return text + TRAILING_PUNCTUATION[rng.integers(len(TRAILING_PUNCTUATION))]


def _typo(text: str, rng: np.random.Generator) -> str:
    positions = _swap_positions(text)
    if not positions:
        return text
    i = positions[rng.integers(len(positions))]
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


_TRANSFORMS = {"case": _change_case, "punctuation": _change_punctuation, "typo": _typo}


def near_duplicate(text: str, rng: np.random.Generator, kind: str | None = None) -> str:
    """A slightly different spelling of `text`: what a cache keyed on the exact text misses.

    `kind` is "case" (all lower case, or the first letter's case flipped), "punctuation" (drop
    the trailing ".?!" or add one) or "typo" (two adjacent letters swapped); None picks one at
    random. The result always differs from `text`: when the chosen kind cannot change it
    (a text without two adjacent letters has no typo), the other kinds are tried in turn;
    adding punctuation always works.
    """
    if kind is not None and kind not in _TRANSFORMS:
        raise ValueError(f"unknown near-duplicate kind {kind!r}; one of {NEAR_DUPLICATE_KINDS}")
    first = kind if kind is not None else NEAR_DUPLICATE_KINDS[rng.integers(3)]
    order = [first] + [k for k in NEAR_DUPLICATE_KINDS if k != first]
    for name in order:
        changed = _TRANSFORMS[name](text, rng)
        if changed != text:
            return changed
    return text + "?"  # unreachable in practice: punctuation always changes the text


def build_stream(
    phrases_by_model: Mapping[str, Sequence[str]],
    *,
    requests: int,
    distinct: int,
    exponent: float,
    near_duplicates: float,
    mix: Mapping[str, float],
    seed: int,
) -> list[tuple[str, str]]:
    """A request stream: `requests` (model, text) pairs, deterministic for `seed`.

    Per model, `distinct` phrases are chosen at random from its dataset and given a random
    popularity rank; each request picks a model by `mix`, a rank by `zipf_sample` and, with
    probability `near_duplicates`, replaces the phrase with a `near_duplicate` of it. The
    shuffle matters: the datasets are sorted by label, so taking the first phrases would make
    the popular phrases all one intent.
    """
    if not 0.0 <= near_duplicates <= 1.0:
        raise ValueError("near_duplicates must be within [0, 1]")
    if distinct < 1:
        raise ValueError("distinct must be >= 1")
    missing = [model for model in mix if not phrases_by_model.get(model)]
    if missing:
        raise ValueError(f"no phrases for model(s) {missing}")
    rng = np.random.default_rng(seed)
    models = list(mix)
    weights = np.array([mix[m] for m in models], dtype=np.float64)
    ranked = {}
    for model in models:
        pool = list(phrases_by_model[model])
        order = rng.permutation(len(pool))[: min(distinct, len(pool))]
        ranked[model] = [pool[i] for i in order]
    choice = rng.choice(len(models), size=requests, p=weights / weights.sum())
    ranks = np.empty(requests, dtype=np.int64)
    for index, model in enumerate(models):
        where = np.flatnonzero(choice == index)
        ranks[where] = zipf_sample(len(ranked[model]), len(where), exponent, rng)
    dupes = rng.random(requests) < near_duplicates
    stream = []
    for model_index, rank, dupe in zip(choice, ranks, dupes, strict=True):
        model = models[model_index]
        text = ranked[model][rank]
        stream.append((model, near_duplicate(text, rng) if dupe else text))
    return stream


def tsv_line(model: str, text: str) -> str:
    """One JMeter CSV Data Set line: `model<TAB>{"text": ...}`.

    json.dumps escapes tabs and newlines (and, with ensure_ascii, everything non-ASCII), so the
    body is always one field on one line.
    """
    if "\t" in model or "\n" in model:
        raise ValueError(f"model name {model!r} cannot go in a TSV field")
    return f"{model}\t{json.dumps({'text': text})}\n"


@dataclass(frozen=True)
class StreamSummary:
    """How skewed a stream is: what a cache can hope for."""

    requests: int
    requests_by_model: dict[str, int]
    distinct_by_model: dict[str, int]
    distinct: int
    top1_share: float  # share of the requests that go to the 1% most requested texts
    top10_share: float
    singletons: int  # texts requested once: misses whatever the cache size

    def as_dict(self) -> dict:
        """A JSON-ready copy."""
        return dict(self.__dict__)


def top_share(counts: Iterable[int], fraction: float) -> float:
    """Share of all requests that go to the `fraction` most requested keys (at least one key)."""
    ordered = sorted(counts, reverse=True)
    total = sum(ordered)
    if not total:
        return 0.0
    top = max(1, math.ceil(len(ordered) * fraction))
    return sum(ordered[:top]) / total


def summarize(stream: Sequence[tuple[str, str]]) -> StreamSummary:
    """Requests and distinct texts per model, share of the top 1% / 10% texts, singletons."""
    by_model = Counter(model for model, _ in stream)
    distinct_by_model = {
        model: len({text for m, text in stream if m == model}) for model in sorted(by_model)
    }
    counts = Counter(text for _, text in stream)
    return StreamSummary(
        requests=len(stream),
        requests_by_model=dict(sorted(by_model.items())),
        distinct_by_model=distinct_by_model,
        distinct=len(counts),
        top1_share=top_share(counts.values(), 0.01),
        top10_share=top_share(counts.values(), 0.10),
        singletons=sum(1 for c in counts.values() if c == 1),
    )


# --- LRU cache sizing -----------------------------------------------------------------------


class _Fenwick:
    """Prefix sums over 0..n-1 with point updates, both O(log n)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree = [0] * (n + 1)

    def add(self, index: int, delta: int) -> None:
        i = index + 1
        tree, n = self.tree, self.n
        while i <= n:
            tree[i] += delta
            i += i & -i

    def prefix(self, index: int) -> int:
        """Sum of positions 0..index-1."""
        i, total, tree = index, 0, self.tree
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


def stack_distances(keys: Iterable[Hashable]) -> np.ndarray:
    """LRU stack (reuse) distance of every access; -1 for a first access (a cold miss).

    The distance of an access is the number of distinct other keys used since the previous
    access to the same key (Mattson et al., 1970). An LRU cache of size C holds the key then
    exactly when that distance is < C, so one pass gives the hit rate of every size. O(n log n):
    a Fenwick tree marks, for each key, the time of its latest access; the distance is the
    number of marks after the key's previous access.
    """
    keys = list(keys)
    tree = _Fenwick(len(keys))
    last: dict[Hashable, int] = {}
    out = np.full(len(keys), -1, dtype=np.int64)
    marked = 0  # marks in the tree so far: prefix(i) of the whole tree without a query
    for now, key in enumerate(keys):
        previous = last.get(key)
        if previous is not None:
            out[now] = marked - tree.prefix(previous + 1)
            tree.add(previous, -1)
            marked -= 1
        tree.add(now, 1)
        marked += 1
        last[key] = now
    return out


def hit_rate_curve(distances: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    """Hit rate of an LRU of each size (0 for size 0): the share of distances in [0, size)."""
    distances = np.asarray(distances)
    if not len(distances):
        return np.zeros(len(list(sizes)))
    reused = np.sort(distances[distances >= 0])
    sizes = np.asarray(list(sizes), dtype=np.int64)
    return np.searchsorted(reused, sizes, side="left") / len(distances)


def simulate_lru(keys: Iterable[Hashable], maxsize: int) -> float:
    """Hit rate of a real `cachetools.LRUCache` of `maxsize` over `keys` (the slow reference)."""
    from cachetools import LRUCache  # only the check needs it

    cache = LRUCache(maxsize=maxsize) if maxsize else None
    hits = total = 0
    for key in keys:
        total += 1
        if cache is None:
            continue
        # get() refreshes the key's recency, as PhraseCache.get_many does; `in` would not.
        if cache.get(key) is not None:
            hits += 1
        else:
            cache[key] = True
    return hits / total if total else 0.0


def knee(sizes: Sequence[int], hit_rates: Sequence[float], tolerance: float = 0.01) -> int:
    """The recommended cache size: the smallest size within `tolerance` of the best hit rate.

    The best hit rate is the one at the largest size considered (an LRU's hit rate never falls
    as it grows). `tolerance` is absolute: 0.01 is one percentage point. Beyond the returned
    size, growing the cache buys less than `tolerance` more hits at any price, which is the
    knee of a hit-rate curve that flattens out; unlike a geometric knee (Kneedle), it does not
    move with the axis scale and its meaning is stated in hit-rate points.
    """
    if len(sizes) != len(hit_rates) or not len(sizes):
        raise ValueError("sizes and hit_rates must be non-empty and of the same length")
    order = np.argsort(sizes)
    sizes_sorted = np.asarray(sizes)[order]
    rates = np.asarray(hit_rates, dtype=np.float64)[order]
    target = rates[-1] - tolerance
    return int(sizes_sorted[np.flatnonzero(rates >= target - 1e-12)[0]])


def exact_knee(distances: np.ndarray, tolerance: float = 0.01) -> int:
    """`knee` over every integer size from 0 to the largest useful one (max distance + 1)."""
    reused = np.asarray(distances)[np.asarray(distances) >= 0]
    if not len(reused):
        return 0
    sizes = np.arange(0, int(reused.max()) + 2)
    return knee(sizes, hit_rate_curve(distances, sizes), tolerance)


def round_up_nice(value: int) -> int:
    """`value` rounded up to two significant digits (3517 -> 3600), a setting people can read."""
    if value <= 0:
        return 0
    step = 10 ** max(0, len(str(int(value))) - 2)
    return int(math.ceil(value / step) * step)


def size_grid(largest: int, extra: Iterable[int] = ()) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `largest`, plus `largest` and the `extra` sizes."""
    sizes = {largest, *extra} if largest > 0 else set(extra)
    step = 1
    while step <= largest:
        for factor in (1, 2, 5):
            if step * factor <= largest:
                sizes.add(step * factor)
        step *= 10
    return sorted(s for s in sizes if s > 0)
