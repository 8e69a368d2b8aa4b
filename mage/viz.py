"""Pictures of the decoding process (no UI code): nearest upscaling and tiling, token-level heat-maps,
the commit-order map, token-mask overlays, animated GIFs of the steps and per-step JSON records.
Images here are uint8 arrays [B,H,W,3] unless said otherwise. (The 2-D PCA map of embeddings is
:func:`mage.retrieval.pca_2d`.)

    from mage import viz
    steps = list(pipe.generate_steps(4, steps=12, seed=0))
    order = viz.commit_order(steps)                   # [4,64]: step that fixed each token
    grid = viz.tile(viz.upscale(viz.order_image(order, 12, pipe.config.grid_size), 4))
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .image import checker_overlay, to_uint8, token_mask_to_pixels


def as_uint8(images) -> np.ndarray:
    """float tensor [B,3,H,W] in [0,1] or uint8 array [B,H,W,3] -> uint8 [B,H,W,3]."""
    if torch.is_tensor(images):
        return to_uint8(images)
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B,H,W,3] or a float tensor [B,3,H,W], got {a.dtype} {a.shape}")
    return a


def upscale(images, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (keeps pixels/tokens crisp)."""
    a = as_uint8(images)
    f = int(factor)
    if f < 1:
        raise ValueError("factor must be >= 1")
    return a if f == 1 else a.repeat(f, axis=1).repeat(f, axis=2)


def tile(images, cols: int | None = None, pad: int = 4, fill: int = 255) -> np.ndarray:
    """Lay a batch [B,H,W,3] out on a grid (``cols`` default: ceil(sqrt(B))) -> one [H',W',3] image."""
    a = as_uint8(images)
    B, H, W, C = a.shape
    cols = cols or math.ceil(math.sqrt(B))
    rows = math.ceil(B / cols)
    if B == 1:
        return a[0]
    out = np.full((rows * H + (rows - 1) * pad, cols * W + (cols - 1) * pad, C), fill, np.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        out[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = a[i]
    return out


def colorize(values, cmap: str = "magma", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Float array [...] -> uint8 RGB [..., 3] through a matplotlib colour map (NaN -> mid grey)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    x = np.clip((np.nan_to_num(v) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgb = (matplotlib.colormaps[cmap](x)[..., :3] * 255).round().astype(np.uint8)
    rgb[nan] = 128
    return rgb


def token_image(values, grid: int, patch: int, cmap: str = "magma", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Per-token values [B,N] -> colour-mapped images [B, grid*patch, grid*patch, 3] (one flat cell per token)."""
    v = torch.as_tensor(values).float().reshape(-1, grid, grid).numpy()
    return upscale(colorize(v, cmap, vmin, vmax), patch)


def confidence_image(step, grid: int, patch: int, codebook_size: int | None = None) -> np.ndarray:
    """Heat-map of ``step.probs`` (model probability of the token now at each position; black = low,
    yellow = 1). With ``codebook_size`` K the scale is logarithmic from 1/K (chance) to 1."""
    return token_image(confidence_values(step.probs, codebook_size), grid, patch, "magma")


def confidence_values(probs, codebook_size: int | None = None) -> torch.Tensor:
    """Probabilities -> [0,1] display values: linear, or log-scaled between 1/K (0) and 1 (1)."""
    p = torch.as_tensor(probs).float()
    if not codebook_size or codebook_size < 2:
        return p.clamp(0, 1)
    return (1 - p.clamp_min(1e-12).log() / math.log(1.0 / codebook_size)).clamp(0, 1)


def commit_order(steps) -> torch.Tensor:
    """[B,N] long: the step (0-based) at which each token was fixed; -1 for tokens known from the start."""
    steps = list(steps)
    if not steps:
        raise ValueError("no steps")
    order = torch.full(steps[0].committed.shape, -1, dtype=torch.long)
    for s in steps:
        order[s.committed & (order < 0)] = s.step
    return order


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def order_image(order: torch.Tensor, num_steps: int, grid: int, cell: int = 32, numbers: bool = True,
                cmap: str = "viridis") -> np.ndarray:
    """Commit-order map [B, grid*cell, grid*cell, 3]: early steps dark blue, late steps yellow, tokens that
    were known from the start light grey; with ``numbers`` and cells >= 14 px, the step (1-based) is written
    in each cell."""
    o = order.reshape(-1, grid, grid).numpy().astype(np.float64)
    vals = np.where(o < 0, np.nan, o / max(num_steps - 1, 1))
    rgb = colorize(vals, cmap)
    rgb[o < 0] = 220
    out = upscale(rgb, cell)
    if not numbers or cell < 14:
        return out
    font = _font(max(8, cell // 2))
    res = []
    for b in range(out.shape[0]):
        im = Image.fromarray(out[b])
        d = ImageDraw.Draw(im)
        for i in range(grid):
            for j in range(grid):
                if o[b, i, j] < 0:
                    continue
                text = str(int(o[b, i, j]) + 1)
                light = vals[b, i, j] > 0.6
                d.text((j * cell + cell / 2, i * cell + cell / 2), text, fill=(0, 0, 0) if light else (255, 255, 255),
                       font=font, anchor="mm")
        res.append(np.asarray(im))
    return np.stack(res)


def mark_tokens(images, token_mask: torch.Tensor, grid: int, patch: int, color=(230, 40, 40),
                alpha: float = 0.55, lines: bool = True) -> np.ndarray:
    """Tint the tokens in ``token_mask`` [B,N] on ``images`` (float [B,3,H,W] or uint8) and draw the token grid."""
    a = as_uint8(images).astype(np.float32)
    m = token_mask_to_pixels(torch.as_tensor(token_mask).bool(), grid, patch).numpy()[..., None]
    out = a * (1 - alpha * m) + np.asarray(color, np.float32) * alpha * m
    if lines and patch >= 4:
        out[:, ::patch, :, :] = out[:, ::patch, :, :] * 0.6 + 40
        out[:, :, ::patch, :] = out[:, :, ::patch, :] * 0.6 + 40
    return out.round().clip(0, 255).astype(np.uint8)


def checker_tokens(images, token_mask: torch.Tensor, grid: int, patch: int, level: float = 0.5) -> np.ndarray:
    """Replace the tokens in ``token_mask`` by a grey checker pattern (the "unknown" look of pipe.preview)."""
    x = images if torch.is_tensor(images) else torch.from_numpy(as_uint8(images)).permute(0, 3, 1, 2).float() / 255
    return to_uint8(checker_overlay(x, token_mask, grid, patch, level))


def save_gif(frames: list[np.ndarray], path, duration_ms: int = 250, hold_last_ms: int = 1500) -> Path:
    """Write RGB frames [H,W,3] uint8 as a looping animated GIF; the last frame is held longer."""
    if not frames:
        raise ValueError("no frames")
    path = Path(path)
    ims = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(ims) - 1) + [hold_last_ms]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=durations, loop=0, optimize=False)
    return path


def steps_record(steps, mask_token_id: int, digits: int = 4) -> dict:
    """Per-step token data as a JSON-serialisable dict. Per step and image: ``tokens`` (-1 = still unknown),
    ``committed`` (positions fixed at this step), ``probs`` (model probability of the token now at each
    position) and ``unknown_left``. Also ``commit_order`` (step that fixed each token, -1 = given)."""
    steps = list(steps)
    if not steps:
        raise ValueError("no steps")
    out = []
    for s in steps:
        toks = s.tokens.masked_fill(s.unknown, -1)
        out.append({
            "step": s.step + 1,
            "unknown_left": s.unknown.sum(1).tolist(),
            "committed": [torch.nonzero(c).flatten().tolist() for c in s.committed],
            "tokens": toks.tolist(),
            "probs": [[round(float(p), digits) for p in row] for row in s.probs],
        })
    B, N = steps[0].tokens.shape
    return {"num_steps": steps[0].num_steps, "batch": B, "num_tokens": N, "mask_token_id": int(mask_token_id),
            "commit_order": commit_order(steps).tolist(), "steps": out}


def save_json(record: dict, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(record, separators=(",", ":")))
    return path

