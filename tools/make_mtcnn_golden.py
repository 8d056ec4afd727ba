"""Golden MTCNN detections for tests/test_mtcnn.py, made by the `mtcnn` package itself on TensorFlow.

Run it in a throw-away environment (TensorFlow is never a dependency of progan):
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu mtcnn pillow
    /tmp/tfvenv/bin/python tools/make_mtcnn_golden.py

Each photo goes through the detector alone (mtcnn pads batches, which changes the pyramid), with the original
cascade's thresholds 0.6/0.7/0.7 (mtcnn 1.0 defaults O-Net to 0.8) and min face 20, and without mtcnn's
post-processing, so boxes are not clipped to the image (our detector does not clip either). Photos with a
long side above MAX_SIDE are downscaled first by `load_rgb`, which the test calls too, so both sides see the
same pixels. Values are rounded to keep the fixture small.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "tests" / "fixtures" / "mtcnn_golden.json"
# Sources, relative to their root: the shared real-image sets and the committed fixture photos.
SOURCES = {
    "shared": (SHARED_DATA, ("faces-wild", "celeba-full")),
    "fixtures": (ROOT / "tests" / "fixtures", ("photos",)),
}
MAX_SIDE = 640
EXTENSIONS = {".jpg", ".jpeg", ".png"}


def load_rgb(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """H x W x 3 uint8 RGB with EXIF orientation applied, long side at most `max_side` (bilinear)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        scale = max_side / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
        return np.asarray(img)


def golden_files() -> list[tuple[str, Path]]:
    """(key, path) of every photo the golden covers; key = '<source>/<folder>/<name>'."""
    files = []
    for source, (root, folders) in SOURCES.items():
        for folder in folders:
            for path in sorted((root / folder).glob("*")):
                if path.suffix.lower() in EXTENSIONS:
                    files.append((f"{source}/{folder}/{path.name}", path))
    return files


def main() -> None:
    from mtcnn import MTCNN

    detector = MTCNN()
    golden = {}
    for key, path in golden_files():
        image = load_rgb(path)
        rows = detector.detect_faces(
            image, min_face_size=20, threshold_pnet=0.6, threshold_rnet=0.7, threshold_onet=0.7,
            box_format="xyxy", output_type="numpy", postprocess=False,
        )
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        rows = rows[np.argsort(-rows[:, 5], kind="stable")]
        golden[key] = {
            "size": [image.shape[1], image.shape[0]],
            "boxes": np.round(rows[:, 1:5], 2).tolist(),
            "scores": np.round(rows[:, 5], 4).tolist(),
            # columns 6..10 are x1..x5, 11..15 are y1..y5 -> [[x, y] * 5]
            "landmarks": np.round(np.stack([rows[:, 6:11], rows[:, 11:16]], axis=2), 2).tolist(),
        }
        print(f"{key}: {len(rows)} faces", file=sys.stderr)
    text = json.dumps({"mtcnn": "1.0.0", "max_side": MAX_SIDE, "images": golden}, separators=(",", ":"))
    with tempfile.NamedTemporaryFile("w", dir=OUT.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text + "\n")
    os.replace(tmp.name, OUT)
    print(f"wrote {OUT} ({len(golden)} images)", file=sys.stderr)


if __name__ == "__main__":
    main()
