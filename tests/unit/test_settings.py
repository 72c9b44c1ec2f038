"""Settings come from DC_* environment variables, typed and checked."""

import pytest
from pydantic import ValidationError

from dc.config import Settings


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("DC_CACHE_SIZE", "123")
    monkeypatch.setenv("DC_EMBEDDER_MODE", "remote")
    settings = Settings()
    assert settings.cache_size == 123
    assert settings.embedder_mode == "remote"


@pytest.mark.parametrize(
    ("name", "value"),
    [("DC_CACHE_SIZE", "-1"), ("DC_EMBEDDER_MODE", "cloud"), ("DC_EMBEDDER_PORT", "70000")],
)
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_a_full_request_must_fit_in_the_queue():
    with pytest.raises(ValidationError, match="must not exceed"):
        Settings(max_texts_per_request=100, max_queue=50)
