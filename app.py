"""MAGE Studio - Gradio app (also the Hugging Face Spaces entry point).

    python app.py                                  # embedded default model, http://127.0.0.1:7860
    python app.py --model owner/repo --device cuda # any model (see docs/app.md)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# nothing from gradio / huggingface_hub / app may be imported before main() has set the environment


def parse_args(argv=None):
    on_spaces = bool(os.environ.get("SPACE_ID"))
    p = argparse.ArgumentParser(description="MAGE Studio Gradio app")
    p.add_argument("--model", default=os.environ.get("MAGE_MODEL", "default"),
                   help="'default', a model directory, an official .pth, or a Hugging Face Hub repo id "
                        "(env MAGE_MODEL)")
    p.add_argument("--vqgan", default=os.environ.get("MAGE_VQGAN") or None,
                   help="VQGAN checkpoint for an official .pth (env MAGE_VQGAN)")
    p.add_argument("--device", default=os.environ.get("MAGE_DEVICE", "auto"),
                   help="auto (CUDA if available, else CPU) | cpu | cuda | cuda:N | mps (env MAGE_DEVICE)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces else "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--gallery", default=os.environ.get("MAGE_GALLERY") or None,
                   help="retrieval gallery directory (default assets/gallery; env MAGE_GALLERY)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("MAGE_THREADS", 0)),
                   help="torch CPU threads (0 = torch default; env MAGE_THREADS)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # before gradio / huggingface_hub are imported: no telemetry, and no Hub lookups for local models
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if args.model in ("", "default") or os.path.exists(os.path.expanduser(args.model)):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local model: never ask the Hub (imports read this once)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from app import Studio, build_demo, launch, load_pipeline
    try:
        pipe, message = load_pipeline(args.model, args.vqgan, args.device)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    logging.getLogger("mage.app").info("model: %s on %s", pipe.meta.get("source"), pipe.device)
    studio = Studio(pipe, message, gallery_dir=args.gallery)
    logging.getLogger("mage.app").info("warm-up: %.2f s", studio.warmup())
    demo = build_demo(studio)
    launch(demo, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
