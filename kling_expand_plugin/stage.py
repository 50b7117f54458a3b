"""The `outpaint` stage: fit, plan, create, wait, download, and hand back one item per result."""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

from hooks import Item, OptionError

from . import limits
from .auth import Credentials
from .client import DEFAULT_BASE_URL, ExpandRequest, KlingClient
from .errors import CredentialsError
from .geometry import Ratios
from .plan import Plan, PlanError, parse_aspect, plan_expansion
from .prepare import FitError, Upload, prepare
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
        area: float | None = None,
        ratios: list[float] | dict[str, float] | None = None,
        n: int = 1,
        prompt: str = "",
        watermark: bool = False,
        concurrency: int = 4,
        order: str = "input",
        on_error: str = "skip",
        timeout: float = 6 * 3600,
        local_latency: float = 1.0,
    ) -> None:
        self.aspect = _option("aspect", parse_aspect, aspect) if aspect is not None else None
        self.area = _number("area", area, low=1.0, high=limits.MAX_AREA) if area else None
        self.ratios = _ratios(ratios) if ratios is not None else None
        if (self.ratios is None) == (self.aspect is None):
            raise OptionError("aspect", "give exactly one of aspect (with optional area) or ratios")
        if self.area is not None and self.aspect is None:
            raise OptionError("area", "area goes with aspect")
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
                log.error(
                    "outpaint: %s", error if isinstance(error, FitError) else _describe(item, error)
                )
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
        with (
            server,
            KlingClient(
                server.url,
                Credentials(access_key=access_key, secret_key=secret_key),
                pool_size=self.concurrency,
            ) as client,
        ):
            log.info("outpaint: local Kling server at %s", server.url)
            yield client

    def plan(self, upload: Upload) -> Plan:
        """The expansion plan for an upload of this size."""
        return plan_expansion(
            upload.width, upload.height, aspect=self.aspect, area=self.area, ratios=self.ratios
        )

    def _expand(self, client: KlingClient, item: Item) -> list[Item]:
        """The whole life of one item: prepare, plan, create, wait, download."""
        upload = prepare(item)
        try:
            plan = self.plan(upload)
        except PlanError as exc:
            raise FitError(item.key, str(exc), "the API's expansion limits") from None
        if plan.is_empty:
            log.info("outpaint: %s already has the target shape; passed through", item.key)
            item.metadata["outpaint"] = {"skipped": "already the target shape"}
            return [item]
        image_field = upload.as_base64()
        request = ExpandRequest(
            image=image_field,
            ratios=plan.ratios,
            prompt=self.prompt,
            n=self.n,
            watermark=self.watermark,
            external_task_id=ExpandRequest.external_id_for(
                upload.data, plan.ratios, self.prompt, self.n, self.watermark
            ),
        )
        task = client.wait(client.create(request), timeout=self.timeout)
        log.info(
            "outpaint: %s: task %s %s, %d image(s), %s unit(s)",
            item.key,
            task.task_id,
            task.status.value,
            len(task.images),
            task.units,
        )
        stem = PurePosixPath(item.key).with_suffix("").as_posix()
        results = []
        for image in task.images:
            data = client.download(image.url)
            data = _to_canvas(data, plan, upload)
            metadata = {
                **item.metadata,
                "variant": image.index,
                "outpaint": {
                    "source_key": item.key,
                    "variant": image.index,
                    "task_id": task.task_id,
                    "external_task_id": task.external_task_id,
                    "ratios": plan.ratios.as_dict(),
                    "canvas": [plan.canvas.width, plan.canvas.height],
                    "box": list(plan.canvas.box.as_tuple()),
                    "units": task.units,
                    "upload": {
                        "width": upload.width,
                        "height": upload.height,
                        "format": upload.format,
                        "scale": upload.scale,
                        "changes": list(upload.changes),
                    },
                },
            }
            results.append(Item(f"{stem}-{image.index}.png", data, "image/png", metadata))
        return results


def _to_canvas(data: bytes, plan: Plan, upload: Upload) -> bytes:
    """The result as PNG at exactly the planned canvas, the upload's pixels in their box.

    The API does not document that the result has exactly the nominal size, nor that the
    original's pixels come back unchanged; this makes both true whatever it returns.
    """
    canvas = plan.canvas
    with Image.open(io.BytesIO(data)) as result:
        fitted = result.convert("RGB")
    if fitted.size != (canvas.width, canvas.height):
        fitted = fitted.resize((canvas.width, canvas.height), Image.Resampling.LANCZOS)
    with Image.open(io.BytesIO(upload.data)) as original:
        fitted.paste(original.convert("RGB"), canvas.box.as_tuple()[:2])
    buffer = io.BytesIO()
    fitted.save(buffer, "PNG")
    return buffer.getvalue()


def _describe(item: Item, error: BaseException) -> str:
    return f"item {item.key!r}: {type(error).__name__}: {error}"


def _option(name: str, parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        raise OptionError(name, str(exc)) from None


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
