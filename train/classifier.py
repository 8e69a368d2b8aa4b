"""A small CNN classifier for 32x32 Fashion-MNIST (zero-padded 28x28, grey replicated to 3 channels,
values in [0, 1]). Its 128-d penultimate features are the "classifier" feature space of
``train.evaluate`` (Frechet distance, KID, precision/recall), and it labels class-conditional samples.

    python -m train.classifier --out assets/fmnist_classifier --epochs 5

writes ``model.safetensors`` + ``config.json`` (architecture, training settings, test accuracy).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "fmnist_classifier"


class SmallCNN(nn.Module):
    """4 x (3x3 conv + BatchNorm + ReLU) with 2x2 max-pooling after the first three (32 -> 4 px), then
    flatten -> Linear -> ReLU (the ``hidden``-d features) -> dropout -> Linear head."""

    def __init__(self, widths=(16, 32, 64, 64), hidden: int = 128, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.2, img_size: int = 32):
        super().__init__()
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.body = nn.Sequential(*layers)
        side = img_size // 2 ** (len(widths) - 1)
        self.fc = nn.Linear(c * side * side, hidden)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.widths, self.hidden, self.num_classes, self.in_channels = tuple(widths), hidden, num_classes, in_channels
        self.img_size = img_size

    @property
    def feature_dim(self) -> int:
        return self.hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.img_size:
            raise ValueError(f"expected images [B,{self.in_channels},{self.img_size},{self.img_size}], "
                             f"got {tuple(x.shape)}")
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ------------------------------------------------------------------------------------- save / load
def save_classifier(directory, model: SmallCNN, info: dict) -> Path:
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    cfg = {"format": "mage-studio-classifier", "arch": "SmallCNN", "widths": list(model.widths), "hidden": model.hidden,
           "num_classes": model.num_classes, "in_channels": model.in_channels, "img_size": model.img_size, **info}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def load_classifier(directory=DEFAULT_DIR) -> tuple[SmallCNN, dict]:
    """(model in eval mode, config dict) from a directory written by :func:`save_classifier`."""
    from safetensors.torch import load_file
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"no classifier in {d} (needs config.json + model.safetensors); train one with "
                                f"`python -m train.classifier --out {d}`")
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("arch") != "SmallCNN":
        raise ValueError(f"{d}/config.json: unknown classifier architecture {cfg.get('arch')!r}")
    model = SmallCNN(cfg["widths"], cfg["hidden"], cfg["num_classes"], cfg["in_channels"], img_size=cfg["img_size"])
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval(), cfg


# ------------------------------------------------------------------------------------- training
def _to_float(x_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W] -> float [N,3,H,W] in [0,1]."""
    return torch.from_numpy(x_uint8).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1)


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` px (one shift per batch) + per-image horizontal flip."""
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    x = torch.roll(x, (dy, dx), dims=(2, 3))
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def accuracy(model: SmallCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train(epochs: int = 5, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4, limit=None,
          seed: int = 0, widths=(16, 32, 64, 64), progress: bool = True, test_limit=None) -> tuple[SmallCNN, dict]:
    from train.data import load_fashion_mnist
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = load_fashion_mnist("train", 32)
    xte, yte = load_fashion_mnist("test", 32)
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    if test_limit:
        xte, yte = xte[:test_limit], yte[:test_limit]
    xtr, xte = _to_float(xtr), _to_float(xte)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    model = SmallCNN(widths)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    bar = tqdm(total=steps, desc="classifier", disable=not progress, mininterval=2)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i: i + batch_size]
            xb = _shift(xtr[idx], 2, g)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(epoch=ep + 1, loss=f"{loss.item():.3f}")
    bar.close()
    info = {"test_accuracy": accuracy(model, xte, yte), "train_accuracy": accuracy(model, xtr[:10000], ytr[:10000]),
            "train_seconds": round(time.time() - t0, 1), "test_images": len(xte), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "train_images": len(xtr), "seed": seed,
            "num_params": sum(p.numel() for p in model.parameters()),
            "dataset": "Fashion-MNIST (28x28 zero-padded to 32x32, grey replicated to RGB, [0,1])",
            "augmentation": "random translation +-2 px, horizontal flip", "license": "MIT"}
    return model.eval(), info


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the small Fashion-MNIST CNN used by train.evaluate.")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="output directory (default: assets/fmnist_classifier)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    model, info = train(a.epochs, a.batch_size, a.lr, limit=a.limit, seed=a.seed)
    save_classifier(a.out, model, info)
    print(f"test accuracy {info['test_accuracy']:.4f} ({info['num_params']} parameters, "
          f"{info['train_seconds']} s) -> {a.out}")


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
