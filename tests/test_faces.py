"""Decoding odd photos and the crop recipes, against hand-computed quads, areas and pixel arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from progan_cli.data.faces import (
    UnreadableImage, align_quad, box_quad, center_quad, crop_quad, load_rgb, outside_fraction, quad_side, square_quad)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)


def test_modes_become_rgb(tmp_path, rgb):
    grey = rgb[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "l.png"), np.dstack([grey] * 3))
    assert load_rgb(tmp_path / "p.png").shape == (24, 20, 3)
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgb)  # alpha dropped
    assert np.abs(load_rgb(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 40  # JPEG, lossy
    # 16-bit: v * 257 maps back to v exactly (top 8 bits), not clipped to white
    np.testing.assert_array_equal(load_rgb(tmp_path / "i16.png"), np.dstack([grey] * 3))


def test_exif_orientation_is_honoured(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    got = load_rgb(tmp_path / "o.png")
    np.testing.assert_array_equal(got, np.rot90(rgb, k=-1))


def test_broken_files_are_unreadable(tmp_path, rgb):
    Image.fromarray(rgb).resize((200, 200)).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not a photo\n")
    (tmp_path / "empty.png").write_bytes(b"")
    assert load_rgb(tmp_path / "ok.jpg").shape == (200, 200, 3)
    for name in ("truncated.jpg", "text.jpg", "empty.png"):
        with pytest.raises(UnreadableImage):
            load_rgb(tmp_path / name)


def test_missing_file_is_not_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "gone.jpg")


def test_center_crop_is_the_standard_celeba_crop():
    img = np.random.default_rng(1).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    quad = center_quad(178, 218)
    np.testing.assert_array_equal(quad, [[25, 57], [25, 185], [153, 185], [153, 57]])
    np.testing.assert_array_equal(crop_quad(img, quad, 128), img[57:185, 25:153])
    # Half size (the shared celeba-half set): x=44.5, y=60.5, 64x64
    np.testing.assert_allclose(center_quad(89, 109), [[12.5, 28.5], [12.5, 92.5], [76.5, 92.5], [76.5, 28.5]])


def test_align_quad_by_hand():
    # Eyes (40,50), (80,50); mouth corners (45,90), (75,90); nose unused.
    lm = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    # eye_avg = (60.5, 50.5), mouth_avg = (60.5, 90.5), e2e = (40, 0), e2m = (0, 40);
    # x = e2e - rot90(e2m) = (80, 0) -> unit (1, 0) * max(2*40, 1.8*40) = (80, 0); y = (0, 80);
    # c = eye_avg + 0.1 e2m = (60.5, 54.5).
    expected = [[-19.5, -25.5], [-19.5, 134.5], [140.5, 134.5], [140.5, -25.5]]
    np.testing.assert_allclose(align_quad(lm), expected, atol=1e-4)


def test_align_quad_rotates_with_the_face():
    lm = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    turned = (lm - 60) @ rot.T + 60
    quad = align_quad(turned)
    top = quad[3] - quad[0]
    assert np.isclose(np.arctan2(top[1], top[0]), theta, atol=1e-6)
    assert np.isclose(np.hypot(*top), 160, atol=1e-3)


def test_box_quad():
    np.testing.assert_allclose(box_quad([10, 20, 50, 100], margin=0.25),
                               [[-20, 10], [-20, 110], [80, 110], [80, 10]])


def test_crop_pads_by_reflection():
    img = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    quad = np.array([[-5, -5], [-5, 15], [15, 15], [15, -5]], np.float32)
    np.testing.assert_array_equal(crop_quad(img, quad, 20), np.pad(img, ((5, 5), (5, 5), (0, 0)), "reflect"))


def test_downscaling_is_antialiased():
    # A one-pixel checkerboard is flat grey once properly filtered; nearest or plain bilinear would alias.
    board = ((np.indices((512, 512)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.dstack([board] * 3)
    out = crop_quad(img, np.array([[0, 0], [0, 512], [512, 512], [512, 0]], np.float32), 32).astype(float)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 2


def test_square_quad_is_the_official_lsun_crop():
    # create_lsun: crop = min(h, w); rows (h - crop) // 2 : (h + crop) // 2, the same for columns.
    np.testing.assert_array_equal(square_quad(178, 218), [[0, 20], [0, 198], [178, 198], [178, 20]])
    np.testing.assert_array_equal(square_quad(257, 256), [[0, 0], [0, 256], [256, 256], [256, 0]])
    img = np.random.default_rng(3).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_quad(img, square_quad(178, 218), 178), img[20:198])
    assert quad_side(square_quad(178, 218)) == 178


def test_outside_fraction_by_hand():
    def square(x0, y0, side):
        return np.array([[x0, y0], [x0, y0 + side], [x0 + side, y0 + side], [x0 + side, y0]], float)

    assert outside_fraction(square(2, 2, 6), 10, 10) == 0
    assert outside_fraction(square(-5, -5, 20), 10, 10) == pytest.approx(1 - 100 / 400)
    assert outside_fraction(square(5, 0, 10), 10, 10) == pytest.approx(0.5)
    assert outside_fraction(square(20, 20, 5), 10, 10) == 1
    # A diamond (a square turned 45 degrees) centred on the photo's top edge: half of it is outside;
    # centred on the top-left corner: three quarters.
    diamond = np.array([[0, -10], [-10, 0], [0, 10], [10, 0]], float)
    assert outside_fraction(diamond + (50, 0), 100, 100) == pytest.approx(0.5)
    assert outside_fraction(diamond, 100, 100) == pytest.approx(0.75)
