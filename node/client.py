"""A small client for the local API of a running node, used by the CLI."""

from __future__ import annotations

from typing import Any

import httpx

from threatmesh.node.errors import ApiError
from threatmesh.node.home import Home

API_TIMEOUT_S = 5.0


def get_json(home: Home, path: str) -> Any:
    """GET ``path`` from the node running in ``home``; ApiError with one line if impossible."""
    home.require()
    url = home.api_addr()
    if url is None:
        raise ApiError(
            f"{home.path}: no running node (no api.addr); start it with `threatmesh run`"
        )
    token = home.api_token()
    try:
        response = httpx.get(
            url + path, headers={"Authorization": f"Bearer {token}"}, timeout=API_TIMEOUT_S
        )
    except httpx.HTTPError as error:
        raise ApiError(f"{url}: the node does not answer ({error}); is it running?") from None
    if response.status_code != 200:
        raise ApiError(f"{url}{path}: HTTP {response.status_code}: {response.text.strip()}")
    return response.json()
