"""`kling-expand serve`: the local Kling-compatible server until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
from collections.abc import Callable
from types import FrameType

from kling_expand_plugin.cli.common import (
    DEFAULT_PORT,
    EXIT_OK,
    UsageError,
    command,
)
from kling_expand_plugin.imaging.fill import METHODS
from kling_expand_plugin.localserver import LocalServer
from kling_expand_plugin.localserver.faults import FAULTS
from kling_expand_plugin.localserver.server import MAX_CONNECTIONS, QUERY_SHAPES


def add_serve(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    fault_lines = "\n".join(f"  {name:17} {what}" for name, what in FAULTS.items())
    serve = command(
        commands,
        common,
        "serve",
        serve_command,
        help="run the local Kling-compatible server",
        description=(
            "Run the local Kling-compatible server until Ctrl-C or SIGTERM. The first line "
            "printed is 'listening on http://HOST:PORT'. Keys come from the flags or from "
            "KLING_ACCESS_KEY / KLING_SECRET_KEY / KLING_API_KEY; with none, any bearer token "
            "is accepted (a warning says so)."
        ),
        epilog=f"faults (--fault NAME=RATE, RATE in 0..1):\n{fault_lines}",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument("--access-key", default=os.environ.get("KLING_ACCESS_KEY"))
    serve.add_argument(
        "--secret-key",
        default=os.environ.get("KLING_SECRET_KEY"),
        help="prefer the KLING_SECRET_KEY environment variable (flags show in process lists)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="an accepted API key (repeatable; also KLING_API_KEY)",
    )
    serve.add_argument(
        "--latency",
        type=latency,
        default=1.0,
        help="seconds from submitted to the end: S, or MIN-MAX for a uniform draw (default 1)",
    )
    serve.add_argument("--concurrency", type=int, default=10, help="account slots (default 10)")
    serve.add_argument(
        "--fault",
        action="append",
        type=fault,
        default=[],
        metavar="NAME=RATE",
        help="switch a fault on (repeatable; names below)",
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of faults and variations")
    serve.add_argument("--fill", choices=METHODS, default="mirror-fade", help="fill method")
    serve.add_argument("--result-ttl", type=float, default=3600.0, help="seconds results live")
    serve.add_argument("--rate-limit", type=int, default=None, help="requests per second (1302)")
    serve.add_argument(
        "--slow-create-delay", type=float, default=30.0, help="seconds the slow-create fault waits"
    )
    serve.add_argument(
        "--accept-reused-ids",
        action="store_true",
        help="a reused external_task_id makes a new paid task instead of error 1201 (for tests)",
    )
    serve.add_argument(
        "--query-shape",
        choices=QUERY_SHAPES,
        default="object",
        help="data of the single-task query: the task object, as clients read it (default), or "
        "a list of one task, as the documentation's example shows",
    )
    serve.add_argument(
        "--max-connections",
        type=connections,
        default=MAX_CONNECTIONS,
        help=f"connections served at once, one thread each; more get 5001 (default "
        f"{MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--webhook-secret",
        default=os.environ.get("KLING_WEBHOOK_SECRET"),
        help="sign callbacks with this whsec_ secret (also KLING_WEBHOOK_SECRET)",
    )


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until interrupted."""
    api_keys = list(args.api_key)
    if not api_keys and os.environ.get("KLING_API_KEY"):
        api_keys.append(os.environ["KLING_API_KEY"])
    if (args.access_key is None) != (args.secret_key is None):
        raise UsageError("--access-key and --secret-key go together")
    server = LocalServer(
        args.host,
        args.port,
        access_key=args.access_key,
        secret_key=args.secret_key,
        api_keys=api_keys,
        latency=args.latency,
        concurrency=args.concurrency,
        seed=args.seed,
        fill_method=args.fill,
        result_ttl=args.result_ttl,
        faults=dict(args.fault),
        webhook_secret=args.webhook_secret,
        rate_limit=args.rate_limit,
        slow_create_delay=args.slow_create_delay,
        accept_reused_ids=args.accept_reused_ids,
        query_shape=args.query_shape,
        max_connections=args.max_connections,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        print(f"listening on {server.url}", flush=True)
        if server.auth.is_open:
            print("warning: no keys configured, accepting any bearer token", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def latency(text: str) -> float | Callable[[random.Random], float]:
    low, sep, high = text.partition("-")
    try:
        if not sep:
            return _non_negative(float(text))
        low_value, high_value = _non_negative(float(low)), _non_negative(float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"latency {text!r} is not S or MIN-MAX seconds") from None
    return lambda rng: rng.uniform(low_value, high_value)


def connections(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of connections >= 1")
    return int(text)


def _non_negative(value: float) -> float:
    if not value >= 0:
        raise ValueError(value)
    return value


def fault(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep or name not in FAULTS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=RATE, NAME one of the faults")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: RATE must be a number in 0..1") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: RATE must be in 0..1")
    return name, value
