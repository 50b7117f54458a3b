"""`kling-expand doctor`: credentials, reachability, clock skew, auth and the ledger."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import ExitStack
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests

from kling_expand_plugin.batch import ledger as ledger_module
from kling_expand_plugin.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    MAX_CLOCK_SKEW,
    UsageError,
    command,
    count,
    print_json,
)
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import DEFAULT_BASE_URL, EXPAND_PATH
from kling_expand_plugin.kling.errors import CredentialsError
from kling_expand_plugin.localserver import with_own_keys


def add_doctor(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    doctor = command(
        commands,
        common,
        "doctor",
        doctor_command,
        help="check credentials, clock, reachability and the ledger",
        description=(
            "Check what a run needs: credentials in the environment, the server reachable, "
            "our clock within 5 s of the server's (its Date header; tokens are refused "
            "otherwise), the credentials accepted, and the ledger's state. With --endpoint "
            "local, an embedded local server is started and checked instead."
        ),
        epilog="exit codes:\n  0  every check passed\n  1  some check failed\n  2  usage error",
    )
    doctor.add_argument(
        "--endpoint",
        default="local",
        help='"local" (default: an embedded local server) or a server URL such as '
        f"{DEFAULT_BASE_URL}",
    )
    doctor.add_argument("--ledger", help="the ledger file (default: the user data folder's)")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")


def doctor_command(args: argparse.Namespace) -> int:
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})

    with ExitStack() as stack:
        url, credentials = _doctor_target(args.endpoint, stack, check)
        if credentials is not None:
            _probe(url, credentials, check)
    if args.ledger and ledger_module.is_database_url(args.ledger):
        check("ledger", *_ledger_state(args.ledger))
    else:
        check("ledger", *_ledger_state(Path(args.ledger or ledger_module.default_path())))
    if args.json:
        print_json(checks)
    else:
        for entry in checks:
            print(f"{'OK' if entry['ok'] else 'FAIL':<5} {entry['check']:<12} {entry['detail']}")
    return EXIT_OK if all(entry["ok"] for entry in checks) else EXIT_FAILED


def _doctor_target(
    endpoint: str, stack: ExitStack, check: Callable[[str, bool, str], None]
) -> tuple[str, Credentials | None]:
    """The URL to probe and the credentials to probe it with (None: cannot probe)."""
    if endpoint == "local":
        server, credentials = with_own_keys(fill_method="fast")
        stack.enter_context(server)
        check("credentials", True, "not needed: an embedded local server with its own keys")
        return server.url, credentials
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint {endpoint!r} is not local or an http(s) URL")
    try:
        credentials = Credentials.from_env()
    except CredentialsError as exc:
        check("credentials", False, str(exc))
        return endpoint, None
    form = (
        "an API key (KLING_API_KEY)"
        if not credentials.can_refresh
        else (
            f"access key {_masked(credentials.access_key or '')} + secret key "
            "(KLING_ACCESS_KEY, KLING_SECRET_KEY)"
        )
    )
    check("credentials", True, form)
    return endpoint, credentials


def _probe(url: str, credentials: Credentials, check: Callable[[str, bool, str], None]) -> None:
    """One list query: reachable, clock skew from its Date header, credentials accepted."""
    started = time.time()
    try:
        response = requests.get(
            url.rstrip("/") + EXPAND_PATH,
            params={"pageNum": 1, "pageSize": 1},
            headers={"Authorization": f"Bearer {credentials.bearer_token()}"},
            timeout=(5.0, 15.0),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        reason = credentials.redact(str(exc))
        check("reachable", False, f"{url}: {type(exc).__name__}: {reason}")
        return
    ended = time.time()
    took = ended - started
    check("reachable", True, f"{url} answered HTTP {response.status_code} in {took:.2f} s")
    date = response.headers.get("Date")
    if date is None:
        check("clock", False, "the server sent no Date header; cannot measure the skew")
    else:
        server_time = parsedate_to_datetime(date).timestamp() + 0.5  # Date has whole seconds
        skew = (started + ended) / 2 - server_time
        ahead = "ahead of" if skew > 0 else "behind"
        detail = f"our clock is {abs(skew):.1f} s {ahead} the server's (at most {MAX_CLOCK_SKEW:g})"
        check("clock", abs(skew) <= MAX_CLOCK_SKEW + 0.5, detail)
    try:
        body = response.json()
        code = body.get("code")
        message = credentials.redact(str(body.get("message") or ""))
    except (ValueError, AttributeError):
        code, message = None, "the answer is not Kling's JSON"
    if code == 0:
        check("auth", True, "the server accepted the credentials")
    else:
        check("auth", False, f"refused: code {code}: {message}")


def _ledger_state(spec: str | Path) -> tuple[bool, str]:
    """(ok, description): the ledger opened as a run opens it (an older one is brought to this
    version's schema), its size and its tasks counted by status."""
    if not ledger_module.is_database_url(spec) and not Path(spec).exists():
        return True, f"{spec}: none yet (made by the first paid run)"
    try:
        ledger = ledger_module.open_ledger(spec)
    except ledger_module.LedgerError as error:
        return False, str(error)
    try:
        counts = ledger.counts()
    finally:
        ledger.close()
    listed = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    size = f"{Path(spec).stat().st_size / 1024:.1f} KB; " if isinstance(spec, Path) else ""
    in_doubt = counts.get(ledger_module.INTENT, 0)
    note = f"; {count(in_doubt, 'create')} in doubt: re-run that batch to settle them"
    note = note if in_doubt else ""
    return True, f"{ledger.path}: {size}{listed or 'no tasks'}{note}"


def _masked(key: str) -> str:
    return key[:4] + "..." if len(key) > 8 else "***"
