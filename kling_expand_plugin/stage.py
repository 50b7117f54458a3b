"""The `outpaint` stage: fit, plan, create, wait, download, and hand back one item per result."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import secrets
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

from PIL import Image, ImageColor

from hooks import Item, OptionError

from . import limits
from .auth import Credentials
from .client import DEFAULT_BASE_URL, ExpandRequest, KlingClient
from .errors import CredentialsError
from .geometry import Ratios, canvas_for
from .models import Task
from .plan import MAX_AREA, Plan, PlanError, Target, parse_anchor, parse_aspect, parse_size
from .prepare import (
    ANIMATED_POLICIES,
    DEFAULT_MAX_PIXELS,
    Decoded,
    FitError,
    FitOptions,
    Upload,
    encode_within_limit,
    prepare,
)
from .stitch import canvas_at_original, stitch
from .window import windowed_map

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "raise", "passthrough")
ORDERS = ("input", "completed")


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
        timeout: float = 6 * 3600,
        animated: str = "first",
        background: str | list[int] = "white",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_pixels: int | None = None,
        local_latency: float = 1.0,
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
        if order not in ORDERS:
            raise OptionError("order", f"{order!r} is not one of {', '.join(ORDERS)}")
        if on_error not in ON_ERROR:
            raise OptionError("on_error", f"{on_error!r} is not one of {', '.join(ON_ERROR)}")
        if animated not in ANIMATED_POLICIES:
            raise OptionError(
                "animated", f"{animated!r} is not one of {', '.join(ANIMATED_POLICIES)}"
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
        self.local_latency = _number("local_latency", local_latency, low=0.0)
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

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        with self._client() as client:
            results = windowed_map(
                lambda item: self._expand(client, item),
                items,
                window=self.concurrency // self.n,
                ordered=self.order == "input",
            )
            failed = 0
            for item, future in results:
                error = future.exception()
                if error is None:
                    yield from future.result()
                    continue
                failed += 1
                if self.on_error == "raise":
                    raise error
                log.error("outpaint: %s", _describe(item, error))
                if self.on_error == "passthrough":
                    item.metadata["outpaint"] = {"error": str(error)}
                    yield item
            if failed:
                log.error("outpaint: %d item(s) failed; see the errors above", failed)

    @contextlib.contextmanager
    def _client(self) -> Iterator[KlingClient]:
        """A client for the endpoint; for "local", an embedded server for the stage's lifetime."""
        if self.endpoint != "local":
            with KlingClient(self.endpoint, self.credentials, pool_size=self.concurrency) as client:
                yield client
            return
        from .localserver import LocalServer

        access_key, secret_key = secrets.token_hex(8), secrets.token_hex(16)
        server = LocalServer(
            access_key=access_key,
            secret_key=secret_key,
            latency=self.local_latency,
            concurrency=self.concurrency,
        )
        credentials = Credentials(access_key=access_key, secret_key=secret_key)
        with server, KlingClient(server.url, credentials, pool_size=self.concurrency) as client:
            log.info("outpaint: local Kling server at %s", server.url)
            yield client

    def _expand(self, client: KlingClient, item: Item) -> list[Item]:
        """The whole life of one item: prepare, plan, create, wait, download, stitch."""
        decoded, upload, plan = prepare(item, self.target, self.fit_options)
        if plan.is_empty:
            log.info("outpaint: %s already has the target shape; passed through", item.key)
            item.metadata["outpaint"] = {"skipped": "already the target shape"}
            return [item]
        if not plan.passes:
            log.warning("outpaint: %s: the target was reached by padding alone", item.key)
        variants, tasks = self._run_passes(client, item, upload, plan)
        stem = PurePosixPath(item.key).with_suffix("").as_posix()
        results = []
        for variant, expanded in enumerate(variants):
            image = stitch(expanded, plan, decoded, upload.scale)
            metadata = {
                **item.metadata,
                "variant": variant,
                "outpaint": _metadata(item, variant, plan, upload, tasks, decoded, image),
            }
            results.append(Item(f"{stem}-{variant}.png", _png(image), "image/png", metadata))
        return results

    def _run_passes(
        self, client: KlingClient, item: Item, upload: Upload, plan: Plan
    ) -> tuple[list[Image.Image], list[Task]]:
        """The last call's output for each variant (n from the first call, one call each after)."""
        if not plan.passes:
            return [Image.open(io.BytesIO(upload.data))], []
        tasks: list[Task] = []
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
                task = client.wait(client.create(request), timeout=self.timeout)
                tasks.append(task)
                log.info(
                    "outpaint: %s: pass %d/%d, task %s %s, %d image(s), %s unit(s)",
                    item.key,
                    number + 1,
                    len(plan.passes),
                    task.task_id,
                    task.status.value,
                    len(task.images),
                    task.units,
                )
                outputs += [_open(client.download(image.url)) for image in task.images]
            if number + 1 == len(plan.passes):
                return outputs, tasks
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


def _metadata(
    item: Item,
    variant: int,
    plan: Plan,
    upload: Upload,
    tasks: list[Task],
    decoded: Decoded,
    image: Image.Image,
) -> dict[str, Any]:
    content = (
        decoded.original.size
        if plan.crop is None
        else (round(plan.crop.width / upload.scale), round(plan.crop.height / upload.scale))
    )
    canvas = canvas_at_original(plan.canvas, upload.scale, content)
    return {
        "source_key": item.key,
        "variant": variant,
        "task_ids": [task.task_id for task in tasks],
        "external_task_ids": [task.external_task_id for task in tasks],
        "units": sum(task.units_value or 0.0 for task in tasks),
        "passes": [ratios.as_dict() for ratios in plan.passes],
        "size": list(image.size),
        "canvas": [canvas.width, canvas.height],
        "box": list(canvas.box.as_tuple()),
        "upload": {
            "width": upload.width,
            "height": upload.height,
            "format": upload.format,
            "scale": upload.scale,
            "crop": list(plan.crop.as_tuple()) if plan.crop else None,
            "pad": list(plan.pad),
            "canvas": [plan.canvas.width, plan.canvas.height],
            "box": list(plan.canvas.box.as_tuple()),
            "changes": list(upload.changes),
        },
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
    return f"item {item.key!r}: {type(error).__name__}: {error}"


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
