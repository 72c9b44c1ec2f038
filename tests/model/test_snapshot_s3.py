"""The phrase-cache snapshot on S3 (moto as a real HTTP S3 server): an embedder task writes it
on SIGTERM, the task that replaces it reads it back (dc.nlp.warm_start)."""

from __future__ import annotations

import pytest

from dc.backup import s3_client
from dc.nlp.warm_start import SnapshotError, read_snapshot
from tests.warm_start_support import fake_engine


def test_snapshot_round_trip_through_s3(s3_settings):
    location = f"s3://{s3_settings.s3_bucket}/embedder/snapshot.npz"
    overrides = dict(
        cache_snapshot=location,
        s3_endpoint_url=s3_settings.s3_endpoint_url,
        aws_region=s3_settings.aws_region,
    )
    first, settings = fake_engine(**overrides)
    first.start_warm_start(settings)
    assert first.info()["warm_start"]["snapshot"] == {
        "enabled": True,
        "storage": "s3",
        "state": "absent",
        "entries": 0,
        "seconds": None,
        "saved_entries": None,
    }
    first.embed(["my card has not arrived", "Straße 💳"])
    first.close()
    head = s3_client(settings).head_object(
        Bucket=s3_settings.s3_bucket, Key="embedder/snapshot.npz"
    )
    assert head["ContentLength"] > 0

    second, _ = fake_engine(**overrides)
    try:
        second.start_warm_start(settings)
        assert second.info()["warm_start"]["snapshot"]["state"] == "loaded"
        assert second.embed(["Straße 💳", "my card has not arrived"]).cached == [True, True]
        assert second.encoder.encoded == []
    finally:
        second.close()


def test_unreachable_bucket_is_an_error_to_read_and_skipped_at_start(s3_settings):
    location = "s3://no-such-bucket-here/snapshot.npz"
    engine, settings = fake_engine(
        cache_snapshot=location,
        s3_endpoint_url=s3_settings.s3_endpoint_url,
        aws_region=s3_settings.aws_region,
    )
    try:
        with pytest.raises(SnapshotError):
            read_snapshot(location, settings)
        engine.start_warm_start(settings)  # logged, not raised
        assert engine.info()["warm_start"]["snapshot"]["state"] == "unreadable"
    finally:
        engine.close()  # the write fails too: logged, not raised
