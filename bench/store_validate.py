"""CPU per indicator of a node's receive path without the network: ``validate_batch`` and
``Store.add_batch``, each on its own, in one process.

Every node of a mesh runs both on every indicator it receives (the topic validator, then the
store), so their cost per indicator bounds what a node can relay on one core
(``bench/throughput.py`` measures the whole). This bench prepares ``--batches`` batches of
``--batch-size`` indicators of about 200 encoded bytes, serialised as they travel, then per
round:

- **parse**: ``pb.Batch.FromString`` of each batch (what the node does before either step;
  shown for scale, not ours to cut);
- **validate**: ``validate_batch`` of each parsed batch;
- **store, mixed**: ``add_batch`` of each batch into a fresh store, from three origins in turn.
  A ``--repeat`` share of each batch's indicators repeats values of earlier batches (with a
  later last_seen and one new tag), the rest are new values;
- **store, merges**: the same batches again from a fourth origin, so every indicator merges
  into an existing row.

Figures are µs per indicator: CPU time of this thread (``time.thread_time``, so the fsync
waits of ``synchronous=FULL`` are left out of "cpu") and wall time ("wall", fsyncs in). Each
is the best of ``--rounds`` rounds (the least disturbed by other load) and the median.

``--mix bench`` (default) is ``bench/throughput.py``'s workload (sha256 values, three tags, a
provider, a description); ``--mix feed`` mixes the common types (ipv4, fqdn, url, sha256,
md5, email) with references, like a real feed.

Run: ``python bench/store_validate.py [--batches 20] [--batch-size 2000] [--repeat 0.25]
[--mix bench|feed] [--rounds 3] [--json]``. Bounded: a fixed number of batches and rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from threatmesh.node.store import STORE_FILE_NAME, Store
from threatmesh.pubsub.indicators import validate_batch
from threatmesh.pubsub.proto import threatmesh_pb2 as pb

ORIGINS = tuple(f"16Uiu2HAmBench{letter * 39}" for letter in "ABC")
REPLAY_ORIGIN = "16Uiu2HAmBench" + "D" * 39
TARGET_INDICATOR_BYTES = 200
SEED = 4
MIXES = ("bench", "feed")


def _value(itype: int, number: int) -> str:
    digest = hashlib.sha256(number.to_bytes(8, "big")).hexdigest()
    if itype == pb.ITYPE_IPV4:
        return f"{10 + number % 200}.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
    if itype == pb.ITYPE_FQDN:
        return f"host-{digest[:10]}.example-{number % 97}.com"
    if itype == pb.ITYPE_URL:
        return f"https://cdn-{digest[:8]}.example.net/p/{digest[8:20]}?id={number}"
    if itype == pb.ITYPE_EMAIL:
        return f"user.{digest[:8]}@mail-{number % 31}.example.org"
    if itype == pb.ITYPE_MD5:
        return digest[:32]
    return digest


def _itypes(mix: str) -> list[int]:
    if mix == "bench":
        return [pb.ITYPE_SHA256]
    return [
        pb.ITYPE_IPV4,
        pb.ITYPE_FQDN,
        pb.ITYPE_URL,
        pb.ITYPE_SHA256,
        pb.ITYPE_MD5,
        pb.ITYPE_EMAIL,
    ]


def _indicator(itype: int, number: int, now_ms: int, mix: str, extra_tag: str) -> pb.Indicator:
    indicator = pb.Indicator(
        value=_value(itype, number),
        itype=itype,
        tlp=pb.TLP_CLEAR,
        confidence=50 + number % 50,
        tags=["bench", "malware", extra_tag],
        provider=f"feed-{number % 3}",
        first_seen_ms=now_ms - 3_600_000,
        last_seen_ms=now_ms - number % 1000,
    )
    if mix == "feed":
        indicator.references.append(f"https://reports.example.com/r/{number % 500}")
    description = f"{now_ms / 1000:.6f} max bench-{number % 3}"
    indicator.description = description
    missing = TARGET_INDICATOR_BYTES - indicator.ByteSize()
    if missing > 1:
        indicator.description = description + " " + "x" * (missing - 1)
    return indicator


def make_batches(
    count: int, size: int, repeat: float, mix: str, now_ms: int
) -> list[tuple[str, bytes]]:
    """``count`` serialised batches (origin, bytes); see the module docstring."""
    chooser = random.Random(SEED)
    itypes = _itypes(mix)
    issued: list[tuple[int, int]] = []  # (itype, number) of every new value so far
    batches: list[tuple[str, bytes]] = []
    for index in range(count):
        indicators: list[pb.Indicator] = []
        for position in range(size):
            if issued and chooser.random() < repeat:
                itype, number = chooser.choice(issued)
                tag = f"seen-again-{index}"
            else:
                itype, number = itypes[position % len(itypes)], len(issued)
                issued.append((itype, number))
                tag = f"campaign-{number % 40}"
            indicators.append(_indicator(itype, number, now_ms, mix, tag))
        batch = pb.Batch(seq=index // len(ORIGINS) + 1, sent_ms=now_ms, tlp=pb.TLP_CLEAR)
        batch.indicators.extend(indicators)
        batches.append((ORIGINS[index % len(ORIGINS)], batch.SerializeToString()))
    return batches


_Result = TypeVar("_Result")


def _timed(step: Callable[[], _Result]) -> tuple[_Result, float, float]:
    """``step()``, and the thread CPU seconds and wall seconds it took."""
    cpu_started, wall_started = time.thread_time(), time.perf_counter()
    result = step()
    return result, time.thread_time() - cpu_started, time.perf_counter() - wall_started


def run_round(batches: list[tuple[str, bytes]], directory: Path, now_ms: int) -> dict[str, float]:
    """Seconds of every step over all ``batches``: ``<step>_c`` CPU, ``<step>_w`` wall."""
    totals = dict.fromkeys(
        (f"{step}_{clock}" for step in ("parse", "validate", "store", "merge") for clock in "cw"),
        0.0,
    )

    def count(step: str, cpu: float, wall: float) -> None:
        totals[f"{step}_c"] += cpu
        totals[f"{step}_w"] += wall

    with Store.open(directory / STORE_FILE_NAME) as store:
        for origin, data in batches:
            parsed, cpu, wall = _timed(partial(pb.Batch.FromString, data))
            count("parse", cpu, wall)
            _, cpu, wall = _timed(
                partial(validate_batch, parsed, topic_tlp=pb.TLP_CLEAR, now_ms=now_ms)
            )
            count("validate", cpu, wall)
            _, cpu, wall = _timed(
                partial(
                    store.add_batch,
                    origin=origin,
                    seq=parsed.seq,
                    tlp=parsed.tlp,
                    indicators=parsed.indicators,
                    received_ms=now_ms,
                )
            )
            count("store", cpu, wall)
        # The same batches again from one more origin: every indicator merges into its row.
        for seq, (_, data) in enumerate(batches, start=1):
            parsed = pb.Batch.FromString(data)
            _, cpu, wall = _timed(
                partial(
                    store.add_batch,
                    origin=REPLAY_ORIGIN,
                    seq=seq,
                    tlp=parsed.tlp,
                    indicators=parsed.indicators,
                    received_ms=now_ms,
                )
            )
            count("merge", cpu, wall)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--repeat", type=float, default=0.25, help="share of repeated values")
    parser.add_argument("--mix", choices=MIXES, default="bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not (1 <= args.batches <= 1000 and 1 <= args.batch_size <= 10_000 and args.rounds >= 1):
        parser.error("--batches 1..1000, --batch-size 1..10000, --rounds >= 1")
    if not 0.0 <= args.repeat <= 1.0:
        parser.error("--repeat is a share from 0 to 1")
    now_ms = int(time.time() * 1000)
    batches = make_batches(args.batches, args.batch_size, args.repeat, args.mix, now_ms)
    indicators = args.batches * args.batch_size
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="threatmesh-bench-") as directory:
            rounds.append(run_round(batches, Path(directory), now_ms))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    result: dict[str, object] = {
        "batches": args.batches,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "mix": args.mix,
        "rounds": args.rounds,
        "encoded_bytes_per_indicator": sum(len(data) for _, data in batches) / indicators,
    }
    for key in rounds[0]:
        per_indicator_us = [figures[key] / indicators * 1e6 for figures in rounds]
        result[f"{key}_best_us"] = min(per_indicator_us)
        result[f"{key}_median_us"] = statistics.median(per_indicator_us)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.batches} batches x {args.batch_size} indicators ({args.mix}, "
        f"{result['encoded_bytes_per_indicator']:.0f} B each, {args.repeat:.0%} repeated), "
        f"{args.rounds} rounds; µs per indicator, best (median)"
    )
    labels = {
        "parse": "parse (FromString)",
        "validate": "validate_batch",
        "store": "add_batch, mixed",
        "merge": "add_batch, all merges",
    }
    print(f"{'step':<24}{'cpu':>18}{'wall':>18}")
    for step, label in labels.items():
        cells = [
            f"{result[f'{step}_{clock}_best_us']:8.2f} ({result[f'{step}_{clock}_median_us']:6.2f})"
            for clock in "cw"
        ]
        print(f"{label:<24}{cells[0]:>18}{cells[1]:>18}")


if __name__ == "__main__":
    main()
