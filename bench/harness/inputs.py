"""What the load is made of: short phrases from the project's datasets, and request bodies.

The phrases are the product's kind of input (a few words), shuffled with a fixed seed so that
every run of a benchmark sends the same ones in the same order.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from bench.harness import REPO


def load_phrases(max_words: int) -> list[str]:
    """Distinct short phrases (at most `max_words` words) from BANKING77 and CLINC150."""
    phrases: dict[str, None] = {}
    for path in sorted((REPO / "data").glob("*/*.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if 3 <= len(row["text"].split()) <= max_words:
                    phrases[row["text"]] = None
    ordered = list(phrases)
    random.Random(0).shuffle(ordered)
    return ordered


def write_bodies(path: Path, bodies: Iterable[dict]) -> Path:
    """Write one JSON body a line (what bench/predict.lua and bench/embed.lua send)."""
    with open(path, "w", encoding="utf-8") as handle:
        for body in bodies:
            handle.write(json.dumps(body) + "\n")
    return path


def predict_bodies(texts: Iterable[str]) -> Iterator[dict]:
    """The bodies of `POST /predict/<model>` requests, one text each."""
    return ({"text": text} for text in texts)


def embed_bodies(texts: Iterable[str]) -> Iterator[dict]:
    """The bodies of `POST /embed` requests, one text each."""
    return ({"texts": [text]} for text in texts)
