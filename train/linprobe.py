"""Linear probe (and k-NN) on frozen MAGE features.

Features = ``MAGE.embed``: the encoder's final-norm output mean-pooled over the image positions (nothing
masked). (The official linear probe instead pools the last block's output and applies a fresh LayerNorm;
``MAGE.embed`` keeps the pre-trained final norm.) Head = BatchNorm1d(affine=False) + Linear, as in MAE/MAGE,
trained with SGD (momentum 0.9, no weight decay), linear warm-up and cosine decay, on features computed once
(no augmentation). The same probe runs on raw pixels and on a randomly initialised encoder of the same size
(same tokenizer) as baselines.

Images stream through a DataLoader (an ImageFolder of any size works; only the features are kept). On a
GPU (``--device auto``) or under torchrun, each process encodes its shard of the dataset; the features are
gathered and the probes train on rank 0. ``--features-dir`` keeps the features for re-runs.

    python -m train.linprobe --model assets/default --dataset fashion-mnist --train-limit 10000 --epochs 50
    torchrun --nproc_per_node=8 -m train.linprobe --model mage-vitb.pth --vqgan vqgan_jax_strongaug.ckpt \
        --dataset /data/imagenet --train-limit 0 --epochs 90 --batch-size 16384 --features-dir runs/feats
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from train.common import Dist, add_device_flags, lr_at
from train.metrics import knn_accuracy


# ------------------------------------------------------------------------------------- data
def load_split(dataset: str, split: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(images float [N,3,size,size] in [0,1], labels long [N], class names) of a dataset split.
    Fashion-MNIST is read at 32x32 (28x28 zero-padded) and resized if the model wants another size.
    Holds the split in memory: for train.evaluate's image sets; the probe itself streams (extract_features)."""
    from train.data import FASHION_CLASSES, build_dataset, load_fashion_mnist
    if dataset in ("fashion-mnist", "fashion_mnist"):
        x, y = load_fashion_mnist(split, 32)
        if limit:
            x, y = x[:limit], y[:limit]
        imgs = torch.from_numpy(x).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)  # a view: 1/3 memory
        if size != 32:
            imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        return imgs, torch.from_numpy(y).long(), list(FASHION_CLASSES)
    ds = build_dataset(dataset, split, size, augment=False, limit=limit)
    loader = torch.utils.data.DataLoader(ds, batch_size=256)
    xs, ys = zip(*[(xb, yb) for xb, yb in tqdm(loader, desc=f"load {split}", leave=False)])
    return torch.cat(xs), torch.cat(ys).long(), list(ds.classes)


# ------------------------------------------------------------------------------------- features
@torch.inference_mode()
def mage_features(model, tokens: torch.Tensor, batch_size: int = 256, progress: bool = True,
                  desc: str = "encoder features") -> torch.Tensor:
    """``model.embed`` of token grids [N, num_tokens] -> [N, D] (eval mode)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model.embed(tokens[i: i + batch_size].to(dev)).float().cpu()
           for i in tqdm(range(0, len(tokens), batch_size), desc=desc, leave=False, disable=not progress)]
    model.train(was)
    return torch.cat(out)


def random_encoder_like(model, seed: int = 0):
    """A freshly initialised MAGE of the same configuration (the 'untrained' baseline). The generator is
    seeded with 1000 + seed, not seed, so that a model initialised with ``torch.manual_seed(0)`` and never
    trained does not coincide with its own baseline."""
    from mage.model import MAGE
    with torch.random.fork_rng():
        torch.manual_seed(1000 + seed)
        rnd = MAGE(model.config)
    return rnd.eval().to(next(model.parameters()).device)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels (one channel if the image is grey replicated to RGB), flattened."""
    if images.shape[1] == 3 and torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2]):
        images = images[:, :1]
    return images.flatten(1).float()


# ------------------------------------------------------------------------------------- probe
def cosine_lr(step: int, total: int, warmup: int, base: float, min_lr: float = 0.0) -> float:
    """train.common.lr_at with warm-up steps counted from 1, so the first step does not run at lr 0."""
    return lr_at(step + 1 if step < warmup else step, base, warmup, total, min_lr)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int | None = None, epochs: int = 50, batch_size: int = 256, blr: float = 0.1,
                 warmup_epochs: int = 5, weight_decay: float = 0.0, seed: int = 0, progress: bool = True,
                 desc: str = "linear probe", device=None) -> dict:
    """Train BatchNorm1d(affine=False) + Linear on fixed features; returns top-1 accuracies.
    lr = blr * batch_size / 256 (SGD, momentum 0.9), warm-up then cosine to 0 (per step)."""
    if len(train_f) != len(train_y) or len(test_f) != len(test_y):
        raise ValueError("features and labels differ in length")
    if len(train_f) < 2:
        raise ValueError("the linear probe needs at least 2 training samples")
    C = int(num_classes or int(max(train_y.max(), test_y.max())) + 1)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Sequential(nn.BatchNorm1d(train_f.shape[1], affine=False, eps=1e-6), nn.Linear(train_f.shape[1], C))
        nn.init.trunc_normal_(head[1].weight, std=0.01)
        nn.init.zeros_(head[1].bias)
    dev = torch.device(device or "cpu")
    head = head.to(dev)
    train_f, train_y, test_f, test_y = (t.to(dev) for t in (train_f, train_y, test_f, test_y))
    lr = blr * batch_size / 256
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    bs = min(batch_size, len(train_f))
    steps_per_epoch = len(train_f) // bs  # drop the last partial batch (BatchNorm statistics)
    total = epochs * steps_per_epoch
    step = 0
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        head.train()
        perm = torch.randperm(len(train_f), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * bs: (i + 1) * bs].to(dev)
            for grp in opt.param_groups:
                grp["lr"] = cosine_lr(step, total, warmup_epochs * steps_per_epoch, lr)
            loss = F.cross_entropy(head(train_f[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        acc = (head(test_f).argmax(1) == test_y).float().mean().item()
        train_acc = (head(train_f).argmax(1) == train_y).float().mean().item()
    return {"top1": acc, "train_top1": train_acc, "final_loss": loss.item(), "epochs": epochs, "lr": lr}


def extract_features(pipe, dataset: str, split: str, limit: int | None = None, baselines: bool = True,
                     seed: int = 0, batch_size: int = 256, workers: int = 0, dist=None,
                     progress: bool = True) -> tuple[dict, list]:
    """One streamed pass over a dataset split: tokenize, then encoder features (``mage``) and, with
    ``baselines``, raw ``pixels`` and a ``random_encoder`` of the same size; plus ``labels``. Under torchrun
    each rank encodes its own shard and every rank gets the full, ordered result (images are never held
    in memory all at once; features are). Returns ({name: tensor [N, ...]}, class names)."""
    from train.common import map_dataset
    from train.data import ArrayDataset, build_dataset
    ds = build_dataset(dataset, split, pipe.config.img_size, augment=False, limit=limit)
    grey = isinstance(ds, ArrayDataset) and ds.images.ndim == 3  # one channel is enough for the pixel baseline
    rnd = random_encoder_like(pipe.model, seed) if baselines else None
    dev = next(pipe.model.parameters()).device

    def fn(x, y, idx):
        tok = pipe.vqgan.encode(x.to(dev))
        out = {"labels": y.long(), "mage": pipe.model.embed(tok).float()}
        if baselines:
            out["pixels"] = (x[:, :1] if grey else x).flatten(1).float()
            out["random_encoder"] = rnd.embed(tok).float()
        return out

    was = pipe.model.training
    pipe.model.eval()
    try:
        feats = map_dataset(ds, fn, dist, batch_size, workers, desc=f"features {split}", progress=progress)
    finally:
        pipe.model.train(was)
    return feats, list(getattr(ds, "classes", []))


def _cached_features(pipe, dataset, split, limit, cache_dir, **kw):
    """:func:`extract_features`, stored in / reused from ``cache_dir/<split>.safetensors`` when given
    (same model, dataset, limit, baselines and seed)."""
    if cache_dir is None:
        return extract_features(pipe, dataset, split, limit, **kw)
    from train.cache import cache_meta, load_cache, save_cache
    key = {"model": str(pipe.meta.get("source", "")), "dataset": str(dataset), "split": split, "limit": limit,
           "baselines": kw["baselines"], "seed": kw["seed"], "img_size": pipe.config.img_size}
    path = Path(cache_dir) / f"{split}.safetensors"
    if path.is_file() and cache_meta(path).get("key") == key:
        feats, meta = load_cache(path)
        return feats, meta["classes"]
    feats, classes = extract_features(pipe, dataset, split, limit, **kw)
    if kw["dist"] is None or kw["dist"].main:
        save_cache(path, feats, {"key": key, "classes": classes})
    return feats, classes


def probe_all(pipe, dataset: str = "fashion-mnist", train_limit: int | None = 10000, test_limit: int | None = None,
              epochs: int = 50, baselines: bool = True, knn_k: int = 10, seed: int = 0, batch_size: int = 256,
              progress: bool = True, blr: float = 0.1, probe_batch_size: int = 256, workers: int = 0, dist=None,
              features_dir=None) -> dict | None:
    """Linear-probe and k-NN top-1 for the model's encoder and (optionally) raw pixels and a random encoder.
    Feature extraction (the expensive part) is sharded across torchrun ranks; the probes then train on the
    gathered features on rank 0 (other ranks return None)."""
    kw = dict(baselines=baselines, seed=seed, batch_size=batch_size, workers=workers, dist=dist, progress=progress)
    ftr, classes = _cached_features(pipe, dataset, "train", train_limit, features_dir, **kw)
    fte, _ = _cached_features(pipe, dataset, "test", test_limit, features_dir, **kw)
    if dist is not None and not dist.main:
        return None
    ytr, yte = ftr.pop("labels"), fte.pop("labels")
    C = max(len(classes), int(max(ytr.max(), yte.max())) + 1)
    dev = next(pipe.model.parameters()).device
    out = {"dataset": dataset, "train_images": len(ytr), "test_images": len(yte), "num_classes": C, "features": {}}
    for name in ftr:
        t0 = time.time()
        lp = linear_probe(ftr[name], ytr, fte[name], yte, C, epochs=epochs, batch_size=probe_batch_size, blr=blr,
                          seed=seed, progress=progress, desc=f"probe {name}", device=dev)
        out["features"][name] = {"dim": ftr[name].shape[1], "linear_top1": lp["top1"],
                                 "linear_train_top1": lp["train_top1"],
                                 f"knn{knn_k}_top1": knn_accuracy(ftr[name], ytr, fte[name], yte, k=knn_k, num_classes=C),
                                 "probe_seconds": round(time.time() - t0, 2)}
    return out


def format_table(res: dict) -> str:
    rows = [f"{'features':<16} {'dim':>6} {'linear':>8} {'k-NN':>8}"]
    for name, r in res["features"].items():
        knn = next(v for k, v in r.items() if k.startswith("knn"))
        rows.append(f"{name:<16} {r['dim']:>6} {100 * r['linear_top1']:>7.2f}% {100 * knn:>7.2f}%")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description="Linear probe + k-NN on frozen MAGE encoder features.")
    p.add_argument("--model", default="default", help="'default', a model directory, an official .pth or a hub id")
    p.add_argument("--vqgan", default=None, help="tokenizer checkpoint for official .pth files without one")
    p.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256, help="probe batch (lr = blr * batch / 256)")
    p.add_argument("--blr", type=float, default=0.1)
    p.add_argument("--extract-batch-size", type=int, default=256, help="images per forward pass, per process")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for feature extraction")
    p.add_argument("--features-dir", default=None, help="store/reuse extracted features here (re-runs skip the encoder)")
    p.add_argument("--no-baselines", action="store_true", help="skip raw-pixel and random-encoder baselines")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    add_device_flags(p)
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    if a.batch_size < 2:
        p.error("--batch-size must be >= 2 (BatchNorm)")
    from mage import MAGEPipeline
    d = Dist.from_args(a)
    try:
        pipe = MAGEPipeline.from_pretrained(a.model, vqgan=a.vqgan, device=str(d.device))
        res = probe_all(pipe, a.dataset, a.train_limit, a.test_limit, a.epochs, not a.no_baselines, seed=a.seed,
                        batch_size=a.extract_batch_size, progress=d.main, blr=a.blr, probe_batch_size=a.batch_size,
                        workers=a.workers, dist=d, features_dir=a.features_dir)
        if d.main:
            res["model"] = pipe.meta.get("source", a.model)
            res["world_size"] = d.world
            res["args"] = {k: v for k, v in vars(a).items()}
            print(format_table(res))
            if a.out:
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(res, indent=2))
        return res
    finally:
        d.close()


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
