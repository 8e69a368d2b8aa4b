"""Image-level helpers: conversion, fitting to the model resolution, pixel -> token masks,
compositing and outpainting canvases. Images are float tensors in [0,1], [B,3,H,W]."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FIT_MODES = ("center-crop", "pad", "stretch")


def to_tensor(img, channels: int = 3) -> torch.Tensor:
    """PIL image / HWC or NCHW array / tensor -> float [B,C,H,W] in [0,1] (validated)."""
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB" if channels == 3 else "L"))
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        else:
            raise ValueError(f"unsupported image dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] not in (1, 3):
            raise ValueError(f"image array of shape {arr.shape}: expected HxW, HxWxC with C in 1/3/4, "
                             "CxHxW or BxCxHxW")
        if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
            arr = arr[..., :3] if arr.shape[-1] == 4 else arr
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        else:
            t = torch.from_numpy(arr)
    elif torch.is_tensor(img):
        t = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    else:
        raise ValueError(f"unsupported image type {type(img).__name__}")
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"image must be HxW, HxWxC or BxCxHxW; got shape {tuple(t.shape)}")
    if t.shape[1] == 1 and channels == 3:
        t = t.expand(-1, 3, -1, -1)
    if t.shape[1] != channels:
        raise ValueError(f"image must have {channels} channels, got {t.shape[1]}")
    if not torch.isfinite(t).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float images must be in [0,1]; got values in [{lo:.3f}, {hi:.3f}]")
    return t.clamp(0, 1).contiguous()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B,3,H,W] in [0,1] -> PIL images (clip x*255, truncate to uint8 as the official script)."""
    arr = (images.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def fit_image(img: Image.Image, size: int, mode: str = "center-crop") -> tuple[Image.Image, str]:
    """Bring any image to size x size. Returns the image and a sentence describing what was done."""
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode must be one of {FIT_MODES}")
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) == (size, size):
        return img, f"image is already {size}x{size}"
    if mode == "stretch":
        return img.resize((size, size), Image.BICUBIC), f"resized {w}x{h} -> {size}x{size} (aspect not kept)"
    if mode == "center-crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        out = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        return out, f"center-cropped {w}x{h} to {s}x{s}, resized to {size}x{size}"
    s = max(w, h)
    canvas = Image.new("RGB", (s, s), (0, 0, 0))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas.resize((size, size), Image.BICUBIC), f"padded {w}x{h} to {s}x{s} (black), resized to {size}x{size}"


def pixel_to_token_mask(mask, patch: int, threshold: float = 0.5) -> torch.Tensor:
    """Pixel mask [H,W] or [B,H,W] (True/1 = to regenerate) -> token mask [B, (H/p)*(W/p)] bool.

    Rule: a token is unknown when at least ``threshold`` of its p x p patch is masked (threshold 0
    means "any masked pixel").
    """
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"mask must be [H,W] or [B,H,W], got {tuple(m.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"mask threshold must be in [0, 1], got {threshold}")
    if not torch.isfinite(m).all() or m.min() < 0:
        raise ValueError("mask values must be finite and >= 0 (0/1, bool, or 0..255)")
    if m.max() > 1:
        m = m / 255.0
    if m.shape[1] % patch or m.shape[2] % patch:
        raise ValueError(f"mask size {tuple(m.shape[1:])} is not a multiple of the token size {patch}")
    frac = F.avg_pool2d(m[:, None], patch)[:, 0]
    tok = frac > 0 if threshold <= 0 else frac >= threshold
    return tok.flatten(1)


def token_mask_to_pixels(token_mask: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """[B,N] bool -> [B,H,W] float (nearest upsampling)."""
    m = token_mask.view(-1, 1, grid, grid).float()
    return F.interpolate(m, scale_factor=patch, mode="nearest")[:, 0]


def checker_overlay(images: torch.Tensor, token_mask: torch.Tensor, grid: int, patch: int,
                    level: float = 0.5) -> torch.Tensor:
    """Float images [B,3,H,W] with the tokens in ``token_mask`` [B,N] replaced by a grey checker pattern
    (how still-unknown tokens are shown)."""
    unk = token_mask_to_pixels(torch.as_tensor(token_mask).bool(), grid, patch)[:, None]
    yy, xx = torch.meshgrid(torch.arange(grid * patch), torch.arange(grid * patch), indexing="ij")
    half = max(patch // 2, 1)
    checker = (((yy // half) + (xx // half)) % 2).float() * 0.15 + level - 0.075
    return images.float().cpu() * (1 - unk) + checker * unk


def soft_mask(pixel_mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Feather a [B,H,W] {0,1} mask with a box blur of radius ``feather`` (values stay 1 inside)."""
    m = pixel_mask.float()[:, None]
    if feather <= 0:
        return m[:, 0]
    k = 2 * feather + 1
    grown = F.max_pool2d(m, k, 1, feather)  # expand first so the masked area stays fully generated
    return F.avg_pool2d(grown, k, 1, feather, count_include_pad=False)[:, 0].clamp(0, 1)


def composite(original: torch.Tensor, generated: torch.Tensor, pixel_mask: torch.Tensor,
              feather: int = 2) -> torch.Tensor:
    """Generated pixels inside the mask, original outside, with a soft edge of ``feather`` pixels."""
    if original.shape != generated.shape:
        raise ValueError(f"original {tuple(original.shape)} and generated {tuple(generated.shape)} differ")
    w = soft_mask(pixel_mask.to(original.device), feather)[:, None]
    return original * (1 - w) + generated * w


def outpaint_canvas(img: torch.Tensor, grid: int, patch: int, left: int = 0, right: int = 0,
                    top: int = 0, bottom: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink the image into the centre of the model canvas leaving ``left/right/top/bottom`` token
    columns/rows free. Returns (canvas [B,3,S,S], pixel mask [B,S,S] with 1 on the new area)."""
    inner_w, inner_h = grid - left - right, grid - top - bottom
    if min(left, right, top, bottom) < 0 or inner_w < 1 or inner_h < 1:
        raise ValueError(f"extensions {left, right, top, bottom} leave no room on a {grid}x{grid} token grid")
    S = grid * patch
    small = F.interpolate(img, size=(inner_h * patch, inner_w * patch), mode="bilinear", align_corners=False,
                          antialias=True).clamp(0, 1)
    canvas = torch.zeros(img.shape[0], img.shape[1], S, S)
    canvas[:, :, top * patch: (top + inner_h) * patch, left * patch: (left + inner_w) * patch] = small
    mask = torch.ones(img.shape[0], S, S)
    mask[:, top * patch: (top + inner_h) * patch, left * patch: (left + inner_w) * patch] = 0
    return canvas, mask
