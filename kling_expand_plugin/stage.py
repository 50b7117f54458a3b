"""The `outpaint` stage: fit, plan, create, wait, download, and hand back one item per result."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, ImageColor

from hooks import Item, OptionError

from . import limits
from .auth import Credentials
from .client import DEFAULT_BASE_URL, ExpandRequest, KlingClient, RetryPolicy
from .errors import CredentialsError
from .geometry import Ratios, canvas_for
from .ledger import default_path as default_ledger_path
from .ledger import is_database_url, open_ledger
from .plan import MAX_AREA, Plan, PlanError, Target, parse_anchor, parse_aspect, parse_size
from .prepare import (
    ANIMATED_POLICIES,
    DEFAULT_MAX_PIXELS,
    FitError,
    FitOptions,
    Upload,
    encode_within_limit,
    prepare,
)
from .slots import Slots
from .stitch import generated_mask, stitch
from .taskrunner import BudgetReached, Outcome, TaskRunner
from .window import windowed_map

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise", "passthrough")
ORDERS = ("input", "completed")
WEBHOOK_SECRET_ENV = "KLING_WEBHOOK_SECRET"


class OutpaintStage:
    """Expand every image of the stream with the Kling Image Expansion API.

    Built by the pipeline from its options (see the README); called with the upstream items,
    it yields one item per result image, with what was done in `metadata["outpaint"]`.
    """

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_BASE_URL,
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
        budget: float | None = None,
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
        self.budget = _number("budget", budget, low=0.0) if budget is not None else None
        self.local_latency = _number("local_latency", local_latency, low=0.0)
        if slots is not None and not isinstance(slots, Slots):
            raise OptionError("slots", "is for Python callers only: a Slots object to share")
        self.slots = slots  # None: a pool of `concurrency` slots per run; else shared, say by Ray
        if not isinstance(ledger, str) or not ledger:
            raise OptionError(
                "ledger", 'give "auto", the path of a SQLite file or a postgresql:// URL'
            )
        self.ledger_path = ledger
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

    @property
    def summary(self) -> dict[str, Any]:
        """Counters of the run under way, or of the last one: items done, failed and skipped
        (budget), results handed on, units spent, tasks created, re-attached and read back
        from the ledger, slots in use now and at most, seconds. Safe to read from another
        thread, say for a progress bar."""
        runner = self._active
        started, ended = self._times
        return {
            **self._counts,
            "units": runner.tally.units if runner else 0.0,
            "created": runner.tally.created if runner else 0,
            "reattached": runner.tally.reattached if runner else 0,
            "from_ledger": runner.tally.from_ledger if runner else 0,
            "slots_in_use": runner.slots.in_use if runner else 0,
            "max_slots_in_use": runner.slots.max_in_use if runner else 0,
            "seconds": round((ended or time.monotonic()) - started, 3) if started else 0.0,
        }

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        counts = self._counts = dict.fromkeys(self._counts, 0)
        self._times = (time.monotonic(), 0.0)
        with contextlib.ExitStack() as stack:
            runner = self._active = self._runner(stack)
            tasks_at_once = self.concurrency // self.n
            results = windowed_map(
                lambda item: self._expand(runner, item),
                items,
                window=2 * tasks_at_once,  # the second half prepares and downloads meanwhile
                ordered=self.order == "input",
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
                    counts["skipped" if isinstance(error, BudgetReached) else "failed"] += 1
                    if self.on_error == "raise":
                        raise error
                    log.error("outpaint: %s", _describe(item, error))
                    if self.on_error == "passthrough":
                        item.metadata["outpaint"] = {"error": _describe(item, error)}
                        yield item
            finally:
                self._times = (self._times[0], time.monotonic())
                log.info(
                    "outpaint: %(done)d done, %(failed)d failed, %(skipped)d skipped "
                    "(budget), %(results)d results, %(units)g units, %(created)d tasks "
                    "created, %(from_ledger)d read back from the ledger, %(seconds).1f s",
                    self.summary,
                )
                if counts["failed"] or counts["skipped"]:
                    log.error(
                        "outpaint: %d item(s) failed and %d skipped; see the errors above",
                        counts["failed"],
                        counts["skipped"],
                    )

    def _runner(self, stack: contextlib.ExitStack) -> TaskRunner:
        """The client, ledger, receiver and slots of one run, closed by `stack` at its end."""
        webhook_secret = os.environ.get(WEBHOOK_SECRET_ENV) or None  # read now, kept nowhere
        if self.endpoint == "local":
            from .localserver import LocalServer

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
            credentials, url, endpoint_key = self.credentials, self.endpoint, self.endpoint
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
            from .receiver import CallbackReceiver

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
            budget=self.budget,
            receiver=receiver,
        )

    def _ledger_file(self, stack: contextlib.ExitStack) -> Path:
        if self.ledger_path != "auto":
            return Path(self.ledger_path)
        if self.endpoint == "local":  # nothing is paid, and the server's tasks end with the run
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kling-ledger-"))
            return Path(folder) / "ledger.sqlite"
        return default_ledger_path()

    def _expand(self, runner: TaskRunner, item: Item) -> list[Item]:
        """The whole life of one item: prepare, plan, run the calls, stitch."""
        decoded, upload, plan = prepare(item, self.target, self.fit_options)
        if plan.is_empty:
            log.info("outpaint: %s already has the target shape; passed through", item.key)
            item.metadata["outpaint"] = {"skipped": "already the target shape"}
            return [item]
        if not plan.passes:
            log.warning("outpaint: %s: the target was reached by padding alone", item.key)
        variants, outcomes = self._run_passes(runner, item, upload, plan)
        stem = PurePosixPath(item.key).with_suffix("").as_posix()
        results = []
        for variant, expanded in enumerate(variants):
            image, canvas = stitch(
                expanded,
                plan,
                decoded,
                upload.scale,
                blend=self.blend,
                match_colour=self.colour_match,
            )
            metadata = {
                **item.metadata,
                "variant": variant,
                "outpaint": {
                    "source_key": item.key,
                    "variant": variant,
                    "task_ids": [outcome.task_id for outcome in outcomes],
                    "external_task_ids": [outcome.external_id for outcome in outcomes],
                    "units": sum(outcome.units or 0.0 for outcome in outcomes),
                    "from_ledger": all(outcome.from_ledger for outcome in outcomes),
                    "passes": [ratios.as_dict() for ratios in plan.passes],
                    "canvas": [canvas.width, canvas.height],
                    "box": list(canvas.box.as_tuple()),
                    "mask": _png(generated_mask(canvas)),
                    "upload": _upload_metadata(upload, plan),
                },
            }
            results.append(Item(f"{stem}-{variant}.png", _png(image), "image/png", metadata))
        return results

    def _run_passes(
        self, runner: TaskRunner, item: Item, upload: Upload, plan: Plan
    ) -> tuple[list[Image.Image], list[Outcome]]:
        """The last call's output for each variant (n from the first call, one call each after)."""
        if not plan.passes:
            return [Image.open(io.BytesIO(upload.data))], []
        outcomes: list[Outcome] = []
        inputs = [upload.image_field()]
        size = plan.upload_size
        for number, ratios in enumerate(plan.passes):
            outputs = []
            for image_field in inputs:
                request = ExpandRequest(
                    image=image_field,
                    ratios=ratios,
                    prompt=self.prompt,
                    n=self.n if number == 0 else 1,
                    watermark=self.watermark,
                )
                outcome = runner.run(item.key, request)
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
                outputs += [_open(data) for data in outcome.images]
            if number + 1 == len(plan.passes):
                return outputs, outcomes
            grown = canvas_for(*size, ratios)
            size = (grown.width, grown.height)
            inputs = [_next_input(item.key, output, size) for output in outputs]
        raise AssertionError("unreachable: the loop returns after the last pass")


def _next_input(key: str, output: Image.Image, size: tuple[int, int]) -> str:
    """A pass's output as the next pass's input: at its nominal size, within 10 MB."""
    if output.size != size:
        output = output.resize(size, Image.Resampling.LANCZOS)
    encoded = encode_within_limit(output.convert("RGB"), lossless=True)
    if encoded is None:
        raise FitError(key, "an intermediate result cannot be encoded within 10 MB", "10 MB")
    return base64.b64encode(encoded[0]).decode("ascii")


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


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", icc_profile=image.info.get("icc_profile"))
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
