"""End-to-end fine-tuning of the MAGE encoder + a classification head; CPU, one GPU or torchrun/DDP.

As in the official recipe (MAE/BEiT style): global average pool of the last block's output over the image
positions -> fresh LayerNorm (``fc_norm``) -> Linear head (the pre-trained final norm and the decoder are
not used); AdamW with layer-wise lr decay (``token_emb`` = layer 0, ``blocks.i`` = layer i+1, ``fc_norm``/
``head`` = the last layer), no weight decay on 1-D parameters and position embeddings, linear warm-up +
cosine decay per step, drop path increasing with depth, label smoothing, bf16 autocast on GPU. The VQGAN
tokenizer stays frozen: images stream through a DataLoader and are tokenized every batch (with
``--augment``: random-resized-crop + flip first), or tokens come from a ``train.cache`` file.

Like ``train.pretrain``: the global batch is split across ranks, every random draw of a step (which images,
their augmentations, which cached view) comes from (seed, step), so a 2-process run matches a 1-process run
with the same global batch (with --drop-path 0 --emb-dropout 0: those use each process's own RNG), and
``--resume`` continues exactly from the latest checkpoint in ``--out``. The test split is evaluated sharded.

    python -m train.finetune --model assets/default --dataset fashion-mnist --train-limit 5000 --epochs 10 --out runs/ft
    torchrun --nproc_per_node=8 -m train.finetune --model mage-vitb.pth --vqgan vqgan_jax_strongaug.ckpt \
        --dataset /data/imagenet --train-limit 0 --test-limit 0 --augment --batch-size 128 --out runs/ft --resume
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from train.common import (Dist, JsonlLogger, StepBatches, add_device_flags, autocast, latest_checkpoint,
                          load_checkpoint, load_config_file, map_dataset, plot_curves, resolve_amp, save_checkpoint,
                          save_run_config, seed_everything, step_loader)
from train.linprobe import cosine_lr


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


def build_classifier(pretrained_mage, num_classes: int, drop_path: float = 0.1, emb_dropout: float = 0.1) -> MAGEClassifier:
    """Copy the pre-trained weights into a MAGE built with drop path (dropout off, token-embedding dropout 0.1
    as in the official fine-tune model) and wrap it with a fresh head."""
    from mage.checkpoint import load_strict
    from mage.model import MAGE
    cfg = pretrained_mage.config.replace(drop_rate=0.0, attn_drop_rate=0.0)
    m = MAGE(cfg, drop_path=drop_path)
    load_strict(m, {k: v.detach().cpu() for k, v in pretrained_mage.state_dict().items()}, "MAGE model")
    m.token_emb.dropout.p = emb_dropout
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
def evaluate_dataset(model: MAGEClassifier, vqgan, dataset, dist: Dist | None = None, batch_size: int = 256,
                     workers: int = 0, progress: bool = True) -> dict:
    """Top-1 (overall and per class) on a dataset, each rank classifying its shard."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device

    def fn(x, y, idx):
        return {"pred": model(vqgan.encode(x.to(dev))).argmax(1), "label": y.long()}

    r = map_dataset(dataset, fn, dist, batch_size, workers, desc="evaluate", progress=progress)
    model.train(was)
    hit = (r["pred"].cpu() == r["label"]).float()
    per_class = {int(c): hit[r["label"] == c].mean().item() for c in r["label"].unique()}
    return {"top1": hit.mean().item(), "per_class": per_class, "n": len(hit)}


def finetune(pipe, dataset: str = "fashion-mnist", train_limit: int | None = 5000, test_limit: int | None = 2000,
             epochs: int = 10, batch_size: int = 64, blr: float = 5e-4, min_lr: float = 1e-6, warmup_epochs: float = 1,
             weight_decay: float = 0.05, layer_decay: float = 0.65, drop_path: float = 0.1, label_smoothing: float = 0.1,
             augment: bool = False, seed: int = 0, progress: bool = True, *, emb_dropout: float = 0.1,
             token_cache=None, dist: Dist | None = None, out=None, resume: bool = False, save_every: int = 0,
             keep: int = 2, stop_after: int | None = None, log_every: int = 10, amp: str = "auto", workers: int = 0,
             tensorboard: bool = False, command: str | None = None) -> tuple[MAGEClassifier | None, dict | None]:
    """Fine-tune ``pipe.model``'s encoder on a dataset; returns (classifier, results) — (None, None) when
    stopped early by ``stop_after``. ``batch_size`` is per process; the global batch is batch_size * world.
    With ``out``: run_config/log.jsonl/loss.png/checkpoints there, and the classifier at the end."""
    from train.data import augment_batch, build_dataset, crop_scale
    d = dist or Dist(str(pipe.device))
    dev = d.device
    seed_everything(seed + d.rank)  # drop path / dropout differ across ranks
    size = pipe.config.img_size
    vq = pipe.vqgan.to(dev).eval()
    cache, ds = None, None
    if token_cache:
        from train.cache import load_cache
        cache, cmeta = load_cache(token_cache)
        if train_limit:
            cache = {k: v[:train_limit] for k, v in cache.items()}
        classes, n = list(cmeta.get("classes", [])), len(cache["labels"])
        if cache["tokens"].shape[-1] != pipe.config.num_tokens:
            raise ValueError(f"token cache holds {cache['tokens'].shape[-1]} tokens per image, the model expects "
                             f"{pipe.config.num_tokens}")
    else:
        ds = build_dataset(dataset, "train", size, augment=False, limit=train_limit)
        classes, n = list(getattr(ds, "classes", [])), len(ds)
    test_ds = build_dataset(dataset, "test", size, augment=False, limit=test_limit)
    C = len(classes) or len(getattr(test_ds, "classes", [])) or int(cache["labels"].max()) + 1
    model = build_classifier(pipe.model, C, drop_path, emb_dropout).to(dev)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None) \
        if d.world > 1 else model
    G = batch_size * d.world
    lr = blr * G / 256
    groups = param_groups(model, weight_decay, layer_decay)
    opt = torch.optim.AdamW([{k: v for k, v in grp.items() if k != "names"} for grp in groups], lr=lr,
                            betas=(0.9, 0.999))
    amp, scaler = resolve_amp(amp, dev)
    steps_per_epoch = n // G
    if steps_per_epoch == 0:
        raise ValueError(f"{n} training images are fewer than the global batch {G}")
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    out = Path(out) if out else None
    step, history, ep_loss = 0, [], 0.0
    ck = latest_checkpoint(out) if (resume and out) else None
    if ck:
        state = load_checkpoint(ck)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, history, ep_loss = state["step"], state["history"], state["epoch_loss"]
        d.restore_rng(state["rng"])
        if d.main and progress:
            print(f"[finetune] resumed from {ck} at step {step}")
    batches = StepBatches(n, batch_size, d.world, d.rank, seed, step, total)
    loader = step_loader(batches, ds, workers)
    log = JsonlLogger(out / "log.jsonl", d.main, tensorboard) if out else None
    sl = slice(d.rank * batch_size, (d.rank + 1) * batch_size)
    bar = tqdm(total=total, initial=step, desc="fine-tune", disable=not (progress and d.main), mininterval=1)
    t0, seen = time.time(), 0
    model.train()
    for batch in loader:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # this step's draws, over the global batch
        aug_seeds = torch.randint(0, 2**62, (G,), generator=g)[sl]
        view_u = torch.rand(G, generator=g)[sl]
        if cache is not None:
            idx = batch[0]
            V = cache["tokens"].shape[1]
            v = (view_u * V).long().clamp_max(V - 1) if augment else torch.zeros(len(idx), dtype=torch.long)
            tok, y = cache["tokens"][idx, v].long().to(dev), cache["labels"][idx]
        else:
            x, y = batch
            if augment:
                x = augment_batch(x, aug_seeds, crop_scale(size))
            with torch.no_grad():
                tok = vq.encode(x.to(dev))
        cur = cosine_lr(step, total, warmup, lr, min_lr)
        for grp in opt.param_groups:
            grp["lr"] = cur * grp["lr_scale"]
        with autocast(amp, dev):
            loss = F.cross_entropy(net(tok).float(), torch.as_tensor(y).long().to(dev), label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step += 1
        seen += G
        ep_loss += loss.item() / steps_per_epoch
        if step % steps_per_epoch == 0:
            history.append({"epoch": step // steps_per_epoch, "mean_loss": d.all_reduce_mean(ep_loss)})
            ep_loss = 0.0
        if log is not None and (step % log_every == 0 or step == total):
            lv = d.all_reduce_mean(loss.item())
            log.log(step=step, loss=lv, lr=cur, img_per_s=seen / (time.time() - t0))
        bar.update()
        bar.set_postfix(epoch=(step - 1) // steps_per_epoch + 1, loss=f"{loss.item():.3f}", lr=f"{cur:.1e}",
                        ips=f"{seen / (time.time() - t0):.0f}", refresh=False)
        stopping = stop_after is not None and step >= stop_after
        if out and ((save_every and step % save_every == 0) or stopping or step == total):
            rngs = d.rng_states()
            if d.main:
                save_checkpoint(out, step, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "scaler": scaler.state_dict(), "step": step, "history": history,
                                            "epoch_loss": ep_loss, "rng": rngs}, keep)
            d.barrier()
        if stopping:
            bar.close()
            return None, None
    bar.close()
    ev = evaluate_dataset(model, vq, test_ds, d, workers=workers, progress=progress)
    res = {"dataset": dataset, "train_images": n, "test_images": ev["n"], "num_classes": C, "class_names": classes,
           "test_top1": ev["top1"], "per_class_top1": ev["per_class"], "chance": 1.0 / C, "epochs": epochs,
           "steps": total, "batch_size": batch_size, "global_batch": G, "world_size": d.world, "lr": lr,
           "layer_decay": layer_decay, "weight_decay": weight_decay, "drop_path": drop_path, "augment": augment,
           "token_cache": str(token_cache) if token_cache else None, "amp": amp,
           "seconds": round(time.time() - t0, 1), "history": history}
    if d.world > 1:
        res["max_param_diff_across_ranks"] = d.max_param_diff(model)
    if command:
        res["command"] = command
    if out and d.main:
        save_finetuned(out, model, res)
        plot_curves(out / "log.jsonl", out / "loss.png", keys=("loss", "lr"), title="MAGE fine-tuning")
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


def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune the MAGE encoder end to end for classification.")
    a = p.add_argument
    a("--config", help="JSON file with defaults for any flag (each run writes run_config.json)")
    a("--model", default="default", help="'default', a model directory, an official .pth or a hub id")
    a("--vqgan", default=None, help="tokenizer checkpoint for official .pth files without one")
    a("--dataset", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory (train/ + test/)")
    a("--token-cache", default=None, help="train tokens from train.cache (skips the tokenizer every step)")
    a("--train-limit", type=int, default=5000, help="0 = all")
    a("--test-limit", type=int, default=2000, help="0 = all")
    a("--epochs", type=int, default=10)
    a("--batch-size", type=int, default=64, help="per process")
    a("--blr", type=float, default=5e-4, help="base lr; lr = blr * global_batch / 256")
    a("--min-lr", type=float, default=1e-6)
    a("--warmup-epochs", type=float, default=1.0)
    a("--layer-decay", type=float, default=0.65)
    a("--weight-decay", type=float, default=0.05)
    a("--drop-path", type=float, default=0.1)
    a("--emb-dropout", type=float, default=0.1, help="dropout after the token embedding (official: 0.1)")
    a("--label-smoothing", type=float, default=0.1)
    a("--augment", action="store_true", help="random-resized-crop + flip, re-tokenized every batch "
                                              "(with --token-cache: a random cached view)")
    a("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"], help="auto = bf16 on GPU, none on CPU")
    a("--out", default=None, help="run directory: checkpoints, log, loss plot and the fine-tuned classifier")
    a("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    a("--save-every", type=int, default=500, help="checkpoint every N steps (needs --out)")
    a("--keep", type=int, default=2)
    a("--log-every", type=int, default=10)
    a("--tensorboard", action="store_true", help="also write TensorBoard scalars to <out>/tb")
    a("--stop-after", type=int, default=None, help="exit after this step (simulates an interruption)")
    a("--workers", type=int, default=0, help="DataLoader workers")
    a("--seed", type=int, default=0)
    add_device_flags(p)
    return p


def main(argv=None):
    p = build_parser()
    a = load_config_file(p, argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    if not 0 < a.layer_decay <= 1:
        p.error("--layer-decay must be in (0, 1]")
    if a.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if a.resume and not a.out:
        p.error("--resume needs --out")
    from mage import MAGEPipeline
    d = Dist.from_args(a)
    try:
        if d.main and a.out:
            save_run_config(Path(a.out), a)
        pipe = MAGEPipeline.from_pretrained(a.model, vqgan=a.vqgan, device=str(d.device))
        command = "python -m train.finetune " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
        model, res = finetune(pipe, a.dataset, a.train_limit or None, a.test_limit or None, a.epochs, a.batch_size,
                              a.blr, a.min_lr, a.warmup_epochs, a.weight_decay, a.layer_decay, a.drop_path,
                              a.label_smoothing, a.augment, a.seed, progress=d.main, emb_dropout=a.emb_dropout,
                              token_cache=a.token_cache, dist=d, out=a.out, resume=a.resume, save_every=a.save_every,
                              keep=a.keep, stop_after=a.stop_after, log_every=a.log_every, amp=a.amp,
                              workers=a.workers, tensorboard=a.tensorboard, command=command)
        if res is None:
            if d.main:
                print(f"[finetune] stopped after step {a.stop_after}; continue with --resume")
            return None
        res["model"] = pipe.meta.get("source", a.model)
        if d.main:
            print(f"fine-tuned top-1 {100 * res['test_top1']:.2f}% on {res['test_images']} test images "
                  f"(chance {100 * res['chance']:.1f}%, {res['seconds']} s, world {d.world})")
            if a.out:
                print(f"saved to {a.out}")
        return res
    finally:
        d.close()


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
