"""The report's PNG: the contact sheet drawn with Pillow, each original beside its results, the
original's place outlined."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from kling_expand_plugin.outpaint.report import Picture, Row

THUMB_SIZE = (256, 160)
BOX_COLOUR = (255, 0, 200)
FAILED_COLOUR = (190, 20, 20)
MARGIN, GAP, LINE = 16, 12, 16


def draw_sheet(
    title: str, settings: dict[str, str], totals: str, rows: list[Row], max_rows: int
) -> Image.Image:
    """The contact sheet as one image, drawn with Pillow (no browser needed): the header,
    then the first `max_rows` rows."""
    font = _font(13)
    bold = _font(15)
    shown = rows[:max_rows]
    columns = max([1 + len(row.results) for row in shown] or [1])
    width = max(2 * MARGIN + columns * (THUMB_SIZE[0] + GAP), 720)
    chars = max((width - 2 * MARGIN) // 7, 40)
    header = [
        title,
        *textwrap.wrap(" · ".join(f"{k} {v}" for k, v in settings.items()), chars),
        totals,
        "outlined: the original; outside the outline: generated",
    ]
    if len(rows) > len(shown):
        header.append(f"showing {len(shown)} of {len(rows)} inputs; see report.html")
    layouts = [_row_lines(row, chars) for row in shown]
    row_height = THUMB_SIZE[1] + LINE + GAP
    height = MARGIN + (len(header) + 1) * LINE
    height += sum(row_height + (1 + len(lines)) * LINE + GAP for lines in layouts) + MARGIN
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = MARGIN
    for number, text in enumerate(header):
        draw.text((MARGIN, y), text, fill="black", font=bold if number == 0 else font)
        y += LINE
    y += LINE
    for row, lines in zip(shown, layouts, strict=True):
        draw.line((MARGIN, y - GAP // 2, width - MARGIN, y - GAP // 2), fill=(210, 210, 210))
        draw.text((MARGIN, y), printable(row.key), fill="black", font=bold)
        y += LINE + 4
        pictures = ([row.original] if row.original else [None]) + list(row.results)
        for column, picture in enumerate(pictures):
            x = MARGIN + column * (THUMB_SIZE[0] + GAP)
            _draw_picture(sheet, draw, picture, x, y, font)
        y += row_height
        for line in lines:
            colour = FAILED_COLOUR if row.error else (60, 60, 60)
            draw.text((MARGIN, y), line, fill=colour, font=font)
            y += LINE
        y += GAP
    return sheet


def _draw_picture(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    picture: Picture | None,
    x: int,
    y: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    if picture is None:
        draw.rectangle((x, y, x + THUMB_SIZE[0], y + THUMB_SIZE[1]), outline=(180, 180, 180))
        draw.text((x + 8, y + 8), "no preview", fill=(120, 120, 120), font=font)
        return
    with Image.open(picture.thumb) as thumb:
        thumb.load()
        sheet.paste(thumb, (x, y))
        if picture.box:
            scale_x = thumb.width / picture.size[0]
            scale_y = thumb.height / picture.size[1]
            left, top, right, bottom = picture.box
            outline = (
                x + round(left * scale_x),
                y + round(top * scale_y),
                x + round(right * scale_x) - 1,
                y + round(bottom * scale_y) - 1,
            )
            draw.rectangle(outline, outline=BOX_COLOUR, width=2)
        draw.text((x, y + thumb.height + 2), picture.caption, fill="black", font=font)


def _row_lines(row: Row, chars: int) -> list[str]:
    if row.error:
        return textwrap.wrap(printable(f"failed: {row.error}"), chars)[:4]
    return [part for line in row.details for part in textwrap.wrap(printable(line), chars)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size)


def printable(text: str) -> str:
    """`text` as valid Unicode: bytes of a file name that were not UTF-8 shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
