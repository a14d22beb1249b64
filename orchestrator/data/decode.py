"""Decoding a source image once, for a prepared dataset: upright RGB JPEG bytes at the prepared size,
with the hashes the duplicate audit needs."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from orchestrator.data.audit import perceptual_hash

JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Loaded:
    """One decoded image: what goes into the shard, and what the audit needs."""

    jpeg: bytes
    sha256: str  # of the source file: exact duplicates
    phash: bytes  # perceptual hash: near-duplicates
    size: tuple[int, int]  # as stored in the source, before resizing
    mode: str  # as stored in the source


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; 16- and 32-bit grayscale is scaled to 8 bits, not clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_resized(path: Path, size: int) -> Loaded:
    """The image at `path` as RGB JPEG bytes, upright, shorter side at most `size` pixels.

    An upright RGB JPEG that is already small enough passes through byte for byte, which avoids
    a second lossy encode. Raises OSError / ValueError for files that cannot be decoded.
    """
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        original, mode = image.size, image.mode
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        image.load()
        upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
        passthrough = image.format == "JPEG" and image.mode == "RGB" and upright and min(original) <= size
        rgb = image if passthrough else to_rgb(ImageOps.exif_transpose(image))
        if min(rgb.size) > size:
            scale = size / min(rgb.size)
            target = (max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale)))
            rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
        if passthrough:
            jpeg = raw
        else:
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            jpeg = buffer.getvalue()
        return Loaded(jpeg, hashlib.sha256(raw).hexdigest(), perceptual_hash(rgb), original, mode)


def try_load(path: Path, size: int) -> Loaded | str:
    """The loaded image, or the reason the file could not be read."""
    try:
        return load_resized(path, size)
    except UnidentifiedImageError:
        return "not an image file (unknown or damaged format)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
