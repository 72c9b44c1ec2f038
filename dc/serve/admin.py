"""The admin actions on a store's models: reload, rollback and promote, written to the registry.

Each writes the registry (a promotion under `dc.promotion`'s rule), then refreshes the store it
was called on, and answers that store's description of the model. The other workers pick the
change up at their next refresh, so no broadcast is needed and a change reaches every worker
within `model_refresh_s`. A database error is a generic 503 for the caller, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dc import promotion
from dc.errors import DatabaseUnavailable, DCError, NotFound
from dc.model_config import is_valid_name
from dc.serve.state import first_line
from persistence import registry
from persistence.errors import RecordNotFound

if TYPE_CHECKING:
    from dc.serve.store import ModelStore


def reload(store: ModelStore, name: str) -> dict[str, Any]:
    """Have every worker reload the promoted version's files; `store` does it now.

    Returns:
        `store.describe(name)` after the refresh.

    Raises:
        NotFound: no promoted version of `name` in the serving region.
        NotReady: the registry cannot be written.
    """
    _write(store, registry.request_reload, name, store.region)
    store.refresh()
    return store.describe(name)


def rollback(store: ModelStore, name: str) -> dict[str, Any]:
    """Promote the previously promoted version again (no promotion rule), everywhere.

    Returns:
        `store.describe(name)` after the refresh.

    Raises:
        NotFound: `name` has no previously promoted version in the serving region.
        NotReady: the registry cannot be written.
    """
    _write(store, registry.rollback, name, store.region)
    store.refresh()
    return store.describe(name)


def promote(store: ModelStore, name: str, version: str, *, force: bool = False) -> dict[str, Any]:
    """Promote `version` of `name` under the promotion rule (`promotion_tolerance`).

    Returns:
        `store.describe(name)` after the refresh.

    Raises:
        NotFound: no such version in the serving region.
        PromotionRefused: the rule refuses and `force` is not set.
        NotReady: the registry cannot be written.
    """
    if not is_valid_name(version, max_length=40):
        raise NotFound(f"no version {version!r} of model {name!r} in region {store.region!r}")
    _write(
        store,
        promotion.promote,
        name,
        store.region,
        version,
        tolerance=store.settings.promotion_tolerance,
        force=force,
    )
    store.refresh()
    return store.describe(name)


def _write(
    store: ModelStore, action: Callable[..., Any], name: str, *args: Any, **kwargs: Any
) -> Any:
    """`action(session, name, *args, **kwargs)` in a session of the store's registry."""
    store.check_name(name)
    try:
        with store.sessions() as session:
            return action(session, name, *args, **kwargs)
    except DCError:
        raise
    except RecordNotFound as missing:
        raise NotFound(str(missing)) from None
    except Exception as exc:  # the database: a generic 503 for the caller, not a 500
        raise DatabaseUnavailable(
            "the model registry cannot be written right now; try again later",
            retry_after_s=store.settings.retry_after_s,
            detail=first_line(exc),
        ) from exc
