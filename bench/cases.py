"""The benchmark cases. Each takes a spec dict and returns a result dict (times in seconds).
Interleaved A/B comparisons live in bench/ab.py.

Run one case in its own process (so its peak RSS is its own):

    python -m bench.cases '{"kind": "matmul", "id": "x", "n": 512, "dtype": "fp32", "threads": 1}'

prints ``BENCH_RESULT {json}`` as the last line.
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

import mage
from bench import common as C
from bench.ab import AB_CASES
from bench.flops import mage_step_breakdown, mage_step_flops, vqgan_decode_flops


# --------------------------------------------------------------------------------------------- matmul
def case_matmul(spec, dev):
    """fp32/bf16 matmul GFLOP/s: a large square product and the ViT-B MLP shape (8 x 257 tokens)."""
    dt = C.dtype_of(spec["dtype"])
    n = spec["n"]
    shapes = {"square": (n, n, n), "vit_mlp": (spec.get("m_vit", 8 * 257), 768, 3072)}
    out = {}
    for name, (m, k, nn_) in shapes.items():
        a = torch.randn(m, k, device=dev).to(dt)
        b = torch.randn(k, nn_, device=dev).to(dt)
        ts = C.repeat(lambda: torch.mm(a, b), spec.get("warmup", 2), spec.get("reps", 5), dev)
        s = C.stats(ts)
        flop = 2 * m * k * nn_
        out[name] = {"shape": [m, k, nn_], "time": s, "gflops": flop / s["median"] / 1e9,
                     "gflops_best": flop / s["min"] / 1e9}
    best = max(out.values(), key=lambda r: r["gflops_best"])
    # the ceiling is the best the machine did (fastest repeat of the faster shape); medians are in "shapes"
    return {"shapes": out, "time": best["time"], "gflops": best["gflops_best"]}


# --------------------------------------------------------------------------------------------- generation
def case_generate(spec, dev):
    """MAGE + MaskGITSampler on an all-masked batch: time per sampler step and per model forward."""
    cfg = C.arch_config(spec["arch"])
    B, steps = spec["batch"], spec["steps"]
    measure, warmup = min(spec.get("measure", steps), steps), min(spec.get("warmup", 1), steps)
    torch.manual_seed(0)
    model = mage.MAGE(cfg).eval().to(dev)
    if spec["dtype"] == "bf16w":
        model.to(torch.bfloat16)
    fwd = []

    def logits_fn(tokens):
        with torch.inference_mode(), C.autocast(dev, spec["dtype"]):
            C.sync(dev)
            t = time.perf_counter()
            out = model.token_logits(tokens).float()
            C.sync(dev)
            fwd.append(time.perf_counter() - t)
        return out

    N, mask_id = cfg.num_tokens, cfg.mask_token_id
    tokens = torch.full((B, N), mask_id, dtype=torch.long, device=dev)
    unknown = torch.ones(B, N, dtype=torch.bool, device=dev)
    sampler = mage.MaskGITSampler(steps)
    for i, _ in enumerate(sampler(logits_fn, tokens, unknown, mask_id, seed=1)):  # warm-up steps
        if i + 1 >= warmup:
            break
    fwd.clear()
    step_times = []
    it = sampler(logits_fn, tokens, unknown, mask_id, seed=0)
    t = time.perf_counter()
    for _ in it:
        step_times.append(time.perf_counter() - t)
        if len(step_times) >= measure:
            break
        t = time.perf_counter()
    it.close()
    step, fw = C.stats(step_times), C.stats(fwd)
    flops = mage_step_flops(cfg, B)
    return {
        "step": step, "forward": fw, "time": step, "measured_steps": len(step_times),
        "extrapolated": len(step_times) < steps, "flops_per_step": flops,
        "flops_breakdown_per_image": mage_step_breakdown(cfg),
        "gflops": flops / fw["median"] / 1e9,
        "images_per_s": B / (step["median"] * steps),
        "s_per_image": step["median"] * steps / B,
        "sampler_overhead_s": max(step["median"] - fw["median"], 0.0),
        "params_m": model.num_params() / 1e6,
        "ceiling_now_gflops": C.matmul_probe(C.dtype_of(spec["dtype"]), dev, spec.get("probe_m", 8 * 257)),
    }


# --------------------------------------------------------------------------------------------- VQGAN decode
def case_vq_decode(spec, dev):
    cfg = C.arch_config(spec["arch"])
    B, g = spec["batch"], cfg.grid_size
    torch.manual_seed(0)
    vq = mage.VQGAN(cfg.vqgan).eval().to(dev)
    ids = torch.randint(0, cfg.codebook_size, (B, g * g), device=dev)
    dt = C.dtype_of(spec["dtype"])
    if dt != torch.float32:  # bf16 weights: the library decodes in fp32; this shows what bf16 would give
        vq.decoder.to(dt)

    def decode(x):
        if dt == torch.float32:
            return vq.decode(x, (g, g))
        return vq.decoder(vq.quantize.lookup(x.view(-1, g, g)).to(dt))

    with torch.inference_mode():
        if spec.get("warmup_batch"):  # cheap warm-up at a smaller batch for the very slow cases
            decode(ids[: spec["warmup_batch"]])
        ts = C.repeat(lambda: decode(ids), spec.get("warmup", 1), spec.get("reps", 3), dev)
    s = C.stats(ts)
    flops = vqgan_decode_flops(cfg.vqgan, g, B)
    return {"time": s, "flops": flops, "gflops": flops / s["median"] / 1e9, "images_per_s": B / s["median"],
            "out_size": cfg.img_size, "ceiling_now_gflops": C.matmul_probe(dt, dev, spec.get("probe_m", 8 * 257))}


# --------------------------------------------------------------------------------------------- app case
def _default_pipeline(spec, dev):
    t = time.perf_counter()
    dtype = "fp32" if spec["dtype"] in ("bf16w", "bf16") else spec["dtype"]
    if spec.get("model_dir"):
        pipe = mage.MAGEPipeline.from_pretrained(spec["model_dir"], device=str(dev), dtype=dtype)
    else:
        torch.manual_seed(0)
        cfg = C.default_arch()
        pipe = mage.MAGEPipeline(mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), device=str(dev), dtype=C.dtype_of(dtype))
    if spec["dtype"] == "bf16w":  # transformer weights in bf16 (the VQGAN stays fp32)
        pipe.model.to(torch.bfloat16)
    return pipe, time.perf_counter() - t


def case_app(spec, dev):
    """The app's interactive case on the embedded default model: one image, 12 steps, preview frames."""
    pipe, load_s = _default_pipeline(spec, dev)
    cfg = pipe.config
    kw = {"steps": spec.get("steps", 12), "seed": 0}
    if spec.get("guidance", 0) and cfg.num_classes:
        kw.update(class_label=0, guidance_scale=spec["guidance"])
    reps = spec.get("reps", 5)

    def first_step():
        it = pipe.generate_steps(1, **kw)
        pipe.preview(next(it))
        it.close()

    def full():  # a preview frame (VQGAN decode) after every step
        for step in pipe.generate_steps(1, **kw):
            pipe.preview(step)

    def lazy():  # decode only the final frame
        last = None
        for last in pipe.generate_steps(1, **kw):
            pass
        pipe.decode(last.tokens)

    t = time.perf_counter()
    first_step()
    cold = time.perf_counter() - t
    logits = pipe.logits_fn(kw.get("class_label"), kw.get("guidance_scale", 0.0), 1)
    tokens = torch.full((1, cfg.num_tokens), cfg.mask_token_id, dtype=torch.long, device=dev)
    ids = torch.randint(0, cfg.codebook_size, (1, cfg.num_tokens), device=dev)
    fwd = C.stats(C.repeat(lambda: logits(tokens), 1, reps * 4, dev))
    dec = C.stats(C.repeat(lambda: pipe.decode(ids), 1, reps * 4, dev))
    first = C.stats(C.repeat(first_step, 0, reps * 2, dev))
    full_s = C.stats(C.repeat(full, 1, reps, dev))
    lazy_s = C.stats(C.repeat(lazy, 1, reps, dev))
    forwards = 2 if kw.get("guidance_scale") else 1
    return {"load_s": load_s, "first_step_cold_s": cold, "first_step": first, "full": full_s, "lazy": lazy_s,
            "time": full_s, "forward": fwd, "decode": dec, "forwards_per_step": forwards,
            "flops_per_step": forwards * mage_step_flops(cfg),
            "decode_flops": vqgan_decode_flops(cfg.vqgan, cfg.grid_size),
            "source": spec.get("model_source", "random"), "steps": kw["steps"]}


# --------------------------------------------------------------------------------------------- retrieval
def case_retrieval(spec, dev):
    """Top-k cosine search over n random unit vectors (exact: normalised matmul + topk); variants
    (bf16 index, batched queries, mage.retrieval, FAISS) are compared in bench.ab.ab_retrieval."""
    n, d, k = spec["n"], spec.get("dim", 768), spec.get("k", 10)
    qb, nq = spec.get("query_batch", 1), spec.get("queries", 30)
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    E = F.normalize(torch.randn(n, d, generator=g), dim=1)
    Q = F.normalize(torch.randn(nq * qb, d, generator=g), dim=1)
    build = time.perf_counter() - t
    exact = torch.mm(Q, E.t()).topk(k, dim=1).indices
    dt = C.dtype_of(spec.get("dtype", "fp32"))
    Ed, Qd = E.to(dev, dt), Q.to(dev, dt)
    del E
    found, ts = [], []
    for i in range(spec.get("warmup", 3)):
        torch.mm(Qd[:qb], Ed.t()).topk(k, dim=1)
    for i in range(nq):
        q = Qd[i * qb:(i + 1) * qb]
        C.sync(dev)
        t = time.perf_counter()
        found.append(torch.mm(q, Ed.t()).float().topk(k, dim=1).indices.cpu())
        C.sync(dev)
        ts.append(time.perf_counter() - t)
    found = torch.cat(found)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact)) / (k * len(exact))
    s = C.stats(ts)
    return {"time": s, "per_query_ms": s["median"] / qb * 1e3, "recall_vs_exact": recall, "build_s": build,
            "index_mb": n * d * Ed.element_size() / 2 ** 20}


CASES = {"matmul": case_matmul, "generate": case_generate, "vq_decode": case_vq_decode, "app": case_app,
         "retrieval": case_retrieval, **AB_CASES}


def run_case(spec: dict, isolated: bool = False) -> dict:
    """Run one case with its thread count; adds wall time and memory figures."""
    if spec.get("kind") not in CASES:
        raise ValueError(f"unknown case kind {spec.get('kind')!r}; choose one of {sorted(CASES)}")
    dev = C.device_of(spec.get("device", "cpu"))
    base = C.rss_mb()
    t = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with C.threads(spec.get("threads", 1)):
        res = CASES[spec["kind"]](spec, dev)
    res.update({"id": spec["id"], "spec": spec, "wall_s": time.perf_counter() - t,
                "peak_rss_mb": C.peak_rss_mb(), "rss_before_mb": base,
                "rss_scope": "case (own process)" if isolated else "whole bench process"})
    if dev.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return res


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m bench.cases '<json case spec>'")
    spec = json.loads(argv[0])
    res = run_case(spec, isolated=True)
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
