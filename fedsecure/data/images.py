"""Images as the framework handles them, whatever the task: RGB uint8 arrays (H, W, 3),
PNG on the wire, files on disk named by path. Untrusted bytes are decoded with bounds
(size, pixel count) so that a crafted image cannot exhaust memory."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

DEFAULT_IMAGE_SIZE = 64             # the side of the square images the built-in models read
MAX_IMAGE_BYTES = 8 << 20           # one image file
MAX_IMAGE_PIXELS = 4096 * 4096      # one decoded image (decompression bombs)


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 (H, W, 3) array as PNG bytes (what travels in a ScoreItem)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, *, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode untrusted PNG bytes into an RGB (size, size, 3) array; raises ValueError."""
    if not data:
        raise ValueError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise ValueError(f"expected a PNG image, got {im.format}")
            # Checked from the header before any pixel is decoded (decompression bombs).
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ValueError("image too large")
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size))
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"corrupt image: {exc}") from exc


@functools.lru_cache(maxsize=8192)
def load_image(path: str, *, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The PNG file at ``path`` as an RGB (size, size, 3) uint8 array, cached per path;
    raises FileNotFoundError for a missing file and ValueError for one that is too large
    or does not decode."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: image file larger than {MAX_IMAGE_BYTES} bytes")
    return decode_png(data, size=size)


def image_png(path: str) -> bytes:
    """The image at ``path`` as PNG bytes, decoded and re-encoded (bounded, RGB)."""
    return encode_png(load_image(path))
