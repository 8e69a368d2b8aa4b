"""Shared helpers: timing statistics, memory, model configurations, device sync."""
from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mage
from mage.config import MAGEConfig, VQGANConfig

ROOT = Path(__file__).resolve().parent.parent
DEV_MODEL_DIR = Path("/tmp/dev_model")


def stats(xs: list[float]) -> dict:
    """median, min, max and quartiles of a list of durations (seconds)."""
    if not xs:
        raise ValueError("no samples")
    s = sorted(xs)

    def q(p):  # linear interpolation between order statistics
        i = p * (len(s) - 1)
        lo, hi = math.floor(i), math.ceil(i)
        return s[lo] + (s[hi] - s[lo]) * (i - lo)

    return {"median": q(0.5), "min": s[0], "max": s[-1], "q1": q(0.25), "q3": q(0.75), "n": len(s)}


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat(fn, warmup: int, reps: int, device: torch.device = torch.device("cpu")) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times timed; returns durations in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def matmul_probe(dtype: torch.dtype, device: torch.device, m: int = 8 * 257, reps: int = 3) -> float:
    """Best GFLOP/s of a few [m,768]x[768,3072] products right now (the ViT-B MLP shape): a ceiling
    measured under the same machine load as the case that calls it."""
    a = torch.randn(m, 768, device=device).to(dtype)
    b = torch.randn(768, 3072, device=device).to(dtype)
    best = min(repeat(lambda: torch.mm(a, b), 1, reps, device))
    return 2 * m * 768 * 3072 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


# ---------------------------------------------------------------------------------------------- configs
def default_arch() -> MAGEConfig:
    """The embedded default model's architecture (32x32 RGB, 8x8 tokens, codebook 512, 10 classes)."""
    return MAGEConfig(img_size=32, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                      decoder_num_heads=4, num_classes=10,
                      vqgan=VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, n_embed=512))


def quick_arch() -> MAGEConfig:
    """Stand-in for ViT-B in --quick runs: same code paths, toy sizes."""
    return MAGEConfig(img_size=32, embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1,
                      decoder_num_heads=4,
                      vqgan=VQGANConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, n_embed=256))


ARCHS = {"vit_base": mage.vit_base, "default": default_arch, "quick": quick_arch}


def arch_config(name: str) -> MAGEConfig:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[name]()


def default_model_source() -> tuple[Path | None, str]:
    """(directory, description) of the embedded default model: assets/default, else /tmp/dev_model."""
    from mage.pipeline import DEFAULT_MODEL_DIR
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR, "assets/default (shipped model)"
    if (DEV_MODEL_DIR / "config.json").is_file():
        return DEV_MODEL_DIR, "/tmp/dev_model (random weights, same architecture)"
    return None, "random weights, default architecture"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16w": torch.bfloat16}
"""bf16 = fp32 weights under torch.autocast (the library's behaviour before this benchmark);
bf16w = weights cast to bf16 once, no autocast (what MAGEPipeline(dtype="bfloat16") does now)."""


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def ceiling_dtype(name: str) -> str:
    """The matmul ceiling a case is compared with."""
    return "fp32" if dtype_of(name) == torch.float32 else "bf16"


def autocast(device: torch.device, dtype: str):
    if dtype in ("fp32", "bf16w"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype_of(dtype))


def grad_context(mode: str):
    if mode == "inference":
        return torch.inference_mode()
    if mode == "no_grad":
        return torch.no_grad()
    raise ValueError(f"unknown grad mode {mode!r}")


# ---------------------------------------------------------------------------------------------- attention
def eager_attention_forward(self, x):
    """Hand-written attention (softmax(q k^T / sqrt(d)) v, as in the official code) for comparison with
    the library's F.scaled_dot_product_attention."""
    B, N, C = x.shape
    h = self.num_heads
    q, k, v = self.qkv(x).view(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    attn = ((q * (C // h) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    if self.training and self.attn_drop > 0:
        attn = F.dropout(attn, self.attn_drop)
    return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))


@contextlib.contextmanager
def attention_impl(name: str):
    """Swap ``mage.model.Attention.forward`` for the duration (bench process only)."""
    if name == "sdpa":
        yield
        return
    if name != "eager":
        raise ValueError(f"unknown attention implementation {name!r}; use sdpa or eager")
    from mage.model import Attention
    orig = Attention.forward
    Attention.forward = eager_attention_forward
    try:
        yield
    finally:
        Attention.forward = orig


def two_pass_cfg_logits_fn(pipe):
    """A replacement for ``pipe.logits_fn`` that runs classifier-free guidance as TWO forwards (cond, then
    uncond): the library's previous behaviour, kept here to measure the one-batch version against."""
    orig = pipe.logits_fn

    def logits_fn(class_label=None, guidance_scale: float = 0.0, n: int = 1):
        if class_label is None or guidance_scale == 0:
            return orig(class_label, guidance_scale, n)
        cls_ids = pipe._class_ids(class_label, n)

        def fn(tokens):
            with torch.inference_mode():
                cond = pipe.model.token_logits(tokens, cls_ids).float()
                uncond = pipe.model.token_logits(tokens).float()
            return cond + guidance_scale * (cond - uncond)

        return fn

    return logits_fn


@contextlib.contextmanager
def threads(n: int | None):
    """torch intra-op threads for the duration (restored afterwards)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def device_of(name: str) -> torch.device:
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def env_info() -> dict:
    return {"torch": torch.__version__, "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
