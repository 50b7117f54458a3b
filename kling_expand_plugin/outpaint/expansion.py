"""One item's expansion: prepare, plan, run the calls, stitch, and its result items.

The stage (`stage.py`) runs this for each item of a bounded window; it holds the settings an
item needs and the stage's CPU workers.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgpipe import Item
from kling_expand_plugin.batch.taskrunner import Outcome, TaskRunner
from kling_expand_plugin.imaging.decode import Decoded, FitOptions, decode, read_input
from kling_expand_plugin.imaging.geometry import Box, Canvas, canvas_for
from kling_expand_plugin.imaging.output import OutputFormat, Source, encode_result, result_key
from kling_expand_plugin.imaging.plan import Plan
from kling_expand_plugin.imaging.prepare import (
    Upload,
    encode_within_limit,
    prepare,
    prepare_as_sent,
)
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.imaging.stitch import mask_png, stitch
from kling_expand_plugin.imaging.target import Target
from kling_expand_plugin.kling.client import ExpandRequest
from kling_expand_plugin.kling.download import DEFAULT_MAX_BYTES

log = logging.getLogger(__name__)

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
RESULT_PIXEL_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
"""The largest result Pillow decodes (past it, it refuses a file as a decompression bomb)."""


@dataclass(frozen=True)
class Expansion:
    """What every item of a run is expanded with: the stage's checked options and its CPU
    workers (a semaphore shared by the run's items)."""

    target: Target
    fit_options: FitOptions
    output: OutputFormat
    n: int
    prompt: str
    watermark: bool
    blend: int
    colour_match: bool
    cpu: threading.BoundedSemaphore

    def __call__(self, runner: TaskRunner, item: Item, name: str) -> list[Item]:
        """The whole life of one item: prepare, plan, run the calls, stitch.

        Decoding, fitting, stitching and encoding take one of the stage's few CPU workers;
        while its tasks run, an item holds its upload and its input file's bytes (or just its
        path), never decoded pixels, so memory is bounded by the CPU workers, not by the
        window of tasks.
        """
        with self._cpu_worker(runner):
            data = read_input(item)  # read once for both ways of preparing it
            light = prepare_as_sent(item, self.target, self.fit_options, data)
            if light is not None and light[1].passes:  # a JPEG sent as it is: no pixels yet
                upload, plan = light
                source = item.replace(image=upload.data) if item.is_url else item
            else:
                decoded, upload, plan = prepare(item, self.target, self.fit_options, data)
                if plan.is_empty:
                    log.info("outpaint: %s already has the target shape; copied", item.key)
                    return [self._unchanged(item, name, decoded, upload, plan)]
                if not plan.passes:
                    log.warning("outpaint: %s: the target was reached by padding alone", item.key)
                    return self._stitched(item, name, decoded, upload, plan, [upload.data], [])
                source = item.replace(image=decoded.data) if item.is_url else item  # fetched once
                del decoded
            del data
            sizes = _pass_outputs(item.key, plan)  # refused here, before anything is paid
        variants, outcomes = self._run_passes(runner, item, upload, plan, sizes)
        with self._cpu_worker(runner):
            # Not a local of this frame: an error raised under _run_passes may keep the frame
            # (in a reference cycle, until the garbage collector runs), but not the pixels.
            return self._stitched(
                item, name, decode(source, self.fit_options), upload, plan, variants, outcomes
            )

    @contextlib.contextmanager
    def _cpu_worker(self, runner: TaskRunner) -> Iterator[None]:
        with self.cpu:
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
    step = max(1, factor // 4)
    if step > 1:  # every step-th pixel of every step-th row: still 16 samples a pixel
        image = image.resize((image.width // step, image.height // step), Image.Resampling.NEAREST)
    small = image.reduce(factor // step).convert("RGB")  # cheap: a box filter over whole blocks
    small.thumbnail(PREVIEW_SIZE, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
