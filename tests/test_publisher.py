"""The Publisher base class and the two example feeds in examples/."""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from kit import Swarm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from blocklist import Blocklist, parse_blocklist_line
from follow_file import FollowFile


async def test_blocklist_feed_publishes_entries_and_reports_bad_ones(
    swarm: Swarm, tmp_path: Path
) -> None:
    node = await swarm.start("a")
    listing = tmp_path / "drop.txt"
    listing.write_text(
        "; Spamhaus DROP-style list\n"
        "192.0.2.0/24 ; SBL000001\n"
        "198.51.100.0/24 ; SBL000002\n"
        "not-an-address ; SBL000003\n"
        "\n"
        "# abuse.ch style entries\n"
        "203.0.113.66\n"
    )
    feed = Blocklist(listing, "drop")
    rejected: list[str] = []
    feed.on_rejected = lambda item: rejected.append(item.reason)  # type: ignore[method-assign]
    stats = await feed.run(node)
    assert (stats.accepted, stats.rejected) == (3, 1)
    assert len(rejected) == 1
    assert "value" in rejected[0]
    [stored] = node.store.query(value="192.0.2.0/24")
    assert stored.indicator.description == "SBL000001"
    assert set(stored.indicator.tags) == {"blocklist", "drop"}
    assert stored.providers == ("drop",)


def test_blocklist_line_parsing() -> None:
    assert parse_blocklist_line("# comment", "x") is None
    assert parse_blocklist_line("   ", "x") is None
    assert parse_blocklist_line("1.2.3.4", "x") == {"value": "1.2.3.4", "tags": ["blocklist", "x"]}


class _FakeNode:
    """Stands in for Node: records what would be published (no network, so a mock clock)."""

    def __init__(self) -> None:
        self.values: list[str] = []

    async def publish(self, indicators: list[object], *, tlp: object) -> int:
        self.values += [indicator.value for indicator in indicators]  # type: ignore[attr-defined]
        return len(indicators)


async def test_follow_file_publishes_appended_lines(tmp_path: Path, autojump_clock: object) -> None:
    node = _FakeNode()
    feed_file = tmp_path / "feed.jsonl"
    feed_file.write_text('{"value": "a.example.com"}\nb.example.com\n{"value": "c.exam')
    feed = FollowFile(feed_file, poll_s=1.0, stop_after_s=10.0)

    async def append_later() -> None:
        await trio.sleep(2.5)  # mock clock: after the second poll
        with feed_file.open("a") as appending:
            appending.write('ple.com"}\n# a comment\nnot a value\n')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append_later)
        stats = await feed.run(node)  # type: ignore[arg-type]
    # the half-written third line was published only once complete; the bad line rejected
    assert node.values == ["a.example.com", "b.example.com", "c.example.com"]
    assert (stats.accepted, stats.rejected) == (3, 1)
