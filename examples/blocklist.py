"""A feed that reads a blocklist in a common published format from a local file.

Formats seen on public blocklists: one value per line with ``#`` or ``;`` comments (abuse.ch
style), and ``network ; reference`` lines (Spamhaus DROP style). This example reads either
from a file you downloaded yourself (it fetches nothing) and publishes every entry, tagged
with the list's name:

    python examples/blocklist.py --home /tmp/feed --name drop --bootstrap ... drop.txt
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from threatmesh.node.config import NodeConfig
from threatmesh.node.home import Home
from threatmesh.node.node import Node
from threatmesh.node.publisher import Publisher, Record
from threatmesh.pubsub.formats import Rejected


def parse_blocklist_line(line: str, name: str) -> Record | None:
    """One entry of a blocklist line, or None for comments and blank lines."""
    text = line.strip()
    if not text or text.startswith(("#", ";")):
        return None
    value, _, comment = text.partition(";")
    record: dict[str, object] = {"value": value.strip(), "tags": ["blocklist", name]}
    if comment.strip():
        record["description"] = comment.strip()
    return record


class Blocklist(Publisher):
    def __init__(self, path: Path, name: str, *, tlp: str = "clear") -> None:
        super().__init__()
        self.path = path
        self.name = name
        self.tlp = tlp
        self.provider = name

    async def records(self) -> AsyncIterator[Sequence[Record]]:
        chunk: list[Record] = []
        with self.path.open(encoding="utf-8", errors="replace") as source:
            for line in source:
                record = parse_blocklist_line(line, self.name)
                if record is not None:
                    chunk.append(record)
                if len(chunk) >= self.chunk_size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def on_rejected(self, rejected: Rejected) -> None:
        print(f"rejected: entry {rejected.line}: {rejected.reason}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the list's name, used as tag/provider")
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--tlp", default="clear")
    args = parser.parse_args()
    home = Home(args.home)
    home.init()
    config = NodeConfig(listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=tuple(args.bootstrap))
    async with Node(config, home) as node:
        stats = await Blocklist(args.file, args.name, tlp=args.tlp).run(node)
        print(f"accepted {stats.accepted}, rejected {stats.rejected}")


if __name__ == "__main__":
    trio.run(main)
