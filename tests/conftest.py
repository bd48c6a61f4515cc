from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).parent))

from kit import NodeProcess, Swarm


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    async with trio.open_nursery() as nursery:
        yield Swarm(tmp_path, nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
def processes() -> Iterator[list[NodeProcess]]:
    """Collects started NodeProcess objects and kills any still running at the end."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.kill()
