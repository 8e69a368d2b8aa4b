"""App latency: time to the first streamed decoding step and to the final image, through the real app.

    python -m bench.app_latency                    # embedded default model, CPU, 1 torch thread
    python -m bench.app_latency --model DIR --reps 5 --threads 2

The app is launched in-process on 127.0.0.1 and driven with gradio_client (files are not downloaded), so
the numbers include queueing, PNG encoding and the server-sent-event stream - what a user waits for.
The "handler" columns time the same generator called directly (model + pictures, no server).
Targets (default model, CPU): first step <= 0.3 s, 12 steps <= 2 s.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {"first": 0.3, 12: 2.0}
NONE = "none (unconditional)"


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="model source (default: the embedded model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 12, 20])
    p.add_argument("--n", type=int, default=1, help="images per generation")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from app import Studio, build_demo, launch, load_pipeline
    from gradio_client import Client

    try:
        pipe, msg = load_pipeline(args.model, device=args.device)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    if msg:
        sys.exit(f"error: {msg}")
    studio = Studio(pipe, None, load_gallery=False)
    warm = studio.warmup()
    demo = build_demo(studio)
    port = _free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, analytics_enabled=False)
    client.predict(2, "cosine", 4.5, 1.0, 0, args.n, NONE, 0.0, api_name="/generate")  # warm the server path

    print(f"model: {pipe.meta.get('source')} | device {pipe.device} | torch threads {torch.get_num_threads()} | "
          f"{args.n} image(s) | median of {args.reps} | warm-up {warm:.2f} s")
    rows = []
    for T in args.steps:
        first, final, h_first, h_final = [], [], [], []
        for r in range(args.reps):
            t0 = time.perf_counter()
            job = client.submit(T, "cosine", 4.5, 1.0, r, args.n, NONE, 0.0, api_name="/generate")
            times = [time.perf_counter() - t0 for _ in job]
            job.result()
            first.append(times[0])
            final.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ht = [time.perf_counter() - t0 for _ in studio.generate(T, "cosine", 4.5, 1.0, r, args.n, NONE, 0.0)]
            h_first.append(ht[0])
            h_final.append(ht[-1])
        rows.append((T, _median(first), _median(final), _median(h_first), _median(h_final)))
    demo.close()

    print(f"\n| steps | app: first step (s) | app: final image (s) | handler: first step (s) | handler: final (s) |")
    print("|---:|---:|---:|---:|---:|")
    for T, f, F, hf, hF in rows:
        print(f"| {T} | {f:.3f} | {F:.3f} | {hf:.3f} | {hF:.3f} |")
    ok_first = all(f <= TARGETS["first"] for _, f, *_ in rows)
    twelve = [F for T, _, F, *_ in rows if T == 12]
    print(f"\ntargets: first step <= {TARGETS['first']} s: {'met' if ok_first else 'NOT met'}"
          + (f"; 12 steps <= {TARGETS[12]} s: {'met' if twelve[0] <= TARGETS[12] else 'NOT met'}" if twelve else ""))


if __name__ == "__main__":
    main()
