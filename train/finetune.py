"""End-to-end fine-tuning of the MAGE encoder + a classification head.

As in the official recipe (MAE/BEiT style): global average pool of the last block's output over the image
positions -> fresh LayerNorm (``fc_norm``) -> Linear head (the pre-trained final norm and the decoder are
not used); AdamW with layer-wise lr decay (``token_emb`` = layer 0, ``blocks.i`` = layer i+1, ``fc_norm``/
``head`` = the last layer), no weight decay on 1-D parameters and position embeddings, linear warm-up +
cosine decay, drop path increasing with depth, label smoothing. The VQGAN tokenizer stays frozen; with
``--augment`` images are randomly cropped/flipped and re-tokenized every batch.

    python -m train.finetune --model assets/default --dataset fashion-mnist --train-limit 5000 --epochs 10
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from train.linprobe import cosine_lr, encode_tokens, load_split


class MAGEClassifier(nn.Module):
    """MAGE encoder (token embedding + blocks) + fc_norm + head; keys follow the official fine-tune layout."""

    def __init__(self, mage, num_classes: int):
        super().__init__()
        self.config = mage.config
        self.token_emb, self.blocks = mage.token_emb, mage.blocks
        D = mage.config.embed_dim
        self.fc_norm = nn.LayerNorm(D, eps=mage.config.norm_eps)
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self._input_ids = mage.input_ids

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_emb(self._input_ids(tokens))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.fc_norm(x[:, 1:].mean(1)))


def build_classifier(pretrained_mage, num_classes: int, drop_path: float = 0.1) -> MAGEClassifier:
    """Copy the pre-trained weights into a MAGE built with drop path (dropout off, token-embedding dropout 0.1
    as in the official fine-tune model) and wrap it with a fresh head."""
    from mage.checkpoint import load_strict
    from mage.model import MAGE
    cfg = pretrained_mage.config.replace(drop_rate=0.0, attn_drop_rate=0.0)
    m = MAGE(cfg, drop_path=drop_path)
    load_strict(m, {k: v.detach().cpu() for k, v in pretrained_mage.state_dict().items()}, "MAGE model")
    m.token_emb.dropout.p = 0.1
    return MAGEClassifier(m, num_classes)


def layer_id(name: str, depth: int) -> int:
    if name.startswith("token_emb."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: MAGEClassifier, weight_decay: float = 0.05, layer_decay: float = 0.65) -> list[dict]:
    """One AdamW group per (layer, decay/no-decay), each with ``lr_scale = layer_decay ** (depth + 1 - layer)``."""
    depth = len(model.blocks)
    groups = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or n.endswith("position_embeddings.weight")
        lid = layer_id(n, depth)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - lid)}
        groups[key]["params"].append(p)
        groups[key]["names"].append(n)
    return [groups[k] for k in sorted(groups)]


@torch.no_grad()
def evaluate_tokens(model: MAGEClassifier, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum((model(tokens[i: i + batch_size]).argmax(1) == labels[i: i + batch_size]).sum().item()
                  for i in range(0, len(tokens), batch_size))
    return correct / max(len(tokens), 1)


def finetune(pipe, dataset: str = "fashion-mnist", train_limit: int | None = 5000, test_limit: int | None = 2000,
             epochs: int = 10, batch_size: int = 64, blr: float = 5e-4, min_lr: float = 1e-6, warmup_epochs: float = 1,
             weight_decay: float = 0.05, layer_decay: float = 0.65, drop_path: float = 0.1, label_smoothing: float = 0.1,
             augment: bool = False, seed: int = 0, progress: bool = True) -> tuple[MAGEClassifier, dict]:
    """Fine-tune ``pipe.model``'s encoder on a dataset; returns (classifier, results)."""
    from train.data import augment as augment_image
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    size = pipe.config.img_size
    xtr, ytr, classes = load_split(dataset, "train", size, train_limit)
    xte, yte, _ = load_split(dataset, "test", size, test_limit)
    C = max(len(classes), int(max(ytr.max(), yte.max())) + 1)
    vq = pipe.vqgan.eval().cpu()
    ttr = None if augment else encode_tokens(vq, xtr, progress=progress)
    tte = encode_tokens(vq, xte, progress=progress)
    model = build_classifier(pipe.model.cpu(), C, drop_path)
    lr = blr * batch_size / 256
    groups = param_groups(model, weight_decay, layer_decay)
    opt = torch.optim.AdamW([{k: v for k, v in grp.items() if k != "names"} for grp in groups], lr=lr,
                            betas=(0.9, 0.999))
    bs = min(batch_size, len(xtr))
    steps_per_epoch = math.ceil(len(xtr) / bs)
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    step, t0, history = 0, time.time(), []
    bar = tqdm(total=total, desc="fine-tune", disable=not progress, mininterval=1)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        ep_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * bs: (i + 1) * bs]
            if augment:
                with torch.no_grad():
                    tok = vq.encode(torch.stack([augment_image(x, generator=g) for x in xtr[idx]]))
            else:
                tok = ttr[idx]
            cur = cosine_lr(step, total, warmup, lr, min_lr)
            for grp in opt.param_groups:
                grp["lr"] = cur * grp["lr_scale"]
            loss = F.cross_entropy(model(tok), ytr[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ep_loss += loss.item() / steps_per_epoch
            bar.update()
            bar.set_postfix(epoch=ep + 1, loss=f"{loss.item():.3f}", refresh=False)
        history.append({"epoch": ep + 1, "mean_loss": ep_loss})
    bar.close()
    acc = evaluate_tokens(model, tte, yte)
    res = {"dataset": dataset, "train_images": len(xtr), "test_images": len(xte), "num_classes": C,
           "class_names": classes, "test_top1": acc, "chance": 1.0 / C, "epochs": epochs, "batch_size": bs,
           "lr": lr, "layer_decay": layer_decay, "weight_decay": weight_decay, "drop_path": drop_path,
           "augment": augment, "seconds": round(time.time() - t0, 1), "history": history}
    return model.eval(), res


def save_finetuned(directory, model: MAGEClassifier, results: dict) -> Path:
    """``model.safetensors`` (token_emb.*, blocks.*, fc_norm.*, head.*) + ``config.json``."""
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"format": "mage-studio-finetuned", "model": model.config.to_dict(),
                                               "results": results}, indent=2))
    return d


def main(argv=None):
    p = argparse.ArgumentParser(description="Fine-tune the MAGE encoder end to end for classification.")
    p.add_argument("--model", default="default", help="'default', a model directory, an official .pth or a hub id")
    p.add_argument("--vqgan", default=None, help="tokenizer checkpoint for official .pth files without one")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--blr", type=float, default=5e-4, help="base lr; lr = blr * batch_size / 256")
    p.add_argument("--layer-decay", type=float, default=0.65)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--augment", action="store_true", help="random crop + flip, re-tokenized every batch")
    p.add_argument("--out", default=None, help="save the fine-tuned classifier to this directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    if not 0 < a.layer_decay <= 1:
        p.error("--layer-decay must be in (0, 1]")
    if a.threads:
        torch.set_num_threads(a.threads)
    from mage import MAGEPipeline
    pipe = MAGEPipeline.from_pretrained(a.model, vqgan=a.vqgan, device="cpu")
    model, res = finetune(pipe, a.dataset, a.train_limit, a.test_limit, a.epochs, a.batch_size, a.blr,
                          weight_decay=a.weight_decay, layer_decay=a.layer_decay, drop_path=a.drop_path,
                          augment=a.augment, seed=a.seed)
    res["model"] = pipe.meta.get("source", a.model)
    print(f"fine-tuned top-1 {100 * res['test_top1']:.2f}% on {res['test_images']} test images "
          f"(chance {100 * res['chance']:.1f}%, {res['seconds']} s)")
    if a.out:
        save_finetuned(a.out, model, res)
        print(f"saved to {a.out}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:  # bad paths / inputs: a message, not a traceback
        raise SystemExit(f"error: {e}")
