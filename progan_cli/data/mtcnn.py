"""MTCNN face detector (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016) in PyTorch, on the weights that the `mtcnn` package (MIT) ships.

The cascade is the original one: an image pyramid (min face 20 px, factor 0.709) through P-Net, then R-Net on
24x24 crops and O-Net on 48x48 crops, with NMS within and across scales and boxes squared between stages. Where
the `mtcnn` 1.0 package (our golden reference, tools/make_mtcnn_golden.py) and the 2016 Matlab code differ in
small ways, we follow the package, because its outputs are what tests/test_mtcnn.py holds us to: box
regression is applied before each NMS, pyramid sizes are truncated (int(H * s)), resizing is exact area
averaging, crops are bilinear samples of the box corners (TensorFlow's crop_and_resize), and NMS is its
"any higher box" rule with no +1 in the areas. With these, detections match the package to ~0.01 px.

What makes it fast: every step is batched over all images and all boxes (no per-box Python loop, no loop over
images on the device). On the CPU, equal-size images share one P-Net pass per scale, computed exactly as the
tests hold it. On a GPU (`pad`), images of all sizes share one padded canvas, so each scale is one resize (per
image area weights in two batched matrix products) and one P-Net pass whose pooling is masked to each image's
own pixels; either way NMS runs once per stage for every image and scale together (one copy of the scores to
the host for the reference's sort order), and the R-Net/O-Net crops of every box of every image are one
roi_align per canvas. 16 photos of 13 sizes (up to 1024 px) took 627 convolutions, 4,365 matrix products and
~37,000 torch calls per size, and take 62, 22 and ~1,700 on the canvas, with one host round trip per scale
(the candidates' count) and per NMS. On a GPU detection runs in true fp32 (TF32 off while it runs), so the
padded path agrees with the CPU to float32 rounding (0.002 px on 117 photos, measured on the CPU).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from progan_cli.devices import tf32
from progan_cli.errors import DataError

# P-Net sees 12x12 windows with a stride of 2 in each pyramid level (Zhang et al. 2016, section 2.1).
CELL = 12
_STRIDE = 2
# The cascade's defaults (the 2016 Matlab code and the mtcnn package): the smallest face the image pyramid
# starts from, the ratio between its scales, and the P-Net, R-Net and O-Net face-score thresholds.
MIN_FACE = 20
SCALE_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
# NMS overlap thresholds of the original cascade: within a scale, across scales, after R-Net, after O-Net.
_NMS_SCALE, _NMS_PYRAMID, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7
# Upper bounds on one network call or NMS block (pairs of boxes), so very large photos or batches do not exhaust
# memory; a GPU takes _GPU_SCALE times more at once, so that kernels stay big.
_PNET_PIXELS = 1 << 22
_CROP_BATCH = 2048
_NMS_ROWS = 512
_NMS_PAIRS = 1 << 22
_AREA_SPAN = 32
_GPU_SCALE = 8


@dataclass(frozen=True)
class Detections:
    """The faces found in one image, rows sorted by score, highest first.

    boxes: (K, 4) float32 x1, y1, x2, y2 in pixels (may reach past the image border).
    scores: (K,) float32 O-Net face probabilities.
    landmarks: (K, 5, 2) float32 (x, y): left eye, right eye, nose, left mouth corner, right mouth corner
    (left = image left).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def weights_file(name: str) -> Path:
    """Path of `mtcnn/assets/weights/<name>.lz4`, found without importing `mtcnn` (its __init__ imports
    TensorFlow, which we never need)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MTCNN weights come from the 'mtcnn' package, which is not installed: pip install mtcnn")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights" / f"{name}.lz4"
    if not path.is_file():
        raise DataError(f"MTCNN weights {path} are missing: reinstall the 'mtcnn' package")
    return path


@functools.lru_cache(maxsize=None)
def keras_weights(name: str) -> tuple[np.ndarray, ...]:
    """The float32 arrays of one network in Keras get_weights() order; read once per process (joblib's format,
    through the allow-list unpickler) and kept read-only so no caller can alter the cached copy."""
    from progan_cli.unpickle import load_joblib_arrays

    arrays = tuple(np.array(a, dtype=np.float32) for a in load_joblib_arrays(weights_file(name)))
    for a in arrays:
        a.flags.writeable = False
    return arrays


class _KerasPort(nn.Module):
    """Loads Keras arrays into the child layers in definition order (the order Keras lists them)."""

    def load_keras(self, arrays: Sequence[np.ndarray]) -> None:
        it = iter(arrays)
        with torch.no_grad():
            for layer in self.children():
                if isinstance(layer, nn.Conv2d):  # kernel HWIO -> OIHW
                    layer.weight.copy_(torch.tensor(next(it).transpose(3, 2, 0, 1)))
                    layer.bias.copy_(torch.tensor(next(it)))
                elif isinstance(layer, nn.Linear):  # kernel (in, out) -> (out, in)
                    layer.weight.copy_(torch.tensor(next(it).T))
                    layer.bias.copy_(torch.tensor(next(it)))
                elif isinstance(layer, nn.PReLU):  # (1, 1, C) or (C,) -> (C,)
                    layer.weight.copy_(torch.tensor(next(it).reshape(-1)))
        if next(it, None) is not None:
            raise ValueError(f"{type(self).__name__}: more Keras arrays than layers")


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """Flatten NCHW in Keras' Permute((2, 1, 3)) + Flatten order, i.e. (W, H, C), as the dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(_KerasPort):
    """Proposal network: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 4, 1)
        self.conv4_2 = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised NCHW -> (box offsets (N, 4, h, w), face probability (N, h, w)).

        `sizes` (N, 2): each image's own height and width when images of different sizes share a padded
        canvas. The pool's ceil-mode windows at an image's far edges then see only its own pixels, so every
        cell inside an image (`output_size`) is what the image alone would give.
        """
        x = self.prelu1(self.conv1(x))
        if sizes is not None:
            x = x.masked_fill(~_inside(sizes - 2, x.shape[2:]), float("-inf"))
        x = self.pool1(x)
        if sizes is not None:  # cells wholly outside an image: finite, so the convolutions stay finite
            x = x.masked_fill(~_inside((sizes - 1) // 2, x.shape[2:]), 0.0)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x), F.softmax(self.conv4_2(x), dim=1)[:, 1]

    @staticmethod
    def output_size(sizes: torch.Tensor) -> torch.Tensor:
        """(N, 2) output cells per image of input (N, 2) heights and widths: conv 3, ceil pool 2, conv 3, 3."""
        return (sizes - 1) // 2 - 4


class RNet(_KerasPort):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.fc4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.fc5_1 = nn.Linear(128, 4)
        self.fc5_2 = nn.Linear(128, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) -> (box offsets (N, 4), face probability (N,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.fc4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return self.fc5_1(x), F.softmax(self.fc5_2(x), dim=1)[:, 1]


class ONet(_KerasPort):
    """Output network on 48x48 crops; adds the five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.fc6_1 = nn.Linear(256, 4)
        self.fc6_2 = nn.Linear(256, 10)
        self.fc6_3 = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) -> (box offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5 in box units,
        face probability (N,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.fc5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return self.fc6_1(x), self.fc6_2(x), F.softmax(self.fc6_3(x), dim=1)[:, 1]


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales m * factor^k (m = 12 / min_face) while the scaled short side is still >= 12 (a P-Net cell)."""
    scales = []
    scale = CELL / min_face
    while min(height, width) * scale >= CELL:
        scales.append(scale)
        scale *= factor
    return scales


def _inside(sizes: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(N, 1, H, W) mask of the cells y < sizes[:, 0], x < sizes[:, 1] of an H x W canvas."""
    rows = torch.arange(shape[0], device=sizes.device) < sizes[:, :1]
    cols = torch.arange(shape[1], device=sizes.device) < sizes[:, 1:]
    return (rows[:, :, None] & cols[:, None, :])[:, None]


@functools.lru_cache(maxsize=256)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of exact area resampling (TensorFlow's ResizeArea, as the reference): output
    pixel i averages the input over [i r, (i+1) r), r = n_in / n_out, the end pixels weighted by the part
    inside."""
    r = n_in / n_out
    edges = np.arange(n_out + 1)[:, None] * r
    pixels = np.arange(n_in)[None, :]
    overlap = np.minimum(pixels + 1, edges[1:]) - np.maximum(pixels, edges[:-1])
    weights = (np.clip(overlap, 0, None) / r).astype(np.float32)
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """`_area_weights` on a device, kept for the next image of that size."""
    return torch.from_numpy(_area_weights(n_in, n_out).copy()).to(device)


def _area_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """NCHW -> N x C x height x width by exact area averaging, columns then rows."""
    return _area_last(_area_last(x.transpose(2, 3), height).transpose(2, 3), width)


def _area_resize_each(x: torch.Tensor, sizes: np.ndarray, out: np.ndarray) -> torch.Tensor:
    """A padded batch (N, C, H, W) whose image i fills its top-left sizes[i] corner, each image area-resized
    to its own out[i] (height, width): two batched matrix products with per-image weights, zero-padded to the
    largest output."""
    rows = _stacked_area(sizes[:, 0], out[:, 0], x.shape[2], x.device)  # (N, oh, H)
    cols = _stacked_area(sizes[:, 1], out[:, 1], x.shape[3], x.device)  # (N, ow, W)
    return rows[:, None] @ x @ cols[:, None].transpose(2, 3)


def _stacked_area(n_in: np.ndarray, n_out: np.ndarray, canvas: int, device: torch.device) -> torch.Tensor:
    """(N, max n_out, canvas) area weights of each image's own sizes, zero elsewhere; built on the host."""
    weights = np.zeros((len(n_in), int(n_out.max()), canvas), np.float32)
    for i, (a, b) in enumerate(zip(n_in, n_out)):
        weights[i, :b, :a] = _area_weights(int(a), int(b))
    return torch.from_numpy(weights).to(device)


def _area_last(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area resampling of the last dim as matrix products over blocks of output pixels, each block reading
    only the ~_AREA_SPAN input pixels it covers: a few dense products per level, at a cost per input pixel
    that does not grow with the image."""
    n_in = x.shape[-1]
    weights, r = _area_matrix(n_in, size, str(x.device)), n_in / size
    block = max(1, round(_AREA_SPAN / r))
    parts = []
    for start in range(0, size, block):
        stop = min(start + block, size)
        lo, hi = int(start * r), min(n_in, int(np.ceil(stop * r)))
        parts.append(x[..., lo:hi] @ weights[start:stop, lo:hi].T)
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre, side = the longer side ("rerec" of the original)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    side = wh.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + wh / 2 - side / 2
    return torch.cat([top_left, top_left + side], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply R-/O-Net box offsets, in units of the box size (x2 - x1 + 1, as the original code)."""
    wh = boxes[:, 2:] - boxes[:, :2] + 1
    return boxes + offsets * wh.repeat(1, 2)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
         by_min: bool = False) -> torch.Tensor:
    """Non-maximum suppression within each group (an image, or an image at one pyramid scale), as the `mtcnn`
    package does it per image. Returns kept indices, group by group (ascending ids), highest score first.

    The rule: a box is dropped when a higher-scoring box of its group overlaps it by more than `threshold`,
    whether or not that box survives itself (greedy NMS lets a dropped box drop nothing; on some photos that
    moves the final face by pixels against the reference). Overlap is IoU, or intersection / smaller area
    with `by_min` (the original's "Min" after O-Net). The order is the reference's too: numpy's argsort of
    the group's float64 scores, reversed. Face probabilities saturate to exactly 1.0 in float32, so strong
    windows tie, and which of them survives follows that order: so the scores go to the host, once per call
    for all groups. A group's result depends only on its boxes and their order, not on the other groups.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    s, g = scores.double().cpu().numpy(), groups.cpu().numpy()
    by_group = np.argsort(g, kind="stable")  # each group's boxes in their order, groups ascending
    starts = np.flatnonzero(np.r_[True, g[by_group][1:] != g[by_group][:-1]])
    order = np.concatenate([mine[np.argsort(s[mine])[::-1]] for mine in np.split(by_group, starts[1:])])
    segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g)]))  # group of each position
    order_t = torch.from_numpy(order).to(boxes.device)
    return order_t[~_overlapped(boxes[order_t], segment, threshold, by_min)]


def _overlapped(b: torch.Tensor, segment: np.ndarray, threshold: float, by_min: bool) -> torch.Tensor:
    """For boxes sorted by group and, within a group, by score: which ones an earlier box of their group
    overlaps by more than `threshold`. Blocks of rows, each against the later boxes of its rows' groups, bound
    the memory of the overlap matrix."""
    scale = 1 if b.device.type == "cpu" else _GPU_SCALE
    ends = np.r_[np.flatnonzero(segment[1:] != segment[:-1]) + 1, len(b)][segment]  # end of each one's group
    area = (b[:, 2:] - b[:, :2]).prod(dim=1)
    position = torch.arange(len(b), device=b.device)
    group = torch.from_numpy(segment).to(b.device)
    dropped = torch.zeros(len(b), dtype=torch.bool, device=b.device)
    start = 0
    while start < len(b):
        stop = min(start + _NMS_ROWS * scale, len(b))
        stop = min(stop, start + max(1, _NMS_PAIRS * scale // (int(ends[stop - 1]) - start)))
        rows, cols = slice(start, stop), slice(start, int(ends[stop - 1]))
        lt = torch.max(b[rows, None, :2], b[None, cols, :2])
        rb = torch.min(b[rows, None, 2:], b[None, cols, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        if by_min:
            overlap = inter / torch.min(area[rows, None], area[None, cols])
        else:
            overlap = inter / (area[rows, None] + area[None, cols] - inter)
        earlier = (group[rows, None] == group[None, cols]) & (position[rows, None] < position[None, cols])
        dropped[cols] |= ((overlap > threshold) & earlier).any(dim=0)
        start = stop
    return dropped


class MTCNN(nn.Module):
    """The three-stage MTCNN cascade. `detect` takes RGB uint8 images of any sizes, returns one Detections
    per image; runs on the device the module is on.

    `pad`: put images of different sizes on one padded canvas (few large kernels, for a GPU) rather than
    one batch per size (exactly the CPU results the tests hold); by default on any device but the CPU.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face: float = MIN_FACE,
        scale_factor: float = SCALE_FACTOR,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        pad: bool | None = None,
    ) -> None:
        super().__init__()
        if min_face < CELL:
            raise ValueError(f"min_face must be at least {CELL} px (the P-Net window), got {min_face}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie in (0, 1), got {scale_factor}")
        self.min_face, self.scale_factor, self.thresholds = min_face, scale_factor, tuple(thresholds)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, name in ((self.pnet, "pnet"), (self.rnet, "rnet"), (self.onet, "onet")):
            net.load_keras(keras_weights(name))
        self.eval().requires_grad_(False).to(device)
        self.pad = self.device.type != "cpu" if pad is None else pad

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each image (H x W x 3 uint8 RGB; sizes may differ), one Detections per image."""
        for k, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {k}: expected H x W x 3 uint8 RGB, got {image.dtype} {image.shape}")
        if not images:
            return []
        with tf32(False):  # IEEE fp32 on CUDA (cuDNN allows TF32 by default)
            on_device = _Images.of(images, self.device, self.pad)
            boxes, scores, idxs = self._propose(on_device)
            boxes, _, scores, idxs = self._refine(self.rnet, on_device, boxes, idxs, 24, self.thresholds[1])
            boxes = _square(boxes)
            boxes, marks, scores, idxs = self._refine(self.onet, on_device, boxes, idxs, 48, self.thresholds[2])
        return self._split(len(images), boxes, marks, scores, idxs)

    def _propose(self, images: _Images) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over each image's pyramid, the images of a canvas together at each scale; NMS within
        each image and scale, then across the scales of each image."""
        found = [(torch.zeros(0, 4, device=self.device), torch.zeros(0, device=self.device),
                  torch.zeros(0, dtype=torch.long, device=self.device))]
        n_scales = max(len(pyramid_scales(h, w, self.min_face, self.scale_factor)) for h, w in images.sizes)
        budget = _PNET_PIXELS * (1 if self.device.type == "cpu" else _GPU_SCALE)
        for members, batch in images.groups:
            sizes = images.sizes[members]
            short = sizes.min(axis=1)
            for k, scale in enumerate(pyramid_scales(short.max(), short.max(), self.min_face, self.scale_factor)):
                active = np.flatnonzero(short * scale >= CELL)  # the images whose own pyramid has this scale
                out = np.array([(int(h * scale), int(w * scale)) for h, w in sizes[active]]).reshape(-1, 2)
                if (sizes == sizes[0]).all():  # one size: no padding, and the results the tests hold
                    level, valid = _area_resize(batch, int(out[0, 0]), int(out[0, 1])), None
                else:
                    part = batch if len(active) == len(members) else batch[torch.from_numpy(active).to(self.device)]
                    level = _area_resize_each(part, sizes[active], out)
                    valid = torch.from_numpy(out).to(self.device)
                # channels-last: oneDNN runs these small convolutions faster in that layout
                level = level.contiguous(memory_format=torch.channels_last)
                index = torch.from_numpy(members[active]).to(self.device)
                chunk = max(1, budget // (level.shape[2] * level.shape[3]))
                for start in range(0, len(active), chunk):
                    part = slice(start, start + chunk)
                    boxes, scores, idxs = self._pnet_boxes(level[part], index[part], scale,
                                                           None if valid is None else valid[part])
                    found.append((boxes, scores, idxs * n_scales + k))  # NMS groups: image and scale
        boxes, scores, groups = (torch.cat(parts) for parts in zip(*found))
        keep = _nms(boxes, scores, groups, _NMS_SCALE)  # per image and scale
        boxes, scores, idxs = boxes[keep], scores[keep], groups[keep] // n_scales
        keep = _nms(boxes, scores, idxs, _NMS_PYRAMID)
        return _square(boxes[keep]), scores[keep], idxs[keep]

    def _pnet_boxes(self, level: torch.Tensor, index: torch.Tensor, scale: float, sizes: torch.Tensor | None):
        """Windows of one pyramid level whose face probability passes, regressed and mapped back to the image.
        `sizes`: each image's own level size on a padded canvas (cells outside it are not windows)."""
        offsets, prob = self.pnet(level, sizes)
        passed = prob > self.thresholds[0]
        if sizes is not None:
            passed &= _inside(PNet.output_size(sizes), prob.shape[1:])[:, 0]
        b, y, x = torch.nonzero(passed, as_tuple=True)
        # The window of cell (y, x) spans pixels 2x+1 .. 2x+12 (1-based, as the original Matlab code), 11 wide.
        window = torch.stack([x, y, x, y], dim=1).float() * _STRIDE + 1
        window[:, 2:] += CELL - 1
        boxes = (window + offsets[b, :, y, x] * (CELL - 1)) / scale
        return boxes, prob[b, y, x], index[b]

    def _refine(self, net: nn.Module, images: _Images, boxes: torch.Tensor, idxs: torch.Tensor, size: int,
                threshold: float):
        """Stage 2 or 3: crop every box to size x size, rescore and regress it, keep the confident ones, NMS.
        Returns boxes, landmarks (N, 5, 2) or None, scores, image indices."""
        outputs = [net(_crops(images, boxes[s : s + _CROP_BATCH], idxs[s : s + _CROP_BATCH], size))
                   for s in range(0, len(boxes), _CROP_BATCH)]
        if not outputs:  # no candidates: run the net on nothing to keep the output structure
            outputs = [net(torch.zeros(0, 3, size, size, device=self.device))]
        outputs = [torch.cat(parts) for parts in zip(*outputs)]
        offsets, prob = outputs[0], outputs[-1]
        marks = None
        if len(outputs) == 3:  # O-Net: landmarks in units of the (unregressed) box
            wh = boxes[:, 2:] - boxes[:, :2] + 1
            marks = outputs[1].view(-1, 2, 5).transpose(1, 2) * wh[:, None] + boxes[:, None, :2] - 1
        boxes = _regress(boxes, offsets)
        ok = prob > threshold
        boxes, prob, idxs = boxes[ok], prob[ok], idxs[ok]
        if marks is None:
            keep = _nms(boxes, prob, idxs, _NMS_RNET)
            return boxes[keep], None, prob[keep], idxs[keep]
        marks = marks[ok]
        keep = _nms(boxes, prob, idxs, _NMS_ONET, by_min=True)
        return boxes[keep], marks[keep], prob[keep], idxs[keep]

    @staticmethod
    def _split(n: int, boxes, marks, scores, idxs) -> list[Detections]:
        """Per-image Detections, rows by score (highest first; ties in NMS order, on every device)."""
        order = torch.argsort(scores, descending=True, stable=True)
        boxes, marks, scores, idxs = (t[order].cpu().float().numpy() for t in (boxes, marks, scores, idxs))
        result = []
        for k in range(n):
            mine = idxs == k
            result.append(Detections(boxes[mine], scores[mine], marks[mine]))
        return result


@dataclass(frozen=True)
class _Images:
    """The images of one `detect` call on the device, normalised as the networks were trained
    ((x - 127.5) / 128). `groups` holds (indices of the images, NCHW tensor): one group per image size, or
    (pad) one group of every image on a canvas of the largest height and width, image i in its top-left
    corner. `sizes` (count, 2): each image's own height and width."""

    count: int
    groups: list[tuple[np.ndarray, torch.Tensor]]
    sizes: np.ndarray

    @classmethod
    def of(cls, images: Sequence[np.ndarray], device: torch.device, pad: bool) -> _Images:
        sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, im in enumerate(images):
            by_size.setdefault((int(sizes[:, 0].max()), int(sizes[:, 1].max())) if pad else im.shape[:2],
                               []).append(k)
        groups = []
        for (height, width), members in by_size.items():
            canvas = np.zeros((len(members), height, width, 3), np.uint8)
            for j, k in enumerate(members):
                canvas[j, : sizes[k, 0], : sizes[k, 1]] = images[k]
            batch = torch.from_numpy(canvas).to(device)
            batch = ((batch.permute(0, 3, 1, 2).float() - 127.5) / 128).contiguous()
            groups.append((np.array(members), batch))
        return cls(len(images), groups, sizes)


def _crops(images: _Images, boxes: torch.Tensor, idxs: torch.Tensor, size: int) -> torch.Tensor:
    """size x size bilinear samples of each box, corners included, as TensorFlow's crop_and_resize in the
    reference: samples outside the image are 0 (mid-grey after normalisation). One roi_align per canvas,
    its bins placed so that their centres fall on those samples. Returns (N, 3, size, size), channels-last."""
    # channels-last: oneDNN runs the R-Net and O-Net convolutions about twice as fast in that layout
    out = boxes.new_zeros(len(boxes), 3, size, size).contiguous(memory_format=torch.channels_last)
    position = torch.full((images.count,), -1, dtype=torch.long, device=boxes.device)
    # each box's image height and width, and (size - 1) / size of them computed in float64 then rounded
    hw = torch.from_numpy(images.sizes).to(boxes.device)[idxs].flip(1).repeat(1, 2)  # (n, 4): w, h, w, h
    for members, batch in images.groups:
        index = torch.from_numpy(members).to(boxes.device)
        position[index] = torch.arange(len(members), device=boxes.device)
        local = position[idxs]
        position[index] = -1
        mine = torch.nonzero(local >= 0).squeeze(1)
        if len(mine) == 0:
            continue
        # The reference divides boxes by the image size but crop_and_resize maps [0, 1] to [0, size - 1]:
        # its samples lie on the box scaled by (size - 1) / size about the origin. We sample the same points.
        whwh = hw[mine]
        b = boxes[mine] * ((whwh - 1).double() / whwh).to(boxes.dtype)
        step = (b[:, 2:] - b[:, :2]) / (size - 1)  # (n, 2): x and y distance between samples
        first = b[:, :2]
        rois = torch.cat([local[mine, None].to(b.dtype), first - step / 2,
                          first + step * (size - 0.5)], dim=1)
        patch = roi_align(batch, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=False)
        at = first[:, None, :] + step[:, None, :] * torch.arange(size, device=b.device, dtype=b.dtype)[:, None]
        last = (whwh[:, None, :2] - 1).to(b.dtype)  # (n, 1, 2): the last pixel's x and y
        inside = (at >= 0) & (at <= last)  # (n, size, 2)
        out[mine] = patch * (inside[:, None, :, None, 1] & inside[:, None, None, :, 0])
    return out
