"""Token cache: tokenize a dataset once (view 0 = the plain image, views 1.. = augmented copies), so
pre-training does not run the tokenizer encoder every step.

Under torchrun each process tokenizes its shard (the result does not depend on the number of processes).

    python -m train.cache --tokenizer runs/tokenizer --dataset fashion-mnist --views 4 --out runs/tokens.safetensors
    torchrun --nproc_per_node=8 -m train.cache --tokenizer vqgan_jax_strongaug.ckpt --dataset /data/imagenet \
        --img-size 256 --views 4 --out runs/imagenet_tokens.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from train.common import Dist, add_device_flags, map_dataset
from train.data import augment, build_dataset, crop_scale


@torch.no_grad()
def build_cache(vq, dataset, views: int = 4, batch_size: int = 256, seed: int = 0, scale=(0.6, 1.0),
                device="cpu", progress: bool = True, dist=None, workers: int = 0) -> dict:
    """-> {"tokens": int16/int32 [N, views, h*w], "labels": int64 [N]}. View 0 is the plain image; the
    augmentations of image i come from a generator seeded by (seed, i), so the cache is the same whatever
    the batch size or the number of torchrun processes sharing the work (``dist``)."""
    dtype = torch.int16 if vq.config.n_embed <= 32767 else torch.int32

    def fn(x, y, idx):
        per_view = [vq.encode(x.to(device)).cpu()]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in idx]
        for _ in range(1, views):
            xv = torch.stack([augment(img, scale, True, g) for img, g in zip(x, gens)])
            per_view.append(vq.encode(xv.to(device)).cpu())
        return {"tokens": torch.stack(per_view, 1).to(dtype), "labels": y.long()}

    return map_dataset(dataset, fn, dist, batch_size, workers, desc="tokenizing", progress=progress)


def save_cache(path, cache: dict, meta: dict):
    """Tensors + a JSON ``meta`` in one safetensors file, written atomically (temp file + rename)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp), metadata={"meta": json.dumps(meta)})
    tmp.replace(path)


def cache_meta(path) -> dict:
    """The JSON ``meta`` of a :func:`save_cache` file, without reading its tensors."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata().get("meta", "{}"))


def load_cache(path) -> tuple[dict, dict]:
    from safetensors.torch import load_file
    return load_file(str(path)), cache_meta(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer dir (train.tokenizer), model dir or VQGAN ckpt")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--split", default="train")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256, help="images per tokenizer pass, per process")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    add_device_flags(p)
    args = p.parse_args(argv)
    if args.views < 1:
        p.error("--views must be >= 1")
    from train.tokenizer import load_tokenizer
    d = Dist.from_args(args)
    try:
        vq = load_tokenizer(args.tokenizer).to(d.device).eval()
        ds = build_dataset(args.dataset, args.split, args.img_size, limit=args.limit)
        cache = build_cache(vq, ds, args.views, args.batch_size, seed=args.seed, scale=crop_scale(args.img_size),
                            device=d.device, progress=d.main, dist=d, workers=args.workers)
        if d.main:
            meta = {"dataset": args.dataset, "split": args.split, "img_size": args.img_size, "views": args.views,
                    "seed": args.seed, "tokenizer": str(args.tokenizer), "vqgan": vq.config.to_dict(),
                    "classes": getattr(ds, "classes", [])}
            save_cache(args.out, cache, meta)
            print(f"[cache] {tuple(cache['tokens'].shape)} tokens -> {args.out}")
    finally:
        d.close()


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
