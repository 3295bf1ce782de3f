"""A drawing as a PNG -> the dataset's 8x8 form (pure: bytes in, array or a clear error out).

Two readings of a drawing, both ending in the dataset's whole counts 0..16 (a fully black block is
16, as a fully inked block of 4x4 bitmap pixels is in the dataset):

* An 8x8 grid of flat blocks (a dataset image scaled up by a whole factor with nearest neighbour,
  or pixel art drawn on that grid) is read block by block, with no cropping or re-centring: the
  framing is the drawing's own, so every dataset image comes back exactly as itself.
* Anything else (a free-hand drawing of any size) goes the way the optdigits images were made (a
  size-normalised bitmap counted in blocks): crop to the ink's bounding box, pad to a centred
  square, resize to 8x8 by area averaging. Re-centring is what the grid reading avoids: every
  dataset digit spans rows 0 to 7, but 10% of them (9% of the holdout) sit a column left or
  right of where centring puts them, and centring such an image shifts it by a block.

Both start from gray levels (transparency composited on white) inverted so ink is high, relative
to the lightest pixel (the paper), so a grey page reads like a white one.

Untrusted input: the PNG header (IHDR) is read and the declared size checked before anything is
decoded, so a small file declaring a huge image (a decompression bomb) is refused without
allocating it.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from mlops_assets.digits.dataset import MAX_INK, SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Smallest side that can hold a digit (the dataset's own 8x8 is the smallest sensible drawing).
MIN_SIDE = SIDE
#: Largest image decoded (4 megapixels, e.g. 2000x2000: a phone photo scaled down).
MAX_PIXELS = 4_000_000
#: Ink darker than this fraction of the darkest stroke counts for the bounding box (the dataset's
#: faintest block, 1 of 16, is 0.0625).
INK_THRESHOLD = 0.05
#: Less contrast than this (of 255) between the lightest and darkest pixel: a blank page.
MIN_CONTRAST = 32


class ImageError(ValueError):
    """The bytes are not a usable digit drawing; the message says why."""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding any pixel."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError("the body is not a PNG image (it does not start with the PNG signature)")
    if len(data) < 33:
        raise ImageError("the PNG is truncated before its IHDR header")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise ImageError("the PNG's first chunk is not a valid IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def check_size(width: int, height: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"the image is {width}x{height} pixels; a digit needs at least {MIN_SIDE}x{MIN_SIDE}")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"the image declares {width}x{height} pixels, more than the limit of {MAX_PIXELS:,}; scale it down"
        )


def decode_gray(data: bytes) -> np.ndarray:
    """The PNG as float gray levels 0 (black) .. 255 (white), transparency composited on white."""
    from PIL import Image

    width, height = png_size(data)
    check_size(width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                if image.size != (width, height):
                    raise ImageError(
                        f"the PNG header says {width}x{height} but the decoder sees {image.size[0]}x{image.size[1]}"
                    )
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    gray = Image.alpha_composite(white, rgba).convert("L")
                else:
                    gray = image.convert("L")
                return np.asarray(gray, dtype="float64")
    except ImageError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
        zlib.error,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as error:
        raise ImageError(f"the PNG could not be decoded: {error}") from None


def to_dataset_form(gray: np.ndarray) -> np.ndarray:
    """Gray levels (dark digit on a light background) -> an 8x8 float array of whole ink counts 0..16."""
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ImageError(f"expected a 2-D gray image, got shape {gray.shape}")
    lightest, darkest = float(gray.max()), float(gray.min())
    if lightest - darkest < MIN_CONTRAST:
        raise ImageError("the image is blank: no dark strokes on a light background were found")
    ink = (lightest - gray) / lightest  # 0 background .. 1 black, whatever the paper's shade
    blocks = grid_blocks(ink)
    small = blocks if blocks is not None else _recentred(ink)
    # The dataset's pixels are counts of inked bitmap pixels: whole numbers. Rounding also undoes
    # the 8-bit gray quantisation of a dataset image drawn as a PNG (at most 16 * 0.5 / 255 off).
    return np.clip(np.round(small * MAX_INK), 0.0, MAX_INK)


def grid_blocks(ink: np.ndarray) -> np.ndarray | None:
    """The 8x8 block values when `ink` is a square of 8x8 flat blocks (a whole-factor upscale), else None."""
    height, width = ink.shape
    if height != width or height % SIDE:
        return None
    factor = height // SIDE
    blocks = ink.reshape(SIDE, factor, SIDE, factor)
    corners = blocks[:, :1, :, :1]
    if not np.array_equal(blocks, np.broadcast_to(corners, blocks.shape)):
        return None
    return corners[:, 0, :, 0].copy()


def _recentred(ink: np.ndarray) -> np.ndarray:
    """A free-hand drawing's ink cropped to its bounding box, centred in a square, area-averaged to 8x8."""
    from PIL import Image

    inked = ink > INK_THRESHOLD * float(ink.max())
    rows = np.flatnonzero(inked.any(axis=1))
    cols = np.flatnonzero(inked.any(axis=0))
    cropped = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = cropped.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype="float64")
    top, left = _offset(side - height, side), _offset(side - width, side)
    square[top : top + height, left : left + width] = cropped
    # Pillow's BOX filter is area averaging, exact for fractional block sizes too.
    return np.asarray(
        Image.fromarray(square.astype("float32"), mode="F").resize((SIDE, SIDE), Image.Resampling.BOX), dtype="float64"
    )


def _offset(pad: int, side: int) -> int:
    """Where the ink starts inside the square: centred, snapped to the 8x8 block grid.

    Snapping keeps the blocks whole instead of smearing each stroke over two blocks; an odd
    number of spare blocks puts the extra one first (left/top), as the dataset does (a 5-block
    wide digit starts at column 2 in 127 of its 202 images, a 7-block one at column 1 in 135 of 146).
    """
    block = side / SIDE
    return min(pad, round(int(pad / (2 * block) + 0.5) * block))


def png_to_digit(data: bytes) -> np.ndarray:
    """PNG bytes of a dark digit on a light background, any size -> the dataset's 8x8 ink 0..16."""
    return to_dataset_form(decode_gray(data))


def digit_to_png(image: np.ndarray, scale: int = 8) -> bytes:
    """A dataset image drawn as a PNG: each pixel a `scale`-sized block, dark ink on white."""
    from PIL import Image

    pixels = np.asarray(image, dtype="float64").reshape(SIDE, SIDE)
    gray = np.round(255.0 - pixels * (255.0 / MAX_INK)).astype("uint8")
    big = np.kron(gray, np.ones((scale, scale), dtype="uint8"))
    buffer = io.BytesIO()
    Image.fromarray(big, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def montage_png(images: np.ndarray, columns: int = 10, scale: int = 4) -> bytes:
    """Dataset images side by side (dark ink on white) as one PNG, for asset previews."""
    from PIL import Image

    tiles = np.asarray(images, dtype="float64").reshape(-1, SIDE, SIDE)
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * (SIDE + 1), columns * (SIDE + 1)), dtype="float64")
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (SIDE + 1), (index % columns) * (SIDE + 1)
        sheet[top : top + SIDE, left : left + SIDE] = tile
    gray = np.round(255.0 - sheet * (255.0 / MAX_INK)).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(np.kron(gray, np.ones((scale, scale), dtype="uint8")), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
