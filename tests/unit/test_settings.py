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


def test_the_database_password_is_put_into_the_url():
    # ECS injects the password alone from Secrets Manager (deployment/terraform/); the URL
    # in the task definition carries none.
    settings = Settings(
        database_url="postgresql+psycopg2://dc@db.internal:5432/dc", database_password="p@ss:/w"
    )
    assert settings.database_url_or_default == (
        "postgresql+psycopg2://dc:p%40ss%3A%2Fw@db.internal:5432/dc"
    )


def test_without_a_password_setting_the_url_is_used_as_given():
    url = "postgresql+psycopg2://dc:inline@db.internal:5432/dc"
    assert Settings(database_url=url).database_url_or_default == url
    assert Settings(database_url="", database_password="unused").database_url_or_default.startswith(
        "sqlite:///"
    )
