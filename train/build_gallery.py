"""Build the retrieval gallery shipped with a model: held-out Fashion-MNIST TEST images (the first
``n / 10`` of each class, in file order), their labels, and embeddings cached for the model.

    python -m train.build_gallery --model assets/default --n 3000 --out assets/gallery
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mage import MAGEPipeline
from mage.gallery import compute_embeddings, model_fingerprint, save_gallery, write_embeddings
from train.data import FASHION_CLASSES, load_fashion_mnist


def select_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class, in dataset order (deterministic)."""
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images, {per_class} requested")
        picks.append(idx)
    return np.sort(np.concatenate(picks))


def build_gallery(pipe: MAGEPipeline, out, n: int = 3000, split: str = "test", size: int = 32,
                  batch_size: int = 256, progress=None) -> Path:
    num_classes = len(FASHION_CLASSES)
    if n < num_classes or n % num_classes:
        raise ValueError(f"--n must be a positive multiple of {num_classes} (same count per class), got {n}")
    x, y = load_fashion_mnist(split, size)
    idx = select_per_class(y, n // num_classes, num_classes)
    images, labels = np.repeat(x[idx][..., None], 3, axis=-1), y[idx]
    info = {"dataset": f"Fashion-MNIST {split} split (held out from training)",
            "license": "MIT (Fashion-MNIST, Zalando Research)",
            "selection": f"first {n // num_classes} images of each class in {split}-set order",
            "dataset_indices": idx.tolist()}
    save_gallery(out, images, labels, FASHION_CLASSES, info)
    emb = compute_embeddings(pipe, images, batch_size, progress)
    write_embeddings(out, emb, model_fingerprint(pipe))
    return Path(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help='"default", a model directory or a checkpoint')
    ap.add_argument("--n", type=int, default=3000, help="number of images (a multiple of 10)")
    ap.add_argument("--out", default="assets/gallery")
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--size", type=int, default=32, help="thumbnail size in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe = MAGEPipeline.from_pretrained(args.model, device="cpu")
    out = build_gallery(pipe, args.out, args.n, args.split, args.size, args.batch_size)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    total = sum(sizes.values())
    print(f"gallery of {args.n} images written to {out} in {time.time() - t0:.1f} s "
          f"({total / 1e6:.2f} MB: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
