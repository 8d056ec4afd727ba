"""MTCNN in PyTorch against the `mtcnn` package on TensorFlow (golden detections made by
tools/make_mtcnn_golden.py) and against a plain-numpy evaluation of the Keras layer math on the shipped weights."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from progan_cli.data import mtcnn as mtcnn_module
from progan_cli.data.mtcnn import MTCNN, PNet, keras_weights, pyramid_scales
from conftest import FIXTURES, ROOT, shared

GOLDEN = json.loads((FIXTURES / "mtcnn_golden.json").read_text())["images"]
# Golden faces this confident must be found by us, and ours this confident must be in the golden. Fainter ones
# sit near the O-Net threshold (0.7), where rounding-level differences may tip them either way.
SURE = 0.9


def _golden_tool():
    """tools/make_mtcnn_golden.py as a module: its `load_rgb` gives the very pixels the golden was made from."""
    spec = importlib.util.spec_from_file_location("make_mtcnn_golden", ROOT / "tools" / "make_mtcnn_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _golden_tool()


@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN()


def _photo(name: str) -> np.ndarray:
    return TOOL.load_rgb(FIXTURES / "photos" / name)


# --- the weight port, against the Keras layer math in numpy (NHWC, HWIO kernels, as Keras computes) ----------


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D, 'valid', stride 1: x (N, H, W, I), kernel (kh, kw, I, O)."""
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, H', W', I, kh, kw
    return np.einsum("nhwiyx,yxio->nhwo", windows, kernel) + bias


def _prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, x * alpha.reshape(-1))


def _maxpool(x: np.ndarray, k: int, s: int, padding: str) -> np.ndarray:
    """Keras MaxPooling2D; 'same' pads the far side with -inf as TensorFlow does for these sizes."""
    n, h, w, c = x.shape
    if padding == "same":
        oh, ow = -(-h // s), -(-w // s)
        ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    return windows.max(axis=(4, 5))


def _softmax1(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True))[..., 1]


def _keras_net(name: str, x: np.ndarray) -> list[np.ndarray]:
    """P-, R- or O-Net of mtcnn/network/*.py evaluated in float64 numpy from the raw Keras arrays."""
    w = [a.astype(np.float64) for a in keras_weights(name)]
    pools = {"pnet": [(2, 2, "same")], "rnet": [(3, 2, "same"), (3, 2, "valid")],
             "onet": [(3, 2, "same"), (3, 2, "valid"), (2, 2, "same")]}[name]
    n_conv = {"pnet": 3, "rnet": 3, "onet": 4}[name]
    for i in range(n_conv):
        x = _prelu(_conv(x, w[3 * i], w[3 * i + 1]), w[3 * i + 2])
        if i < len(pools):
            x = _maxpool(x, *pools[i])
    rest = w[3 * n_conv :]
    if name == "pnet":
        return [_conv(x, rest[0], rest[1]), _softmax1(_conv(x, rest[2], rest[3]))]
    x = x.transpose(0, 2, 1, 3).reshape(len(x), -1)  # Permute((2, 1, 3)) + Flatten
    x = _prelu(x @ rest[0] + rest[1], rest[2])
    heads = [x @ rest[i] + rest[i + 1] for i in range(3, len(rest), 2)]
    return heads[:-1] + [_softmax1(heads[-1])]


@pytest.mark.parametrize("name, size", [("pnet", (31, 26)), ("rnet", (24, 24)), ("onet", (48, 48))])
def test_networks_match_keras_layer_math(mtcnn: MTCNN, name: str, size: tuple[int, int]) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, size=(3, *size, 3))
    expected = _keras_net(name, x)
    with torch.no_grad():
        got = getattr(mtcnn, name)(torch.from_numpy(x).float().permute(0, 3, 1, 2))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = g.numpy()
        if g.ndim == 4:  # P-Net maps NCHW -> NHWC
            g = g.transpose(0, 2, 3, 1)
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=2e-5)


def test_weights_found_without_importing_mtcnn_or_tensorflow(mtcnn: MTCNN) -> None:
    assert "mtcnn" not in sys.modules and "tensorflow" not in sys.modules


# --- agreement with the mtcnn package --------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _check_against_golden(key: str, det) -> None:
    gold = GOLDEN[key]
    boxes, scores = np.asarray(gold["boxes"]).reshape(-1, 4), np.asarray(gold["scores"])
    marks = np.asarray(gold["landmarks"]).reshape(-1, 5, 2)
    overlap = _iou(boxes, det.boxes) if len(boxes) and len(det) else np.zeros((len(boxes), len(det)))
    for i in np.flatnonzero(scores >= SURE):
        j = int(overlap[i].argmax()) if len(det) else -1
        assert j >= 0 and overlap[i, j] >= 0.9, f"{key}: golden face {i} (score {scores[i]}) not found"
        assert np.abs(det.landmarks[j] - marks[i]).max() <= 2, f"{key}: face {i} landmarks"
        assert abs(det.scores[j] - scores[i]) <= 0.01, f"{key}: face {i} confidence"
    for j in np.flatnonzero(det.scores >= SURE):
        assert len(boxes) and overlap[:, j].max() >= 0.9, f"{key}: our face {j} is not in the golden"


def _golden_keys(prefix: str) -> list[str]:
    return sorted(k for k in GOLDEN if k.startswith(prefix))


def test_golden_covers_the_fixture_photos() -> None:
    photos = {p.name for p in (FIXTURES / "photos").iterdir() if p.suffix.lower() in TOOL.EXTENSIONS}
    assert {k.split("/")[-1] for k in _golden_keys("fixtures/photos/")} == photos


def test_fixture_photos_agree_with_mtcnn_package(mtcnn: MTCNN) -> None:
    keys = _golden_keys("fixtures/photos/")
    # all in one call: the photos differ in size
    found = mtcnn.detect([TOOL.load_rgb(FIXTURES / "photos" / k.split("/")[-1]) for k in keys])
    for key, det in zip(keys, found):
        _check_against_golden(key, det)
        assert (np.diff(det.scores) <= 0).all()
    assert sum(len(d) for d in found) >= 10


@pytest.mark.parametrize("folder", ["celeba-full", "faces-wild"])
def test_shared_photos_agree_with_mtcnn_package(mtcnn: MTCNN, folder: str) -> None:
    root = shared(folder)
    keys = _golden_keys(f"shared/{folder}/")
    assert keys, "the golden fixture lacks this folder: re-run tools/make_mtcnn_golden.py"
    for start in range(0, len(keys), 16):
        chunk = keys[start : start + 16]
        for key, det in zip(chunk, mtcnn.detect([TOOL.load_rgb(root / k.split("/")[-1]) for k in chunk])):
            _check_against_golden(key, det)


# --- behaviour -----------------------------------------------------------------------------------------------


def test_no_face_photo_gives_no_detection(mtcnn: MTCNN) -> None:
    (det,) = mtcnn.detect([_photo("mtcnn_no-faces.jpg")])
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.landmarks.shape == (0, 5, 2)


def test_mixed_sizes_in_one_call_equal_separate_calls(mtcnn: MTCNN) -> None:
    portrait, empty = _photo("deepface_img25.jpg"), _photo("mtcnn_no-faces.jpg")
    images = [portrait, empty, portrait[40:360, 20:], portrait[:, ::-1].copy(), np.zeros((9, 30, 3), np.uint8)]
    together = mtcnn.detect(images)
    assert len(together) == len(images)
    for image, det in zip(images, together):
        (alone,) = mtcnn.detect([image])
        np.testing.assert_allclose(det.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(det.landmarks, alone.landmarks, atol=1e-3)
        np.testing.assert_allclose(det.scores, alone.scores, atol=1e-5)
    assert [len(d) > 0 for d in together] == [True, False, True, True, False]
    assert together[0].boxes.dtype == np.float32
    # the crop and the mirror image show the same face, shifted by the crop's corner or mirrored
    width = portrait.shape[1]
    mirrored = together[3].boxes[:1, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [width, 0, width, 0]
    assert _iou(together[0].boxes[:1], together[2].boxes[:1] + [20, 40, 20, 40])[0, 0] > 0.8
    assert _iou(together[0].boxes[:1], mirrored)[0, 0] > 0.8


def test_greyscale_as_rgb_finds_the_same_faces(mtcnn: MTCNN) -> None:
    colour = _photo("facenet_multiface.jpg")
    grey = np.repeat(np.rint(colour @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None], 3, axis=2)
    det_colour, det_grey = mtcnn.detect([colour, grey])
    assert len(det_grey) == len(det_colour) == 6
    assert (_iou(det_colour.boxes, det_grey.boxes).max(axis=1) > 0.8).all()


def test_landmark_order_on_a_frontal_face(mtcnn: MTCNN) -> None:
    (det,) = mtcnn.detect([_photo("deepface_img12.jpg")])
    (le, re, nose, ml, mr) = det.landmarks[0]
    assert le[0] < nose[0] < re[0] and ml[0] < mr[0]  # left = image left
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])
    x1, y1, x2, y2 = det.boxes[0]
    assert (det.landmarks[0] > [x1, y1]).all() and (det.landmarks[0] < [x2, y2]).all()


def test_rejects_what_is_not_rgb_uint8(mtcnn: MTCNN) -> None:
    assert mtcnn.detect([]) == []
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        mtcnn.detect([np.zeros((20, 20), np.uint8)])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        mtcnn.detect([np.zeros((20, 20, 3), np.float32)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu(mtcnn: MTCNN) -> None:
    images = [_photo("facenet_multiface.jpg"), _photo("deepface_couple.jpg")]
    for cpu, gpu in zip(mtcnn.detect(images), MTCNN(device="cuda").detect(images)):
        assert len(cpu) == len(gpu)
        np.testing.assert_allclose(cpu.boxes, gpu.boxes, atol=0.05)
        np.testing.assert_allclose(cpu.landmarks, gpu.landmarks, atol=0.05)


# --- the padded canvas (the GPU's path, run here on the CPU) --------------------------------------------------


@pytest.fixture(scope="module")
def padded() -> MTCNN:
    return MTCNN(pad=True)


@pytest.mark.slow
def test_padded_canvas_agrees_with_the_exact_path_and_the_package(mtcnn: MTCNN, padded: MTCNN) -> None:
    # Photos of eight sizes on one canvas: per image area weights and masked pooling give what each image
    # gives alone, to float32 rounding (different matrix-product and convolution shapes), and the golden holds.
    keys = _golden_keys("fixtures/photos/")
    photos = [TOOL.load_rgb(FIXTURES / "photos" / k.split("/")[-1]) for k in keys]
    assert len({p.shape for p in photos}) == len(photos) >= 8
    exact, mixed = mtcnn.detect(photos), padded.detect(photos)
    for key, a, b in zip(keys, exact, mixed):
        _check_against_golden(key, b)
        assert len(a) == len(b), key
        np.testing.assert_allclose(b.boxes, a.boxes, atol=0.01)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=0.01)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)


def test_one_pnet_pass_per_scale_for_photos_of_many_sizes(padded: MTCNN) -> None:
    # The point of the canvas: P-Net runs once per pyramid scale, not once per scale and image size.
    portrait = _photo("deepface_img25.jpg")
    images = [portrait[: 400 - 17 * k, : 300 - 11 * k] for k in range(6)]
    calls = []
    hook = padded.pnet.conv1.register_forward_hook(lambda *args: calls.append(1))
    try:
        padded.detect(images)
    finally:
        hook.remove()
    assert len(calls) == len(pyramid_scales(*images[0].shape[:2], 20, 0.709))


@pytest.mark.parametrize("sizes", [[(31, 26), (24, 40), (13, 13)], [(12, 12), (27, 27)]])
def test_pnet_on_a_padded_canvas_equals_each_image_alone(mtcnn: MTCNN, sizes) -> None:
    # Odd and even sides: the ceil-mode pool's last window must see the image's own pixels only.
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.uniform(-1, 1, (3, h, w))).float() for h, w in sizes]
    canvas = torch.zeros(len(sizes), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for x, image in zip(canvas, images):
        x[:, : image.shape[1], : image.shape[2]] = image
    offsets, prob = mtcnn.pnet(canvas, torch.tensor(sizes))
    cells = PNet.output_size(torch.tensor(sizes))
    for k, image in enumerate(images):
        alone_offsets, alone_prob = mtcnn.pnet(image[None])
        h, w = cells[k].tolist()
        assert alone_prob.shape[1:] == (h, w)
        np.testing.assert_allclose(prob[k, :h, :w], alone_prob[0], atol=1e-6)
        np.testing.assert_allclose(offsets[k, :, :h, :w], alone_offsets[0], atol=1e-5)


def _nms_by_the_rule(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float,
                     by_min: bool) -> list[int]:
    """Per group (ascending), numpy's reversed argsort of the float64 scores; a box goes when an earlier one
    of its group overlaps it by more than the threshold, by a double loop."""
    kept = []
    for k in np.unique(groups):
        mine = np.flatnonzero(groups == k)
        order = mine[np.argsort(scores[mine].astype(np.float64))[::-1]]
        for j, b in enumerate(order):
            lt = np.maximum(boxes[order[:j], :2], boxes[b, :2])
            rb = np.minimum(boxes[order[:j], 2:], boxes[b, 2:])
            inter = np.clip(rb - lt, 0, None).prod(axis=1)
            area = lambda x: (x[..., 2:] - x[..., :2]).prod(axis=-1)  # noqa: E731
            overlap = (inter / np.minimum(area(boxes[order[:j]]), area(boxes[b])) if by_min
                       else inter / (area(boxes[order[:j]]) + area(boxes[b]) - inter))
            if not (overlap > threshold).any():
                kept.append(int(b))
    return kept


@pytest.mark.parametrize("by_min", [False, True])
@pytest.mark.parametrize("rows, pairs", [(512, 1 << 22), (7, 50)])
def test_nms_over_many_groups_follows_the_rule(monkeypatch, by_min: bool, rows: int, pairs: int) -> None:
    # Clustered boxes in 5 groups of different sizes, with tied scores (saturated probabilities tie); small
    # blocks make the overlap blocks straddle groups.
    monkeypatch.setattr(mtcnn_module, "_NMS_ROWS", rows)
    monkeypatch.setattr(mtcnn_module, "_NMS_PAIRS", pairs)
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(5), [40, 3, 1, 25, 11]))
    corner = rng.uniform(0, 60, (len(groups), 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.uniform(20, 40, (len(groups), 2))], axis=1).astype(np.float32)
    scores = np.where(rng.uniform(size=len(groups)) < 0.3, 1.0, rng.uniform(0.6, 1, len(groups))).astype(np.float32)
    got = mtcnn_module._nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.5, by_min)
    assert got.tolist() == _nms_by_the_rule(boxes, scores, groups, 0.5, by_min)


def test_detection_runs_in_true_fp32_and_restores_the_flags(mtcnn: MTCNN) -> None:
    """cuDNN allows TF32 by default: detection turns it off (every network pass sees it off) and restores it.
    The flags are process settings, so this holds on the CPU too."""
    seen: list[bool] = []
    hook = mtcnn.pnet.conv1.register_forward_hook(
        lambda *args: seen.append(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32))
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        mtcnn.detect([TOOL.load_rgb(FIXTURES / "photos" / "mtcnn_ivan.jpg")])
        assert seen and not any(seen)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        hook.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
