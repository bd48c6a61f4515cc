"""The ``threatmesh`` command line.

Rules: results go to stdout (``--json`` where a command reports), logs to stderr. A user
mistake (bad path, address, key, config) prints one line ``threatmesh: error: ...`` and exits
2; a failure of the running system (node not running, network) exits 1. Never a traceback for
either.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from threatmesh.identity import (
    IdentityError,
    KeyType,
    TrustEntry,
    TrustError,
    TrustStore,
    level_name,
    parse_peer_id,
)
from threatmesh.identity.trust import MAX_TIME_MS
from threatmesh.node.client import ApiClient, get_json
from threatmesh.node.config import NodeConfig, load_config
from threatmesh.node.errors import ApiError, ConfigError, HomeError, NodeError
from threatmesh.node.home import Home, default_home
from threatmesh.node.logs import configure_logging, get_logger
from threatmesh.node.records import CSV_FIELDS, query_filters, stored_record
from threatmesh.node.store import Store
from threatmesh.pubsub.formats import FORMATS, to_stix_bundle
from threatmesh.pubsub.indicators import IndicatorError, iso_time, parse_tlp
from threatmesh.transports.errors import TransportError
from threatmesh.transports.libp2p_host import check_settings
from threatmesh.transports.swarm_key import generate_swarm_key, write_swarm_key

EXIT_FAILURE = 1
EXIT_USAGE = 2
# On SIGINT/SIGTERM the node gets this long to stop its services before the process exits.
SHUTDOWN_GRACE_S = 4.0

app = typer.Typer(
    name="threatmesh",
    help="A peer-to-peer node for sharing threat-intelligence indicators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = get_logger("threatmesh.cli")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Node home (default $THREATMESH_HOME, else ~/.threatmesh)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class UsageProblem(Exception):
    """A mistake in what the user asked for; exits 2."""


def _home(path: Path | None) -> Home:
    return Home(path.expanduser() if path is not None else default_home())


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, sort_keys=True))


@app.command()
def init(
    home: HomeOption = None,
    key_type: Annotated[
        KeyType, typer.Option("--key-type", help="Key type of a new identity.")
    ] = KeyType.SECP256K1,
    as_json: JsonOption = False,
) -> None:
    """Create the home: key pair, config and API token (keeps what exists). Prints the peer ID."""
    node_home = _home(home)
    identity, created = node_home.init(key_type)
    if as_json:
        _print_json(
            {
                "peer_id": identity.peer_id.to_base58(),
                "created": created,
                "home": str(node_home.path),
            }
        )
        return
    typer.echo(identity.peer_id.to_base58())
    verb = "created" if created else "already initialised"
    typer.echo(f"{node_home.path}: {verb}", err=True)


@app.command("id")
def show_id(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Print this node's peer ID."""
    identity = _home(home).identity()
    if as_json:
        _print_json({"peer_id": identity.peer_id.to_base58()})
    else:
        typer.echo(identity.peer_id.to_base58())


@app.command("swarm-key")
def swarm_key(
    out: Annotated[Path, typer.Option("--out", help="Where to write the new key (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a new private-swarm key in the kubo/go-ipfs swarm.key format."""
    write_swarm_key(out, generate_swarm_key(), overwrite=force)
    typer.echo(str(out))


@app.command()
def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Ask the running node for its status."""
    report = get_json(_home(home), "/v1/status")
    if as_json:
        _print_json(report)
        return
    typer.echo(f"peer id:  {report['peer_id']}")
    typer.echo(f"swarm:    {report['swarm']}")
    typer.echo(f"uptime:   {report['uptime_s']:.0f} s")
    typer.echo(f"peers:    {len(report['peers'])}")
    supernodes = report.get("supernodes") or {}
    roles = ", ".join(supernodes.get("roles", [])) or "none"
    typer.echo(f"roles:    {roles} ({len(supernodes.get('supernodes', []))} supernodes)")
    for addr in report["addrs"]:
        typer.echo(f"address:  {addr}")


@app.command()
def supernodes(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show the supernode set the running node follows, and every candidate with its reasons."""
    report = get_json(_home(home), "/v1/supernodes")
    if as_json:
        _print_json(report)
        return
    if not report["supernodes"]:
        typer.echo("supernodes: none yet")
    for peer_id in report["supernodes"]:
        typer.echo(f"supernode  {peer_id}")
    for candidate in report["candidates"]:
        state = "eligible" if candidate["eligible"] else "not eligible"
        typer.echo(f"candidate  {candidate['peer_id']}  score {candidate['score']:.3f}  {state}")
        for reason in candidate["reasons"]:
            typer.echo(f"           - {reason}")


@app.command()
def peers(
    home: HomeOption = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Then follow joins and leaves until interrupted.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the running node's connected peers; with --watch, follow membership events."""
    client = ApiClient(_home(home))
    report = client.get_json("/v1/status")
    if as_json:
        _print_json({"peers": report["peers"]})
    else:
        for peer_id in report["peers"]:
            typer.echo(peer_id)
    if not watch:
        return
    for event in client.stream_json_lines("/v1/events", []):
        if as_json:
            _print_json(event)
        else:
            detail = " ".join(event.get("addrs", []))
            typer.echo(
                f"{event['event']:<18} {event.get('peer_id', event.get('count', ''))} {detail}"
            )
        sys.stdout.flush()


@app.command()
def publish(
    source: Annotated[str, typer.Argument(help="File of indicators, or - for standard input.")],
    home: HomeOption = None,
    tlp: Annotated[str, typer.Option("--tlp", help="TLP level of these indicators.")] = "clear",
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, csv, stix or lines (a plain list).")
    ] = "jsonl",
    provider: Annotated[
        str, typer.Option("--provider", help="Provider for records that name none.")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Publish indicators through the running node; report accepted and rejected records."""
    if fmt not in FORMATS:
        raise UsageProblem(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    parse_tlp(tlp)  # refuse a bad level before reading anything
    text = _read_source(source)
    client = ApiClient(_home(home))
    result = client.post_text(
        "/v1/publish", text, {"tlp": tlp, "format": fmt, "provider": provider}
    )
    if as_json:
        _print_json(result)
        return
    typer.echo(f"accepted: {result['accepted']}")
    for rejected in result["rejected"]:
        typer.echo(f"rejected: line {rejected['line']}: {rejected['reason']}")


@app.command()
def tail(
    home: HomeOption = None,
    tlp: Annotated[
        list[str] | None, typer.Option("--tlp", help="Levels to follow (repeatable; default all).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    count: Annotated[
        int | None, typer.Option("--count", help="Stop after this many indicators.", min=1)
    ] = None,
) -> None:
    """Follow the live stream of indicators of the running node."""
    if fmt not in ("jsonl", "csv"):
        raise UsageProblem(f"--format: expected jsonl or csv, got {fmt!r}")
    for name in tlp or []:
        parse_tlp(name)
    client = ApiClient(_home(home))
    stream = client.stream_json_lines("/v1/stream", [("tlp", name) for name in tlp or []])
    writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, extrasaction="ignore")
    if fmt == "csv":
        writer.writeheader()
    for seen, record in enumerate(stream, start=1):
        if fmt == "csv":
            writer.writerow(_csv_row(record))
        else:
            typer.echo(json.dumps(record, sort_keys=True))
        sys.stdout.flush()
        if count is not None and seen >= count:
            break


@app.command()
def query(
    home: HomeOption = None,
    itype: Annotated[str | None, typer.Option("--itype", help="ipv4, fqdn, sha256, ...")] = None,
    value: Annotated[str | None, typer.Option("--value", help="Exact value.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Having this tag.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Last seen at or after (ISO 8601).")
    ] = None,
    tlp: Annotated[str | None, typer.Option("--tlp", help="Visible at this level.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many.", min=1)] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl, csv or stix (a STIX 2.1 bundle).")
    ] = "jsonl",
) -> None:
    """Read the node's store (whether or not the node runs)."""
    if fmt not in ("jsonl", "csv", "stix"):
        raise UsageProblem(f"--format: expected jsonl, csv or stix, got {fmt!r}")
    node_home = _home(home)
    node_home.require()
    filters = query_filters(itype=itype, value=value, tag=tag, since=since, tlp=tlp)
    store_path = node_home.store_file
    if not store_path.exists():
        raise UsageProblem(f"{store_path}: no store yet; run the node first")
    with Store.open(store_path) as store:
        rows = store.iter_query(**filters, limit=limit)
        if fmt == "stix":  # one bundle: the whole answer is held in memory (bound: --limit)
            typer.echo(to_stix_bundle(row.indicator for row in rows))
            return
        records = (stored_record(row) for row in rows)
        if fmt == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for record in records:
                writer.writerow(_csv_row(record))
        else:
            for record in records:
                typer.echo(json.dumps(record, sort_keys=True))


def _read_source(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    path = Path(source).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageProblem(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageProblem(f"{path}: is a directory") from None
    except UnicodeDecodeError:
        raise UsageProblem(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise UsageProblem(f"{path}: cannot read ({error.strerror})") from None


def _csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as a CSV row, lists joined as ``formats.to_csv`` does so the record columns
    read back with ``publish --format csv``: tags by commas, references and other lists
    (providers, origins) by spaces."""
    joiners = {"tags": ","}
    row = dict(record)
    for key, value in record.items():
        if isinstance(value, list):
            row[key] = joiners.get(key, " ").join(value)
        elif value is None:
            row[key] = ""
    return row


trust_app = typer.Typer(
    help="Edit whom this node trusts (<home>/trust.json); a running node picks changes up.",
    no_args_is_help=True,
)
app.add_typer(trust_app, name="trust")

# --expires: a number and a unit.
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


@trust_app.command("add")
def trust_add(
    peer_id: Annotated[str, typer.Argument(help="The peer to trust (its peer ID).")],
    level: Annotated[
        str,
        typer.Argument(help="Highest TLP level it may receive: green, amber, amber+strict, red."),
    ],
    home: HomeOption = None,
    note: Annotated[str, typer.Option("--note", help="Who this is, for humans.")] = "",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="Trust for this long only: 30d, 12h, 90m, 2w, 3600s."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Trust a peer up to a TLP level (replaces its entry if it has one)."""
    try:
        tlp = parse_tlp(level)
    except IndicatorError as error:
        raise UsageProblem(f"LEVEL: {error.problem}") from None
    now_ms = _now_ms()
    expires_ms = None if expires is None else now_ms + _duration_ms(expires)
    if expires_ms is not None and expires_ms > MAX_TIME_MS:
        raise UsageProblem(f"--expires: {expires} is past the year 9999")
    node_home = _home(home)
    node_home.require()
    entry = TrustStore(node_home.trust_file).add(
        peer_id.strip(), tlp, note, expires_ms, now_ms=now_ms
    )
    if as_json:
        _print_json(_trust_record(entry))
        return
    until = "" if entry.expires_ms is None else f" until {iso_time(entry.expires_ms)}"
    typer.echo(f"trusted {entry.peer_id} at {level_name(entry.level)}{until}")


@trust_app.command("remove")
def trust_remove(
    peer_id: Annotated[str, typer.Argument(help="The peer to trust no more.")],
    home: HomeOption = None,
) -> None:
    """Take a peer's explicit trust away (vouches may still make it GREEN)."""
    node_home = _home(home)
    node_home.require()
    if not TrustStore(node_home.trust_file).remove(peer_id.strip()):
        raise UsageProblem(f"{peer_id.strip()}: not in {node_home.trust_file}")
    typer.echo(f"removed {peer_id.strip()}")


@trust_app.command("list")
def trust_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List the trusted peers, expired entries included (marked)."""
    node_home = _home(home)
    node_home.require()
    entries = TrustStore(node_home.trust_file).load().entries
    if as_json:
        _print_json({"trust": [_trust_record(entry) for entry in entries]})
        return
    if not entries:
        typer.echo(f"{node_home.trust_file}: no trusted peers", err=True)
        return
    now_ms = _now_ms()
    rows = [("PEER ID", "LEVEL", "SINCE", "EXPIRES", "NOTE")]
    for entry in entries:
        record = _trust_record(entry)
        expiry = record["expires"] or "never"
        if not entry.is_live(now_ms):
            expiry += " (expired)"
        rows.append((entry.peer_id, record["level"], record["since"] or "-", expiry, entry.note))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        typer.echo("  ".join([*cells, row[4]]).rstrip())


def _trust_record(entry: TrustEntry) -> dict[str, Any]:
    """An entry as ``trust list --json`` shows it; since is null when the file has no time."""
    return {
        "peer_id": entry.peer_id,
        "level": level_name(entry.level),
        "note": entry.note,
        "since": iso_time(entry.since_ms) if entry.since_ms else None,
        "expires": None if entry.expires_ms is None else iso_time(entry.expires_ms),
    }


def _duration_ms(text: str) -> int:
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise UsageProblem(f"--expires: expected a duration like 30d, 12h or 90m, got {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@app.command()
def vouch(
    peer_id: Annotated[str, typer.Argument(help="The peer to vouch for.")],
    level: Annotated[
        str, typer.Argument(help="Level named in the vouch; it earns GREEN at most.")
    ] = "green",
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="The vouch lasts this long (default 7d, at most 30d)."),
    ] = None,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Revoke this node's vouch for the peer instead.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Vouch for a peer (signed, announced on the control topic), or --revoke the vouch.

    Needs the running node. A peer earns GREEN at a node once enough peers that node trusts at
    GREEN or higher vouch for it (``green_vouches_required``); vouches never give more.
    """
    try:
        parse_peer_id(peer_id.strip())
    except ValueError as error:
        raise UsageProblem(str(error)) from None
    body: dict[str, Any] = {"peer_id": peer_id.strip(), "revoke": revoke}
    if not revoke:
        body["level"] = level_name(parse_tlp(level))
        if expires is not None:
            body["lifetime_ms"] = _duration_ms(expires)
    result = ApiClient(_home(home)).post_json("/v1/vouch", body)
    if as_json:
        _print_json(result)
    elif revoke:
        typer.echo(f"revoked the vouch for {result['subject']}")
    else:
        typer.echo(
            f"vouched for {result['subject']} at {level_name(result['level'])} "
            f"until {iso_time(result['expires_ms'])}"
        )


@app.command()
def demo(
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to start.", min=2, max=30)] = 5,
    publishers: Annotated[int, typer.Option("--publishers", help="Nodes that publish.", min=1)] = 3,
    per_level: Annotated[
        int, typer.Option("--per-level", help="Indicators per publisher and level.", min=1)
    ] = 4,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after (s).", min=1)] = 60,
    as_json: JsonOption = False,
) -> None:
    """Start a small swarm on 127.0.0.1, publish at every TLP level, show arrivals live."""
    from threatmesh.node.demo import run_demo

    configure_logging("warning")
    started = time.monotonic()

    def show(node_name: str, record: Mapping[str, Any]) -> None:
        if as_json:
            return
        elapsed = time.monotonic() - started
        typer.echo(
            f"{elapsed:6.2f}s  {node_name:>8} <- {record['tlp']:<12} {record['itype']:<6} "
            f"{record['value']}  (from ...{record['origin'][-6:]})"
        )

    if not as_json:
        typer.echo(
            f"starting {nodes} nodes on 127.0.0.1: node-0..node-{nodes - 2} trust each other "
            f"at RED; node-{nodes - 1} is a newcomer nobody trusts, so it sees CLEAR only ...",
            err=True,
        )
    result = trio.run(
        partial(
            run_demo,
            nodes=nodes,
            publishers=min(publishers, nodes),
            per_level=per_level,
            timeout_s=timeout,
            on_arrival=show,
        )
    )
    summary = result.summary()
    if as_json:
        _print_json(summary)
    else:
        typer.echo(
            f"{summary['deliveries']}/{summary['expected_deliveries']} deliveries of "
            f"{summary['published']} indicators to {nodes} nodes in {summary['seconds']} s; "
            f"latency p50 {summary['latency_ms_p50']} ms, p99 {summary['latency_ms_p99']} ms; "
            f"above CLEAR at the newcomer: {summary['leaks']}"
        )
    if not summary["complete"]:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def run(
    home: HomeOption = None,
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", help="Listen multiaddr (repeatable). Default: TCP+QUIC :4001."),
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option("--bootstrap", help="Peer multiaddr with /p2p/ to dial (repeatable)."),
    ] = None,
    swarm: Annotated[str | None, typer.Option("--swarm", help="Swarm name.")] = None,
    psk: Annotated[
        Path | None, typer.Option("--psk", help="Private-swarm key file (swarm.key format).")
    ] = None,
    api: Annotated[str | None, typer.Option("--api", help="Local API HOST:PORT.")] = None,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-text", help="Log JSON lines.")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug|info|...")] = None,
    mdns: Annotated[
        bool | None, typer.Option("--mdns/--no-mdns", help="LAN beacon (default on).")
    ] = None,
    dht_mode: Annotated[
        str | None, typer.Option("--dht-mode", help="auto, server or client.")
    ] = None,
) -> None:
    """Run a node in the foreground until SIGINT or SIGTERM."""
    node_home = _home(home)
    config = load_config(node_home.config_file).with_overrides(
        listen=tuple(listen) if listen else None,
        bootstrap=tuple(bootstrap) if bootstrap else None,
        swarm=swarm,
        psk_file=str(psk.expanduser().resolve()) if psk is not None else None,
        api=api,
        log_json=log_json,
        log_level=log_level,
        mdns=mdns,
        dht_mode=dht_mode,
    )
    from threatmesh.node.node import host_settings  # the heavy imports only for `run`

    # Refuse a bad key file or an impossible transport before anything is created or bound.
    check_settings(host_settings(config, node_home))
    configure_logging(config.log_level, config.log_json)
    _, created = node_home.init(KeyType(config.key_type))
    if created:
        log.info("created a new identity", home=str(node_home.path))
    trio.run(_run_node, config, node_home)


async def _run_node(config: NodeConfig, home: Home) -> None:
    from threatmesh.node.node import Node

    node = Node(config, home)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            for addr in node.addrs:
                typer.echo(addr)
            log.info("local API listening", url=node.api_url)
            sys.stdout.flush()
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                break
            nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
            nursery.cancel_scope.cancel()


# Errors that are the user's to fix: exit 2 with one line.
USER_ERRORS: tuple[type[Exception], ...] = (
    UsageProblem,
    IndicatorError,
    ConfigError,
    HomeError,
    IdentityError,
    TrustError,
    TransportError,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every known error into one line and an exit code."""
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.TyperException as error:  # click's usage errors (exit code 2) and others
        message = error.format_message()
        if "\n" in message:  # `threatmesh` alone: the help text, as it is
            typer.echo(message, err=True)
        else:
            typer.echo(f"threatmesh: error: {message}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        sys.exit(EXIT_FAILURE)
    except USER_ERRORS as error:
        typer.echo(f"threatmesh: error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    except (ApiError, NodeError) as error:
        typer.echo(f"threatmesh: error: {error}", err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
