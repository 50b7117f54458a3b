"""The Kling Image Expansion API's documented limits, in one place (see docs/kling-api.md)."""

MIN_SIDE = 300
"""Width and height of an input image, in pixels, at least."""

MAX_FILE_BYTES = 10 * 1024 * 1024
"""Size of an input image file, at most."""

MIN_ASPECT = 1 / 2.5
MAX_ASPECT = 2.5
"""Aspect ratio (width / height) of an input image, inclusive."""

FORMATS = ("JPEG", "PNG")
"""Pillow format names of the files the API takes."""

MAX_SIDE_RATIO = 2.0
"""Each of the four expansion ratios lies in 0..MAX_SIDE_RATIO."""

MAX_AREA = 3.0
"""(1 + up + down) * (1 + left + right), at most."""

AREA_TOLERANCE = 1e-9
"""Slack for float rounding when comparing an area with MAX_AREA."""

MAX_PROMPT_CHARS = 2500
MIN_N = 1
MAX_N = 9

PAGE_NUM_RANGE = (1, 1000)
PAGE_SIZE_RANGE = (1, 500)
