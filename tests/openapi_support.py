"""Validate responses against the API's own `/openapi.json` (openapi-core).

`SpecChecker` validates one response (Flask test client or requests); `ValidatingClient` wraps
the Flask test client and `validating_session` a requests session so that EVERY response a test
receives is checked, and `checked` counts them (a test can assert the checker actually ran).
"""

from __future__ import annotations

from typing import Any

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request


class SpecChecker:
    """Validates responses against one OpenAPI document."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.openapi = OpenAPI.from_dict(spec)
        self.checked = 0

    def check_werkzeug(self, response, request=None) -> None:
        """Validate a Flask test-client response (raises an openapi-core error if invalid).

        Args:
            request: the werkzeug request it answers; by default `response.request`, whose body
                the app has already consumed (pass a fresh one when the body matters).
        """
        self.openapi.validate_response(
            WerkzeugOpenAPIRequest(request or response.request), WerkzeugOpenAPIResponse(response)
        )
        self.checked += 1

    def check_requests(self, response: requests.Response) -> None:
        """Validate a requests response (raises an openapi-core error if invalid)."""
        self.openapi.validate_response(
            RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
        )
        self.checked += 1


class ValidatingClient:
    """A Flask test client whose every response is validated against the spec."""

    def __init__(self, client, checker: SpecChecker) -> None:
        self.client = client
        self.checker = checker

    def open(self, path: str, method: str, **kwargs):
        response = self.client.open(path, method=method, **kwargs)
        # The test client's `response.request` shares the consumed input stream; openapi-core
        # reads the body, so it gets a twin of the request built from the same arguments.
        builder = EnvironBuilder(path=path, method=method, **kwargs)
        try:
            self.checker.check_werkzeug(response, Request(builder.get_environ()))
        finally:
            builder.close()
        return response

    def get(self, path: str, **kwargs):
        return self.open(path, "GET", **kwargs)

    def post(self, path: str, **kwargs):
        return self.open(path, "POST", **kwargs)


def validating_session(checker: SpecChecker) -> requests.Session:
    """A requests session that validates every response it receives."""
    session = requests.Session()

    def hook(response: requests.Response, *args, **kwargs) -> None:
        checker.check_requests(response)

    session.hooks["response"].append(hook)
    return session
