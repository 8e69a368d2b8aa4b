"""MAGE Studio benchmark: prints tables and writes JSON (see docs/performance.md).

    python -m bench.run                    # full run (ViT-B on CPU: ~8-10 minutes on 2 busy cores)
    python -m bench.run --quick            # toy sizes, seconds (what tests/test_bench.py runs)
    python -m bench.run --md tables.md     # also write the tables as Markdown
    python -m bench.run --only gen-b1,ab-app --compile

Every case runs in its own process (peak RSS per case; `--no-isolate` runs them in this process, the
default with --quick). Times are medians over repeats after warm-up, with min-max and quartiles in the
JSON. ViT-B cases with 20 steps or batch 8 are measured over a few sampler steps and extrapolated (the
cost per step is constant: each step is one full forward over all 257 positions). Speed-ups come from
interleaved A/B runs (bench/ab.py), so that both sides see the same load on a shared machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import common as C
from bench.cases import run_case

BASE = "gen-b1-s12-fp32"  # the reference: plain fp32 eager (SDPA, inference_mode, 1 thread)


# ============================================================================================ plan
def plan(quick: bool, compile_: bool, device: str, model_dir: str | None, model_source: str) -> list[dict]:
    """Isolated cases give absolute numbers; the ab-* cases give interleaved speed-ups (bench/ab.py)."""
    arch = "quick" if quick else "vit_base"
    cpu = device == "cpu"
    specs = []

    def add(id_, kind, **kw):
        if quick and kind in ("generate", "vq_decode"):
            kw["probe_m"] = 257
        specs.append({"id": id_, "kind": kind, "device": device, "threads": 1, **kw})

    # --- matmul ceiling
    for th in ([1, 2] if cpu and not quick else [1]):
        for dt in ("fp32", "bf16"):
            add(f"matmul-{dt}-t{th}", "matmul", dtype=dt, threads=th, n=256 if quick else 2048,
                m_vit=257 if quick else 8 * 257, reps=3 if quick else 5, warmup=1 if quick else 2)
    # --- generation (ViT-B): batch x steps x dtype; few measured steps for the expensive ones
    for B in (1, 8):
        for steps in (12, 20):
            for dt in ("fp32", "bf16"):
                # per-step cost does not depend on the step count: the 20-step cases need fewer samples
                measure = 2 if quick else {(1, 12): 4, (1, 20): 3, (8, 12): 2, (8, 20): 1}[B, steps]
                add(f"gen-b{B}-s{steps}-{dt}", "generate", arch=arch, batch=B, steps=steps, dtype=dt,
                    measure=measure, warmup=1)
    add("gen-b1-s12-bf16w", "generate", arch=arch, batch=1, steps=12, dtype="bf16w", measure=2 if quick else 4)
    # --- official VQGAN decode (batch 8 in full runs: warm-up at batch 1, one timed call)
    for B in (1, 8):
        for dt in ("fp32", "bf16"):
            if B == 1 or quick:
                add(f"vqdec-b{B}-{dt}", "vq_decode", arch=arch, batch=B, dtype=dt, reps=2 if quick else 3, warmup=1)
            else:
                add(f"vqdec-b{B}-{dt}", "vq_decode", arch=arch, batch=B, dtype=dt, reps=1, warmup=0,
                    warmup_batch=1)
    # --- embedded default model, the app's interactive case (2 threads only in full runs: on a shared
    # machine they can be many times slower than 1 thread)
    app = {"model_dir": model_dir, "model_source": model_source, "reps": 1 if quick else 6,
           "steps": 4 if quick else 12}
    add("app-cfg-fp32-t1", "app", dtype="fp32", guidance=3.0, **app)
    add("app-uncond-fp32-t1", "app", dtype="fp32", guidance=0.0, **app)
    if cpu and not quick:
        add("app-cfg-fp32-t2", "app", dtype="fp32", guidance=3.0, threads=2, **app)
    # --- retrieval
    small, large = (1000, 5000) if quick else (10_000, 100_000)
    add(f"retr-{small}-fp32", "retrieval", n=small, queries=5 if quick else 20)
    add(f"retr-{large}-fp32", "retrieval", n=large, queries=5 if quick else 20)
    # --- interleaved A/B comparisons (speed-up table)
    two = cpu and not quick
    add("ab-transformer", "ab_transformer", arch=arch, compile=compile_, two_threads=two, reps=2 if quick else 5)
    add("ab-vqdec", "ab_vq_decode", arch=arch, reps=2 if quick else 3)
    add("ab-app", "ab_app", guidance=3.0, two_threads=two, **{**app, "reps": 2 if quick else 6})
    add("ab-train", "ab_train", arch="quick" if quick else "default", batch=8 if quick else 64,
        reps=2 if quick else 5)
    add("ab-retrieval", "ab_retrieval", n=large, reps=5 if quick else 20)
    return specs


# ============================================================================================ running
def run_isolated(spec: dict, timeout: float) -> dict:
    from bench.cases import CASES
    if spec.get("kind") not in CASES:
        return {"id": spec.get("id"), "spec": spec, "error": f"unknown case kind {spec.get('kind')!r}"}
    env = dict(os.environ)  # thread counts are set inside the case (torch.set_num_threads)
    env["PYTHONPATH"] = str(C.ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run([sys.executable, "-m", "bench.cases", json.dumps(spec)], cwd=C.ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"id": spec["id"], "spec": spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"id": spec["id"], "spec": spec, "error": f"exit code {p.returncode}: " + " | ".join(tail)}


def run_inprocess(spec: dict) -> dict:
    try:
        return run_case(spec, isolated=False)
    except Exception as e:  # one broken case must not hide the others
        return {"id": spec["id"], "spec": spec, "error": f"{type(e).__name__}: {e}"}


# ============================================================================================ analysis
def ceilings(results: dict) -> dict:
    out = {}
    for r in results.values():
        if r["spec"]["kind"] == "matmul" and "error" not in r:
            out.setdefault(r["spec"]["dtype"], {})[str(r["spec"]["threads"])] = r["gflops"]
    return out


def annotate(results: dict, ceil: dict):
    """% of the matmul ceiling at the same dtype and thread count."""
    for r in results.values():
        if "error" in r or r["spec"]["kind"] not in ("generate", "vq_decode"):
            continue
        c = ceil.get(C.ceiling_dtype(r["spec"]["dtype"]), {}).get(str(r["spec"]["threads"]))
        r["ceiling_gflops"] = c
        r["pct_of_ceiling"] = 100 * r["gflops"] / c if c else None
        r["pct_of_ceiling_now"] = 100 * r["gflops"] / r["ceiling_now_gflops"]


def _get(results, id_, *path):
    r = results.get(id_)
    if r is None or "error" in r:
        return None
    for p in path:
        r = r.get(p) if isinstance(r, dict) else None
        if r is None:
            return None
    return r


def ratios(results: dict) -> list[dict]:
    """Speed-ups (>1 = faster): interleaved A/B rows (median of paired per-round ratios, with min-max),
    then two rows from separate cases."""
    rows = []
    for id_, r in results.items():
        if not r["spec"]["kind"].startswith("ab_") or "error" in r:
            continue
        base = r["baseline"]
        for name, v in r["variants"].items():
            if name == base:
                continue
            note = "interleaved"
            if name == "torch.compile":
                note += f"; compiling took {r['compile_s']:.1f} s"
            rows.append({"group": id_, "optimisation": name, "baseline": base, "speedup": v["speedup"]["median"],
                         "speedup_min": v["speedup"]["min"], "speedup_max": v["speedup"]["max"],
                         "baseline_s": r["variants"][base]["time"]["median"], "variant_s": v["time"]["median"],
                         "note": note})

    def add(group, name, base_id, base_t, var_t, note):
        if base_t and var_t:
            rows.append({"group": group, "optimisation": name, "baseline": base_id, "speedup": base_t / var_t,
                         "speedup_min": None, "speedup_max": None, "baseline_s": base_t, "variant_s": var_t,
                         "note": note})

    step = lambda i: _get(results, i, "step", "median")  # noqa: E731
    for dt in ("fp32", "bf16"):
        b1, b8 = step(f"gen-b1-s12-{dt}"), step(f"gen-b8-s12-{dt}")
        add("generation", f"batch 8 instead of 8 x batch 1 ({dt})", f"8 x gen-b1-s12-{dt}", b1 and 8 * b1, b8,
            "separate cases (not interleaved)")
    s, d = step(BASE), _get(results, "vqdec-b1-fp32", "time", "median")
    if s and d:
        add("generation", "ViT-B: decode the final frame only", "12 x (step + VQGAN decode)", 12 * (s + d),
            12 * s + d, "derived from gen-b1-s12-fp32 and vqdec-b1-fp32")
    return rows


def targets(results: dict, quick: bool) -> list[dict]:
    large = 5000 if quick else 100_000
    rows = []

    def add(name, measured, target, unit, higher_better, note=""):
        if measured is None:
            rows.append({"target": name, "goal": target, "unit": unit, "measured": None, "passed": None,
                         "margin": "not measured", "note": note})
            return
        ok = measured >= target if higher_better else measured <= target
        rel = measured / target
        margin = (f"{rel:.2f}x the goal" if higher_better else f"{rel:.2f}x the limit")
        rows.append({"target": name, "goal": target, "unit": unit, "measured": measured, "passed": ok,
                     "margin": margin, "note": note})

    for id_ in ("gen-b1-s12-fp32", "gen-b8-s12-fp32", "gen-b1-s12-bf16", "gen-b8-s12-bf16", "gen-b1-s12-bf16w"):
        add(f"ViT-B transformer >= 60% of matmul ceiling ({id_})", _get(results, id_, "pct_of_ceiling_now"), 60,
            "%", True, "vs the ceiling probed inside the case (same load), same dtype, 1 thread")
    for id_ in ("app-cfg-fp32-t2", "app-cfg-fp32-t1"):
        add(f"default model first step (+preview) <= 0.3 s ({id_})", _get(results, id_, "first_step", "median"),
            0.3, "s", False, "class + CFG, warm")
        add(f"default model 12-step decode <= 2 s ({id_})", _get(results, id_, "full", "median"), 2.0, "s", False,
            "preview every step")
    add(f"retrieval top-10 over {large} x 768 <= 50 ms", _get(results, f"retr-{large}-fp32", "per_query_ms"), 50,
        "ms", False, "torch exact fp32, 1 thread")
    add("token-cached training >= 3x re-tokenising",
        _get(results, "ab-train", "variants", "token cache", "speedup", "median"), 3.0, "x", True,
        "interleaved; FLOP bound %.2fx" % (_get(results, "ab-train", "flop_bound_speedup") or 0))
    return rows


def dominance(results: dict) -> list[dict]:
    """Where the time of one 12-step generation goes (per image)."""
    rows = []
    s, f, d = (_get(results, BASE, "step", "median"), _get(results, BASE, "forward", "median"),
               _get(results, "vqdec-b1-fp32", "time", "median"))
    if s and f and d:
        rows.append({"model": "ViT-B (fp32, 1 thread)", "transformer_s": 12 * f, "sampler_s": 12 * (s - f),
                     "decode_lazy_s": d, "decode_every_step_s": 12 * d})
    a = results.get("app-cfg-fp32-t1")
    if a and "error" not in a:
        f, d, T = a["forward"]["median"], a["decode"]["median"], a["steps"]
        s = a["lazy"]["median"] - d
        rows.append({"model": f"default (fp32, 1 thread, CFG, {T} steps)", "transformer_s": T * f,
                     "sampler_s": max(s - T * f, 0.0), "decode_lazy_s": d, "decode_every_step_s": T * d})
    for r in rows:
        lazy = r["transformer_s"] + r["sampler_s"] + r["decode_lazy_s"]
        every = r["transformer_s"] + r["sampler_s"] + r["decode_every_step_s"]
        r["decode_share_lazy"] = r["decode_lazy_s"] / lazy
        r["decode_share_every_step"] = r["decode_every_step_s"] / every
    return rows


# ============================================================================================ tables
def _ms(x):
    return "-" if x is None else (f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}" if x >= 0.01 else f"{x * 1e3:.2f}")


def _spread(s):
    return "-" if not s else f"{_ms(s['median'])} [{_ms(s['min'])}-{_ms(s['max'])}]"


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def tables(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    R = res["cases"]
    out = []
    err = [[i, r["error"]] for i, r in R.items() if "error" in r]
    if err:
        out.append(("Failed cases", ["case", "error"], err))
    rows = []
    for i, r in R.items():
        if r["spec"]["kind"] == "matmul" and "error" not in r:
            sq, vit = r["shapes"]["square"], r["shapes"]["vit_mlp"]
            rows.append([r["spec"]["dtype"], str(r["spec"]["threads"]), "x".join(map(str, sq["shape"])),
                         _f(sq["gflops"], "{:.0f}"), "x".join(map(str, vit["shape"])), _f(vit["gflops"], "{:.0f}"),
                         _f(r["gflops"], "{:.0f}")])
    out.append(("Matmul ceiling (GFLOP/s: median of the repeats; ceiling = fastest repeat of the faster shape)",
                ["dtype", "threads", "square", "GFLOP/s", "ViT-B MLP shape", "GFLOP/s", "ceiling"], rows))
    rows = []
    for i, r in R.items():
        if r["spec"]["kind"] == "generate" and "error" not in r:
            sp = r["spec"]
            note = f"{r['measured_steps']}/{sp['steps']} steps measured" + (", extrapolated" if r["extrapolated"] else "")
            rows.append([i, str(sp["batch"]), str(sp["steps"]), sp["dtype"], str(sp["threads"]),
                         _spread(r["step"]), _ms(r["forward"]["median"]), _f(r["flops_per_step"] / 1e9),
                         _f(r["gflops"], "{:.0f}"), _f(r.get("pct_of_ceiling"), "{:.0f}%"),
                         _f(r.get("pct_of_ceiling_now"), "{:.0f}%"), _f(r["images_per_s"], "{:.3f}"),
                         _f(r["peak_rss_mb"], "{:.0f}"), note])
    out.append((f"Generation ({res['meta']['gen_arch']}, random weights; tokens only, VQGAN decode separate)",
                ["case", "batch", "steps", "dtype", "thr", "ms/step [min-max]", "fwd ms",
                 "GFLOP/step", "GFLOP/s", "% ceil", "% ceil now", "img/s", "peak RSS MB", "note"], rows))
    rows = []
    for i, r in R.items():
        if r["spec"]["kind"] == "vq_decode" and "error" not in r:
            sp = r["spec"]
            note = "warm-up at batch 1, 1 timed call" if sp.get("warmup_batch") else f"{r['time']['n']} timed calls"
            rows.append([i, str(sp["batch"]), sp["dtype"], _spread(r["time"]), _f(r["flops"] / 1e9),
                         _f(r["gflops"], "{:.0f}"), _f(r.get("pct_of_ceiling"), "{:.0f}%"),
                         _f(r.get("pct_of_ceiling_now"), "{:.0f}%"), _f(r["images_per_s"], "{:.2f}"),
                         _f(r["peak_rss_mb"], "{:.0f}"), note])
    out.append(("VQGAN decode (official tokenizer architecture)" if not res["meta"]["quick"] else "VQGAN decode (quick)",
                ["case", "batch", "dtype", "ms [min-max]", "GFLOP", "GFLOP/s", "% ceil", "% ceil now", "img/s",
                 "peak RSS MB", "note"],
                rows))
    rows = []
    for i, r in R.items():
        if r["spec"]["kind"] == "app" and "error" not in r:
            sp = r["spec"]
            mode = "CFG" if r["forwards_per_step"] == 2 else "uncond"
            rows.append([i, sp["dtype"], str(sp["threads"]), mode,
                         _f(r["load_s"] * 1e3, "{:.0f}"), _ms(r["first_step_cold_s"]), _spread(r["first_step"]),
                         _spread(r["full"]), _spread(r["lazy"]), _ms(r["forward"]["median"]),
                         _ms(r["decode"]["median"]), _f(r["peak_rss_mb"], "{:.0f}")])
    T = next((r["steps"] for r in R.values() if r["spec"]["kind"] == "app" and "error" not in r), 12)
    out.append((f"Embedded default model, 1 image, {T} steps ({res['meta']['default_model']})",
                ["case", "dtype", "thr", "mode", "load ms", "1st step cold ms", "1st step+preview ms",
                 f"{T} steps+previews ms", f"{T} steps+final decode ms", "fwd ms/step", "decode ms", "peak RSS MB"], rows))
    t = R.get("ab-train")
    if t and "error" not in t:
        rows = [[name, str(t["batch"]), _spread(v["time"]), _f(v["images_per_s"], "{:.0f}"),
                 _f(v["flops_per_step_counted"] / 1e9, "{:.2f}"), _f(v["speedup"]["median"], "{:.2f}x")]
                for name, v in t["variants"].items()]
        out.append((f"Training step ({t['spec']['arch']} architecture, random images, fwd+bwd+AdamW, 1 thread, "
                    f"interleaved; VQGAN encode {t['encode_flops_per_step'] / 1e9:.2f} GFLOP/step, "
                    f"FLOP bound on the cache speed-up {t['flop_bound_speedup']:.2f}x)",
                    ["variant", "batch", "ms/step [min-max]", "img/s", "GFLOP/step (counted)", "speed-up"], rows))
    rows = []
    for i, r in R.items():
        if r["spec"]["kind"] == "retrieval" and "error" not in r:
            sp = r["spec"]
            rows.append([i, str(sp["n"]), _spread(r["time"]), _f(r["recall_vs_exact"], "{:.3f}"),
                         _f(r["index_mb"], "{:.0f}"), _f(r["peak_rss_mb"], "{:.0f}")])
    out.append(("Retrieval: top-10 cosine over random 768-d embeddings (torch exact fp32, 1 query, 1 thread)",
                ["case", "n", "ms/query [min-max]", "recall@10", "index MB", "peak RSS MB"], rows))
    ab = [(i, r) for i, r in R.items() if r["spec"]["kind"].startswith("ab_") and "error" not in r]
    for i, r in ab:
        rows = [[name, _spread(v["time"]),
                 "baseline" if name == r["baseline"] else
                 f"{v['speedup']['median']:.2f}x [{v['speedup']['min']:.2f}-{v['speedup']['max']:.2f}]"]
                for name, v in r["variants"].items()]
        unit = {"ab_train": "ms/step", "ab_retrieval": "ms/query", "ab_app": "ms/generation"}.get(r["spec"]["kind"], "ms/call")
        out.append((f"A/B {i} (interleaved, {r['time']['n']} rounds, peak RSS {r['peak_rss_mb']:.0f} MB)",
                    ["variant", f"{unit} [min-max]", "speed-up [min-max]"], rows))
    out.append(("Speed-ups, same run (>1 = faster; interleaved rows: median of per-round ratios [min-max])",
                ["group", "optimisation", "baseline", "speed-up", "note"],
                [[r["group"], r["optimisation"], r["baseline"],
                  f"{r['speedup']:.2f}x" + (f" [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]"
                                            if r["speedup_min"] is not None else ""), r["note"]]
                 for r in res["ratios"]]))
    out.append(("Where one 12-step generation spends its time (per image)",
                ["model", "transformer s", "sampler s", "decode (final only) s", "decode (every step) s",
                 "decode share lazy", "decode share every step"],
                [[r["model"], f"{r['transformer_s']:.3f}", f"{r['sampler_s']:.3f}", f"{r['decode_lazy_s']:.3f}",
                  f"{r['decode_every_step_s']:.3f}", f"{100 * r['decode_share_lazy']:.0f}%",
                  f"{100 * r['decode_share_every_step']:.0f}%"] for r in res["dominance"]]))
    out.append(("Targets", ["target", "goal", "measured", "result", "margin"],
                [[r["target"], f"{r['goal']} {r['unit']}",
                  "-" if r["measured"] is None else f"{r['measured']:.3g} {r['unit']}",
                  {True: "PASS", False: "MISS", None: "n/a"}[r["passed"]], r["margin"]] for r in res["targets"]]))
    return out


def render_text(title, headers, rows) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda r: "  ".join(str(x).ljust(n) for x, n in zip(r, w))  # noqa: E731
    return "\n".join([f"== {title}", line(headers), line(["-" * n for n in w]), *map(line, rows)])


def render_md(title, headers, rows) -> str:
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    out = [f"#### {title}", "", "| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


# ============================================================================================ main
def _default_model(quick: bool) -> tuple[str | None, str, tempfile.TemporaryDirectory | None]:
    d, desc = C.default_model_source()
    if d is not None:
        return str(d), desc, None
    import mage
    tmp = tempfile.TemporaryDirectory(prefix="mage_bench_")
    torch.manual_seed(0)
    cfg = C.default_arch()
    mage.save_native(tmp.name, mage.MAGE(cfg), mage.VQGAN(cfg.vqgan), meta={"dataset": "random (bench)"})
    return tmp.name, desc, tmp


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes and few repeats (seconds); for tests")
    ap.add_argument("--out", default="bench/results.json", help="JSON output path (default %(default)s)")
    ap.add_argument("--md", default=None, help="also write the tables as Markdown to this path")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="one process per case (default: on, off with --quick)")
    ap.add_argument("--only", default=None, help="comma-separated case id prefixes to run (e.g. gen-b1,app)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per isolated case")
    args = ap.parse_args(argv)
    try:
        C.device_of(args.device)
    except (ValueError, RuntimeError) as e:
        ap.error(str(e))
    isolate = (not args.quick) if args.isolate is None else args.isolate

    model_dir, model_desc, tmp = _default_model(args.quick)
    faiss = importlib.util.find_spec("faiss") is not None
    specs = plan(args.quick, args.compile, args.device, model_dir, model_desc)
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        specs = [s for s in specs if any(s["id"].startswith(p) for p in prefixes)]
        if not specs:
            raise SystemExit(f"--only {args.only!r} matches no case")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:] if argv is None else list(argv),
            "quick": args.quick, "isolated": isolate, "device": args.device, **C.env_info(),
            "gen_arch": "toy stand-in (--quick)" if args.quick else "ViT-B (mage.vit_base())",
            "default_model": model_desc, "faiss": faiss, "loadavg_start": C.loadavg()}
    print(f"MAGE Studio bench: {len(specs)} cases, torch {meta['torch']}, {meta['cpu']}, "
          f"load average {meta['loadavg_start']}", file=sys.stderr, flush=True)
    results, t0 = {}, time.perf_counter()
    try:
        for k, spec in enumerate(specs, 1):
            t = time.perf_counter()
            r = run_isolated(spec, args.timeout) if isolate else run_inprocess(spec)
            results[spec["id"]] = r
            status = "ERROR " + r["error"] if "error" in r else f"median {_ms(r['time']['median'])} ms"
            print(f"[{k:2d}/{len(specs)}] {spec['id']:<28} {time.perf_counter() - t:6.1f} s  {status}",
                  file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    meta["loadavg_end"] = C.loadavg()
    meta["total_s"] = time.perf_counter() - t0
    ceil = ceilings(results)
    annotate(results, ceil)
    res = {"meta": meta, "ceiling_gflops": ceil, "cases": results}
    res["ratios"] = ratios(results)
    res["targets"] = targets(results, args.quick)
    res["dominance"] = dominance(results)
    tabs = tables(res)
    print("\n\n".join(render_text(*t) for t in tabs))
    if args.quick:
        print("\n--quick: toy sizes; the targets above are only meaningful for a full run")
    print(f"\n{meta['total_s']:.0f} s; load average {meta['loadavg_start']} -> {meta['loadavg_end']} "
          "(the machine is shared: numbers are as measured)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    if args.md:
        Path(args.md).write_text("\n\n".join(render_md(*t) for t in tabs) + "\n")
        print(f"wrote {args.md}")
    return res


if __name__ == "__main__":
    main()
