"""A Redis pub/sub publisher or subscriber for ``bench/throughput.py``, run as its own process.

The same workload as the threatmesh nodes (``_workload``): each message is one encoded
``pb.Indicator`` of about 200 bytes, stamped with its publish time and phase.

Subscriber (``sub``): subscribes to ``--channel``, prints ``{"event": "ready"}``, then decodes
every message (``pb.Indicator.FromString``, as a threatmesh subscriber gets decoded
indicators) and counts it per phase. A message ``END <phase>`` makes it print that phase's
counts and latency histogram as one JSON line; ``END all`` makes it exit. Redis delivers a
channel's messages in the order it executed the PUBLISH commands, so once the publishers'
pipelines have been answered, an ``END`` published after them arrives after all of them.

Publisher (``pub``): prints ``{"event": "ready"}``, reads one JSON line from stdin (``start_at``
wall time, ``seconds``, ``count``, ``rate`` or null), then publishes up to ``count`` messages
for at most ``seconds``, pipelined ``--pipeline`` at a time: as fast as Redis answers
(``rate`` null), or paced at ``rate`` messages/s (one pipeline every ``TICK_S``). Prints what
it published as one JSON line and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis
from _workload import TIME_CHARS, IndicatorFactory, Reception

from threatmesh.pubsub.proto import threatmesh_pb2 as pb

TICK_S = 0.01
END_PREFIX = b"END "


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def subscribe(args: argparse.Namespace) -> None:
    client = redis.Redis(host="127.0.0.1", port=args.port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(args.channel)
    _say({"event": "ready"})  # the bench then waits until PUBSUB NUMSUB counts every one of us
    phases: dict[str, Reception] = {}
    current_phase = ""
    reception = Reception()
    for message in pubsub.listen():
        data = message["data"]
        if data.startswith(END_PREFIX):
            phase = data[len(END_PREFIX) :].decode()
            if phase == "all":
                return
            _say({"phase": phase, **phases.get(phase, Reception()).as_dict(with_hist=True)})
            continue
        now = time.time()
        description = pb.Indicator.FromString(data).description
        phase = description[TIME_CHARS + 1 : TIME_CHARS + 4]
        if phase != current_phase:
            current_phase = phase
            reception = phases.setdefault(phase, Reception())
        reception.add(now, float(description[:TIME_CHARS]))


def publish(args: argparse.Namespace) -> None:
    client = redis.Redis(host="127.0.0.1", port=args.port)
    client.ping()
    _say({"event": "ready"})
    command = json.loads(sys.stdin.readline())
    factory = IndicatorFactory(args.name, args.phase)
    time.sleep(max(0.0, command["start_at"] - time.time()))
    started = time.monotonic()
    deadline = started + command["seconds"]
    budget = int(command["count"])
    rate = command.get("rate")
    result = {"published": 0, "first_publish": 0.0, "last_publish": 0.0, "pipelines": 0}
    tick = 0
    owed = 0.0

    def send(count: int) -> None:
        sent = time.time()
        if not result["first_publish"]:
            result["first_publish"] = sent
        pipe = client.pipeline(transaction=False)
        for indicator in factory.make(count, sent):
            pipe.publish(args.channel, indicator.SerializeToString())
        pipe.execute()
        result["published"] += count
        result["pipelines"] += 1
        result["last_publish"] = time.time()

    while budget > 0 and time.monotonic() < deadline:
        if rate:
            tick += 1
            time.sleep(max(0.0, started + tick * TICK_S - time.monotonic()))
            owed += rate * TICK_S
            count = min(int(owed), budget)
            owed -= count
            while count > 0:  # a tick's messages, pipelined --pipeline at a time
                step = min(count, args.pipeline)
                send(step)
                count -= step
                budget -= step
        else:
            step = min(args.pipeline, budget)
            send(step)
            budget -= step
    _say(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("sub", "pub"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--channel", default="threatmesh-bench")
    parser.add_argument("--name", default="pub")
    parser.add_argument("--phase", default="max")
    parser.add_argument("--pipeline", type=int, default=100)
    arguments = parser.parse_args()
    subscribe(arguments) if arguments.role == "sub" else publish(arguments)
