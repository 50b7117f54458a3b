"""The report of a batch: an HTML contact sheet and a PNG of it, each original beside its results.

Each result is shown with the original's rectangle outlined (everything outside it was
generated), with the ratios of each call, the units spent and, for an input that failed, the
error. Thumbnails (at most 256 x 160) are written once, to `report-files/` beside the report,
so that the page stays light for big batches; each links to the full image.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from imgpipe import Item
from imgpipe.files import write_atomically
from kling_expand_plugin.imaging.decode import decode
from kling_expand_plugin.imaging.refusals import FitError
from kling_expand_plugin.outpaint.report_png import THUMB_SIZE, draw_sheet, printable

FILES = "report-files"
MAX_SHEET_ROWS = 100
"""The PNG shows at most this many inputs (the HTML shows all); a note says how many more."""

OUTLINE = "#ff00c8"


@dataclass
class Picture:
    """One thumbnail of the report, and what it shows."""

    thumb: Path
    thumb_size: tuple[int, int]
    link: Path | None
    size: tuple[int, int]
    box: tuple[int, int, int, int] | None
    caption: str


@dataclass
class Row:
    """One input: its original, its results, and what was done or went wrong."""

    key: str
    original: Picture | None = None
    results: list[Picture] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None


class ContactSheet:
    """Collects the inputs of a batch as they finish; `write` makes report.html and report.png."""

    def __init__(
        self,
        folder: Path,
        *,
        title: str,
        settings: dict[str, str],
        max_sheet_rows: int = MAX_SHEET_ROWS,
    ) -> None:
        self.folder = Path(folder)
        self.files = self.folder / FILES
        self.files.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.settings = settings
        self.max_sheet_rows = max_sheet_rows
        self.rows: list[Row] = []

    def add(self, key: str, outputs: list[tuple[Item, Path | None]], source: Item | None) -> Row:
        """Record one input: its output items with the files they were written to (a failed
        input gives its own item and no file); `source` is the input, for a failure's preview."""
        row = Row(key)
        number = len(self.rows)
        self.rows.append(row)
        first = outputs[0][0].metadata.get("outpaint", {})
        if "error" in first:
            row.error = str(first["error"])
            row.original = self._original_from_source(number, source)
            return row
        if first.get("unchanged"):
            row.details.append("already the target shape: copied, no task")
            item, path = outputs[0]
            image, size = _thumbnail_source(item)
            row.original = self._picture(number, 0, image, None, None, "original", size)
            row.results.append(self._picture(number, 1, image, path, None, "unchanged", size))
            return row
        for index, (item, path) in enumerate(outputs, start=1):
            meta = item.metadata["outpaint"]
            image, size = _thumbnail_source(item)
            left, top, right, bottom = meta["box"]
            box = (left, top, right, bottom)
            if row.original is None:
                scale = image.width / size[0]
                shown = tuple(round(value * scale) for value in box)
                row.original = self._picture(number, 0, image.crop(shown), None, None, "original")
            caption = f"variant {meta['variant']}: {size[0]} x {size[1]}"
            row.results.append(self._picture(number, index, image, path, box, caption, size))
        row.details = _details(first)
        return row

    def add_existing(self, key: str, paths: list[Path], source: Item | None) -> Row:
        """Record an input whose results an earlier run wrote (`--skip-existing`)."""
        row = Row(key, details=["results written by an earlier run; not sent again"])
        number = len(self.rows)
        self.rows.append(row)
        row.original = self._original_from_source(number, source)
        for index, path in enumerate(paths, start=1):
            try:
                image, size = _open_small(path.read_bytes())
            except Exception:  # unreadable now: the row still names it
                row.details.append(f"{path.name}: cannot be read for a preview")
                continue
            row.results.append(self._picture(number, index, image, path, None, path.name, size))
        return row

    def write(self, summary: dict[str, Any]) -> tuple[Path, Path]:
        """Write report.html and report.png into the folder; their paths."""
        html_path = self.folder / "report.html"
        png_path = self.folder / "report.png"
        sheet = draw_sheet(
            self.title, self.settings, totals(summary), self.rows, self.max_sheet_rows
        )
        write_atomically(html_path, self._html(summary).encode("utf-8"), overwrite=True)
        buffer = io.BytesIO()
        sheet.save(buffer, "PNG")
        write_atomically(png_path, buffer.getvalue(), overwrite=True)
        return html_path, png_path

    # -- thumbnails ----------------------------------------------------------------------------

    def _picture(
        self,
        number: int,
        index: int,
        image: Image.Image,
        link: Path | None,
        box: tuple[int, int, int, int] | None,
        caption: str,
        size: tuple[int, int] | None = None,
    ) -> Picture:
        """A thumbnail of `image`; `size` is the full image's, when `image` was decoded small."""
        thumb = self.files / f"{number}-{index}.jpg"
        small = image.convert("RGB")
        small.thumbnail(THUMB_SIZE, Image.Resampling.LANCZOS)
        small.save(thumb, "JPEG", quality=85)
        return Picture(thumb, small.size, link, size or image.size, box, caption)

    def _original_from_source(self, number: int, source: Item | None) -> Picture | None:
        """A preview of a failed input, when it can be read as an image at all."""
        if source is None:
            return None
        try:  # guarded and bounded as the stage's own decoding; a URL is not fetched again
            image = decode(source).original
        except FitError:  # not an image, unreadable, unreachable: the error says why
            return None
        return self._picture(number, 0, image, None, None, "original")

    # -- HTML ----------------------------------------------------------------------------------

    def _html(self, summary: dict[str, Any]) -> str:
        rows = "\n".join(self._html_row(row) for row in self.rows)
        settings = " · ".join(f"{name} {value}" for name, value in self.settings.items())
        pictures = sum((row.original is not None) + len(row.results) for row in self.rows)
        return _PAGE.format(
            title=_e(self.title),
            settings=_e(settings),
            totals=_e(totals(summary)),
            when=_e(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            expected=pictures,
            rows=rows,
            outline=OUTLINE,
        )

    def _html_row(self, row: Row) -> str:
        none = '<div class="none">no preview</div>'
        figures = [self._html_figure(row.original) if row.original else none]
        figures += [self._html_figure(picture) for picture in row.results]
        notes = "".join(f"<li>{_e(line)}</li>" for line in row.details)
        error = f'<p class="error">{_e(row.error)}</p>' if row.error else ""
        status = "failed" if row.error else "done"
        return (
            f'<section class="row {status}" data-key="{_e(row.key)}">'
            f"<h2>{_e(row.key)}</h2>"
            f'<div class="pictures">{"".join(figures)}</div>'
            f"{error}<ul>{notes}</ul></section>"
        )

    def _html_figure(self, picture: Picture) -> str:
        thumb = picture.thumb_size
        image = (
            f'<img src="{self._href(picture.thumb)}" width="{thumb[0]}" height="{thumb[1]}" '
            f'alt="{_e(picture.caption)}">'
        )
        if picture.box:
            width, height = picture.size
            left, top, right, bottom = picture.box
            style = (
                f"left:{100 * left / width:.3f}%;top:{100 * top / height:.3f}%;"
                f"width:{100 * (right - left) / width:.3f}%;"
                f"height:{100 * (bottom - top) / height:.3f}%"
            )
            image += f'<span class="box" style="{style}"></span>'
        frame = f'<span class="frame">{image}</span>'
        if picture.link is not None:
            frame = f'<a href="{self._href(picture.link)}">{frame}</a>'
        return f"<figure>{frame}<figcaption>{_e(picture.caption)}</figcaption></figure>"

    def _href(self, path: Path) -> str:
        # fsencode: a file name that is not UTF-8 is linked by its bytes, as the disk has it
        return quote(os.fsencode(Path(os.path.relpath(path, self.folder)).as_posix()))


def _details(meta: dict[str, Any]) -> list[str]:
    """The lines under a row: the ratios of each call, the units, what was done to fit it."""
    passes = meta.get("passes") or []
    lines = []
    for number, ratios in enumerate(passes, start=1):
        label = f"call {number} of {len(passes)}" if len(passes) > 1 else "ratios"
        lines.append(f"{label}: {format_ratios(ratios)}")
    lines.append(f"units: {float(meta.get('units') or 0.0):g}")
    changes = (meta.get("upload") or {}).get("changes") or []
    if changes:
        lines.append("upload: " + "; ".join(changes))
    return lines


def format_ratios(ratios: dict[str, float]) -> str:
    """ "up 0.1495 down 0.1495 left 0.6547 right 0.6547" from the API's field names."""
    sides = ("up", "down", "left", "right")
    return " ".join(f"{side} {ratios[f'{side}_expansion_ratio']:.4f}" for side in sides)


def plural(number: float, noun: str) -> str:
    return f"{number:g} {noun}{'' if number == 1 else 's'}"


def totals(summary: dict[str, Any]) -> str:
    """A batch's summary in one line: done, failed, skipped, results, units, seconds."""
    return (
        f"{summary.get('done', 0)} done, {summary.get('failed', 0)} failed, "
        f"{summary.get('skipped', 0)} skipped (budget)"
        + (f", {summary['existing']} already there" if summary.get("existing") else "")
        + f"; {plural(summary.get('results', 0), 'result')}; "
        f"{plural(summary.get('units', 0), 'unit')}; {summary.get('seconds', 0):.1f} s"
    )


def _thumbnail_source(item: Item) -> tuple[Image.Image, tuple[int, int]]:
    """What a result's thumbnails are made from, and the result's full size: the preview the
    stage made from the pixels it had, or else the result decoded small."""
    meta = item.metadata["outpaint"]
    if meta.get("preview"):
        return _open(meta["preview"]), (meta["canvas"][0], meta["canvas"][1])
    return _open_small(item.read_bytes())


def _open_small(data: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """The image, decoded no larger than a thumbnail needs (a JPEG at 1/2 to 1/8 of its
    size, at a fraction of the cost), and its full size."""
    image = Image.open(io.BytesIO(data))
    size = image.size
    image.draft("RGB", (THUMB_SIZE[0] * 2, THUMB_SIZE[1] * 2))
    image.load()
    return image, size


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _e(text: str) -> str:
    return html.escape(printable(text), quote=True)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
header p {{ margin: 2px 0; color: #555; }}
.row {{ border-top: 1px solid #ddd; padding: 12px 0; }}
.row h2 {{ font-size: 15px; margin: 0 0 8px; }}
.pictures {{ display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }}
figure {{ margin: 0; }}
figcaption {{ font-size: 12px; color: #444; }}
.frame {{ position: relative; display: inline-block; line-height: 0; }}
.box {{ position: absolute; outline: 2px solid {outline}; outline-offset: -2px; }}
.none {{ width: 256px; height: 160px; border: 1px dashed #bbb; color: #888; padding: 8px; }}
.error {{ color: #b01414; font-weight: 600; white-space: pre-wrap; }}
ul {{ margin: 6px 0 0; padding-left: 18px; color: #555; font-size: 12px; }}
</style>
</head>
<body data-images-expected="{expected}">
<header>
<h1>{title}</h1>
<p>{settings}</p>
<p>{totals}</p>
<p>{when}; the outline is the original, everything outside it was generated.</p>
</header>
{rows}
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.dataset.imagesLoaded = String(loaded.length);
  document.body.dataset.imagesFailed = String(images.length - loaded.length);
}});
</script>
</body>
</html>
"""
