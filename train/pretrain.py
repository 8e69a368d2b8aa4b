"""MAGE pre-training (and MAGE-C) with the paper's recipe as defaults; CPU, one GPU or torchrun/DDP.

Recipe defaults (mage_spec section 6): variable masking ratio ~ N(0.55, 0.25) truncated to [0.5, 1],
50% token dropping, label smoothing 0.1, AdamW (0.9, 0.95), weight decay 0.05 (none on 1-D params and
biases), lr = blr * global_batch / 256 with blr 1.5e-4, linear warm-up + per-iteration cosine, grad-norm
clip 3.0, dropout 0.1, bf16 autocast on GPU.

MAGE-C (``--contrastive-weight > 0``): an InfoNCE loss on the mean-pooled encoder output of two augmented
views through an MLP projection head. The official weight/temperature are unpublished; we default to
weight 0.1 and temperature 0.2 (the values the paper's description suggests, unverified).

Determinism: every random draw of a step (masking ratio, which tokens are masked/dropped, class dropout,
augmentations, cache views) comes from a generator seeded by (seed, step) over the *global* batch, so a
2-process run sees exactly the same data as a 1-process run with the same global batch, and a resumed
run continues exactly where it stopped. (Dropout still uses each process's own RNG: use --dropout 0 to
compare runs across world sizes.)

    python -m train.pretrain --tokenizer runs/tokenizer --dataset fashion-mnist --class-cond \
        --token-cache runs/tokens.safetensors --steps 6000 --out runs/mage
    torchrun --nproc_per_node=8 -m train.pretrain ... (same flags; --batch-size is per process)
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import mage
from mage.config import MAGEConfig, PRESETS
from mage.masking import sample_mask_ratio
from train.common import (Dist, JsonlLogger, StepBatches, add_device_flags, autocast, latest_checkpoint,
                          load_checkpoint, load_config_file, lr_at, param_groups, plot_curves, resolve_amp,
                          save_checkpoint, save_run_config, seed_everything, step_loader)
from train.data import augment_batch, build_dataset, crop_scale


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired embeddings [B,D]: row i of z1 should match row i of z2."""
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = z1 @ z2.t() / temperature
    target = torch.arange(z1.shape[0], device=z1.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class TrainModule(nn.Module):
    """MAGE + (optional) MAGE-C projection head; forward returns the losses of one batch."""

    def __init__(self, model: mage.MAGE, proj_dim: int = 0):
        super().__init__()
        self.mage = model
        D = model.config.embed_dim
        self.proj = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, proj_dim)) if proj_dim else None

    def forward(self, tokens, class_ids, mask_ratio, noise, tokens2=None, noise2=None, temperature=0.2):
        loss, _, _, latent = self.mage(tokens, class_ids, mask_ratio=mask_ratio, noise=noise, return_latent=True)
        if self.proj is None or tokens2 is None:
            return loss, loss.new_zeros(())
        loss2, _, _, latent2 = self.mage(tokens2, class_ids, mask_ratio=mask_ratio, noise=noise2, return_latent=True)
        c = info_nce(self.proj(latent[:, 1:].mean(1)), self.proj(latent2[:, 1:].mean(1)), temperature)
        return 0.5 * (loss + loss2), c


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="JSON file with defaults for any flag (saved runs write run_config.json)")
    # data
    a("--dataset", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory")
    a("--img-size", type=int, default=32)
    a("--tokenizer", help="tokenizer dir from train.tokenizer, a model dir, or an official VQGAN ckpt")
    a("--token-cache", help="safetensors from train.cache (skips the tokenizer encoder every step)")
    a("--augment", action=argparse.BooleanOptionalAction, default=True,
      help="random-resized-crop + flip (non-cached path; the cache holds augmented views)")
    a("--train-limit", type=int, default=None)
    a("--workers", type=int, default=0)
    # model
    a("--preset", default=None, choices=sorted(PRESETS), help="official sizes (vit_base / vit_large)")
    a("--embed-dim", type=int, default=128)
    a("--depth", type=int, default=4)
    a("--num-heads", type=int, default=4)
    a("--decoder-embed-dim", type=int, default=128)
    a("--decoder-depth", type=int, default=2)
    a("--decoder-num-heads", type=int, default=4)
    a("--mlp-ratio", type=float, default=4.0)
    a("--dropout", type=float, default=0.1)
    a("--class-cond", action="store_true", help="feed the class id through the class slot")
    a("--class-drop-prob", type=float, default=0.1, help="p(class -> 'no class') for guidance")
    a("--num-class-slots", type=int, default=1000, help="vocabulary rows reserved for classes (official: 1000)")
    a("--init-from", help="start from weights: our model dir or an official .pth")
    # masking / loss
    a("--mask-ratio-min", type=float, default=0.5)
    a("--mask-ratio-max", type=float, default=1.0)
    a("--mask-ratio-mu", type=float, default=0.55)
    a("--mask-ratio-std", type=float, default=0.25)
    a("--fixed-mask-ratio", type=float, default=None, help="ablation: one fixed ratio instead")
    a("--drop-ratio", type=float, default=0.5, help="fraction of tokens dropped from the encoder")
    a("--label-smoothing", type=float, default=0.1)
    a("--contrastive-weight", type=float, default=0.0, help="MAGE-C loss weight (0 = plain MAGE)")
    a("--contrastive-temp", type=float, default=0.2)
    a("--proj-dim", type=int, default=128)
    # optimisation
    a("--batch-size", type=int, default=128, help="per process")
    a("--steps", type=int, default=6000)
    a("--blr", type=float, default=1.5e-4)
    a("--lr", type=float, default=None, help="absolute lr (default blr * global_batch / 256)")
    a("--min-lr", type=float, default=0.0)
    a("--warmup-steps", type=int, default=300)
    a("--weight-decay", type=float, default=0.05)
    a("--beta1", type=float, default=0.9)
    a("--beta2", type=float, default=0.95)
    a("--grad-clip", type=float, default=3.0)
    a("--ema", type=float, default=0.0, help="EMA decay of the weights (0 = off); the export uses EMA")
    a("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"], help="auto = bf16 on GPU, none on CPU")
    # run
    a("--out", default="runs/mage")
    a("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    a("--save-every", type=int, default=500)
    a("--keep", type=int, default=3)
    a("--log-every", type=int, default=20)
    a("--seed", type=int, default=0)
    add_device_flags(p)
    a("--tensorboard", action="store_true")
    a("--stop-after", type=int, default=None, help="exit after this step (simulates an interruption)")
    return p


def make_config(args, vq_cfg, num_classes: int) -> MAGEConfig:
    common = dict(img_size=args.img_size, vqgan=vq_cfg, num_classes=num_classes, class_drop_prob=args.class_drop_prob,
                  drop_rate=args.dropout, attn_drop_rate=args.dropout, label_smoothing=args.label_smoothing,
                  mask_ratio_min=args.mask_ratio_min, mask_ratio_max=args.mask_ratio_max,
                  mask_ratio_mu=args.mask_ratio_mu, mask_ratio_std=args.mask_ratio_std, drop_ratio=args.drop_ratio,
                  num_class_slots=args.num_class_slots)
    if num_classes:
        common["no_class_offset"] = max(76, num_classes)
        if common["no_class_offset"] >= args.num_class_slots:
            raise SystemExit("--num-class-slots must exceed the number of classes and 76")
    if args.preset:
        return PRESETS[args.preset](**common)
    return MAGEConfig(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads,
                      decoder_embed_dim=args.decoder_embed_dim, decoder_depth=args.decoder_depth,
                      decoder_num_heads=args.decoder_num_heads, mlp_ratio=args.mlp_ratio, **common)


def main(argv=None):
    args = load_config_file(build_parser(), argv)
    d = Dist.from_args(args)
    seed_everything(args.seed + d.rank)  # per-rank seed: dropout differs across ranks
    out = Path(args.out)
    if d.main:
        save_run_config(out, args)
    # ---- data + tokenizer
    from train.tokenizer import load_tokenizer
    cache = None
    if args.token_cache:
        from train.cache import load_cache
        cache, cmeta = load_cache(args.token_cache)
        classes = cmeta.get("classes", [])
        n_items = cache["tokens"].shape[0]
        if args.train_limit:
            n_items = min(n_items, args.train_limit)
    ds = None
    if cache is None:
        ds = build_dataset(args.dataset, "train", args.img_size, augment=False, limit=args.train_limit)
        classes, n_items = getattr(ds, "classes", []), len(ds)
    if not args.tokenizer and not args.init_from:
        raise SystemExit("need --tokenizer (or --init-from a model that carries one)")
    if args.init_from:
        src = Path(args.init_from)
        model0, vq, _ = mage.load_native(src) if src.is_dir() else (*mage.load_official(src), {})
    if args.tokenizer:
        vq = load_tokenizer(args.tokenizer)
    vq = vq.to(d.device).eval().requires_grad_(False)
    if vq.config.resolution != args.img_size and args.img_size % vq.config.downsample:
        raise SystemExit("img-size must be a multiple of the tokenizer's downsampling factor")
    cfg = make_config(args, vq.config, len(classes) if args.class_cond else 0)
    if args.class_cond and not classes:
        raise SystemExit("--class-cond needs a labelled dataset (class subfolders)")
    model = mage.MAGE(cfg)
    if args.init_from:
        mage.checkpoint.load_strict(model, model0.state_dict(), "MAGE model (--init-from)")
    module = TrainModule(model, args.proj_dim if args.contrastive_weight > 0 else 0).to(d.device)
    ddp = nn.parallel.DistributedDataParallel(module) if d.world > 1 else module
    G = args.batch_size * d.world
    lr = args.lr if args.lr is not None else args.blr * G / 256
    opt = torch.optim.AdamW(param_groups(module, args.weight_decay), lr=lr, betas=(args.beta1, args.beta2))
    amp, scaler = resolve_amp(args.amp, d.device)
    ema = copy.deepcopy(model).requires_grad_(False) if args.ema > 0 else None
    step = 0
    ck = latest_checkpoint(out) if args.resume else None
    if ck:
        s = load_checkpoint(ck)
        module.load_state_dict(s["module"])
        opt.load_state_dict(s["optimizer"])
        scaler.load_state_dict(s["scaler"])
        if ema is not None and s.get("ema"):
            ema.load_state_dict(s["ema"])
        step = s["step"]
        d.restore_rng(s["rng"])
        if d.main:
            print(f"[pretrain] resumed from {ck} at step {step}")
    elif args.resume and d.main:
        print(f"[pretrain] --resume: no checkpoint in {out}, starting fresh")
    if d.main:
        n_params = model.num_params()
        print(f"[pretrain] MAGE {n_params / 1e6:.2f}M params, grid {cfg.grid_size}x{cfg.grid_size}, "
              f"{len(classes)} classes{' (conditional)' if cfg.num_classes else ''}, world {d.world}, "
              f"global batch {G}, lr {lr:.2e}, amp {amp}, cache {'yes' if cache else 'no'}")
    batches = StepBatches(n_items, args.batch_size, d.world, d.rank, args.seed, step, args.steps)
    loader = step_loader(batches, ds if cache is None else None, args.workers)
    log = JsonlLogger(out / "log.jsonl", d.main, args.tensorboard)
    N = cfg.num_tokens
    bar = tqdm(total=args.steps, initial=step, disable=not d.main, desc="pretrain", dynamic_ncols=True)
    t0, seen = time.time(), 0
    sl = slice(d.rank * args.batch_size, (d.rank + 1) * args.batch_size)
    module.train()
    for batch in loader:
        # ---- every random draw of this step, over the global batch, from (seed, step)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        ratio = args.fixed_mask_ratio if args.fixed_mask_ratio is not None else sample_mask_ratio(cfg, generator=g)
        noise = torch.rand(G, N, generator=g)[sl]
        noise2 = torch.rand(G, N, generator=g)[sl]
        keep_class = (torch.rand(G, generator=g) >= cfg.class_drop_prob)[sl]
        view_u = torch.rand(G, 2, generator=g)[sl]
        aug_seeds = torch.randint(0, 2**62, (G, 2), generator=g)[sl]
        if cache is not None:
            idx = batch[0]
            V = cache["tokens"].shape[1]
            v1 = (view_u[:, 0] * V).long().clamp_max(V - 1)
            v2 = (v1 + 1 + (view_u[:, 1] * (V - 1)).long().clamp_max(V - 2)) % V if V > 1 else v1
            tokens = cache["tokens"][idx, v1].long().to(d.device)
            tokens2 = cache["tokens"][idx, v2].long().to(d.device)
            labels = cache["labels"][idx]
        else:
            x, labels = batch

            def aug(col):
                return augment_batch(x, aug_seeds[:, col], crop_scale(args.img_size)) if args.augment else x

            with torch.no_grad():
                tokens = vq.encode(aug(0).to(d.device))
                tokens2 = vq.encode(aug(1).to(d.device)) if args.contrastive_weight > 0 else None
        class_ids = None
        if cfg.num_classes:
            labels = torch.as_tensor(labels)
            class_ids = torch.where(keep_class, labels + cfg.codebook_size, torch.full_like(labels, cfg.no_class_id))
            class_ids = class_ids.to(d.device)
        cur_lr = lr_at(step, lr, args.warmup_steps, args.steps, args.min_lr)
        for grp in opt.param_groups:
            grp["lr"] = cur_lr
        with autocast(amp, d.device):
            mlm, con = ddp(tokens, class_ids, ratio, noise.to(d.device),
                           tokens2 if args.contrastive_weight > 0 else None, noise2.to(d.device), args.contrastive_temp)
            loss = mlm + args.contrastive_weight * con
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(module.parameters(), args.grad_clip) if args.grad_clip > 0 else torch.zeros(())
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - args.ema)
        step += 1
        seen += G
        if step % args.log_every == 0 or step == args.steps:
            lv = d.all_reduce_mean(loss.item())
            ips = seen / (time.time() - t0)
            row = dict(step=step, loss=lv, mlm=mlm.item(), lr=cur_lr, mask_ratio=ratio, grad_norm=float(gnorm),
                       img_per_s=ips)
            if args.contrastive_weight > 0:
                row["contrastive"] = con.item()
            log.log(**row)
            bar.set_postfix(loss=f"{lv:.3f}", lr=f"{cur_lr:.1e}", ips=f"{ips:.0f}")
        bar.update(1)
        stopping = args.stop_after is not None and step >= args.stop_after
        if step % args.save_every == 0 or step == args.steps or stopping:
            rngs = d.rng_states()
            if d.main:
                save_checkpoint(out, step, {"module": module.state_dict(), "optimizer": opt.state_dict(),
                                            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None,
                                            "step": step, "rng": rngs, "args": vars(args)}, args.keep)
            d.barrier()
        if stopping:
            bar.close()
            d.close()
            return None
    bar.close()
    if d.world > 1:  # parameters must be identical on every rank; record the evidence
        diff = d.max_param_diff(model)
        if d.main:
            (out / "ranks.json").write_text(json.dumps({"world": d.world, "max_param_diff_across_ranks": diff}))
    if d.main:
        final = ema if ema is not None else model
        meta = {"dataset": args.dataset, "class_names": list(classes) if cfg.num_classes else [],
                "license": "MIT (code and weights); Fashion-MNIST data: MIT" if args.dataset == "fashion-mnist" else "",
                "training": {"steps": step, "global_batch": G, "lr": lr, "seconds": round(time.time() - t0, 1),
                             "ema": args.ema, "contrastive_weight": args.contrastive_weight,
                             "command": "python -m train.pretrain " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))}}
        mage.save_native(out / "model", final.cpu().eval(), vq.cpu(), meta=meta)
        plot_curves(out / "log.jsonl", out / "loss.png", keys=("loss", "lr"), title="MAGE pre-training")
        print(json.dumps({"model": str(out / "model"), "steps": step}))
    d.close()
    return model


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
