"""Linear probe (and k-NN) on frozen MAGE features.

Features = ``MAGE.embed``: the encoder's final-norm output mean-pooled over the image positions (nothing
masked). (The official linear probe instead pools the last block's output and applies a fresh LayerNorm;
``MAGE.embed`` keeps the pre-trained final norm.) Head = BatchNorm1d(affine=False) + Linear, as in MAE/MAGE,
trained with SGD (momentum 0.9, no weight decay), linear warm-up and cosine decay, on features computed once
(no augmentation). The same probe runs on raw pixels and on a randomly initialised encoder of the same size
(same tokenizer) as baselines.

    python -m train.linprobe --model assets/default --dataset fashion-mnist --train-limit 10000 --epochs 50
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

from train.common import lr_at
from train.metrics import knn_accuracy


# ------------------------------------------------------------------------------------- data
def load_split(dataset: str, split: str, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(images float [N,3,size,size] in [0,1], labels long [N], class names) of a dataset split.
    Fashion-MNIST is read at 32x32 (28x28 zero-padded) and resized if the model wants another size."""
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
def encode_tokens(vqgan, images: torch.Tensor, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    dev = next(vqgan.parameters()).device
    out = [vqgan.encode(images[i: i + batch_size].to(dev)).cpu()
           for i in tqdm(range(0, len(images), batch_size), desc="tokenize", leave=False, disable=not progress)]
    return torch.cat(out)


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
                 desc: str = "linear probe") -> dict:
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
            idx = perm[i * bs: (i + 1) * bs]
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


def probe_all(pipe, dataset: str = "fashion-mnist", train_limit: int | None = 10000, test_limit: int | None = None,
              epochs: int = 50, baselines: bool = True, knn_k: int = 10, seed: int = 0, batch_size: int = 256,
              progress: bool = True) -> dict:
    """Linear-probe and k-NN top-1 for the model's encoder and (optionally) raw pixels and a random encoder."""
    size = pipe.config.img_size
    xtr, ytr, classes = load_split(dataset, "train", size, train_limit)
    xte, yte, _ = load_split(dataset, "test", size, test_limit)
    C = max(len(classes), int(max(ytr.max(), yte.max())) + 1)
    ttr = encode_tokens(pipe.vqgan, xtr, batch_size, progress)
    tte = encode_tokens(pipe.vqgan, xte, batch_size, progress)
    feats = {"mage": (mage_features(pipe.model, ttr, batch_size, progress),
                      mage_features(pipe.model, tte, batch_size, progress))}
    if baselines:
        feats["pixels"] = (pixel_features(xtr), pixel_features(xte))
        rnd = random_encoder_like(pipe.model, seed)
        feats["random_encoder"] = (mage_features(rnd, ttr, batch_size, progress, "random encoder"),
                                   mage_features(rnd, tte, batch_size, progress, "random encoder"))
    out = {"dataset": dataset, "train_images": len(xtr), "test_images": len(xte), "num_classes": C,
           "features": {}}
    for name, (ftr, fte) in feats.items():
        t0 = time.time()
        lp = linear_probe(ftr, ytr, fte, yte, C, epochs=epochs, seed=seed, progress=progress, desc=f"probe {name}")
        out["features"][name] = {"dim": ftr.shape[1], "linear_top1": lp["top1"], "linear_train_top1": lp["train_top1"],
                                 f"knn{knn_k}_top1": knn_accuracy(ftr, ytr, fte, yte, k=knn_k, num_classes=C),
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
    p.add_argument("--no-baselines", action="store_true", help="skip raw-pixel and random-encoder baselines")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    from mage import MAGEPipeline
    pipe = MAGEPipeline.from_pretrained(a.model, vqgan=a.vqgan, device="cpu")
    res = probe_all(pipe, a.dataset, a.train_limit, a.test_limit, a.epochs, not a.no_baselines, seed=a.seed)
    res["model"] = pipe.meta.get("source", a.model)
    print(format_table(res))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # bad paths / inputs: a message, not a traceback
        raise SystemExit(f"error: {e}")
