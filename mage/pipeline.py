"""`MAGEPipeline`: a loaded MAGE model + tokenizer + the decoding engine, with one method per task.

    from mage import MAGEPipeline
    pipe = MAGEPipeline.from_pretrained("default")          # the model shipped in assets/
    out = pipe.generate(n=4, steps=12, seed=0)              # out.images: [4,3,H,W] in [0,1]
    for step in pipe.generate_steps(n=1, steps=8):          # stream DecodeStep records
        print(step.step, int(step.unknown.sum()))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import image as im
from .checkpoint import CheckpointError, load_native, load_official, save_native
from .model import MAGE
from .sampler import DecodeStep, MaskGITSampler, NoiseSource
from .vqgan import VQGAN

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"


@dataclass
class DecodeResult:
    images: torch.Tensor  # [B,3,H,W] in [0,1]
    tokens: torch.Tensor  # [B,N]
    steps: list[DecodeStep] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class MAGEPipeline:
    def __init__(self, model: MAGE, vqgan: VQGAN, meta: dict | None = None, device: str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.model, self.vqgan = model.eval(), vqgan.eval()
        self.meta = dict(meta or {})
        self.dtype = dtype
        self.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | None = "default", vqgan: str | None = None,
                        revision: str | None = None, device: str | None = None, dtype: str | torch.dtype = "float32",
                        local_files_only: bool | None = None, config: str | None = None) -> "MAGEPipeline":
        """Load from "default" (assets/), a directory in our format, an official ``.pth`` (+ optional
        stand-alone VQGAN ``vqgan``), or a Hugging Face Hub repo id."""
        src = "default" if source in (None, "", "default") else str(source)
        meta = {}
        if src == "default":
            model, vq, meta = load_native(DEFAULT_MODEL_DIR)
            meta = {**meta, "source": "embedded default (assets/default)"}
        elif Path(src).is_dir():
            model, vq, meta = load_native(src)
            meta = {**meta, "source": f"local directory {src}"}
        elif Path(src).is_file():
            model, vq = load_official(src, vqgan=vqgan, config=config)
            meta = {"source": f"official checkpoint {src}"}
        elif src.endswith((".pth", ".ckpt", ".safetensors", ".pt")) or os.sep in src and src.count("/") > 1:
            raise CheckpointError(f"checkpoint not found: {src}")
        else:
            from .hub import download_model
            local = download_model(src, revision=revision, local_files_only=local_files_only)
            model, vq, meta = load_native(local)
            meta = {**meta, "source": f"Hugging Face Hub {src}" + (f"@{revision}" if revision else "")}
        return cls(model, vq, meta=meta, device=device, dtype=_dtype(dtype))

    def save_pretrained(self, directory, dtype: str | torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors + a README.md model card; ``dtype`` "float16"/"bfloat16"
        stores half-size weights (loading casts them back to float32)."""
        from .hub import write_model_card
        meta = {k: v for k, v in self.meta.items() if k != "source"}
        d = save_native(directory, self.model, self.vqgan, meta=meta, dtype=torch.float32 if dtype is None else _dtype(dtype))
        write_model_card(d, meta, self.config)
        return d

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    variant: str | None = None, **kw) -> str:
        """Upload to the Hugging Face Hub (see :func:`mage.hub.push_to_hub`)."""
        from .hub import push_to_hub
        return push_to_hub(self, repo_id, private=private, token=token, variant=variant, **kw)

    def to(self, device) -> "MAGEPipeline":
        """Move to ``device``. A bf16/fp16 pipeline casts the transformer's weights once (measured 4.1x
        faster than fp32 for ViT-B on CPU, vs 2.4x for autocast, which re-casts weights every call);
        the VQGAN always stays fp32."""
        self.device = torch.device(device)
        self.model.to(self.device, dtype=self.dtype)
        self.vqgan.to(self.device, dtype=torch.float32)
        return self

    @property
    def config(self):
        return self.model.config

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    # ------------------------------------------------------------------ basic ops

    @torch.inference_mode()
    def encode(self, images) -> torch.Tensor:
        x = im.to_tensor(images).to(self.device)
        s = self.config.img_size
        if x.shape[-2:] != (s, s):
            raise ValueError(f"images must be {s}x{s} for this model, got {tuple(x.shape[-2:])}; "
                             "use mage.image.fit_image to resize/crop")
        return self.vqgan.encode(x)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.config.grid_size
        return self.vqgan.decode(tokens.to(self.device), (g, g)).clamp(0, 1).cpu()

    def _class_ids(self, class_label, n: int) -> torch.Tensor | None:
        if class_label is None:
            return None
        if isinstance(class_label, str):
            if class_label not in self.class_names:
                raise ValueError(f"unknown class {class_label!r}; this model knows {self.class_names}")
            class_label = self.class_names.index(class_label)
        labels = torch.as_tensor(class_label)
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"class labels must be integers or class names, got {class_label!r}")
        labels = labels.long().view(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} class labels for {n} images")
        if self.config.num_classes == 0:
            raise ValueError("this model is not class-conditional")
        return torch.tensor([self.config.class_token_id(int(c)) for c in labels], device=self.device)

    def logits_fn(self, class_label=None, guidance_scale: float = 0.0, n: int = 1) -> Callable:
        """tokens [B,N] -> codebook logits, with optional class and classifier-free guidance
        (logits = cond + g * (cond - uncond))."""
        cls_ids = self._class_ids(class_label, n)

        def fn(tokens):
            with torch.inference_mode():
                if cls_ids is None:
                    return self.model.token_logits(tokens).float()
                if guidance_scale == 0:
                    return self.model.token_logits(tokens, cls_ids).float()
                # conditional and unconditional passes as one batch (1.5x faster than two forwards)
                B = tokens.shape[0]
                uncond_ids = torch.full_like(cls_ids, self.config.no_class_id)
                both = self.model.token_logits(torch.cat([tokens, tokens]), torch.cat([cls_ids, uncond_ids])).float()
                cond, uncond = both[:B], both[B:]
                return cond + guidance_scale * (cond - uncond)

        return fn

    def decode_steps(self, tokens: torch.Tensor, unknown: torch.Tensor, steps: int = 12, schedule: str = "cosine",
                     choice_temperature: float = 4.5, sampling_temperature: float = 1.0, seed: int | None = 0,
                     class_label=None, guidance_scale: float = 0.0, noise: NoiseSource | None = None
                     ) -> Iterator[DecodeStep]:
        """The one engine every task uses: decode ``unknown`` positions of ``tokens``."""
        sampler = MaskGITSampler(steps, schedule, choice_temperature, sampling_temperature)
        fn = self.logits_fn(class_label, guidance_scale, tokens.shape[0])
        yield from sampler(fn, tokens.to(self.device), unknown.to(self.device), self.config.mask_token_id,
                           noise=noise, seed=seed)

    def _run(self, it: Iterator[DecodeStep], keep_steps: bool) -> DecodeResult:
        steps, last = [], None
        for last in it:
            if keep_steps:
                steps.append(last)
        return DecodeResult(images=self.decode(last.tokens), tokens=last.tokens, steps=steps)

    # ------------------------------------------------------------------ tasks
    def generate_steps(self, n: int = 1, **kw) -> Iterator[DecodeStep]:
        if n < 1:
            raise ValueError("n must be >= 1")
        N = self.config.num_tokens
        tokens = torch.full((n, N), self.config.mask_token_id, dtype=torch.long)
        return self.decode_steps(tokens, torch.ones(n, N, dtype=torch.bool), **kw)

    def generate(self, n: int = 1, return_steps: bool = False, **kw) -> DecodeResult:
        """Unconditional (or class-conditional with ``class_label``) generation of ``n`` images."""
        return self._run(self.generate_steps(n, **kw), return_steps)

    def prepare_inpaint(self, image, mask, threshold: float = 0.5):
        """Image + pixel mask -> (image tensor, tokens, token mask); validates sizes."""
        x = im.to_tensor(image)
        m = torch.as_tensor(mask) if not isinstance(mask, torch.Tensor) else mask
        if m.dim() == 2:
            m = m[None].expand(x.shape[0], -1, -1)
        if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"mask {tuple(m.shape[-2:])} does not match the image {tuple(x.shape[-2:])}")
        if m.dim() == 3 and m.shape[0] != x.shape[0]:
            raise ValueError(f"got {m.shape[0]} masks for {x.shape[0]} images")
        tok_mask = im.pixel_to_token_mask(m, self.config.patch_size, threshold)
        return x, self.encode(x), tok_mask

    def inpaint_steps(self, image, mask, threshold: float = 0.5, **kw) -> Iterator[DecodeStep]:
        _, tokens, tok_mask = self.prepare_inpaint(image, mask, threshold)
        return self.decode_steps(tokens, tok_mask, **kw)

    def inpaint(self, image, mask, threshold: float = 0.5, feather: int = 2, return_steps: bool = False,
                **kw) -> DecodeResult:
        """Regenerate the tokens under ``mask`` (pixels, 1 = regenerate); the result is composited with
        the original outside the mask (soft edge ``feather`` px). ``extra['raw']`` is the uncomposited decode."""
        x, tokens, tok_mask = self.prepare_inpaint(image, mask, threshold)
        res = self._run(self.decode_steps(tokens, tok_mask, **kw), return_steps)
        pix = im.token_mask_to_pixels(tok_mask, self.config.grid_size, self.config.patch_size)
        res.extra.update(raw=res.images, token_mask=tok_mask)
        res.images = im.composite(x, res.images, pix, feather)
        return res

    def outpaint(self, image, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
                 return_steps: bool = False, **kw) -> DecodeResult:
        """Shrink the image into the centre and generate ``left/right/top/bottom`` new token columns/rows."""
        x = im.to_tensor(image)
        canvas, mask = im.outpaint_canvas(x, self.config.grid_size, self.config.patch_size, left, right, top, bottom)
        res = self.inpaint(canvas, mask, threshold=0.5, feather=0, return_steps=return_steps, **kw)
        res.extra["canvas"] = canvas
        return res

    def random_token_mask(self, n: int, ratio: float, seed: int = 0) -> torch.Tensor:
        """Exactly round(ratio*N) random unknown positions per row (seeded)."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("masking ratio must be in [0, 1]")
        N = self.config.num_tokens
        g = torch.Generator().manual_seed(int(seed))
        k = int(round(ratio * N))
        order = torch.rand(n, N, generator=g).argsort(1)
        mask = torch.zeros(n, N, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], True)
        return mask

    @torch.inference_mode()
    def reconstruct(self, image, ratio: float, seed: int = 0, iterative: bool = True, **kw) -> DecodeResult:
        """Mask ``ratio`` of the image's tokens at random and predict them back, either in one pass
        (argmax) or by iterative decoding. ``extra`` holds token accuracy and pixel MSE vs the tokenizer's
        own reconstruction and vs the input."""
        x = im.to_tensor(image)
        tokens = self.encode(x).cpu()
        mask = self.random_token_mask(x.shape[0], ratio, seed)
        keep_steps = kw.pop("return_steps", False)
        if iterative and mask.any():
            res = self._run(self.decode_steps(tokens, mask, seed=seed, **kw), keep_steps)
            pred = res.tokens
        else:
            masked = tokens.masked_fill(mask, self.config.mask_token_id).to(self.device)
            logits = self.logits_fn(kw.get("class_label"), kw.get("guidance_scale", 0.0), x.shape[0])(masked)
            pred = torch.where(mask, logits.argmax(-1).cpu(), tokens)
            res = DecodeResult(images=self.decode(pred), tokens=pred)
        ref = self.decode(tokens)
        correct = (pred == tokens) & mask
        acc = (correct.sum(1).float() / mask.sum(1).clamp_min(1)).tolist()
        res.extra.update(mask=mask, gt_tokens=tokens, token_accuracy=acc,
                         mse_vs_tokenizer=((res.images - ref) ** 2).flatten(1).mean(1).tolist(),
                         mse_vs_input=((res.images - x.cpu()) ** 2).flatten(1).mean(1).tolist())
        return res

    @torch.inference_mode()
    def embed(self, images, batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Mean-pooled encoder features [B,D] (float32) for images at the model resolution."""
        x = im.to_tensor(images)
        out = []
        for i in range(0, x.shape[0], batch_size):
            toks = self.encode(x[i: i + batch_size])
            out.append(self.model.embed(toks).float().cpu())
            if progress:
                progress(min(i + batch_size, x.shape[0]), x.shape[0])
        return torch.cat(out)

    def preview(self, step: DecodeStep, mark: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """(canvas, prediction) images for a step: the prediction decoded once; on the canvas the
        still-unknown tokens are shown as a grey checker pattern."""
        pred = self.decode(step.prediction)
        canvas = im.checker_overlay(pred, step.unknown, self.config.grid_size, self.config.patch_size, mark)
        return canvas, pred

    def info(self) -> dict:
        c = self.config
        return {"source": self.meta.get("source", "?"), "image size": c.img_size,
                "token grid": f"{c.grid_size}x{c.grid_size}", "codebook": c.codebook_size,
                "encoder": f"{c.depth} x {c.embed_dim} ({c.num_heads} heads)",
                "decoder": f"{c.decoder_depth} x {c.decoder_embed_dim} ({c.decoder_num_heads} heads)",
                "classes": c.num_classes, "MAGE parameters": self.model.num_params(),
                "VQGAN parameters": sum(p.numel() for p in self.vqgan.parameters()),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}


def _dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if d not in table:
        raise ValueError(f"unknown dtype {d!r}; use one of {sorted(table)}")
    return table[d]
