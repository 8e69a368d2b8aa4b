"""Interleaved A/B comparisons: a baseline and its variants run in one process, alternating repeat by
repeat (rotating the order), so that every side sees the same machine load. The speed-up of a variant is
the median over rounds of (baseline time / variant time) within the same round.

On a machine shared with other jobs this is far more trustworthy than comparing two cases measured
minutes apart; the absolute numbers are in the isolated cases (bench.cases).
"""
from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn.functional as F

import mage
from bench import common as C


def interleave(fns: dict, baseline: str, warmup: int, reps: int, device: torch.device,
               units: dict | None = None) -> dict:
    """fns: name -> callable doing one unit of work (``units[name]`` items, e.g. queries) per call."""
    names, units = list(fns), units or {}
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            C.sync(device)
            t = time.perf_counter()
            fns[n]()
            C.sync(device)
            times[n].append((time.perf_counter() - t) / units.get(n, 1))
    return {n: {"time": C.stats(times[n]),
                "speedup": C.stats([b / v for b, v in zip(times[baseline], times[n])])} for n in names}


def _result(variants: dict, baseline: str, **extra) -> dict:
    return {"baseline": baseline, "variants": variants, "time": variants[baseline]["time"], **extra}


# --------------------------------------------------------------------------------------------- ViT-B forward
def ab_transformer(spec, dev):
    """One transformer forward (B=1, half the tokens masked) under each setting."""
    cfg = C.arch_config(spec["arch"])
    torch.manual_seed(0)
    model = mage.MAGE(cfg).eval().to(dev)
    model_w = copy.deepcopy(model).to(torch.bfloat16)
    tokens = torch.randint(0, cfg.codebook_size, (1, cfg.num_tokens), device=dev)
    tokens[:, ::2] = cfg.mask_token_id

    def fwd(m=model, grad="inference", dtype="fp32", attention="sdpa", threads=1, fn=None):
        def run():
            with C.threads(threads), C.attention_impl(attention), C.grad_context(grad), C.autocast(dev, dtype):
                return (fn or m.token_logits)(tokens).float()
        return run

    fns = {"fp32 (SDPA, inference_mode, 1 thread)": fwd(),
           "hand-written attention": fwd(attention="eager"),
           "no_grad instead of inference_mode": fwd(grad="no_grad"),
           "bf16 autocast": fwd(dtype="bf16"),
           "bf16 weights (model.to(bfloat16))": fwd(m=model_w)}
    if spec.get("two_threads"):
        fns.update({"2 threads": fwd(threads=2), "bf16 weights, 2 threads": fwd(m=model_w, threads=2)})
    extra = {}
    if spec.get("compile"):
        compiled = torch.compile(model.token_logits, dynamic=False)
        t = time.perf_counter()
        fwd(fn=compiled)()
        extra["compile_s"] = time.perf_counter() - t
        fns["torch.compile"] = fwd(fn=compiled)
    base = next(iter(fns))
    return _result(interleave(fns, base, spec.get("warmup", 1), spec.get("reps", 5), dev), base, **extra)


# --------------------------------------------------------------------------------------------- VQGAN decode
def ab_vq_decode(spec, dev):
    cfg = C.arch_config(spec["arch"])
    g = cfg.grid_size
    torch.manual_seed(0)
    vq = mage.VQGAN(cfg.vqgan).eval().to(dev)
    dec_bf16 = copy.deepcopy(vq.decoder).to(torch.bfloat16)
    dec_cl = copy.deepcopy(vq.decoder).to(memory_format=torch.channels_last)
    ids = torch.randint(0, cfg.codebook_size, (1, g, g), device=dev)

    def run(dec, dtype=torch.float32, fmt=torch.contiguous_format):
        def f():
            with torch.inference_mode():
                return dec(vq.quantize.lookup(ids).to(dtype).contiguous(memory_format=fmt))
        return f

    fns = {"fp32 (NCHW)": run(vq.decoder), "bf16 weights": run(dec_bf16, torch.bfloat16),
           "fp32 channels_last": run(dec_cl, fmt=torch.channels_last)}
    base = next(iter(fns))
    return _result(interleave(fns, base, spec.get("warmup", 1), spec.get("reps", 3), dev), base)


# --------------------------------------------------------------------------------------------- app
def ab_app(spec, dev):
    """Whole interactive generations (1 image, class + CFG, previews) on the embedded default model."""
    from bench.cases import _default_pipeline
    pipe, _ = _default_pipeline({**spec, "dtype": "fp32"}, dev)
    pipe_w, _ = _default_pipeline({**spec, "dtype": "bf16w"}, dev)
    kw = {"steps": spec.get("steps", 12), "seed": 0, "class_label": 0, "guidance_scale": spec.get("guidance", 3.0)}

    @contextlib.contextmanager
    def two_pass_cfg(p):
        p.logits_fn = C.two_pass_cfg_logits_fn(p)
        try:
            yield
        finally:
            del p.logits_fn  # back to the class's method

    @contextlib.contextmanager
    def dtype(p, d):
        with torch.autocast(p.device.type, dtype=d):
            yield

    def gen(p=pipe, lazy=False, ctx=contextlib.nullcontext, threads=1):
        def run():
            with C.threads(threads), ctx():
                last = None
                for last in p.generate_steps(1, **kw):
                    if not lazy:
                        p.preview(last)
                if lazy:
                    p.decode(last.tokens)
        return run

    fns = {"fp32, preview every step": gen(),
           "lazy preview (final frame only)": gen(lazy=True),
           "CFG as two forwards (previous library)": gen(ctx=lambda: two_pass_cfg(pipe)),
           "bf16 autocast": gen(ctx=lambda: dtype(pipe, torch.bfloat16)),
           "bf16 weights": gen(p=pipe_w),
           "lazy preview + CFG as two forwards": gen(lazy=True, ctx=lambda: two_pass_cfg(pipe))}
    if spec.get("two_threads"):
        fns["2 threads"] = gen(threads=2)
    base = next(iter(fns))
    return _result(interleave(fns, base, spec.get("warmup", 1), spec.get("reps", 6), dev), base,
                   steps=kw["steps"], source=spec.get("model_source"))


# --------------------------------------------------------------------------------------------- training
def ab_train(spec, dev):
    """Training steps (fwd + bwd + AdamW) re-tokenising the batch every step vs from a token cache."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.flops import vqgan_encode_flops
    cfg = C.arch_config(spec["arch"])
    B, S = spec["batch"], cfg.img_size
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mage.MAGE(cfg).train().to(dev)
    vq = mage.VQGAN(cfg.vqgan).eval().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    images = torch.rand(B, 3, S, S, generator=g).to(dev)
    cls = None
    if cfg.num_classes:
        labels = torch.randint(0, cfg.num_classes, (B,), generator=g)
        cls = torch.tensor([cfg.class_token_id(int(c)) for c in labels], device=dev)
    cached = vq.encode(images)

    def step(cache):
        def run():
            toks = cached if cache else vq.encode(images)
            loss, _, _ = model(toks, class_ids=cls, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    fns = {"re-tokenise every step": step(False), "token cache": step(True)}
    base = next(iter(fns))
    variants = interleave(fns, base, spec.get("warmup", 1), spec.get("reps", 5), dev)
    flops = {}
    for name, fn in fns.items():
        with FlopCounterMode(display=False) as fc:
            fn()
        flops[name] = fc.get_total_flops()
    for name, v in variants.items():
        v["images_per_s"] = B / v["time"]["median"]
        v["flops_per_step_counted"] = flops[name]
    return _result(variants, base, batch=B, encode_flops_per_step=vqgan_encode_flops(cfg.vqgan, S, B),
                   flop_bound_speedup=flops[base] / flops["token cache"])


# --------------------------------------------------------------------------------------------- retrieval
def ab_retrieval(spec, dev):
    """Top-10 cosine search variants over the same n x 768 random unit vectors (per-query latency)."""
    import importlib.util
    n, d, k, qb = spec["n"], 768, 10, 32
    gen = torch.Generator().manual_seed(0)
    E = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    Q = F.normalize(torch.randn(qb, d, generator=gen), dim=1)
    Eb = E.bfloat16()
    exact = torch.mm(Q, E.t()).topk(k, dim=1).indices
    found = {}

    def torch_search(M, dtype, batch):
        def run():
            q = Q[:batch].to(dtype)
            found[(dtype, batch)] = torch.mm(q, M.t()).float().topk(k, dim=1).indices
        return run

    fns = {"torch fp32, 1 query/call": torch_search(E, torch.float32, 1),
           "torch bf16 index, 1 query/call": torch_search(Eb, torch.bfloat16, 1),
           "torch fp32, 32 queries/call": torch_search(E, torch.float32, qb),
           "torch bf16 index, 32 queries/call": torch_search(Eb, torch.bfloat16, qb)}
    units = {"torch fp32, 32 queries/call": qb, "torch bf16 index, 32 queries/call": qb}
    if importlib.util.find_spec("mage.retrieval") is not None:
        from mage.retrieval import EmbeddingIndex
        index = EmbeddingIndex(E, backend="torch")
        fns["mage.retrieval.EmbeddingIndex (exact)"] = lambda: index.search(Q[:1], k)
    if importlib.util.find_spec("faiss") is not None:
        import faiss
        faiss.omp_set_num_threads(1)
        flat = faiss.IndexFlatIP(d)
        flat.add(E.numpy())
        fns["FAISS IndexFlatIP"] = lambda: flat.search(Q[:1].numpy(), k)
    base = next(iter(fns))
    variants = interleave(fns, base, spec.get("warmup", 3), spec.get("reps", 20), dev, units)
    recall = {}
    for (dtype, batch), idx in found.items():
        ref = exact[:batch]
        recall[f"{str(dtype).replace('torch.', '')} x{batch}"] = sum(
            len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx, ref)) / (k * batch)
    return _result(variants, base, n=n, recall_vs_exact=recall)


AB_CASES = {"ab_transformer": ab_transformer, "ab_vq_decode": ab_vq_decode, "ab_app": ab_app,
            "ab_train": ab_train, "ab_retrieval": ab_retrieval}
