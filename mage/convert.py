"""Official MAGE checkpoints -> our format (checked), and classifier checkpoints as fine-tune/probe starts.

    from mage.convert import convert_official
    report = convert_official("mage-vitb-1600.pth", "mage-vitb", dtype="bfloat16")
    print(report["max_abs_logit_diff"])

Conversion = load with :func:`mage.load_official`, save with :func:`mage.save_native` (+ model card), reload
the saved folder and compare logits on a fixed seeded masked token input (and VQGAN ids on a fixed image)
against the source; a mismatch raises :class:`ConversionError`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoint import (CheckpointError, _HEADS, infer_mage_config, infer_vqgan_config, load_native, load_official,
                         load_strict, load_vqgan, read_state_dict, save_native, split_official, unwrap)
from .config import MAGEConfig, VQGANConfig
from .model import MAGE
from .vqgan import VQGAN

FP32_TOL = 1e-5
# Half-precision files: every stored tensor must equal the source rounded to that dtype (checked exactly);
# the logits may then drift from the fp32 source by at most this fraction of the largest |logit|.
HALF_REL_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
DTYPES = {"float32": None, "fp32": None, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

REPO = "https://github.com/LTH14/mage"
OFFICIAL = {  # (embed_dim, depth) -> what is known about the released pre-trained checkpoint (spec 5, 7)
    (768, 12): {"name": "MAGE ViT-B/16 (official, 1600 epochs)", "file": "mage-vitb-1600.pth",
                "url": "https://drive.google.com/file/d/1Q6tbt3vF0bSrv5sPrjpFu8ksG3vTsVX2/view?usp=sharing",
                "metrics": {"ImageNet 256 unconditional FID (50k)": 11.1, "ImageNet 256 unconditional IS": 81.2,
                            "linear probe top-1 (%)": 74.7, "fine-tuned top-1 (%)": 82.5}},
    (1024, 24): {"name": "MAGE ViT-L/16 (official, 1600 epochs)", "file": "mage-vitl-1600.pth",
                 "url": "https://drive.google.com/file/d/15xBPa8EIa0IRUiRYtXiYOC9JZVyMIFrB/view?usp=sharing",
                 "metrics": {"ImageNet 256 unconditional FID (50k)": 9.10, "ImageNet 256 unconditional IS": 105.1,
                             "linear probe top-1 (%)": 78.9, "fine-tuned top-1 (%)": 83.9}},
}


class ConversionError(CheckpointError):
    """The converted model does not reproduce the source checkpoint."""


def parse_dtype(d) -> torch.dtype | None:
    if d is None or isinstance(d, torch.dtype):
        return None if d == torch.float32 else d
    if d not in DTYPES:
        raise ValueError(f"unknown dtype {d!r}; use one of {sorted(DTYPES)}")
    return DTYPES[d]


# ------------------------------------------------------------------------------------ verification
def fixed_inputs(config: MAGEConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded check input: MAGE ids [2, N+1] (50% and 90% of the tokens masked) and one image."""
    g = torch.Generator().manual_seed(seed)
    N = config.num_tokens
    tokens = torch.randint(0, config.codebook_size, (2, N), generator=g)
    mask = torch.rand(2, N, generator=g) < torch.tensor([[0.5], [0.9]])
    ids = torch.cat([torch.full((2, 1), config.no_class_id), tokens.masked_fill(mask, config.mask_token_id)], 1)
    image = torch.rand(1, 3, config.img_size, config.img_size, generator=g)
    return ids, image


@torch.inference_mode()
def compare_models(src: tuple[MAGE, VQGAN], new: tuple[MAGE, VQGAN], dtype: torch.dtype | None = None,
                   seed: int = 0) -> dict:
    """Logits and VQGAN ids of ``new`` vs ``src`` on :func:`fixed_inputs`; raises ConversionError when
    they differ by more than the dtype allows. ``dtype``: the precision the weights were stored in."""
    (m0, v0), (m1, v1) = src, new
    rep = {}
    if dtype is not None:  # the file must hold exactly the rounded source weights
        for name, a, b in _paired_tensors(src, new):
            if a.is_floating_point() and not torch.equal(a.to(dtype).float(), b.float()):
                raise ConversionError(f"stored tensor {name} is not the source rounded to {dtype}")
    ids, image = fixed_inputs(m0.config, seed)
    l0, l1 = m0.logits(ids), m1.logits(ids)
    diff = (l0 - l1).abs().max().item()
    rep["max_abs_logit_diff"] = diff
    rep["max_abs_logit"] = l0.abs().max().item()
    rep["argmax_agreement"] = (l0.argmax(-1) == l1.argmax(-1)).float().mean().item()
    i0, i1 = v0.encode(image), v1.encode(image)
    rep["vqgan_id_agreement"] = (i0 == i1).float().mean().item()
    if dtype is None:
        rep["tolerance"] = FP32_TOL
        if not diff <= FP32_TOL:
            raise ConversionError(f"converted model differs from the source: max |logit diff| {diff:.3g} > {FP32_TOL}")
        if not torch.equal(i0, i1):
            raise ConversionError("converted VQGAN gives different token ids than the source")
    else:
        tol = HALF_REL_TOL[dtype] * max(1.0, rep["max_abs_logit"])
        rep["tolerance"] = tol
        if not diff <= tol:
            raise ConversionError(f"{dtype} weights move the logits too far: max |diff| {diff:.3g} > {tol:.3g}")
    return rep


def _paired_tensors(src, new):
    for prefix, a, b in (("", src[0], new[0]), ("vqgan.", src[1], new[1])):
        sb = b.state_dict()
        for k, v in a.state_dict().items():
            yield prefix + k, v, sb[k]


def official_meta(config: MAGEConfig, source: str) -> dict:
    """Model-card metadata for a converted official checkpoint (metrics only for the released sizes)."""
    known = OFFICIAL.get((config.embed_dim, config.depth)) if config.img_size == 256 else None
    meta = {"converted_from": f"{Path(source).name} ({'official ' + REPO if known else 'official MAGE format'})",
            "license": "MIT" if known else "unknown (check the source of the checkpoint)"}
    if known:
        meta.update(name=known["name"], dataset="ImageNet-1k (ILSVRC-2012) training set, 256x256, no labels",
                    license_note="licence of the official LTH14/mage repository, which publishes these weights; "
                                 "ImageNet has its own terms of access",
                    training={"recipe": "official MAGE pre-training", "epochs": 1600, "batch size": 4096,
                              "optimizer": "AdamW (0.9, 0.95), wd 0.05, lr 2.4e-3, 40 warmup epochs, cosine",
                              "masking ratio": "truncated normal, min 0.5, mean 0.55, std 0.25",
                              "tokenizer": "VQGAN (MaskGIT architecture), strong augmentation, frozen"},
                    metrics=known["metrics"], source_url=known["url"], hf_dataset="ILSVRC/imagenet-1k")
    return meta


# -------------------------------------------------------------------------------------- conversion
def convert_official(source, out_dir, vqgan=None, dtype=None, config: MAGEConfig | str | None = None,
                     meta: dict | None = None, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Convert an official MAGE ``.pth`` (+ optional stand-alone VQGAN) into our format in ``out_dir``
    (config.json, model.safetensors, README.md) and verify it. Returns a report dict."""
    from .hub import write_model_card
    say = progress or (lambda s: None)
    dtype = parse_dtype(dtype)
    say("reading the source checkpoint")
    sd = unwrap(read_state_dict(source))
    kind = checkpoint_kind(sd)
    if kind == "vqgan":
        raise CheckpointError(f"{source} is a VQGAN tokenizer checkpoint, not a MAGE model: pass it as "
                              "--vqgan next to the MAGE checkpoint, or convert it alone with --vqgan and no source")
    if kind in ("finetune", "linprobe"):
        raise CheckpointError(f"{source} is a {kind} classifier checkpoint (no MAGE decoder), so it cannot "
                              "generate images; load it as a fine-tune/probe start with "
                              "mage.convert.load_classifier_checkpoint")
    model, vq = load_official(sd, vqgan=vqgan, config=config)
    full_meta = {**official_meta(model.config, str(source)), **(meta or {})}
    say(f"writing {out_dir}")
    out = save_native(out_dir, model, vq, meta=full_meta, dtype=dtype)
    write_model_card(out, full_meta, model.config)
    say("reloading and comparing logits with the source")
    new_model, new_vq, _ = load_native(out)
    report = compare_models((model, vq), (new_model, new_vq), dtype, seed)
    report.update(out=str(out), dtype=str(dtype or torch.float32).replace("torch.", ""),
                  size_bytes=(out / "model.safetensors").stat().st_size,
                  mage_params=model.num_params(), vqgan_params=sum(p.numel() for p in vq.parameters()))
    return report


def convert_vqgan(source, out_path, dtype=None) -> dict:
    """A stand-alone VQGAN checkpoint -> one ``.safetensors`` file (readable by :func:`mage.load_vqgan`),
    checked to give the same token ids on a fixed image."""
    from safetensors.torch import save_file
    dtype = parse_dtype(dtype)
    vq = load_vqgan(source)
    out = Path(out_path)
    if out.suffix != ".safetensors":
        out = out / "vqgan.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in vq.state_dict().items()}
    save_file(sd, str(out), metadata={"format": "mage-studio-vqgan"})
    new = load_vqgan(out)  # half-precision tensors are cast to float32 on loading
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, vq.config.resolution, vq.config.resolution, generator=g)
    with torch.inference_mode():
        agree = (vq.encode(image) == new.encode(image)).float().mean().item()
    if dtype is None and agree != 1.0:
        raise ConversionError("converted VQGAN gives different token ids than the source")
    return {"out": str(out), "vqgan_id_agreement": agree, "size_bytes": out.stat().st_size,
            "dtype": str(dtype or torch.float32).replace("torch.", "")}


# ----------------------------------------------------------------------------- classifier checkpoints
_IGNORED_CLASSIFIER = ("cls_token", "pos_embed", "patch_embed.", "mask_token", "decoder_pos_embed",
                       "decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.", "mlm_layer.")


def checkpoint_kind(sd: dict) -> str:
    """"pretrain" (MAGE generation model), "finetune", "linprobe", "encoder" or "vqgan"."""
    if "head.1.weight" in sd:
        return "linprobe"
    if "head.weight" in sd:
        return "finetune"
    if "decoder_embed.weight" in sd:
        return "pretrain"
    if "token_emb.word_embeddings.weight" in sd:
        return "encoder"
    if "encoder.conv_in.weight" in sd or "quantize.embedding.weight" in sd:
        return "vqgan"
    raise CheckpointError("not a MAGE checkpoint: no token_emb / head / decoder / VQGAN keys found")


def load_classifier_checkpoint(path) -> tuple[dict, dict, dict]:
    """Any official MAGE checkpoint (pre-trained, fine-tuned or linear-probe) as a classifier start.

    Returns ``(encoder, head, info)``:
    * ``encoder``: ``token_emb.*``, ``blocks.*`` (and ``norm.*`` when the file has it) in mage.MAGE's names,
      loadable with :func:`apply_encoder_state`;
    * ``head``: the classifier tensors under their official names: fine-tune ``head.weight/bias``,
      linear probe ``head.0.running_mean/running_var/num_batches_tracked`` (BatchNorm1d, affine=False,
      eps 1e-6) + ``head.1.weight/bias``, and ``fc_norm.weight/bias`` for global-pool models (empty for a
      pre-trained checkpoint);
    * ``info``: kind, pool ("global_pool" / "cls_token" / None), num_classes, a MAGEConfig ``config`` to
      build the backbone, ``vqgan_state_dict`` (the tokenizer, or None) and the ``ignored`` dead keys
      (cls_token, pos_embed [1,197,D] from timm's 224 default, patch_embed, the generation decoder).
    """
    sd = unwrap(read_state_dict(path) if not isinstance(path, dict) else path)
    kind = checkpoint_kind(sd)
    if kind == "vqgan":
        raise CheckpointError(f"{path} is a VQGAN tokenizer checkpoint, not a MAGE classifier")
    mage_sd, vq_sd = split_official(sd)
    encoder, head, ignored, unknown = {}, {}, [], []
    for k, v in sd.items():
        if k.startswith("vqgan."):
            continue
        if k.startswith(("token_emb.", "blocks.", "norm.")):
            encoder[k] = v
        elif k.startswith(("head.", "fc_norm.")):
            head[k] = v
        elif k.startswith(_IGNORED_CLASSIFIER):
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"unexpected keys in a MAGE classifier checkpoint: {', '.join(unknown[:8])}")
    if not any(k.startswith("blocks.") for k in encoder):
        raise CheckpointError("the checkpoint has no encoder blocks (blocks.*)")
    pool = "global_pool" if "fc_norm.weight" in head else ("cls_token" if kind in ("finetune", "linprobe") else None)
    vq_cfg = infer_vqgan_config(vq_sd) if vq_sd else VQGANConfig()
    if kind == "pretrain":
        config = infer_mage_config(mage_sd, vq_cfg)
    else:
        config = _encoder_config(encoder, vq_cfg)
    lin = head.get("head.weight", head.get("head.1.weight"))
    info = {"kind": kind, "pool": pool, "num_classes": 0 if lin is None else lin.shape[0],
            "embed_dim": config.embed_dim, "depth": config.depth, "config": config,
            "vqgan_state_dict": vq_sd or None, "ignored": ignored}
    return encoder, head, info


def _encoder_config(encoder: dict, vq: VQGANConfig) -> MAGEConfig:
    """Backbone config from encoder tensors; decoder sizes (absent from classifier files) from the presets."""
    V, D = encoder["token_emb.word_embeddings.weight"].shape
    L = encoder["token_emb.position_embeddings.weight"].shape[0]
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    hidden = encoder["blocks.0.mlp.fc1.weight"].shape[0]
    heads, dec_heads = _HEADS.get(D, (max(D // 64, 1), max(D // 64, 1)))
    grid = int(round((L - 1) ** 0.5))
    return MAGEConfig(img_size=grid * vq.downsample, embed_dim=D, depth=depth, num_heads=heads, decoder_embed_dim=D,
                      decoder_depth=8 if D in (768, 1024) else 1, decoder_num_heads=dec_heads,
                      mlp_ratio=hidden / D, num_class_slots=V - vq.n_embed - 1, vqgan=vq)


def apply_encoder_state(model: MAGE, encoder: dict) -> MAGE:
    """Load ``token_emb``/``blocks`` (and ``norm`` when given) into a MAGE model, strictly per part."""
    for part in ("token_emb", "blocks", "norm"):
        sub = {k[len(part) + 1:]: v for k, v in encoder.items() if k.startswith(part + ".")}
        if sub or part != "norm":
            load_strict(getattr(model, part), sub, f"MAGE {part}")
    return model


def classifier_forward(model: MAGE, ids: torch.Tensor, head: dict, pool: str = "global_pool",
                       bn_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The official classifier path (models_vit_mage) on ids [B,L] (class slot first, nothing masked):
    global_pool = mean of the last block's outputs over positions 1.. then ``fc_norm``; cls_token = final
    ``norm`` then position 0. Returns (features [B,D], logits [B,C] or None without a head)."""
    x = model.token_emb(ids)
    for blk in model.blocks:
        x = blk(x)
    if pool == "global_pool":
        f = x[:, 1:].mean(1)
        if "fc_norm.weight" in head:
            f = F.layer_norm(f, f.shape[-1:], head["fc_norm.weight"], head["fc_norm.bias"], model.config.norm_eps)
    elif pool == "cls_token":
        f = model.norm(x)[:, 0]
    else:
        raise ValueError(f"pool must be 'global_pool' or 'cls_token', got {pool!r}")
    if "head.weight" in head:
        return f, F.linear(f, head["head.weight"], head["head.bias"])
    if "head.1.weight" in head:
        z = F.batch_norm(f, head["head.0.running_mean"], head["head.0.running_var"], training=False, eps=bn_eps)
        return f, F.linear(z, head["head.1.weight"], head["head.1.bias"])
    return f, None

