"""A feed that follows a file of indicators (JSON lines) and publishes new lines as they come.

Like ``tail -f``: it publishes what the file holds, then polls for appended lines every
``poll_s`` seconds, until ``stop_after_s`` (or forever when None). Run it as its own node:

    python examples/follow_file.py --home /tmp/feed --bootstrap /ip4/.../p2p/... feed.jsonl

or use ``FollowFile`` from your own code: ``await FollowFile(path).run(node)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.node.publisher import Publisher, Record
from threatmesh.pubsub.formats import Rejected


class FollowFile(Publisher):
    def __init__(
        self,
        path: Path,
        *,
        tlp: str = "clear",
        provider: str = "",
        poll_s: float = 1.0,
        stop_after_s: float | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.tlp = tlp
        self.provider = provider
        self.poll_s = poll_s
        self.stop_after_s = stop_after_s

    async def records(self) -> AsyncIterator[Sequence[Record]]:
        offset = 0
        deadline = None if self.stop_after_s is None else trio.current_time() + self.stop_after_s
        while deadline is None or trio.current_time() < deadline:
            with self.path.open("rb") as source:
                source.seek(offset)
                data = source.read()
            complete = data[: data.rfind(b"\n") + 1]  # a half-written last line waits
            offset += len(complete)
            chunk: list[Record] = []
            for line in complete.decode("utf-8", errors="replace").splitlines():
                if line.strip() and not line.startswith("#"):
                    chunk.append(_json_or_value(line))
                if len(chunk) >= self.chunk_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            await trio.sleep(self.poll_s)

    def on_rejected(self, rejected: Rejected) -> None:
        print(f"rejected: record {rejected.line}: {rejected.reason}")


def _json_or_value(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {"value": line.strip()}  # not JSON: the line is the value (then validated)
    return record if isinstance(record, dict) else {"value": str(record)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--tlp", default="clear")
    parser.add_argument("--seconds", type=float, default=None, help="stop after (default: never)")
    args = parser.parse_args()
    home = Home(args.home)
    home.init()
    config = NodeConfig(listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=tuple(args.bootstrap))
    async with Node(config, home) as node:
        feed = FollowFile(args.file, tlp=args.tlp, stop_after_s=args.seconds)
        stats = await feed.run(node)
        print(f"accepted {stats.accepted}, rejected {stats.rejected}")


if __name__ == "__main__":
    trio.run(main)
