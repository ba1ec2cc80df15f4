"""The one image loader. Errors name the file and what is wrong with it."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from advreid.errors import BadInputError


class ImageReadError(BadInputError, OSError):
    """An image file cannot be decoded (truncated, not an image, unreadable)."""


def decode_image(data: bytes, source: str | os.PathLike = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes fully to an H x W x 3 uint8 RGB array.

    ``max_pixels`` refuses an image whose header declares more pixels before any are decoded (PIL's own
    decompression-bomb limit still applies without it).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageReadError(
                    f"{source}: image is {width}x{height} = {width * height:,} pixels, above max_pixels "
                    f"{max_pixels:,} (raise the reader's max_pixels option if the dataset really has such images)"
                )
            im.load()  # a truncated file raises here, not at open()
            return np.array(im.convert("RGB"))  # a writable copy (torch.from_numpy needs one)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses > 2 x Image.MAX_IMAGE_PIXELS at open()
        raise ImageReadError(f"{source}: image too large to decode safely ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{source}: cannot decode image ({err})") from err


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file to an H x W x 3 uint8 RGB array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror or err})") from err
    return decode_image(data, path)


def describe_image(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[str, int, int]:
    """Return (sha256 of the file bytes, width, height), decoding the whole image to catch truncation."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror or err})") from err
    pixels = decode_image(data, path, max_pixels)
    return hashlib.sha256(data).hexdigest(), int(pixels.shape[1]), int(pixels.shape[0])
