"""Token cache: tokenize a dataset once (view 0 = the plain image, views 1.. = augmented copies), so
pre-training does not run the tokenizer encoder every step.

    python -m train.cache --tokenizer runs/tokenizer --dataset fashion-mnist --views 4 --out runs/tokens.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from train.data import augment, build_dataset


@torch.no_grad()
def build_cache(vq, dataset, views: int = 4, batch_size: int = 256, seed: int = 0, scale=(0.6, 1.0),
                device="cpu", progress: bool = True) -> dict:
    """-> {"tokens": uint16/int32 [N, views, h*w], "labels": int64 [N]}."""
    g = torch.Generator().manual_seed(seed)
    toks, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size)
    for x, y in tqdm(loader, desc="tokenizing", disable=not progress):
        per_view = []
        for v in range(views):
            xv = x if v == 0 else torch.stack([augment(img, scale, True, g) for img in x])
            per_view.append(vq.encode(xv.to(device)).cpu())
        toks.append(torch.stack(per_view, 1))
        labels.append(torch.as_tensor(y))
    tokens = torch.cat(toks)
    dtype = torch.int16 if vq.config.n_embed <= 32767 else torch.int32
    return {"tokens": tokens.to(dtype), "labels": torch.cat(labels).long()}


def save_cache(path, cache: dict, meta: dict):
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cache, str(path), metadata={"meta": json.dumps(meta)})


def load_cache(path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata().get("meta", "{}"))
    return load_file(str(path)), meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer dir (train.tokenizer), model dir or VQGAN ckpt")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--split", default="train")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from train.tokenizer import load_tokenizer
    vq = load_tokenizer(args.tokenizer)
    ds = build_dataset(args.dataset, args.split, args.img_size, limit=args.limit)
    cache = build_cache(vq, ds, args.views, seed=args.seed)
    meta = {"dataset": args.dataset, "split": args.split, "img_size": args.img_size, "views": args.views,
            "tokenizer": str(args.tokenizer), "vqgan": vq.config.to_dict(), "classes": getattr(ds, "classes", [])}
    save_cache(args.out, cache, meta)
    print(f"[cache] {tuple(cache['tokens'].shape)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
