"""What the sub-commands share: exit codes, errors, inputs, logging and JSON output, the client
of a server URL. The stage's flags are `stage_flags.py`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from imgpipe import ConfigError, Item
from imgpipe.stages.load import load
from kling_expand_plugin.imaging.output import NAME_METADATA, Namer
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import KlingClient
from kling_expand_plugin.kling.errors import (
    AccountError,
    AuthError,
    CredentialsError,
    PermissionDeniedError,
    TransportError,
)
from kling_expand_plugin.outpaint.api import url_name
from kling_expand_plugin.outpaint.stage import CHECK_RETRY

DEFAULT_PORT = 8765


LOCAL_SERVE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
"""Where `kling-expand serve` listens by default: what `tasks --endpoint local` talks to."""


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


MAX_CLOCK_SKEW = 5.0
"""Seconds our clock may run ahead of the server's before its tokens are refused (`nbf`)."""


TYPICAL_TASK_SECONDS = 60.0
"""A task's typical time from create to result, for `plan`'s estimate (--task-seconds)."""


log = logging.getLogger(__name__)


EXIT_CODES = """exit codes:
  0    everything went through (every check passed, for doctor)
  1    some inputs failed, or the task failed or was not found; the rest was still done
  2    usage or configuration error (a bad option, a missing file, missing credentials)
  3    the endpoint could not be reached, or refused the credentials
  130  interrupted (Ctrl-C)"""


EXAMPLES = """examples:
  kling-expand expand photos/ --aspect 16:9 --area 2 --n 2 --out banners/
  kling-expand expand shot.jpg --size 1920x1080 --anchor left --endpoint URL --out out/
  kling-expand plan photos/ --aspect 16:9 --area max
  kling-expand ratios 100 100 --area 3 --aspect 16:9
  kling-expand tasks list --endpoint https://api-singapore.klingai.com
  kling-expand doctor
  kling-expand serve --port 8765

The real service needs KLING_ACCESS_KEY and KLING_SECRET_KEY (or KLING_API_KEY) in the
environment. `expand` uses the local server unless --endpoint names a URL, so nothing is paid
for by accident."""


class UsageError(Exception):
    """A command-line mistake: reported with the command's usage, exit 2."""


class Unreachable(Exception):
    """The endpoint did not answer, or refused the credentials: exit 3."""


def flag(option: str) -> str:
    """The command-line name of a stage option: `paths` is the INPUT argument."""
    return "INPUT" if option == "paths" else "--" + option.replace("_", "-")


def in_flags(message: str) -> str:
    """A stage's message with its `option 'name'` phrases said as flags."""
    return re.sub(r"option '(\w+)'", lambda match: flag(match.group(1)), message)


def add_global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """-v and -q, taken before the command's name or after it."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging; -vv for debug"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default or False, help="errors only"
    )


def command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    epilog: str = EXIT_CODES,
    usage: str | None = None,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        usage=usage,
        parents=[common],
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def input_items(inputs: list[str], exclude: Path | None = None) -> list[Item]:
    """Items for the files, folders, globs and URLs named (but none from `exclude`, the output
    folder, so results are never fed back in), each with its result name. Every file is
    handed on, whatever its extension: the stage decides what is an image."""
    try:
        stage = load(paths=inputs, exclude=[str(exclude)] if exclude else None)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    items: list[Item] = []
    keys: set[str] = set()
    names = Namer()
    for item in stage([]):
        if isinstance(item.image, Path):
            item.key = _safe_key(item.key)
        else:
            item.key = url_name(str(item.image))
        stem, suffix = os.path.splitext(item.key)
        tag = str(len(items))
        while item.key in keys:
            item.key = f"{stem}-{tag}{suffix}"
            tag += "-1"
        keys.add(item.key)
        item.metadata[NAME_METADATA] = names.name(item.key)
        items.append(item)
    if not items:
        raise UsageError(f"no files in {', '.join(inputs)}")
    return items


def _safe_key(key: str) -> str:
    """A key that, joined to --out, stays inside it (load keys some files by absolute path)."""
    parts = [part for part in PurePosixPath(Path(key).as_posix()).parts if part not in ("/", "..")]
    return PurePosixPath(*parts).as_posix() if parts else "image"


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def client_for(endpoint: str) -> KlingClient:
    """A client of `endpoint` with the environment's credentials and short retries; "local"
    is a `kling-expand serve` on its default port, and a server on this machine started
    without keys needs none."""
    url = LOCAL_SERVE_URL if endpoint == "local" else endpoint
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint {endpoint!r} is not local or an http(s) URL")
    try:
        # A command makes a few queries: the check's patience, not a batch's.
        return KlingClient(url, Credentials.from_env(), retry=CHECK_RETRY)
    except CredentialsError as missing:
        if not _is_loopback(url):
            raise
        client = KlingClient(url, Credentials("local", "no-keys-for-a-keyless-serve"))
        try:
            next(client.list(page_size=1), None)  # does this server take any token?
        except AuthError:
            raise missing from None
        return client


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


@contextmanager
def reaching(endpoint: str) -> Iterator[None]:
    """Turn "cannot reach" and "credentials or account refused" into Unreachable (exit 3)."""
    try:
        yield
    except TransportError as exc:
        raise Unreachable(f"cannot reach {endpoint}: {exc}") from None
    except (AuthError, AccountError, PermissionDeniedError) as exc:
        raise Unreachable(f"{endpoint} refused the request: {exc}") from None


def check_reachable(endpoint: str) -> None:
    """Before a paid batch: one free query, so that a bad URL or key stops it at once."""
    with client_for(endpoint) as client, reaching(endpoint):
        next(iter(client.list(page_size=1)), None)


_handler: logging.Handler | None = None


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr at the level -v / -q ask for (WARNING by default)."""
    global _handler
    levels = [logging.WARNING, logging.INFO, logging.DEBUG]
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_handler)
    root.setLevel(level)


@contextmanager
def logging_through(handler: logging.Handler) -> Iterator[None]:
    """Send log records to `handler` instead of the usual one while the block runs."""
    root = logging.getLogger()
    previous = _handler
    if previous is not None:
        root.removeHandler(previous)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if previous is not None:
            root.addHandler(previous)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
