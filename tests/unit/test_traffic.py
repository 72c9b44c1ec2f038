"""Request streams and cache sizing (dc.utilities.traffic, make_requests.py, tune_cache.py).

Fast: no servers, no TensorFlow; the scripts run as subprocesses on small inputs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from dc.utilities.traffic import (
    build_stream,
    exact_knee,
    hit_rate_curve,
    knee,
    near_duplicate,
    parse_mix,
    round_up_nice,
    simulate_lru,
    stack_distances,
    summarize,
    top_share,
    tsv_line,
    zipf_sample,
)

REPO = Path(__file__).resolve().parents[2]
PHRASES = {
    "banking77": [f"How do I top up card number {i}?" for i in range(300)],
    "clinc150": [f"what is the weather in city {i}" for i in range(300)],
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (a swap of two letters counts 2)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# --- sampling -------------------------------------------------------------------------------


def test_zipf_sample_is_skewed_towards_the_top_rank_and_deterministic():
    ranks = zipf_sample(1000, 50_000, 1.1, np.random.default_rng(3))
    counts = np.bincount(ranks, minlength=1000)
    assert counts.argmax() == 0
    assert counts[0] > counts[1] > counts[10] > counts[100]
    # 1/r^1.1 over 1000 ranks: rank 1 gets about 1/H(1000, 1.1) ~ 17% of the draws.
    assert 0.14 < counts[0] / len(ranks) < 0.20
    assert ranks.min() >= 0 and ranks.max() < 1000
    again = zipf_sample(1000, 50_000, 1.1, np.random.default_rng(3))
    assert np.array_equal(ranks, again)
    assert not np.array_equal(ranks, zipf_sample(1000, 50_000, 1.1, np.random.default_rng(4)))


def test_zipf_exponent_zero_is_uniform():
    counts = np.bincount(zipf_sample(10, 100_000, 0.0, np.random.default_rng(0)), minlength=10)
    assert counts.min() / counts.max() > 0.9


@pytest.mark.parametrize("kind", ["case", "punctuation", "typo", None])
def test_near_duplicates_change_the_text_but_stay_close(kind):
    rng = np.random.default_rng(1)
    texts = ["How do I activate my card?", "top up failed", "Why?", "12345", "a", "ok."]
    for text in texts:
        for _ in range(20):
            changed = near_duplicate(text, rng, kind)
            assert changed != text
            if changed.casefold() == text.casefold():
                continue  # a case change
            assert edit_distance(changed.casefold(), text.casefold()) <= 2
            assert sorted(changed.rstrip(".?!")) == sorted(text.rstrip(".?!")) or (
                changed.rstrip(".?!") == text.rstrip(".?!")
            )


def test_near_duplicate_kinds_do_what_they_say():
    rng = np.random.default_rng(0)
    assert near_duplicate("Card lost", rng, "case").casefold() == "card lost"
    assert near_duplicate("Card lost?", rng, "punctuation") == "Card lost"
    assert near_duplicate("Card lost", rng, "punctuation")[-1] in ".?!"
    typo = near_duplicate("ab", rng, "typo")
    assert typo == "ba"
    # No two adjacent letters: falls back to another kind, still different.
    assert near_duplicate("1 2", rng, "typo") != "1 2"
    with pytest.raises(ValueError):
        near_duplicate("x", rng, "shout")


def test_build_stream_follows_mix_distinct_and_seed():
    kwargs = dict(
        requests=4000,
        distinct=50,
        exponent=1.1,
        near_duplicates=0.1,
        mix=parse_mix("banking77=0.75,clinc150=0.25"),
    )
    stream = build_stream(PHRASES, seed=5, **kwargs)
    assert stream == build_stream(PHRASES, seed=5, **kwargs)
    assert stream != build_stream(PHRASES, seed=6, **kwargs)
    models = Counter(model for model, _ in stream)
    assert 0.72 < models["banking77"] / len(stream) < 0.78

    # Case, trailing punctuation and swapped letters all keep the text's letters: every text
    # is one of its own model's phrases, or a near duplicate of one.
    def letters(text):
        return "".join(sorted(text.casefold().rstrip(".?!")))

    signatures = {model: {letters(p) for p in phrases} for model, phrases in PHRASES.items()}
    for model, text in stream:
        assert letters(text) in signatures[model]
    exact = [t for m, t in stream if t in PHRASES[m]]
    assert 0.85 < len(exact) / len(stream) < 0.95  # about 10% near duplicates
    assert len({t for m, t in stream if m == "banking77" and t in PHRASES[m]}) <= 50
    summary = summarize(stream)
    assert summary.requests == 4000
    assert summary.top10_share > summary.top1_share > 0.1


def test_parse_mix_and_top_share():
    assert parse_mix("a=3,b=1") == {"a": 0.75, "b": 0.25}
    for bad in ("a", "a=-1", "a=0", ""):
        with pytest.raises(ValueError):
            parse_mix(bad)
    assert top_share([10, 5, 5], 0.01) == 0.5  # at least one key


def test_tsv_line_has_two_fields_and_a_json_body():
    for text in ["tab\there", "new\nline", 'quote " and \\ back', "ünïcødé ✓", "é\r\n"]:
        line = tsv_line("banking77", text)
        assert line.endswith("\n") and line.count("\n") == 1
        fields = line.rstrip("\n").split("\t")
        assert len(fields) == 2
        assert fields[0] == "banking77"
        assert json.loads(fields[1]) == {"text": text}


def test_make_requests_writes_tsv_and_jsonl(tmp_path):
    data = tmp_path / "data"
    for model, phrases in PHRASES.items():
        (data / model).mkdir(parents=True)
        with open(data / model / "train.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([p, "x"] for p in phrases)
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "scripts" / "make_requests.py"), "--requests", "500"]
    command += ["--distinct", "40", "--data-dir", str(data), "--out-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "top 1%" in result.stdout
    tsv = (out / "requests.tsv").read_text(encoding="utf-8").splitlines()
    jsonl = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(tsv) == len(jsonl) == 500
    for line, row in zip(tsv, jsonl, strict=True):
        model, body = line.split("\t")
        assert model == row["model"] and json.loads(body)["text"] == row["text"]
        assert json.loads(body)["text"].strip()
    first = (out / "requests.tsv").read_bytes()
    subprocess.run(command, capture_output=True, check=True)
    assert (out / "requests.tsv").read_bytes() == first  # deterministic for the seed


# --- cache sizing ---------------------------------------------------------------------------


def test_stack_distances_by_hand():
    #                       a   b   c   a  a  b  d   c
    assert list(stack_distances("abcaabdc")) == [-1, -1, -1, 2, 0, 2, -1, 3]


def test_stack_distance_hit_rates_equal_a_real_lru():
    rng = np.random.default_rng(11)
    keys = [f"k{r}" for r in zipf_sample(400, 6000, 0.9, rng)]
    distances = stack_distances(keys)
    sizes = [0, 1, 2, 7, 30, 100, 250, 400, 1000]
    curve = hit_rate_curve(distances, sizes)
    for size, rate in zip(sizes, curve, strict=True):
        assert rate == pytest.approx(simulate_lru(keys, size), abs=1e-12), size
    assert np.all(np.diff(curve) >= 0)


def test_knee_rule_on_a_synthetic_curve():
    sizes = [1, 10, 100, 1000, 10_000]
    rates = [0.10, 0.50, 0.795, 0.80, 0.805]
    assert knee(sizes, rates, tolerance=0.01) == 100  # 0.795 >= 0.805 - 0.01
    assert knee(sizes, rates, tolerance=0.001) == 10_000
    assert knee(sizes, rates, tolerance=0.5) == 10
    assert knee(sizes[::-1], rates[::-1], tolerance=0.01) == 100  # order does not matter
    # Exact knee: 10 keys cycled after a warm-up need all 10 slots; any smaller LRU thrashes.
    distances = stack_distances([i % 10 for i in range(1000)])
    assert exact_knee(distances, 0.01) == 10
    assert round_up_nice(2446) == 2500 and round_up_nice(7) == 7 and round_up_nice(100) == 100


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_cache_help_explains_the_rule():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "tune_cache.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--jsonl", "--database-url", "--per-model", "--tolerance", "--out"):
        assert option in result.stdout
    assert "within --tolerance" in result.stdout


def test_tune_cache_end_to_end(tmp_path):
    stream = build_stream(
        PHRASES,
        requests=3000,
        distinct=200,
        exponent=1.0,
        near_duplicates=0.1,
        mix={"banking77": 0.5, "clinc150": 0.5},
        seed=0,
    )
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps({"model": m, "text": t}) + "\n" for m, t in stream))
    out = tmp_path / "curve.png"
    command = [sys.executable, str(REPO / "scripts" / "tune_cache.py"), "--jsonl", str(jsonl)]
    command += ["--out", str(out), "--measure-entries", "2000"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "recommended DC_CACHE_SIZE=" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.with_suffix(".json").read_text())
    keys = [t for _, t in stream]
    assert report["requests"] == 3000 and report["distinct_keys"] == len(set(keys))
    # The knee and the table agree with a real LRU.
    rec = report["recommended_maxsize"]
    assert report["recommended_hit_rate"] == pytest.approx(simulate_lru(keys, rec))
    assert report["recommended_hit_rate"] >= report["best_hit_rate"] - 0.01
    assert 1000 < report["bytes_per_entry"] < 4000  # 1536 bytes of float32 plus overheads
    row = next(r for r in report["rows"] if r["size"] == rec)
    assert row["mb"] == pytest.approx(rec * report["bytes_per_entry"] / 1e6, rel=1e-3)


def test_tune_cache_reads_the_inference_log(tmp_path):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from persistence.models import Base, Inference

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    texts = ["a", "b", "a", "c", "b", "a"]
    with Session(engine) as session:
        for i, text in enumerate(texts):
            session.add(
                Inference(
                    request_id=f"r{i}",
                    item=0,
                    created_at=start + timedelta(minutes=i),
                    model="m1" if i % 2 else "m2",
                    region="global",
                    version="v1",
                    model_type="t",
                    input_text=text,
                    predicted_label="x",
                    probability=1.0,
                    top_k=[],
                    latency_ms=1.0,
                    cache_hit=False,
                    embedder_fingerprint="f",
                )
            )
        session.commit()
    engine.dispose()
    tune = load_script("tune_cache")
    assert tune.read_database(url, None, None, False) == texts
    assert tune.read_database(url, start + timedelta(minutes=3), None, False) == ["c", "b", "a"]
    assert tune.read_database(url, None, "m1", True) == [("m1", "b"), ("m1", "c"), ("m1", "a")]
