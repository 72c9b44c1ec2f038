"""dc.preparation: cleaning, conflicts, duplicates, class counts and splits of a raw extract."""

from __future__ import annotations

import pandas as pd
import pytest

from dc.errors import InvalidInput
from dc.model_config import DataConfig
from dc.preparation import (
    check_class_counts,
    drop_conflicts,
    normalise_texts,
    prepare,
    split_data,
    stratified_holdout,
)


def make_raw(per_class: dict[str, int], split: str = "train", prefix: str = "") -> pd.DataFrame:
    """`n` distinct phrases per label, all in one split."""
    rows = [
        {"text": f"{prefix}{label} phrase number {i}", "label": label, "split": split}
        for label, n in per_class.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def config(**overrides) -> DataConfig:
    return DataConfig(**{"min_examples_per_class": 3, "validation_fraction": 0.2, **overrides})


def all_rows(prepared) -> pd.DataFrame:
    return pd.concat([prepared.train, prepared.validation, prepared.test], ignore_index=True)


def test_whitespace_is_normalised():
    texts = pd.Series(["  my   card\tis\n\nlost ", "ok", "\u00a0non-breaking\u00a0 space "])
    assert normalise_texts(texts).tolist() == ["my card is lost", "ok", "non-breaking space"]


def test_whitespace_variants_become_one_phrase_in_prepare():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10}),
            pd.DataFrame({"text": ["  a   phrase number 0 "], "label": ["a"], "split": ["train"]}),
        ]
    )
    prepared = prepare(raw, config(), seed=0)
    texts = all_rows(prepared)["text"]
    assert "a phrase number 0" in set(texts)
    assert texts.str.contains(r"\s\s|^\s|\s$").sum() == 0
    assert prepared.report["duplicates_dropped"]["train"] == 1


def test_empty_texts_are_dropped_and_counted():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10}),
            pd.DataFrame({"text": ["", "   ", None, "\n\t"], "label": ["a"] * 4, "split": "train"}),
        ]
    )
    prepared = prepare(raw, config(), seed=0)
    assert prepared.report["empty_texts_dropped"] == 4
    assert len(all_rows(prepared)) == 20
    assert (all_rows(prepared)["text"] != "").all()


def test_exact_duplicates_are_dropped_keeping_the_test_copy():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10}),
            make_raw({"a": 2}),  # the same phrases again, same label
            pd.DataFrame({"text": ["a phrase number 5"], "label": ["a"], "split": ["test"]}),
            # a repeat within the test split stays: the test set is kept as given
            pd.DataFrame({"text": ["t a phrase number 0"], "label": ["a"], "split": ["test"]}),
            make_raw({"a": 3, "b": 3}, split="test", prefix="t "),
        ]
    )
    prepared = prepare(raw, config(), seed=0)
    assert prepared.report["duplicates_dropped"] == {"train": 3, "validation": 0, "test": 0}
    training = pd.concat([prepared.train, prepared.validation])
    assert not training.duplicated(["text", "label"]).any()
    assert (prepared.test["text"] == "t a phrase number 0").sum() == 2
    # The phrase also in the test split stays there and leaves training.
    assert "a phrase number 5" in set(prepared.test["text"])
    assert "a phrase number 5" not in set(prepared.train["text"]) | set(prepared.validation["text"])


def test_conflicting_texts_are_reported_and_dropped_from_training_but_not_from_test():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10}),
            pd.DataFrame(
                {
                    "text": ["which one am i", "which one am i", "which  one am i", "other"],
                    "label": ["a", "b", "a", "b"],
                    "split": ["train", "train", "test", "train"],
                }
            ),
        ]
    )
    prepared = prepare(raw, config(), seed=0)
    assert prepared.report["conflicting_texts"] == [
        {"text": "which one am i", "labels": ["a", "b"], "rows": 2, "kept_in_test": 1}
    ]
    assert prepared.report["conflicting_rows_dropped"] == 2
    training = set(prepared.train["text"]) | set(prepared.validation["text"])
    assert "which one am i" not in training
    assert "which one am i" in set(prepared.test["text"])  # the test split is kept as given
    assert "other" in set(all_rows(prepared)["text"])


def test_drop_conflicts_alone():
    data = pd.DataFrame({"text": ["x", "x", "y", "y"], "label": ["a", "b", "a", "a"]})
    kept, conflicts = drop_conflicts(data)
    assert kept["text"].tolist() == ["y", "y"]  # same label twice is a duplicate, not a conflict
    assert conflicts == [{"text": "x", "labels": ["a", "b"], "rows": 2, "kept_in_test": 0}]


def test_a_class_below_the_minimum_raises_naming_it():
    raw = make_raw({"plenty": 20, "thin": 4, "thinner": 2, "ok": 5})
    with pytest.raises(InvalidInput) as error:
        prepare(raw, config(min_examples_per_class=5), seed=0)
    message = str(error.value)
    assert "'thin' (4)" in message
    assert "'thinner' (2)" in message
    assert "plenty" not in message and "'ok'" not in message


def test_test_rows_do_not_count_towards_the_minimum():
    raw = pd.concat([make_raw({"a": 10, "b": 2}), make_raw({"b": 10}, split="test", prefix="t")])
    with pytest.raises(InvalidInput, match=r"'b' \(2\)"):
        prepare(raw, config(min_examples_per_class=5), seed=0)


def test_drop_rare_classes_drops_and_reports_them():
    raw = pd.concat([make_raw({"a": 20, "b": 20, "thin": 2}), make_raw({"thin": 3}, "test", "t")])
    prepared = prepare(raw, config(min_examples_per_class=5, drop_rare_classes=True), seed=0)
    assert prepared.report["rare_classes_dropped"] == {"thin": 2}
    assert prepared.labels == ["a", "b"]
    assert "thin" not in set(all_rows(prepared)["label"])  # from the test split too


def test_too_few_examples_is_one_short_line_naming_the_fewest():
    data = make_raw({f"class{i:02}": 3 + i % 4 for i in range(40)} | {"big": 30})
    with pytest.raises(InvalidInput) as raised:
        check_class_counts(data, 20)
    message = raised.value.message
    assert "\n" not in message and len(message) < 400
    assert message.startswith("40 of 41 classes have fewer than 20 training examples")
    assert "'class00' (3)" in message and "and 35 more" in message and "big" not in message


def test_check_class_counts_passes_through_when_all_are_enough():
    data = make_raw({"a": 5, "b": 6})
    kept, dropped = check_class_counts(data, 5)
    assert len(kept) == 11 and dropped == {}


def test_excluded_labels_are_dropped_everywhere_and_counted():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10, "oos": 7}),
            make_raw({"a": 2, "oos": 4}, split="test", prefix="t "),
        ]
    )
    prepared = prepare(raw, config(exclude_labels=["oos"]), seed=0)
    assert prepared.report["excluded_labels_dropped"] == {"oos": 11}
    assert prepared.labels == ["a", "b"]
    assert "oos" not in set(all_rows(prepared)["label"])
    assert len(prepared.test) == 2


def test_given_test_and_validation_splits_are_kept_as_they_are():
    raw = pd.concat(
        [
            make_raw({"a": 10, "b": 10}),
            make_raw({"a": 3, "b": 4}, split="validation", prefix="v "),
            make_raw({"a": 5, "b": 1}, split="test", prefix="t "),
        ]
    )
    prepared = prepare(raw, config(), seed=0)
    assert prepared.report["split_origin"] == {
        "train": "given",
        "validation": "given",
        "test": "given",
    }
    assert prepared.test["text"].tolist() == raw[raw["split"] == "test"]["text"].tolist()
    assert prepared.validation["text"].str.startswith("v ").all()
    assert len(prepared.train) == 20
    assert prepared.report["rows"] == {"train": 20, "validation": 7, "test": 6}


def test_val_is_read_as_validation_and_unknown_splits_are_refused():
    raw = pd.concat([make_raw({"a": 10, "b": 10}), make_raw({"a": 2, "b": 2}, "val", "v ")])
    assert len(prepare(raw, config(), seed=0).validation) == 4
    with pytest.raises(InvalidInput, match="holdout"):
        prepare(make_raw({"a": 10, "b": 10}, split="holdout"), config(), seed=0)


def test_missing_columns_are_refused():
    with pytest.raises(InvalidInput, match="label"):
        prepare(pd.DataFrame({"text": ["x"]}), config(), seed=0)


def test_labels_are_encoded_in_sorted_order():
    prepared = prepare(make_raw({"zeta": 10, "alpha": 10, "mid": 10}), config(), seed=0)
    assert prepared.labels == ["alpha", "mid", "zeta"]
    for frame in (prepared.train, prepared.validation, prepared.test):
        assert (prepared.label_encoder.inverse_transform(frame["label_id"]) == frame["label"]).all()


def test_stratified_split_proportions():
    sizes = {"a": 100, "b": 50, "c": 20, "d": 10}
    raw = pd.concat([make_raw(sizes), make_raw(dict.fromkeys(sizes, 5), "test", "t ")])
    prepared = prepare(raw, config(validation_fraction=0.2), seed=0)
    assert prepared.report["split_origin"]["validation"] == "held out"
    validation = prepared.validation["label"].value_counts().to_dict()
    train = prepared.train["label"].value_counts().to_dict()
    assert validation == {"a": 20, "b": 10, "c": 4, "d": 2}
    assert train == {"a": 80, "b": 40, "c": 16, "d": 8}
    assert set(prepared.train["text"]).isdisjoint(prepared.validation["text"])


def test_test_split_is_held_out_when_missing():
    sizes = {"a": 100, "b": 50}
    prepared = prepare(make_raw(sizes), config(validation_fraction=0.1), seed=0)
    assert prepared.report["split_origin"] == {
        "train": "given",
        "validation": "held out",
        "test": "held out",
    }
    assert prepared.test["label"].value_counts().to_dict() == {"a": 10, "b": 5}
    # Both shares are of all the rows: 80/10/10.
    assert prepared.validation["label"].value_counts().to_dict() == {"a": 10, "b": 5}
    texts = [set(frame["text"]) for frame in (prepared.train, prepared.validation, prepared.test)]
    assert sum(len(t) for t in texts) == 150 and len(set.union(*texts)) == 150


def test_a_holdout_never_takes_a_class_whole():
    data = make_raw({"a": 1, "b": 2, "c": 30})
    kept, held = stratified_holdout(data, 0.5, seed=0)
    assert set(kept["label"]) == {"a", "b", "c"}
    assert held["label"].value_counts().to_dict() == {"b": 1, "c": 15}


def test_splits_are_deterministic_for_a_seed_and_differ_across_seeds():
    raw = make_raw({"a": 60, "b": 40, "c": 25})
    first = prepare(raw, config(), seed=7)
    second = prepare(raw, config(), seed=7)
    other = prepare(raw, config(), seed=8)
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert set(first.validation["text"]) != set(other.validation["text"])
    assert first.report == second.report


def test_split_data_reports_where_each_set_came_from():
    data = make_raw({"a": 10, "b": 10}).assign(label_id=0)
    train, validation, test, origin = split_data(data, 0.2, seed=0)
    assert origin == {"train": "given", "validation": "held out", "test": "held out"}
    assert (len(train), len(validation), len(test)) == (12, 4, 4)
    assert "split" not in train.columns


def test_example_time_is_kept():
    raw = make_raw({"a": 10, "b": 10}).assign(example_time="2026-01-01T00:00:00", extra=1)
    prepared = prepare(raw, config(), seed=0)
    assert list(prepared.train.columns) == ["text", "label", "label_id", "example_time"]


def test_report_is_json_ready():
    import json

    raw = pd.concat([make_raw({"a": 10, "b": 10}), make_raw({"a": 3}, "test", "t ")])
    report = prepare(raw, config(), seed=0).report
    assert json.loads(json.dumps(report)) == report
    assert report["raw_rows"] == 23
    assert report["classes"] == 2
