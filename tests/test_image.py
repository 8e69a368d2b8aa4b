"""mage.image: pixel -> token masks, compositing with a soft edge, fitting images, outpainting canvas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mage import image as im


# ---------------------------------------------------------------------------- pixel_to_token_mask
def patch_with(k: int, patch: int = 4) -> torch.Tensor:
    """A 2x2-token mask whose token 0 has exactly ``k`` masked pixels, tokens 1-3 none/all/one."""
    m = torch.zeros(2 * patch, 2 * patch)
    first = torch.zeros(patch * patch)
    first[:k] = 1
    m[:patch, :patch] = first.view(patch, patch)
    m[patch:, :patch] = 1  # token 2: fully masked
    m[patch + 1, patch + 2] = 1  # token 3: a single pixel
    return m


@pytest.mark.parametrize("k", range(0, 17))
def test_threshold_half_means_at_least_half_the_patch(k):
    tok = im.pixel_to_token_mask(patch_with(k), 4, 0.5)
    assert tok.shape == (1, 4) and tok.dtype == torch.bool
    assert tok[0].tolist() == [k >= 8, False, True, False]


@pytest.mark.parametrize("k", [0, 1, 5, 16])
def test_threshold_zero_means_any_pixel_and_one_means_all(k):
    assert im.pixel_to_token_mask(patch_with(k), 4, 0.0)[0].tolist() == [k > 0, False, True, True]
    assert im.pixel_to_token_mask(patch_with(k), 4, 1.0)[0].tolist() == [k == 16, False, True, False]


def test_token_mask_accepts_uint8_bool_numpy_and_batches():
    m = patch_with(9)
    ref = im.pixel_to_token_mask(m, 4, 0.5)
    assert torch.equal(im.pixel_to_token_mask((m.numpy() * 255).astype(np.uint8), 4, 0.5), ref)
    assert torch.equal(im.pixel_to_token_mask(m.bool(), 4, 0.5), ref)
    both = im.pixel_to_token_mask(torch.stack([m, 1 - m]), 4, 0.5)
    assert both.shape == (2, 4) and torch.equal(both[0], ref[0])
    assert both[1].tolist() == [False, True, False, True]  # 7/16 masked in token 0 of 1-m


def test_token_mask_round_trip_and_row_major_order():
    tok = torch.zeros(1, 16, dtype=torch.bool)
    tok[0, 6] = True  # row 1, column 2 of a 4x4 grid
    pix = im.token_mask_to_pixels(tok, 4, 8)
    assert pix.shape == (1, 32, 32) and pix.sum() == 64 and pix[0, 8:16, 16:24].all()
    assert torch.equal(im.pixel_to_token_mask(pix, 8, 0.5), tok)


def test_token_mask_errors():
    with pytest.raises(ValueError, match="not a multiple of the token size 4"):
        im.pixel_to_token_mask(torch.zeros(10, 8), 4)
    with pytest.raises(ValueError, match=r"mask must be \[H,W\] or \[B,H,W\]"):
        im.pixel_to_token_mask(torch.zeros(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="threshold must be in"):
        im.pixel_to_token_mask(torch.zeros(8, 8), 4, threshold=1.5)


# ---------------------------------------------------------------------------- composite
def chebyshev_distance(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    yy, xx = torch.meshgrid(torch.arange(mask.shape[0]), torch.arange(mask.shape[1]), indexing="ij")
    d = torch.maximum((yy[..., None] - ys).abs(), (xx[..., None] - xs).abs())
    return d.min(-1).values


@pytest.mark.parametrize("feather", [1, 2, 3])
def test_soft_mask_is_one_inside_zero_far_away_and_graded_between(feather):
    m = torch.zeros(32, 32)
    m[12:18, 10:20] = 1
    w = im.soft_mask(m[None], feather)[0]
    d = chebyshev_distance(m.bool())
    assert (w[d == 0] == 1).all()
    assert (w[d > 2 * feather] == 0).all()
    ring = (d >= 1) & (d <= 2 * feather)
    assert ((w[ring] > 0) & (w[ring] < 1)).all()
    profile = w[15, 19: 19 + 2 * feather + 2]  # from the mask's right edge outwards
    assert profile[0] == 1 and profile[-1] == 0
    assert (profile[1:] < profile[:-1]).all()  # strictly falling off with the distance


def test_composite_hard_and_soft_edges():
    orig, gen = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    m = torch.zeros(1, 16, 16)
    m[:, 4:8, 4:8] = 1
    hard = im.composite(orig, gen, m, feather=0)
    assert torch.equal(hard[0, 0], m[0])
    soft = im.composite(orig, gen, m, feather=2)
    assert torch.equal(soft[0, :, 4:8, 4:8], torch.ones(3, 4, 4))
    assert soft[0, 0, 4:8, 2].gt(0).all() and soft[0, 0, 4:8, 2].lt(1).all()  # the soft edge
    assert soft[0, :, 13:, :].eq(0).all() and soft[0, :, :, 13:].eq(0).all()
    torch.testing.assert_close(soft, orig * (1 - soft) + gen * soft)  # a convex blend
    with pytest.raises(ValueError, match="differ"):
        im.composite(orig, gen[..., :8], m)


# ---------------------------------------------------------------------------- fit_image
def blocks(colors, size=16) -> Image.Image:
    """Colour blocks side by side (horizontal strip)."""
    arr = np.concatenate([np.full((size, size, 3), c, np.uint8) for c in colors], axis=1)
    return Image.fromarray(arr)


def test_fit_center_crop_keeps_the_middle():
    img = blocks([(255, 0, 0), (0, 255, 0), (0, 0, 255)])  # 48x16
    out, desc = im.fit_image(img, 16, "center-crop")
    assert out.size == (16, 16)
    assert (np.asarray(out) == (0, 255, 0)).all()
    assert desc == "center-cropped 48x16 to 16x16, resized to 16x16"


def test_fit_pad_adds_black_bars_and_keeps_all_content():
    img = Image.new("RGB", (32, 16), (255, 255, 255))
    out, desc = im.fit_image(img, 32, "pad")
    a = np.asarray(out)
    assert out.size == (32, 32)
    assert (a[:8] == 0).all() and (a[24:] == 0).all() and (a[8:24] == 255).all()
    assert "padded 32x16 to 32x32" in desc and "black" in desc


def test_fit_stretch_and_identity():
    img = blocks([(255, 0, 0), (0, 0, 255)], size=32)  # 64x32
    out, desc = im.fit_image(img, 32, "stretch")
    a = np.asarray(out).astype(int)
    assert out.size == (32, 32) and "aspect not kept" in desc
    assert a[:, :14, 0].min() > 240 and a[:, 18:, 2].min() > 240  # left half red, right half blue
    same, desc = im.fit_image(Image.new("RGB", (32, 32), (1, 2, 3)), 32, "pad")
    assert desc == "image is already 32x32" and np.asarray(same)[0, 0].tolist() == [1, 2, 3]
    gray, _ = im.fit_image(Image.new("L", (40, 40), 7), 32)
    assert gray.mode == "RGB" and gray.size == (32, 32)
    with pytest.raises(ValueError, match="fit mode must be one of"):
        im.fit_image(img, 32, "zoom")


# ---------------------------------------------------------------------------- outpaint_canvas
@pytest.mark.parametrize("ext", [(1, 2, 0, 3), (0, 0, 0, 0), (3, 3, 3, 3), (0, 7, 0, 0)])
def test_outpaint_canvas_geometry(ext):
    left, right, top, bottom = ext
    grid, patch = 8, 4
    x = torch.rand(1, 3, 24, 40)
    canvas, mask = im.outpaint_canvas(x, grid, patch, left, right, top, bottom)
    assert canvas.shape == (1, 3, 32, 32) and mask.shape == (1, 32, 32)
    r0, r1, c0, c1 = top * patch, (grid - bottom) * patch, left * patch, (grid - right) * patch
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[r0:r1, c0:c1] = True
    assert torch.equal(mask[0] == 0, inner)  # 1 exactly on the new area
    assert (canvas[:, :, ~inner] == 0).all()
    small = F.interpolate(x, size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(canvas[:, :, r0:r1, c0:c1], small.clamp(0, 1))
    tok = im.pixel_to_token_mask(mask, patch, 0.5)[0].view(grid, grid)
    assert int(tok.sum()) == grid * grid - (grid - top - bottom) * (grid - left - right)


@pytest.mark.parametrize("ext", [(8, 0, 0, 0), (4, 4, 0, 0), (0, 0, 5, 3), (-1, 0, 0, 0)])
def test_outpaint_canvas_rejects_impossible_extensions(ext):
    with pytest.raises(ValueError, match="leave no room on a 8x8 token grid"):
        im.outpaint_canvas(torch.rand(1, 3, 32, 32), 8, 4, *ext)


# ---------------------------------------------------------------------------- conversions
def test_to_tensor_layouts_agree():
    rgb = (np.arange(32 * 32 * 3) % 256).astype(np.uint8).reshape(32, 32, 3)
    ref = im.to_tensor(rgb)
    assert ref.shape == (1, 3, 32, 32) and ref.dtype == torch.float32
    assert torch.equal(im.to_tensor(Image.fromarray(rgb)), ref)
    assert torch.equal(im.to_tensor(torch.from_numpy(rgb).permute(2, 0, 1)), ref)  # uint8 CHW tensor
    assert torch.equal(im.to_tensor(rgb.astype(np.float32) / 255), ref)
    rgba = np.concatenate([rgb, np.zeros((32, 32, 1), np.uint8)], -1)
    assert torch.equal(im.to_tensor(rgba), ref)  # alpha dropped
    gray = im.to_tensor(rgb[..., 0])
    assert gray.shape == (1, 3, 32, 32) and torch.equal(gray[:, 1], gray[:, 0])
    assert np.array_equal(im.to_uint8(ref)[0], rgb)
    assert np.array_equal(np.asarray(im.to_pil(ref)[0]), rgb)
