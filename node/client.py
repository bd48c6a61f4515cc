"""A small client for the local API of a running node, used by the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from threatmesh.node.errors import ApiError
from threatmesh.node.home import Home

API_TIMEOUT_S = 5.0
# Publishing a large file waits for every batch to be stored and handed to the router.
PUBLISH_TIMEOUT_S = 600.0


class ApiClient:
    def __init__(self, home: Home) -> None:
        home.require()
        url = home.api_addr()
        if url is None:
            raise ApiError(
                f"{home.path}: no running node (no api.addr); start it with `threatmesh run`"
            )
        self.url = url
        self._headers = {"Authorization": f"Bearer {home.api_token()}"}

    def get_json(self, path: str) -> Any:
        return self._check(self._request("GET", path, timeout=API_TIMEOUT_S)).json()

    def post_text(self, path: str, text: str, params: Mapping[str, str]) -> Any:
        response = self._request(
            "POST", path, content=text.encode(), params=params, timeout=PUBLISH_TIMEOUT_S
        )
        return self._check(response).json()

    def post_json(self, path: str, document: Mapping[str, Any]) -> Any:
        response = self._request("POST", path, json=dict(document), timeout=API_TIMEOUT_S)
        return self._check(response).json()

    def stream_json_lines(
        self, path: str, params: list[tuple[str, str | int | float | bool | None]]
    ) -> Iterator[Any]:
        """Yield each JSON line of a streaming answer until the node ends it."""
        try:
            with httpx.stream(
                "GET",
                self.url + path,
                headers=self._headers,
                params=params,
                timeout=httpx.Timeout(API_TIMEOUT_S, read=None),
            ) as response:
                self._check(response, streaming=True)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.HTTPError as error:
            raise ApiError(f"{self.url}: the stream ended ({error})") from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return httpx.request(method, self.url + path, headers=self._headers, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(
                f"{self.url}: the node does not answer ({error}); is it running?"
            ) from None

    def _check(self, response: httpx.Response, streaming: bool = False) -> httpx.Response:
        if response.status_code == 200:
            return response
        if streaming:
            response.read()
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text.strip()
        raise ApiError(
            f"{self.url}{response.request.url.path}: HTTP {response.status_code}: {detail}"
        )


def get_json(home: Home, path: str) -> Any:
    """GET ``path`` from the node running in ``home``; ApiError with one line if impossible."""
    return ApiClient(home).get_json(path)
