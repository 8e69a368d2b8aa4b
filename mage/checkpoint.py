"""Reading and writing MAGE weights: official ``.pth`` files and our safetensors format.

Nothing here unpickles arbitrary objects: ``.pth``/``.ckpt`` files go through
``torch.load(weights_only=True)``, our own files are safetensors + JSON.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from .config import MAGEConfig, VQGANConfig, PRESETS
from .model import MAGE
from .vqgan import VQGAN

# Tensors present in official MAGE checkpoints that the forward pass never uses.
OFFICIAL_UNUSED = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed.proj.weight",
                   "patch_embed.proj.bias", "decoder_pred.weight", "decoder_pred.bias")
FORMAT_NAME = "mage-studio"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model (message says exactly why)."""


# --------------------------------------------------------------------------------------------- files
def read_state_dict(path: str | os.PathLike) -> dict:
    """Load tensors from a ``.safetensors`` file or a ``.pth``/``.ckpt`` (weights_only) file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            magic = f.read(4)
        if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):  # neither a zip nor a pickle
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (.pth/.ckpt) file") from None
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects other than tensors and plain "
            f"containers, and unpickling them could run arbitrary code ({str(e).splitlines()[0]}). "
            "If you trust the file, extract the state dict in a separate process and save it with "
            "torch.save(state_dict) or safetensors.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a PyTorch checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def unwrap(obj: dict) -> dict:
    """``{"model": sd}`` / ``{"state_dict": sd}`` / raw sd -> sd."""
    for k in ("model", "state_dict"):
        if k in obj and isinstance(obj[k], dict):
            return obj[k]
    return obj


# ----------------------------------------------------------------------------------- strict loading
def load_strict(module: torch.nn.Module, sd: dict, what: str = "model", ignore: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` with one clear error naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    sd = {k: v for k, v in sd.items() if k not in ignore}
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in sd.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(f"checkpoint for the {what} has non-tensor entries: {', '.join(not_tensors[:8])}")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def fmt(name, items):
            if not items:
                return ""
            more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
            return f"\n  {name} ({len(items)}): " + ", ".join(items[:8]) + more
        raise CheckpointError(f"checkpoint does not match the {what}:" + fmt("missing keys", missing)
                              + fmt("unexpected keys", unexpected) + fmt("shape mismatches", shapes))
    bad = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint for the {what} has non-finite values in: {', '.join(bad[:8])}")
    module.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------- config inference
def infer_vqgan_config(sd: dict) -> VQGANConfig:
    """Read the VQGAN widths from its tensors (keys without the ``vqgan.`` prefix)."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        in_ch = sd["encoder.conv_in.weight"].shape[1]
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        nrb = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
        mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
        n_embed, z = sd["quantize.embedding.weight"].shape
        out_ch = sd["decoder.conv_out.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not a VQGAN state dict: key {e} is missing") from None
    return VQGANConfig(ch=ch, ch_mult=mult, num_res_blocks=nrb, z_channels=z, n_embed=n_embed,
                       in_channels=in_ch, out_ch=out_ch)


_HEADS = {768: (12, 16), 1024: (16, 16), 64: (2, 2)}  # embed_dim -> official (enc, dec) heads


def infer_mage_config(sd: dict, vq: VQGANConfig, **overrides) -> MAGEConfig:
    """Read MAGE sizes from an official state dict (heads cannot be read from weights: they come
    from the official presets by width, else 64-dim heads, unless given in ``overrides``)."""
    try:
        V, D = sd["token_emb.word_embeddings.weight"].shape
        L = sd["token_emb.position_embeddings.weight"].shape[0]
        Dd = sd["decoder_embed.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"not a MAGE state dict: key {e} is missing") from None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    ddepth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    grid = int(round(math.sqrt(L - 1)))
    h, hd = _HEADS.get(D, (max(D // 64, 1), max(Dd // 64, 1)))
    kw = dict(img_size=grid * vq.downsample, embed_dim=D, depth=depth, num_heads=h, decoder_embed_dim=Dd,
              decoder_depth=ddepth, decoder_num_heads=hd, mlp_ratio=hidden / D,
              num_class_slots=V - vq.n_embed - 1, vqgan=vq)
    kw.update(overrides)
    return MAGEConfig(**kw)


# ----------------------------------------------------------------------------- official format
def sincos_table(dim: int, grid: int, cls_row: bool = True) -> torch.Tensor:
    """MAE 2-D sin-cos positions [1, grid*grid (+1), dim]: first half x (width), second half y."""
    import numpy as np
    om = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def one(pos):
        out = np.outer(pos.reshape(-1), om)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(xs), one(ys)], axis=1)
    if cls_row:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def to_official_state_dict(model: MAGE, vqgan: VQGAN) -> "OrderedDict[str, torch.Tensor]":
    """State dict in the official ``models_mage`` layout and key order (433 keys for ViT-B),
    recreating the tensors the forward pass does not use."""
    c = model.config
    D, Dd, p, g = c.embed_dim, c.decoder_embed_dim, c.patch_size, c.grid_size
    own = model.state_dict()
    out = OrderedDict()
    out["cls_token"] = torch.zeros(1, 1, D)
    out["pos_embed"] = sincos_table(D, g)
    out["mask_token"] = torch.zeros(1, 1, Dd)  # decoder width in the official model
    out["decoder_pos_embed"] = sincos_table(Dd, g)
    out["decoder_pos_embed_learned"] = own["decoder_pos_embed_learned"]
    for k, v in vqgan.state_dict().items():
        out["vqgan." + k] = v
    for k, v in own.items():
        if k.startswith("token_emb."):
            out[k] = v
    out["patch_embed.proj.weight"] = torch.zeros(D, c.vqgan.in_channels, p, p)
    out["patch_embed.proj.bias"] = torch.zeros(D)
    for k, v in own.items():
        if k.startswith(("blocks.", "norm.")):
            out[k] = v
    for k, v in own.items():
        if k.startswith(("decoder_embed.", "decoder_blocks.", "decoder_norm.")):
            out[k] = v
    out["decoder_pred.weight"] = torch.zeros(p * p * c.vqgan.in_channels, Dd)
    out["decoder_pred.bias"] = torch.zeros(p * p * c.vqgan.in_channels)
    for k, v in own.items():
        if k.startswith("mlm_layer."):
            out[k] = v
    assert len(out) == len(own) + len(vqgan.state_dict()) + len(OFFICIAL_UNUSED), "key bookkeeping"
    return out


def split_official(sd: dict) -> tuple[dict, dict]:
    """Official MAGE state dict -> (MAGE keys without unused tensors, VQGAN keys without prefix)."""
    mage_sd = {k: v for k, v in sd.items() if not k.startswith("vqgan.") and k not in OFFICIAL_UNUSED}
    vq_sd = {k[len("vqgan."):]: v for k, v in sd.items() if k.startswith("vqgan.")}
    return mage_sd, vq_sd


def load_vqgan(path_or_sd, config: VQGANConfig | None = None) -> VQGAN:
    """A stand-alone official VQGAN checkpoint (raw or ``{"state_dict": ...}``) or a MAGE one."""
    sd = unwrap(read_state_dict(path_or_sd) if not isinstance(path_or_sd, dict) else path_or_sd)
    if any(k.startswith("vqgan.") for k in sd):
        sd = split_official(sd)[1]
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # taming checkpoints may carry one
    vq = VQGAN(config or infer_vqgan_config(sd))
    load_strict(vq, sd, "VQGAN")
    return vq.eval()


def load_official(path_or_sd, vqgan: str | os.PathLike | VQGAN | None = None,
                  config: MAGEConfig | str | None = None) -> tuple[MAGE, VQGAN]:
    """An official MAGE ``.pth`` (``{"model": sd}``) -> (MAGE, VQGAN), both in eval mode.

    ``vqgan`` overrides the tokenizer (a path or a module) when the file has none.
    ``config`` is a MAGEConfig or preset name; by default it is read from the tensors.
    """
    sd = unwrap(read_state_dict(path_or_sd) if not isinstance(path_or_sd, dict) else path_or_sd)
    mage_sd, vq_sd = split_official(sd)
    if isinstance(vqgan, VQGAN):
        vq = vqgan
    elif vqgan is not None:
        vq = load_vqgan(vqgan)
    elif vq_sd:
        vq = load_vqgan(vq_sd)
    else:
        raise CheckpointError("this checkpoint carries no VQGAN weights (no 'vqgan.*' keys); "
                              "pass the tokenizer checkpoint (vqgan_jax_strongaug.ckpt) as well")
    if isinstance(config, str):
        if config not in PRESETS:
            raise CheckpointError(f"unknown preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config](vqgan=vq.config)
    cfg = config or infer_mage_config(mage_sd, vq.config)
    model = MAGE(cfg)
    load_strict(model, mage_sd, "MAGE model")
    return model.eval(), vq


# ------------------------------------------------------------------------------------ our format
def save_native(directory: str | os.PathLike, model: MAGE, vqgan: VQGAN, meta: dict | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (MAGE keys, VQGAN under ``vqgan.``)."""
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in model.state_dict().items()}
    tensors.update({"vqgan." + k: v for k, v in vqgan.state_dict().items()})
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    cfg = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model.config.to_dict(),
           "dtype": str(dtype or torch.float32).replace("torch.", ""), "meta": meta or {}}
    tmp = d / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME})
    os.replace(tmp, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def load_native(directory: str | os.PathLike) -> tuple[MAGE, VQGAN, dict]:
    """Our directory format -> (MAGE, VQGAN, meta). Weights stored in fp16/bf16 are cast to fp32."""
    d = Path(directory)
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{d} is not a MAGE Studio model directory (needs config.json and "
                              "model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{cfg_path} is not a {FORMAT_NAME} config (format={cfg.get('format')!r})")
    try:
        config = MAGEConfig.from_dict(cfg["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path} has an invalid model configuration: {e}") from None
    sd = read_state_dict(w_path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    mage_sd, vq_sd = split_official(sd)
    vq = VQGAN(config.vqgan)
    load_strict(vq, vq_sd, "VQGAN")
    model = MAGE(config)
    load_strict(model, mage_sd, "MAGE model")
    return model.eval(), vq.eval(), cfg.get("meta", {})
