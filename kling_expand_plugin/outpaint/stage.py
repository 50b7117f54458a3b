"""The `outpaint` stage: its options checked and wired into one run's client, ledger, receiver
and slots; a bounded window of items through `expansion`, one item handed on per result."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from imgpipe import ConfigError, Failure, Item, OptionError
from imgpipe.encoding import EXTENSIONS
from imgpipe.stages.save import ESTIMATED_BYTES
from kling_expand_plugin.batch.budget import Budget, BudgetReached
from kling_expand_plugin.batch.ledger import (
    LedgerError,
    is_database_url,
    normalise_endpoint,
    open_ledger,
)
from kling_expand_plugin.batch.ledger import default_path as default_ledger_path
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.batch.taskrunner import TaskRunner
from kling_expand_plugin.batch.window import windowed_map
from kling_expand_plugin.imaging.decode import FitOptions
from kling_expand_plugin.imaging.memory import (
    return_large_buffers,
    reused_image_blocks,
)
from kling_expand_plugin.imaging.output import (
    NAME_METADATA,
    Namer,
    OutputFormat,
    estimated_bytes,
    result_key,
)
from kling_expand_plugin.imaging.plan import plan_expansion
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.target import PlanError, Target
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import KlingClient, RetryPolicy
from kling_expand_plugin.kling.errors import (
    AccountError,
    AuthError,
    CredentialsError,
    PermissionDeniedError,
    TransportError,
)
from kling_expand_plugin.outpaint import options as schema
from kling_expand_plugin.outpaint.expansion import RESULT_FIELDS, Expansion

CHECK_RETRY = RetryPolicy(attempts=3, base_delay=0.5, deadline=30.0)
"""The check before any work: a few quick tries, not a batch's patience."""

log = logging.getLogger(__name__)

URL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
WEBHOOK_SECRET_ENV = "KLING_WEBHOOK_SECRET"


class OutpaintStage:
    """Expand every image of the stream with the Kling Image Expansion API.

    Built by the pipeline from its options (`options.OPTIONS`, the README's table); called
    with the upstream items, it yields one item per result image, with what was done in
    `metadata["outpaint"]`.
    """

    python_only_options = tuple(option.name for option in schema.OPTIONS if option.python_only)
    """Options a pipeline config cannot give: the host leaves them out of its lists."""

    def __init__(self, **options: Any) -> None:
        """Keyword options as `options.OPTIONS` lists them (the signature shows them)."""
        values = schema.check_options(options)
        self._given = dict(options)
        try:
            self.target = Target(
                ratios=values["ratios"],
                aspect=values["aspect"],
                area=values["area"],
                size=values["size"],
                anchor=values["anchor"],
                max_passes=values["max_passes"],
                aspect_policy=values["aspect_policy"],
            )
        except PlanError as exc:
            raise OptionError(exc.option or "aspect", str(exc)) from None
        self.output = OutputFormat(values["format"], values["quality"], values["png_compression"])
        self.fit_options = FitOptions(
            animated=values["animated"],
            background=values["background"],
            max_pixels=values["max_pixels"],
            max_upload_pixels=values["max_upload_pixels"],
        )
        self.n: int = values["n"]
        self.concurrency: int = values["concurrency"]
        self.order: str = values["order"]
        self.on_error: str = values["on_error"]
        self.timeout: float = values["timeout"]
        self.attempts: int = values["attempts"]
        self.budget: float | Budget | None = values["budget"]
        self.local_latency: float = values["local_latency"]
        self.retry_failed: bool = values["retry_failed"]
        self.recreate_lost: bool = values["recreate_lost"]
        self.slots: Slots | None = values["slots"]  # None: `concurrency` slots per run
        self.ledger_path = ledger = values["ledger"]
        if ledger != "auto" and not is_database_url(ledger):
            try:  # a ledger that cannot be used is found before any work (and migrated)
                open_ledger(ledger).close()
            except LedgerError as exc:
                raise OptionError("ledger", str(exc)) from None
        self.callback, self.callback_url = values["callback"], values["callback_url"]
        self.endpoint = endpoint = values["endpoint"]
        self.credentials = None
        if endpoint != "local":
            try:
                self.credentials = Credentials.from_env()
            except CredentialsError as exc:
                raise OptionError("endpoint", f"{endpoint} needs credentials: {exc}") from None
        self._counts = dict.fromkeys(("done", "failed", "skipped", "results"), 0)
        self._active: TaskRunner | None = None
        self._times = (0.0, 0.0)
        self._cancelled = threading.Event()
        self.cpu_workers = _cores()
        return_large_buffers()
        self._expand = Expansion(
            target=self.target,
            fit_options=self.fit_options,
            output=self.output,
            n=self.n,
            prompt=values["prompt"],
            watermark=values["watermark"],
            blend=values["blend"],
            colour_match=values["colour_match"],
            cpu=threading.BoundedSemaphore(self.cpu_workers),
        )

    def __repr__(self) -> str:
        return f"OutpaintStage({schema.shown(self._given)})"

    def cancel(self) -> None:
        """Stop the run under way: no new inputs or tasks from now on, waits end at once, and
        tasks already created stay in the ledger for the next run. Safe from a signal handler
        or another thread."""
        self._cancelled.set()
        if self._active is not None:
            self._active.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` stopped the last run."""
        return self._cancelled.is_set()

    @property
    def summary(self) -> dict[str, Any]:
        """Counters of the run under way, or of the last one: items done, failed and skipped
        (budget), results handed on, units paid by this run and units of tasks reused (paid
        earlier, or shared by identical inputs), tasks created, re-attached and read back from
        the ledger, slots in use now and at most, seconds. Safe to read from another thread,
        say for a progress bar."""
        runner = self._active
        started, ended = self._times
        return {
            **self._counts,
            "units": runner.tally.units if runner else 0.0,
            "units_reused": runner.tally.units_reused if runner else 0.0,
            "created": runner.tally.created if runner else 0,
            "reattached": runner.tally.reattached if runner else 0,
            "from_ledger": runner.tally.from_ledger if runner else 0,
            "slots_in_use": runner.slots.in_use if runner else 0,
            "max_slots_in_use": runner.slots.max_in_use if runner else 0,
            "seconds": round((ended or time.monotonic()) - started, 3) if started else 0.0,
        }

    def __call__(self, items: Iterable[Item]) -> Generator[Item, None, None]:
        counts = self._counts = dict.fromkeys(self._counts, 0)
        self.failures: list[Failure] = []  # read by the host: each input that failed, and why
        self._times = (time.monotonic(), 0.0)
        self._cancelled.clear()
        with contextlib.ExitStack() as stack:
            runner = self._active = self._runner(stack)
            stack.enter_context(reused_image_blocks(self.cpu_workers))
            # The tasks the slots allow, plus an item per CPU worker being prepared or stitched.
            window = self.concurrency // self.n + self.cpu_workers
            names: dict[int, str] = {}
            results = windowed_map(
                lambda item: self._expand(runner, item, names.pop(id(item))),
                _named(itertools.takewhile(lambda _: not self._cancelled.is_set(), items), names),
                window=window,
                ordered=self.order == "input",
                reorder_limit=window,
            )
            try:
                for item, future in results:
                    error = future.exception()
                    if error is None:
                        counts["done"] += 1
                        for result in future.result():
                            counts["results"] += 1
                            yield result
                        continue
                    skipped = isinstance(error, BudgetReached)
                    counts["skipped" if skipped else "failed"] += 1
                    self.failures.append(Failure(item.key, _describe(item, error)))
                    if self.on_error == "raise":
                        raise error
                    log.error("outpaint: %s", _describe(item, error))
                    if self.on_error == "passthrough":
                        item.metadata["outpaint"] = {"error": _describe(item, error)}
                        if isinstance(error, BudgetReached):
                            item.metadata["outpaint"]["skipped"] = "budget"
                        yield item
            finally:
                runner.cancel()  # left early (error, break, close): stop the workers too
                self._times = (self._times[0], time.monotonic())
                log.info(
                    "outpaint: %(done)d done, %(failed)d failed, %(skipped)d skipped "
                    "(budget), %(results)d results, %(units)g units paid, %(units_reused)g "
                    "reused, %(created)d tasks created, %(reattached)d re-attached, "
                    "%(from_ledger)d read back from the ledger, %(seconds).1f s",
                    self.summary,
                )

    def _runner(self, stack: contextlib.ExitStack) -> TaskRunner:
        """The client, ledger, receiver and slots of one run, closed by `stack` at its end."""
        webhook_secret = os.environ.get(WEBHOOK_SECRET_ENV) or None  # read now, kept nowhere
        if self.endpoint == "local":
            from kling_expand_plugin.localserver import with_own_keys

            server, credentials = with_own_keys(
                latency=self.local_latency,
                concurrency=self.concurrency,
                webhook_secret=webhook_secret,
            )
            stack.enter_context(server)
            log.info("outpaint: local Kling server at %s", server.url)
            url, endpoint_key = server.url, "local"
        else:
            assert self.credentials is not None
            credentials, url = self.credentials, self.endpoint
            endpoint_key = normalise_endpoint(self.endpoint)
        client = stack.enter_context(
            KlingClient(
                url,
                credentials,
                pool_size=self.concurrency * 2,
                retry=RetryPolicy(attempts=self.attempts, retry_concurrency=False),
            )
        )
        ledger = open_ledger(
            self.ledger_path if is_database_url(self.ledger_path) else self._ledger_file(stack)
        )
        stack.callback(ledger.close)
        log.info("outpaint: ledger %s", ledger.path)
        receiver = None
        if self.callback is not None:
            from kling_expand_plugin.batch.receiver import CallbackReceiver

            host, port = self.callback
            receiver = stack.enter_context(
                CallbackReceiver(
                    host, port, public_url=self.callback_url, webhook_secret=webhook_secret
                )
            )
        return TaskRunner(
            client,
            ledger,
            endpoint_key,
            slots=self.slots if self.slots is not None else Slots(self.concurrency),
            timeout=self.timeout,
            budget=Budget(self.budget) if isinstance(self.budget, float) else self.budget,
            receiver=receiver,
            retry_failed=self.retry_failed,
            recreate_lost=self.recreate_lost,
        )

    def _ledger_file(self, stack: contextlib.ExitStack) -> Path:
        if self.ledger_path != "auto":
            return Path(self.ledger_path)
        if self.endpoint == "local":  # nothing is paid, and the server's tasks end with the run
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kling-ledger-"))
            return Path(folder) / "ledger.sqlite"
        return default_ledger_path()

    def check(self, items: list[Item] | None) -> None:
        """Before any work, as `kling-expand expand` does: a service's URL must answer one
        free query with these credentials (the local server needs none)."""
        if self.endpoint == "local":
            return
        assert self.credentials is not None
        try:
            with KlingClient(self.endpoint, self.credentials, retry=CHECK_RETRY) as client:
                next(iter(client.list(page_size=1)), None)
        except (TransportError, AuthError, AccountError, PermissionDeniedError) as exc:
            raise ConfigError(f"outpaint: endpoint {self.endpoint}: {exc}") from None

    def preview(self, items: list[Item]) -> list[Item]:
        """The items this stage would yield for `items` (keys and metadata fields, no image),
        for the host's checks before anything is paid for; reads only the files' headers."""
        names: dict[int, str] = {}
        previews = []
        for item in _named(items, names):  # named as the run will name them
            name = names[id(item)]
            try:
                extension, size = self.expected(item)
            except Exception:  # not an image: it will fail with its error, writing nothing
                continue
            for variant in range(self.n):
                outpaint = dict.fromkeys(RESULT_FIELDS) | {"source_key": item.key}
                outpaint["variant"] = variant
                metadata = {**item.metadata, "variant": variant, "outpaint": outpaint}
                metadata[ESTIMATED_BYTES] = size // self.n
                key = result_key(name, variant, extension)
                previews.append(Item(key, item.image, None, metadata))
        return previews

    def expected(self, item: Item) -> tuple[str, int]:
        """The file extension of an input's results and about how many bytes they take, from
        its header alone (a URL's from its name, its size unknown: 0 bytes); raises when a
        local input is not an image."""
        source_format, size = _header(item)
        pillow_format = self.output.pillow_format(source_format)
        pixels = 0
        if size is not None:
            try:
                canvas = plan_expansion(*size, self.target).canvas
                pixels = canvas.width * canvas.height
            except PlanError:
                pixels = int(size[0] * size[1] * limits.MAX_AREA)
        return EXTENSIONS[pillow_format], estimated_bytes(pixels, self.n, pillow_format)


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _named(items: Iterable[Item], names: dict[int, str]) -> Iterator[Item]:
    """The items, each given its result name in input order (see `output`)."""
    namer = Namer()
    for item in items:
        given = item.metadata.get(NAME_METADATA)
        names[id(item)] = str(given) if given and namer.take(str(given)) else namer.name(item.key)
        yield item


def _header(item: Item) -> tuple[str | None, tuple[int, int] | None]:
    """The input's format and size from its header; a URL is not fetched for this: its
    format is guessed from its name, its size unknown."""
    if item.is_url:
        suffix = PurePosixPath(urlsplit(str(item.image)).path).suffix.lower()
        return URL_FORMATS.get(suffix), None
    image_file = item.image if isinstance(item.image, Path) else io.BytesIO(item.read_bytes())
    with Image.open(image_file) as image:
        return image.format, image.size


def _describe(item: Item, error: BaseException) -> str:
    if isinstance(error, FitError):  # it names the item and the rule already
        return str(error)
    return f"item {item.key!r}: {error or type(error).__name__}"


OutpaintStage.__signature__ = schema.SIGNATURE  # type: ignore[attr-defined]
