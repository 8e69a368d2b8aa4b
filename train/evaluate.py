"""Quality report for a model directory: tokenizer, generation, class-conditional accuracy, representation.

    python -m train.evaluate --model assets/default --out assets/default/metrics.json [--n-gen 2000] [--quick]

writes ``metrics.json`` and ``metrics.md`` (same folder). Every generation number is shown next to two
references computed the same way with the same sample count: real train images vs the test set (the floor,
what a perfect generator would get) and decoded uniformly random tokens (the ceiling, a generator that
learned nothing). Feature spaces: (a) our small Fashion-MNIST CNN (``assets/fmnist_classifier``),
(b) ImageNet EfficientNet-Lite0 (if the PyPI packages are installed). These Frechet distances use other
networks, image sizes and sample counts than published ImageNet FIDs and are NOT comparable with them.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train import metrics as M
from train.features import CLASSIFIER_DIR, extract, load_extractors
from train.linprobe import load_split, probe_all

NOTE = ("Frechet distance / KID here use our own feature extractors on small images and a few thousand "
        "samples: they are NOT comparable with published ImageNet FID/KID numbers (Inception-v3, 256x256, 50k samples).")


# ------------------------------------------------------------------------------------- settings
def settings(quick: bool, n_gen: int | None = None, **over) -> dict:
    s = dict(n_gen=2000, n_ref=10000, n_tokenizer=10000, effnet_max=1000, kid_subsets=50, probe_train=10000,
             probe_test=10000, probe_epochs=50, steps=12, guidance=1.0, batch_size=100)
    if quick:
        s.update(n_gen=48, n_ref=256, n_tokenizer=256, effnet_max=8, kid_subsets=10, probe_train=400,
                 probe_test=200, probe_epochs=10, steps=6, batch_size=48)
    if n_gen:
        s["n_gen"] = n_gen
    s.update({k: v for k, v in over.items() if v is not None})
    return s


# ------------------------------------------------------------------------------------- image sets
def real_images(dataset: str, split: str, size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of a split: a seeded random subset (Fashion-MNIST is read as uint8 and only the subset
    is converted)."""
    if dataset in ("fashion-mnist", "fashion_mnist"):
        from train.data import load_fashion_mnist
        x, y = load_fashion_mnist(split, 32)
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))])
        imgs = torch.from_numpy(x[idx]).float().div_(255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        if size != 32:
            imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear").clamp_(0, 1)
        return imgs, torch.from_numpy(y[idx]).long()
    x, y, _ = load_split(dataset, split, size)
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))]))
    return x[idx], y[idx]


def generate_images(pipe, n: int, batch_size: int, steps: int, seed: int, labels: torch.Tensor | None = None,
                    guidance: float = 0.0, desc: str = "generate") -> torch.Tensor:
    out = []
    for b, i in enumerate(tqdm(range(0, n, batch_size), desc=desc, leave=False)):
        m = min(batch_size, n - i)
        kw = {} if labels is None else {"class_label": labels[i: i + m], "guidance_scale": guidance}
        out.append(pipe.generate(m, steps=steps, seed=seed + b, **kw).images)
    return torch.cat(out)


@torch.inference_mode()
def tokenizer_roundtrip(pipe, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    toks, recs = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="tokenizer", leave=False):
        t = pipe.encode(images[i: i + batch_size])
        toks.append(t.cpu())
        recs.append(pipe.decode(t))
    return torch.cat(toks), torch.cat(recs)


# ------------------------------------------------------------------------------------- sections
def tokenizer_metrics(pipe, x_test: torch.Tensor) -> dict:
    toks, rec = tokenizer_roundtrip(pipe, x_test)
    K = pipe.config.codebook_size
    counts = torch.bincount(toks.flatten(), minlength=K).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"images": len(x_test), "psnr_db": M.psnr(rec, x_test), "mse": ((rec - x_test) ** 2).mean().item(),
            "codebook_size": K, "codes_used": int((counts > 0).sum()), "codebook_usage": float((counts > 0).float().mean()),
            "perplexity": math.exp(entropy)}


def compare(ref: torch.Tensor, f: torch.Tensor, kid_subsets: int, seed: int) -> dict:
    """FD and KID against the whole reference set; precision/recall against a random reference subset of the
    same size as ``f`` (k-NN radii shrink as a set grows, so unequal sizes would bias P against R)."""
    n = min(len(ref), len(f))
    kid_m, kid_s = M.kid(ref, f, num_subsets=kid_subsets, subset_size=max(2, min(1000, n // 2)), seed=seed)
    sub = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:n]
    p, r = M.precision_recall(ref[sub], f[:n], k=3)
    return {"n": len(f), "fd": M.frechet_distance(ref, f), "kid": kid_m, "kid_std": kid_s, "precision": p, "recall": r}


def add_ratios(rows: dict) -> None:
    """fd_vs_floor = FD / FD(train vs test); fd_position = (FD - floor) / (ceiling - floor): 0 = as close to
    the test set as real training images, 1 = as far as decoded random tokens."""
    floor, ceil = rows["real_train"]["fd"], rows["random_tokens"]["fd"]
    for r in rows.values():
        r["fd_vs_floor"] = r["fd"] / floor if floor > 0 else float("inf")
        r["fd_position"] = (r["fd"] - floor) / (ceil - floor) if ceil != floor else float("nan")


def class_accuracy(clf, images: torch.Tensor, labels: torch.Tensor, class_names: list) -> dict:
    pred = torch.cat([clf.predict(images[i: i + 500]) for i in range(0, len(images), 500)])
    per = {}
    for c in range(len(class_names)):
        sel = labels == c
        if sel.any():
            per[class_names[c]] = (pred[sel] == c).float().mean().item()
    return {"mean": float(np.mean(list(per.values()))), "per_class": per, "samples": len(images),
            "classifier_test_accuracy_on_real_images": clf.test_accuracy}


# ------------------------------------------------------------------------------------- main
def evaluate(model: str = "default", dataset: str = "fashion-mnist", quick: bool = False, n_gen: int | None = None,
             seed: int = 0, classifier_dir=CLASSIFIER_DIR, efficientnet: bool = True, skip=(), **over) -> dict:
    from mage import MAGEPipeline
    s = settings(quick, n_gen, **over)
    times, t_all = {}, time.time()
    pipe = MAGEPipeline.from_pretrained(model, device="cpu")
    cfg, size = pipe.config, pipe.config.img_size
    fmnist = dataset in ("fashion-mnist", "fashion_mnist")
    res = {"model": pipe.meta.get("source", model), "model_meta": {k: v for k, v in pipe.meta.items() if k != "source"},
           "dataset": dataset, "quick": quick, "settings": s, "seed": seed, "note": NOTE, "notes": []}

    x_test, _ = real_images(dataset, "test", size, max(s["n_ref"], s["n_tokenizer"]), seed)

    if "tokenizer" not in skip:
        t = time.time()
        res["tokenizer"] = tokenizer_metrics(pipe, x_test[: s["n_tokenizer"]])
        times["tokenizer"] = time.time() - t

    if "generation" not in skip:
        t = time.time()
        ext, notes = load_extractors(classifier_dir if fmnist else None, efficientnet)
        res["notes"] += notes
        n = s["n_gen"]
        g = torch.Generator().manual_seed(seed)
        sets = {}
        sets["real_train"], _ = real_images(dataset, "train", size, n, seed + 1)
        sets["tokenizer_recon"] = tokenizer_roundtrip(pipe, sets["real_train"])[1]
        sets["mage"] = generate_images(pipe, n, s["batch_size"], s["steps"], seed, desc="generate (unconditional)")
        cond_labels = None
        if cfg.num_classes > 0:
            cond_labels = torch.arange(n) % cfg.num_classes
            sets["mage_class_cond"] = generate_images(pipe, n, s["batch_size"], s["steps"], seed + 10_000, cond_labels,
                                                      s["guidance"], desc=f"generate (class-cond, g={s['guidance']})")
        rnd = torch.randint(0, cfg.codebook_size, (n, cfg.num_tokens), generator=g)
        sets["random_tokens"] = torch.cat([pipe.decode(rnd[i: i + 256]) for i in range(0, n, 256)])
        times["sampling"] = time.time() - t
        res["generation"] = {"sampling": {"steps": s["steps"], "schedule": "cosine", "choice_temperature": 4.5,
                                          "sampling_temperature": 1.0, "guidance_scale_class_cond": s["guidance"]},
                             "reference": f"{dataset} test split", "feature_spaces": {}}
        for name, fx in ext.items():
            t = time.time()
            cap = s["effnet_max"] if name == "efficientnet_lite0" else None
            ref = extract(fx, x_test[: min(s["n_ref"], cap or s["n_ref"])], desc=f"{name}: test set")
            rows = {}
            for key, imgs in sets.items():
                f = extract(fx, imgs[:cap] if cap else imgs, desc=f"{name}: {key}")
                rows[key] = compare(ref, f, s["kid_subsets"], seed)
            add_ratios(rows)
            res["generation"]["feature_spaces"][name] = {"dim": fx.dim, "reference_images": len(ref), "rows": rows}
            times[f"features_{name}"] = time.time() - t
        if "classifier" in ext and cond_labels is not None and fmnist:
            res["class_conditional"] = class_accuracy(ext["classifier"], sets["mage_class_cond"], cond_labels,
                                                      pipe.class_names or [str(i) for i in range(cfg.num_classes)])
            res["class_conditional"]["guidance_scale"] = s["guidance"]
            res["class_conditional"]["unconditional_label_histogram"] = torch.bincount(
                ext["classifier"].predict(sets["mage"]), minlength=10).tolist()

    if "representation" not in skip:
        t = time.time()
        rep = probe_all(pipe, dataset, s["probe_train"], s["probe_test"], s["probe_epochs"], baselines=True, seed=seed)
        f = rep["features"]
        for base in ("pixels", "random_encoder"):
            rep[f"mage_minus_{base}"] = {"linear": f["mage"]["linear_top1"] - f[base]["linear_top1"],
                                         "knn10": f["mage"]["knn10_top1"] - f[base]["knn10_top1"]}
        res["representation"] = rep
        times["representation"] = time.time() - t

    times["total"] = time.time() - t_all
    res["seconds"] = {k: round(v, 1) for k, v in times.items()}
    return res


# ------------------------------------------------------------------------------------- markdown
ROW_NAMES = {"real_train": "real train images (floor)", "tokenizer_recon": "train images through the tokenizer",
             "mage": "MAGE, unconditional", "mage_class_cond": "MAGE, class-conditional",
             "random_tokens": "decoded random tokens (ceiling)"}


def to_markdown(res: dict) -> str:
    L = [f"# Quality report: {res['model']}", ""]
    if res.get("quick"):
        L += ["**Quick mode**: tiny sample counts, for smoke tests only; the numbers mean little.", ""]
    L += [f"> {res['note']}", ""]
    for n in res.get("notes", []):
        L.append(f"- note: {n}")
    if "tokenizer" in res:
        t = res["tokenizer"]
        L += ["", f"## Tokenizer ({t['images']} test images)", "", "| PSNR (dB) | codes used | usage | perplexity |",
              "|---:|---:|---:|---:|",
              f"| {t['psnr_db']:.2f} | {t['codes_used']} / {t['codebook_size']} | {100 * t['codebook_usage']:.1f}% | "
              f"{t['perplexity']:.1f} |"]
    if "generation" in res:
        gs = res["generation"]["sampling"]
        L += ["", "## Generation", "",
              f"Sampling: {gs['steps']} steps, {gs['schedule']} schedule, choice temperature {gs['choice_temperature']}; "
              f"class-conditional with guidance {gs['guidance_scale_class_cond']}. Reference: {res['generation']['reference']}. "
              "`FD / floor` = FD divided by the train-vs-test FD; `position` = (FD - floor) / (ceiling - floor): "
              "0 = as good as real images, 1 = as bad as random tokens."]
        for name, sp in res["generation"]["feature_spaces"].items():
            L += ["", f"### Feature space: {name} ({sp['dim']}-d, {sp['reference_images']} reference images)", "",
                  "| images | n | FD | FD / floor | position | KID x 1e3 | precision | recall |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for key, r in sp["rows"].items():
                L.append(f"| {ROW_NAMES.get(key, key)} | {r['n']} | {r['fd']:.3f} | {r['fd_vs_floor']:.2f} | "
                         f"{r['fd_position']:.3f} | {1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} |")
    if "class_conditional" in res:
        c = res["class_conditional"]
        L += ["", f"## Class-conditional samples classified by the Fashion-MNIST CNN (guidance {c['guidance_scale']})", "",
              f"Mean accuracy **{100 * c['mean']:.1f}%** over {c['samples']} samples (chance 10%; the classifier scores "
              f"{100 * (c['classifier_test_accuracy_on_real_images'] or float('nan')):.1f}% on real test images).", "",
              "| class | accuracy |", "|---|---:|"]
        L += [f"| {k} | {100 * v:.1f}% |" for k, v in c["per_class"].items()]
    if "representation" in res:
        r = res["representation"]
        L += ["", f"## Representation ({r['train_images']} train / {r['test_images']} test images)", "",
              "| features | dim | linear probe | k-NN (k=10) |", "|---|---:|---:|---:|"]
        names = {"mage": "MAGE encoder (mean-pooled)", "pixels": "raw pixels", "random_encoder": "random-init encoder, same size"}
        for k, v in r["features"].items():
            L.append(f"| {names.get(k, k)} | {v['dim']} | {100 * v['linear_top1']:.2f}% | {100 * v['knn10_top1']:.2f}% |")
        for base in ("pixels", "random_encoder"):
            d = r[f"mage_minus_{base}"]
            L.append(f"\nMAGE vs {names[base]}: {100 * d['linear']:+.2f} points (linear), {100 * d['knn10']:+.2f} points (k-NN).")
    L += ["", "Time (s): " + ", ".join(f"{k} {v}" for k, v in res["seconds"].items()), ""]
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description="Compute the quality report (metrics.json + metrics.md) of a model.")
    p.add_argument("--model", default="default", help="'default', a model directory, an official .pth or a hub id")
    p.add_argument("--out", default=None, help="output JSON (default: <model dir>/metrics.json); metrics.md goes beside it")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n-gen", type=int, default=None, help="generated images per set (default 2000; quick 48)")
    p.add_argument("--n-ref", type=int, default=None, help="reference test images (default 10000)")
    p.add_argument("--steps", type=int, default=None, help="decoding steps (default 12)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale for class-conditional samples (default 1.0)")
    p.add_argument("--probe-train", type=int, default=None)
    p.add_argument("--probe-epochs", type=int, default=None)
    p.add_argument("--effnet-max", type=int, default=None, help="images per set in EfficientNet space (default 1000)")
    p.add_argument("--no-efficientnet", action="store_true")
    p.add_argument("--classifier", default=str(CLASSIFIER_DIR), help="Fashion-MNIST classifier directory")
    p.add_argument("--skip", nargs="*", default=[], choices=["tokenizer", "generation", "representation"])
    p.add_argument("--quick", action="store_true", help="tiny sample counts (CI smoke test, well under a minute)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    for k in ("n_gen", "n_ref", "steps", "probe_train", "probe_epochs", "effnet_max"):
        v = getattr(a, k)
        if v is not None and v < (4 if k in ("n_gen", "n_ref") else 1):
            p.error(f"--{k.replace('_', '-')} is too small")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else None
    if out is None:
        if not Path(a.model).is_dir() and a.model != "default":
            p.error("--out is required when --model is not a directory")
        from mage.pipeline import DEFAULT_MODEL_DIR
        out = (DEFAULT_MODEL_DIR if a.model == "default" else Path(a.model)) / "metrics.json"
    res = evaluate(a.model, a.dataset, a.quick, a.n_gen, a.seed, a.classifier, not a.no_efficientnet, tuple(a.skip),
                   n_ref=a.n_ref, steps=a.steps, guidance=a.guidance, probe_train=a.probe_train,
                   probe_epochs=a.probe_epochs, effnet_max=a.effnet_max)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    from train.common import run_cli
    run_cli(main)
