"""The `outpaint` stage: fit, plan, create, wait, download, and hand back one item per result."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import functools
import io
import itertools
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageColor

from imgpipe import ConfigError, Failure, Item, OptionError
from imgpipe.encoding import EXTENSIONS
from imgpipe.stages.save import ESTIMATED_BYTES
from kling_expand_plugin.batch.ledger import (
    LedgerError,
    is_database_url,
    normalise_endpoint,
    open_ledger,
)
from kling_expand_plugin.batch.ledger import default_path as default_ledger_path
from kling_expand_plugin.batch.slots import Slots
from kling_expand_plugin.batch.taskrunner import Budget, BudgetReached, Outcome, TaskRunner
from kling_expand_plugin.batch.window import windowed_map
from kling_expand_plugin.imaging.decode import (
    ANIMATED_POLICIES,
    DEFAULT_MAX_PIXELS,
    Decoded,
    FitOptions,
    decode,
)
from kling_expand_plugin.imaging.geometry import Box, Canvas, Ratios, canvas_for
from kling_expand_plugin.imaging.output import (
    NAME_METADATA,
    OUTPUT_FORMATS,
    Namer,
    OutputFormat,
    Source,
    encode_result,
    estimated_bytes,
    result_key,
)
from kling_expand_plugin.imaging.plan import Plan, plan_expansion
from kling_expand_plugin.imaging.prepare import (
    Upload,
    encode_within_limit,
    prepare,
    prepare_as_sent,
)
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.stitch import mask_png, stitch
from kling_expand_plugin.imaging.target import (
    MAX_AREA,
    PlanError,
    Target,
    parse_anchor,
    parse_aspect,
    parse_size,
)
from kling_expand_plugin.kling import limits
from kling_expand_plugin.kling.auth import Credentials
from kling_expand_plugin.kling.client import ExpandRequest, KlingClient, RetryPolicy
from kling_expand_plugin.kling.download import DEFAULT_MAX_BYTES
from kling_expand_plugin.kling.errors import (
    AccountError,
    AuthError,
    CredentialsError,
    PermissionDeniedError,
    TransportError,
)

CHECK_RETRY = RetryPolicy(attempts=3, base_delay=0.5, deadline=30.0)
"""The check before any work: a few quick tries, not a batch's patience."""

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise", "passthrough")
RESULT_FIELDS = (
    "source_key",
    "variant",
    "variants",
    "unchanged",
    "task_ids",
    "external_task_ids",
    "units",
    "units_reused",
    "from_ledger",
    "passes",
    "canvas",
    "box",
    "mask",
    "preview",
    "upload",
)
"""The keys of every result's `metadata["outpaint"]`."""
URL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
ORDERS = ("input", "completed")
WEBHOOK_SECRET_ENV = "KLING_WEBHOOK_SECRET"
RESULT_PIXEL_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
"""The largest result Pillow decodes (past it, it refuses a file as a decompression bomb)."""


class OutpaintStage:
    """Expand every image of the stream with the Kling Image Expansion API.

    Built by the pipeline from its options (see the README); called with the upstream items,
    it yields one item per result image, with what was done in `metadata["outpaint"]`.
    """

    python_only_options = ("slots",)
    """Options a pipeline config cannot give: the host leaves them out of its lists."""

    def __init__(
        self,
        *,
        endpoint: str = "local",
        aspect: str | float | None = None,
        area: float | str | None = None,
        size: str | list[int] | None = None,
        ratios: list[float] | dict[str, float] | None = None,
        anchor: str | list[float] = "center",
        max_passes: int = 1,
        aspect_policy: str = "pad",
        n: int = 1,
        prompt: str = "",
        watermark: bool = False,
        concurrency: int = 4,
        order: str = "input",
        on_error: str = "skip",
        ledger: str = "auto",
        budget: float | Budget | None = None,
        callback: str | None = None,
        callback_url: str | None = None,
        timeout: float = 6 * 3600,
        blend: int = 8,
        colour_match: bool = False,
        animated: str = "first",
        background: str | list[int] = "white",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_pixels: int | None = None,
        local_latency: float = 1.0,
        format: str = "auto",
        quality: int = 92,
        png_compression: int = 1,
        retry_failed: bool = False,
        recreate_lost: bool | None = None,
        slots: Slots | None = None,
    ) -> None:
        try:
            self.target = Target(
                ratios=_ratios(ratios) if ratios is not None else None,
                aspect=parse_aspect(aspect) if aspect is not None else None,
                area=_area(area),
                size=parse_size(size) if size is not None else None,
                anchor=parse_anchor(anchor),
                max_passes=_whole("max_passes", max_passes, low=1, high=10),
                aspect_policy=aspect_policy,
            )
        except PlanError as exc:
            raise OptionError(exc.option or "aspect", str(exc)) from None
        if not isinstance(n, int) or not limits.MIN_N <= n <= limits.MAX_N:
            raise OptionError("n", f"{n!r} is not a whole number from 1 to 9")
        if not isinstance(prompt, str) or len(prompt) > limits.MAX_PROMPT_CHARS:
            raise OptionError("prompt", f"must be text of at most {limits.MAX_PROMPT_CHARS} chars")
        if not isinstance(concurrency, int) or concurrency < n:
            raise OptionError("concurrency", f"{concurrency!r} slots cannot run one task of n={n}")
        _one_of("order", order, ORDERS)
        _one_of("on_error", on_error, ON_ERROR)
        _one_of("animated", animated, ANIMATED_POLICIES)
        _one_of("format", format, OUTPUT_FORMATS)
        self.output = OutputFormat(
            format,
            _whole("quality", quality, low=1, high=100),
            _whole("png_compression", png_compression, low=0, high=9),
        )
        self.fit_options = FitOptions(
            animated=animated,
            background=_colour(background),
            max_pixels=_whole("max_pixels", max_pixels, low=limits.MIN_SIDE**2),
            max_upload_pixels=(
                _whole("max_upload_pixels", max_upload_pixels, low=limits.MIN_SIDE**2)
                if max_upload_pixels is not None
                else None
            ),
        )
        self.n, self.prompt, self.watermark = n, prompt, bool(watermark)
        self.concurrency, self.order, self.on_error = concurrency, order, on_error
        self.timeout = _number("timeout", timeout, low=1.0)
        self.blend = _whole("blend", blend, low=0, high=256)
        self.colour_match = bool(colour_match)
        # A number is one run's ceiling; a Budget object (Python callers, say a cluster's) is
        # shared by every run that is given it.
        self.budget = (
            budget if isinstance(budget, Budget | None) else _number("budget", budget, low=0.0)
        )
        self.local_latency = _number("local_latency", local_latency, low=0.0)
        self.retry_failed = bool(retry_failed)
        # Nothing is paid on the embedded server, whose tasks end with each run.
        self.recreate_lost = endpoint == "local" if recreate_lost is None else bool(recreate_lost)
        if slots is not None and not isinstance(slots, Slots):
            raise OptionError("slots", "is for Python callers only: a Slots object to share")
        self.slots = slots  # None: a pool of `concurrency` slots per run; else shared, say by Ray
        if not isinstance(ledger, str) or not ledger:
            raise OptionError(
                "ledger", 'give "auto", the path of a SQLite file or a postgresql:// URL'
            )
        self.ledger_path = ledger
        if ledger != "auto" and not is_database_url(ledger):
            try:  # a ledger that cannot be used is found before any work (and migrated)
                open_ledger(ledger).close()
            except LedgerError as exc:
                raise OptionError("ledger", str(exc)) from None
        self.callback = _address(callback) if callback is not None else None
        if callback_url is not None and not callback_url.startswith(("http://", "https://")):
            raise OptionError("callback_url", f"{callback_url!r} is not an http(s) URL")
        if callback_url is not None and callback is None:
            raise OptionError("callback_url", "goes with callback (the address to listen on)")
        self.callback_url = callback_url
        self.endpoint = endpoint
        if endpoint == "local":
            self.credentials = None
        elif not endpoint.startswith(("http://", "https://")):
            raise OptionError("endpoint", f'{endpoint!r} is not "local" or an http(s) URL')
        else:
            try:
                self.credentials = Credentials.from_env()
            except CredentialsError as exc:
                raise OptionError("endpoint", f"{endpoint} needs credentials: {exc}") from None
        self._counts = dict.fromkeys(("done", "failed", "skipped", "results"), 0)
        self._active: TaskRunner | None = None
        self._times = (0.0, 0.0)
        self._cancelled = threading.Event()
        self.cpu_workers = _cores()
        _return_large_buffers()
        self._cpu = threading.BoundedSemaphore(self.cpu_workers)

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
            from kling_expand_plugin.localserver import LocalServer

            access_key, secret_key = secrets.token_hex(8), secrets.token_hex(16)
            server = stack.enter_context(
                LocalServer(
                    access_key=access_key,
                    secret_key=secret_key,
                    latency=self.local_latency,
                    concurrency=self.concurrency,
                    webhook_secret=webhook_secret,
                )
            )
            log.info("outpaint: local Kling server at %s", server.url)
            credentials = Credentials(access_key=access_key, secret_key=secret_key)
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
                retry=RetryPolicy(retry_concurrency=False),
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
        names, previews = Namer(), []
        for item in items:
            name = str(item.metadata.get(NAME_METADATA) or names.name(item.key))
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

    def _expand(self, runner: TaskRunner, item: Item, name: str) -> list[Item]:
        """The whole life of one item: prepare, plan, run the calls, stitch.

        Decoding, fitting, stitching and encoding take one of the stage's few CPU workers;
        while its tasks run, an item holds its upload and its input file's bytes (or just its
        path), never decoded pixels, so memory is bounded by the CPU workers, not by the
        window of tasks.
        """
        with self._cpu_worker(runner):
            light = prepare_as_sent(item, self.target, self.fit_options)
            if light is not None and light[1].passes:  # a JPEG sent as it is: no pixels yet
                upload, plan = light
                source = item.replace(image=upload.data) if item.is_url else item
            else:
                decoded, upload, plan = prepare(item, self.target, self.fit_options)
                if plan.is_empty:
                    log.info("outpaint: %s already has the target shape; copied", item.key)
                    return [self._unchanged(item, name, decoded, upload, plan)]
                if not plan.passes:
                    log.warning("outpaint: %s: the target was reached by padding alone", item.key)
                    return self._stitched(item, name, decoded, upload, plan, [upload.data], [])
                source = item.replace(image=decoded.data) if item.is_url else item  # fetched once
                del decoded
            sizes = _pass_outputs(item.key, plan)  # refused here, before anything is paid
        variants, outcomes = self._run_passes(runner, item, upload, plan, sizes)
        with self._cpu_worker(runner):
            decoded = decode(source, self.fit_options)
            return self._stitched(item, name, decoded, upload, plan, variants, outcomes)

    @contextlib.contextmanager
    def _cpu_worker(self, runner: TaskRunner) -> Iterator[None]:
        with self._cpu:
            runner.check_cancelled()
            yield

    def _unchanged(
        self, item: Item, name: str, decoded: Decoded, upload: Upload, plan: Plan
    ) -> Item:
        """The result of an input already of the target shape: itself, upright, encoded as
        any result, with the same metadata keys."""
        data, extension, media_type = encode_result(
            _upright(decoded), Source.of(decoded.data), self.output, self.fit_options.background
        )
        width, height = decoded.original.size
        canvas = Canvas(width, height, Box(0, 0, width, height))
        metadata = self._metadata(
            item, 0, [], plan, upload, canvas, decoded.original, unchanged=True
        )
        return Item(result_key(name, 0, extension), data, media_type, metadata)

    def _stitched(
        self,
        item: Item,
        name: str,
        decoded: Decoded,
        upload: Upload,
        plan: Plan,
        variants: list[Path | bytes],
        outcomes: list[Outcome],
    ) -> list[Item]:
        """One result item per variant: the API's output stitched onto the original."""
        source = Source.of(decoded.data)
        results = []
        for variant, data in enumerate(variants):
            image, canvas = stitch(
                _open(data),
                plan,
                decoded,
                upload.scale,
                blend=self.blend,
                match_colour=self.colour_match,
            )
            encoded, extension, media_type = encode_result(
                image, source, self.output, self.fit_options.background
            )
            metadata = self._metadata(
                item, variant, outcomes, plan, upload, canvas, image, variants=len(variants)
            )
            key = result_key(name, variant, extension)
            results.append(Item(key, encoded, media_type, metadata))
        return results

    def _metadata(
        self,
        item: Item,
        variant: int,
        outcomes: list[Outcome],
        plan: Plan,
        upload: Upload,
        canvas: Canvas,
        image: Image.Image,
        *,
        variants: int = 1,
        unchanged: bool = False,
    ) -> dict[str, Any]:
        """A result's metadata: the same keys (RESULT_FIELDS) whatever happened to the input."""
        outpaint = {
            "source_key": item.key,
            "variant": variant,
            "variants": variants,
            "unchanged": unchanged,
            "task_ids": [outcome.task_id for outcome in outcomes],
            "external_task_ids": [outcome.external_id for outcome in outcomes],
            "units": sum(outcome.new_units for outcome in outcomes),
            "units_reused": sum((outcome.units or 0.0) - outcome.new_units for outcome in outcomes),
            "from_ledger": bool(outcomes) and all(outcome.from_ledger for outcome in outcomes),
            "passes": [ratios.as_dict() for ratios in plan.passes],
            "canvas": [canvas.width, canvas.height],
            "box": list(canvas.box.as_tuple()),
            "mask": mask_png(canvas),
            "preview": _preview(image),
            "upload": _upload_metadata(upload, plan),
        }
        assert set(outpaint) == set(RESULT_FIELDS)
        return {**item.metadata, "variant": variant, "outpaint": outpaint}

    def _run_passes(
        self,
        runner: TaskRunner,
        item: Item,
        upload: Upload,
        plan: Plan,
        sizes: list[tuple[int, int]],
    ) -> tuple[list[Path | bytes], list[Outcome]]:
        """The last call's output for each variant (n from the first call, one call each
        after), as the API sent them."""
        outcomes: list[Outcome] = []
        inputs = [upload.image_field()]
        for number, ratios in enumerate(plan.passes):
            outputs: list[Path | bytes] = []
            for image_field in inputs:
                request = ExpandRequest(
                    image=image_field,
                    ratios=ratios,
                    prompt=self.prompt,
                    n=self.n if number == 0 else 1,
                    watermark=self.watermark,
                )
                if number == 0:  # known by its content (a URL's, too); not decoded again
                    request = dataclasses.replace(
                        request,
                        external_task_id=ExpandRequest.external_id_for(
                            upload.data, ratios, self.prompt, request.n, self.watermark
                        ),
                    )
                outcome = runner.run(item.key, request, max_bytes=_result_bytes(sizes[number]))
                outcomes.append(outcome)
                log.debug(
                    "outpaint: %s: pass %d/%d, task %s, %d image(s), %s unit(s)",
                    item.key,
                    number + 1,
                    len(plan.passes),
                    outcome.task_id,
                    len(outcome.images),
                    outcome.units,
                )
                outputs += outcome.images
            if number + 1 == len(plan.passes):
                return outputs, outcomes
            with self._cpu_worker(runner):
                inputs = [_next_input(_open(output), sizes[number]) for output in outputs]
        raise AssertionError("unreachable: the loop returns after the last pass")


@functools.cache
def _return_large_buffers() -> None:
    """Have glibc give large freed buffers (decoded images: 144 MB for a 48 MP canvas) back
    to the system at once. By default it raises its mmap threshold after a large free and keeps
    later ones in its heaps, so a process's peak grows with the images it has seen, not with
    what is live (measured: 4 photos, 1756 MiB by default, 1423 MiB so)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


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


def _upright(decoded: Decoded) -> Image.Image:
    """The original as the result of an input already of the target shape: upright, with the
    colour profile it came with."""
    image = decoded.original
    if decoded.icc_profile is not None:
        image.info["icc_profile"] = decoded.icc_profile
    return image


def _pass_outputs(key: str, plan: Plan) -> list[tuple[int, int]]:
    """The nominal size of each pass's output; FitError, before any create, when one would be
    too large to download and decode."""
    sizes = []
    size = plan.upload_size
    for ratios in plan.passes:
        grown = canvas_for(*size, ratios)
        size = (grown.width, grown.height)
        if size[0] * size[1] > RESULT_PIXEL_LIMIT:
            raise FitError(
                key,
                f"a result of {size[0]} x {size[1]} pixels would be too large to decode",
                f"results of at most {RESULT_PIXEL_LIMIT:,} pixels (set max_upload_pixels)",
            )
        sizes.append(size)
    return sizes


def _result_bytes(size: tuple[int, int]) -> int:
    """The download cap of a result of this size: an uncompressed RGBA PNG and some."""
    return max(DEFAULT_MAX_BYTES, size[0] * size[1] * 4 + size[1] * 8 + (1 << 20))


def _next_input(output: Image.Image, size: tuple[int, int]) -> str:
    """A pass's output as the next pass's input: at its nominal size, or smaller when that
    cannot be encoded within 10 MB (the last pass's output is brought to size in `stitch`)."""
    if output.size != size:
        output = output.resize(size, Image.Resampling.LANCZOS)
    output = output.convert("RGB")
    while True:
        encoded = encode_within_limit(output, lossless=True)
        if encoded is not None:
            return base64.b64encode(encoded[0]).decode("ascii")
        smaller = (round(output.width * 0.8), round(output.height * 0.8))
        output = output.resize(smaller, Image.Resampling.LANCZOS)


def _upload_metadata(upload: Upload, plan: Plan) -> dict[str, Any]:
    return {
        "width": upload.width,
        "height": upload.height,
        "format": upload.format,
        "scale": upload.scale,
        "crop": list(plan.crop.as_tuple()) if plan.crop else None,
        "pad": list(plan.pad),
        "canvas": [plan.canvas.width, plan.canvas.height],
        "box": list(plan.canvas.box.as_tuple()),
        "changes": list(upload.changes),
    }


def _open(source: Path | bytes) -> Image.Image:
    image = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    image.load()
    return image


PREVIEW_SIZE = (512, 320)
"""The largest preview kept with a result: twice the report's thumbnail, made from the pixels
at hand so that the report need not decode the result again."""


def _preview(image: Image.Image) -> bytes:
    """A small JPEG of `image` (what the report shows)."""
    factor = max(1, min(image.width // PREVIEW_SIZE[0], image.height // PREVIEW_SIZE[1]))
    small = image.reduce(factor).convert("RGB")  # cheap: a box filter over whole blocks
    small.thumbnail(PREVIEW_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _describe(item: Item, error: BaseException) -> str:
    if isinstance(error, FitError):  # it names the item and the rule already
        return str(error)
    return f"item {item.key!r}: {error or type(error).__name__}"


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _address(value: str) -> tuple[str, int]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise OptionError("callback", f"{value!r} is not HOST:PORT, such as 0.0.0.0:8787")
    return host.strip("[]"), int(port)


def _area(value: float | str | None) -> float | str | None:
    if value is None or value == MAX_AREA:
        return value
    return _number("area", value, low=1.0, high=limits.MAX_AREA * 100)


def _whole(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"{value!r} is not a whole number")
    _number(name, value, low=low, high=high)
    return value


def _colour(value: str | list[int]) -> tuple[int, int, int]:
    try:
        if isinstance(value, str):
            return ImageColor.getrgb(value)[:3]
        red, green, blue = (int(part) for part in value)
    except (ValueError, TypeError):
        raise OptionError(
            "background", f"{value!r} is not a colour name, #rrggbb or [r, g, b]"
        ) from None
    return red, green, blue


def _number(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(name, f"{value!r} is not a number")
    if value < low or (high is not None and value > high):
        bounds = f"{low:g}..{high:g}" if high is not None else f"at least {low:g}"
        raise OptionError(name, f"{value!r} is outside {bounds}")
    return float(value)


def _ratios(value: list[float] | dict[str, float]) -> Ratios:
    sides = ("up", "down", "left", "right")
    if isinstance(value, dict) and set(value) <= set(sides):
        ratios = Ratios(*(value.get(side, 0.0) for side in sides))
    elif isinstance(value, list) and len(value) == 4:
        ratios = Ratios(*value)
    else:
        raise OptionError("ratios", "give [up, down, left, right] or a table of those keys")
    problems = ratios.problems()
    if problems:
        raise OptionError("ratios", "; ".join(problems))
    return ratios
