"""Photos in, square crops out: robust decoding, the crop recipes, and antialiased resampling.

A crop is described by a quad (4 corners in photo pixels, order top-left, bottom-left, bottom-right,
top-right, as PIL's QUAD transform takes them), so the recipes differ only in how they place it:
  - align:  the oriented square of CelebA-HQ / FFHQ from the 5 landmarks (rotated with the face);
  - box:    an axis-aligned square around the detection box, enlarged by a margin;
  - center: the standard CelebA crop (x=89, y=121, 128x128 on 178x218) scaled to the photo, no detection;
  - square: the largest centred square (the official dataset tool's LSUN crop), no detection;
  - none:   the whole image, which must already be square, no detection.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CROPS = ("align", "box", "center", "square", "none")
DETECTING_CROPS = ("align", "box")
# The image files prep and the metrics read from a folder (pytorch-fid's list plus GIF). A fixed list, not
# everything Pillow registers: that includes stubs (.h5, .mpg, .eps, ...) that open as 0x0 images or need
# outside tools, and a pyramid .h5 beside the images would then be read as one.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class UnreadableImage(Exception):
    """A file that is not a decodable image (truncated, corrupt, not an image at all)."""


def load_rgb(path: Path | str) -> np.ndarray:
    """Decode a photo as uint8 RGB (H, W, 3), upright per its EXIF orientation.

    Greyscale, palette, RGBA (alpha dropped), CMYK and 16-bit images all become 8-bit RGB. A file that is not
    there raises FileNotFoundError (a missing photo), anything else that fails UnreadableImage.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                # 16-bit greyscale: keep the top 8 bits rather than letting convert() clip at 255.
                wide = np.asarray(im).astype(np.int64)
                hi = 65535 if wide.max(initial=0) > 255 or im.mode.startswith("I;16") else 255
                im = Image.fromarray((wide.clip(0, hi) * 255 // hi).astype(np.uint8), "L")
            elif im.mode == "F":
                im = Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8), "L")
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{exc.__class__.__name__}: {exc}") from None


def _square(center: np.ndarray, half: float) -> np.ndarray:
    cx, cy = center
    return np.array([[cx - half, cy - half], [cx - half, cy + half],
                     [cx + half, cy + half], [cx + half, cy - half]], np.float32)


def align_quad(landmarks: np.ndarray) -> np.ndarray:
    """The CelebA-HQ / FFHQ oriented square from 5 landmarks (eyes, nose, mouth corners as (x, y)).

    Centre: eye centre moved 0.1 of the way to the mouth centre; side: max(2 x eye-to-eye, 1.8 x
    eye-to-mouth); rotated so the eyes are level (Karras et al. 2018, appendix C; FFHQ's recipe).
    """
    lm = np.asarray(landmarks, np.float64)
    eye_left, eye_right, mouth_left, mouth_right = lm[0], lm[1], lm[3], lm[4]
    eye_avg = (eye_left + eye_right) * 0.5 + 0.5
    mouth_avg = (mouth_left + mouth_right) * 0.5 + 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth_avg - eye_avg

    def rot90(v: np.ndarray) -> np.ndarray:
        return np.array([-v[1], v[0]])

    x = eye_to_eye - rot90(eye_to_mouth)
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float32)


def box_quad(box: np.ndarray, margin: float) -> np.ndarray:
    """Axis-aligned square around a detection box (x1, y1, x2, y2), its longer side grown by `margin`."""
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    half = max(x2 - x1, y2 - y1) * (1.0 + margin) / 2.0
    return _square(np.array([(x1 + x2) / 2, (y1 + y2) / 2]), half)


def center_quad(width: int, height: int) -> np.ndarray:
    """The standard CelebA crop (128x128 at x=89, y=121 on 178x218), scaled to a photo of another size."""
    sx, sy = width / 178.0, height / 218.0
    return _square(np.array([89.0 * sx, 121.0 * sy]), 64.0 * min(sx, sy))


def square_quad(width: int, height: int) -> np.ndarray:
    """The largest centred square, on whole pixels as the official dataset tool's `create_lsun` cuts it."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return np.array([[x0, y0], [x0, y0 + side], [x0 + side, y0 + side], [x0 + side, y0]], np.float32)


def quad_side(quad: np.ndarray) -> float:
    """Side of a crop square in photo pixels: below the target size, the crop is upscaled."""
    quad = np.asarray(quad, np.float64)
    return float(np.hypot(*(quad[3] - quad[0])))


def outside_fraction(quad: np.ndarray, width: int, height: int) -> float:
    """The share of the quad's area outside the photo, which `crop_quad` fills by reflection.

    The quad (convex) is clipped to the photo rectangle edge by edge (Sutherland-Hodgman) and the areas
    compared by the shoelace formula.
    """
    poly = [tuple(p) for p in np.asarray(quad, np.float64)]
    total = _area(poly)
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        poly = _clip(poly, axis, float(bound), keep_below)
    return min(1.0, max(0.0, 1.0 - _area(poly) / total)) if total > 0 else 1.0


def _clip(poly: list[tuple[float, float]], axis: int, bound: float, keep_below: bool) -> list[tuple[float, float]]:
    """The part of a convex polygon on one side of the line `coordinate[axis] == bound`."""
    def inside(p: tuple[float, float]) -> bool:
        return p[axis] <= bound if keep_below else p[axis] >= bound

    out = []
    for a, b in zip(poly, poly[1:] + poly[:1]):
        if inside(a):
            out.append(a)
        if inside(a) != inside(b):
            t = (bound - a[axis]) / (b[axis] - a[axis])
            out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
    return out


def _area(poly: list[tuple[float, float]]) -> float:
    """Shoelace area (0 for fewer than 3 points)."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]))) / 2.0


def crop_quad(img: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Resample the quad of `img` to a size x size uint8 RGB image.

    Large quads are first shrunk by an integer box filter and resampled at their own scale, then resized
    with Lanczos, so downscaling is antialiased; where the quad leaves the photo, the photo is extended by
    reflection (FFHQ does the same, plus a blur we leave out to keep pixels real; `outside_fraction` measures
    how much of a crop that is). An upright square on whole pixels inside the photo (the center, square and
    none crops of most photos) is cut out and resized with Lanczos alone, as the official dataset tool does.
    """
    quad = np.asarray(quad, np.float64).copy()
    side = quad_side(quad)
    x, y = quad[0]
    upright = np.array_equal(quad, _square(np.array([x + side / 2, y + side / 2]), side / 2))
    if upright and quad.min() >= 0 and x + side <= img.shape[1] and y + side <= img.shape[0] \
            and np.array_equal(quad, np.round(quad)):
        region = img[int(y):int(y + side), int(x):int(x + side)]
        if int(side) == size:
            return region.copy()
        return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.LANCZOS))
    shrink = int(math.floor(side / size * 0.5))
    if shrink > 1:
        img = np.asarray(Image.fromarray(img).reduce(shrink))
        quad /= shrink
        side /= shrink
    h, w = img.shape[:2]
    # Only the quad's neighbourhood is needed: crop it out, padding by reflection beyond the photo.
    border = 2
    x0 = int(math.floor(quad[:, 0].min())) - border
    y0 = int(math.floor(quad[:, 1].min())) - border
    x1 = int(math.ceil(quad[:, 0].max())) + border
    y1 = int(math.ceil(quad[:, 1].max())) + border
    pads = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    region = img[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if any(p for pair in pads[:2] for p in pair):
        region = np.pad(region, pads, mode="reflect" if min(region.shape[:2]) > 1 else "edge")
    quad -= (x0, y0)
    work = max(size, int(round(side)))
    out = Image.fromarray(np.ascontiguousarray(region)).transform(
        (work, work), Image.Transform.QUAD, data=tuple(quad.flatten()), resample=Image.Resampling.BILINEAR)
    if work != size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(out)
