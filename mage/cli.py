"""``mage-studio`` / ``python -m mage``: MAGE from the command line.

    mage-studio generate -n 8 --steps 12 --seed 0 --out samples/ --gif --json
    mage-studio inpaint photo.png mask.png --out inpaint/
    mage-studio reconstruct photo.png --ratio 0.6 --out recon/
    mage-studio embed photos/ --out emb            # emb.npy + emb.json + emb.txt
    mage-studio search query.png --index emb -k 5
    mage-studio convert mage-vitb-1600.pth --out mage-vitb --dtype bfloat16
    mage-studio --model owner/name info

Model options (``--model``, ``--vqgan``, ``--device``, ``--dtype``, ...) go before or after the command.
Bad input gives exit code 2 and one line on stderr (``MAGE_STUDIO_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
PROG = "mage-studio"


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


# ------------------------------------------------------------------------------------------ parser
def _model_options(p: argparse.ArgumentParser, top: bool) -> None:
    """The same model options on the main parser (with defaults) and on every command (SUPPRESS, so a
    value given after the command wins and one given before it is not overwritten)."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("model options (before or after the command)")
    g.add_argument("--model", default=d("default"), metavar="M",
                   help='"default" (the bundled model), a model folder, an official .pth, or a Hub repo id owner/name')
    g.add_argument("--vqgan", default=d(None), metavar="CKPT",
                   help="stand-alone VQGAN checkpoint (vqgan_jax_strongaug.ckpt) for an official .pth without one")
    g.add_argument("--revision", default=d(None), help="Hub branch, tag or commit")
    g.add_argument("--offline", action="store_true", default=d(False), help="use only the local Hugging Face cache")
    g.add_argument("--device", default=d(None), help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--dtype", default=d(None), choices=["float32", "bfloat16", "float16"],
                   help="compute precision (default float32); for convert: precision of the stored weights")
    g.add_argument("--threads", type=int, default=d(None), metavar="N", help="torch CPU threads")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars or notes")


def _decode_options(p: argparse.ArgumentParser, seed_help: str = "random seed; same seed, same result") -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--steps", type=int, default=12, help="decoding steps (default: %(default)s)")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "square", "sqrt"],
                   help="how many tokens stay unknown after each step (default: %(default)s)")
    g.add_argument("--choice-temperature", "--temp", type=float, default=4.5, dest="choice_temperature",
                   help="Gumbel noise on the confidences, annealed to 0 (official --temp; default: %(default)s)")
    g.add_argument("--sampling-temperature", type=float, default=1.0,
                   help="softmax temperature of the token draw (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default: %(default)s)")
    g.add_argument("--class", dest="class_label", default=None, metavar="C",
                   help="class index or name (class-conditional models only)")
    g.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance scale, with --class (default: %(default)s)")


def _step_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gif", action="store_true", help="also write an animated GIF of the decoding steps per image")
    p.add_argument("--json", action="store_true", help="also write steps.json with the tokens of every step")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="MAGE (MAsked Generative Encoder): generate, inpaint, reconstruct and embed images, "
                               "convert official checkpoints.",
        epilog="Run `mage-studio COMMAND --help` for the options of a command.")
    _model_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, help, func):
        p = sub.add_parser(name, help=help, description=help)
        _model_options(p, top=False)
        p.set_defaults(func=func)
        return p

    p = command("generate", "generate images by iterative decoding (PNG files)", cmd_generate)
    p.add_argument("-n", "--num", type=int, default=4, help="number of images (default: %(default)s)")
    p.add_argument("-o", "--out", default="samples", help="output folder (default: %(default)s)")
    p.add_argument("--prefix", default="sample", help="file name prefix: PREFIX_000.png ... (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images decoded together; batch k uses seed + k (default: %(default)s)")
    _decode_options(p)
    _step_outputs(p)

    p = command("inpaint", "regenerate the masked part of an image", cmd_inpaint)
    p.add_argument("image", help="input image")
    p.add_argument("mask", help="mask image of the same size: white (>= 128) = regenerate")
    p.add_argument("-o", "--out", default="inpaint", help="output folder (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a token is regenerated when this fraction of its pixels is masked (default: %(default)s)")
    p.add_argument("--feather", type=int, default=2, help="soft edge of the composite in pixels (default: %(default)s)")
    p.add_argument("--fit", default="center-crop", choices=["center-crop", "pad", "stretch"],
                   help="how image and mask are brought to the model size (default: %(default)s)")
    _decode_options(p)
    _step_outputs(p)

    p = command("reconstruct", "mask a fraction of an image's tokens and predict them back", cmd_reconstruct)
    p.add_argument("image", help="input image")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of tokens masked (default: %(default)s)")
    p.add_argument("-o", "--out", default="reconstruct", help="output folder (default: %(default)s)")
    p.add_argument("--fit", default="center-crop", choices=["center-crop", "pad", "stretch"],
                   help="how the image is brought to the model size (default: %(default)s)")
    _decode_options(p, seed_help="seed of the random token mask and of the decoding")

    p = command("embed", "embed every image of a folder (features .npy + file index)", cmd_embed)
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("-o", "--out", default="embeddings",
                   help="output prefix: OUT.npy (float32 [N,D]), OUT.json and OUT.txt (file names, row order) "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--fit", default="center-crop", choices=["center-crop", "pad", "stretch"],
                   help="how images are brought to the model size (default: %(default)s)")

    p = command("search", "find the images of an embedded folder closest to a query image", cmd_search)
    p.add_argument("query", help="query image")
    p.add_argument("--index", default="embeddings", help="prefix written by `embed` (default: %(default)s)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="results to print (default: %(default)s)")
    p.add_argument("--fit", default=None, choices=["center-crop", "pad", "stretch"],
                   help="fit mode for the query (default: the one used by `embed`)")

    p = command("convert", "convert an official MAGE .pth (and/or a VQGAN .ckpt) to our format, checked",
                cmd_convert)
    p.add_argument("source", nargs="?", help="official MAGE checkpoint (mage-vitb-1600.pth, mage-vitl-1600.pth); "
                                             "omit it to convert only the --vqgan file")
    p.add_argument("-o", "--out", required=True, help="output model folder (or .safetensors file for a VQGAN alone)")
    p.add_argument("--config", default=None, help="preset (vit_base, vit_large, tiny_compat) instead of reading "
                                                  "the sizes from the tensors")
    p.add_argument("--name", default=None, help="model name for the model card")
    p.add_argument("--dataset", default=None, help="training data, for the model card")
    p.add_argument("--license", default=None, help="licence, for the model card")

    p = command("info", "print a model's configuration and parameter counts", cmd_info)
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


# ------------------------------------------------------------------------------------------ helpers
def _progress(args, total: int, desc: str, unit: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=args.quiet, leave=False, file=sys.stderr)


def _note(args, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def load_pipeline(args):
    from .pipeline import DEFAULT_MODEL_DIR, MAGEPipeline
    if args.model in (None, "", "default") and not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise UsageError(f"the bundled default model is not installed ({DEFAULT_MODEL_DIR}); pass --model with a "
                         "model folder, an official .pth or a Hub repo id")
    return MAGEPipeline.from_pretrained(args.model, vqgan=args.vqgan, revision=args.revision, device=args.device,
                                        dtype=args.dtype or "float32", local_files_only=True if args.offline else None)


def read_image(path, size: int, fit: str, mode: str = "RGB"):
    """An image file -> (PIL image at size x size, what was done)."""
    from PIL import Image, UnidentifiedImageError
    from .image import fit_image
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"image not found: {path}")
    try:
        with Image.open(p) as img:
            img.load()
            pil = img.convert(mode).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read image {path}: {e}") from None
    return fit_image(pil, size, fit)


def _decode_kwargs(args) -> dict:
    label = args.class_label
    if label is not None and label.lstrip("-").isdigit():
        label = int(label)
    if args.guidance and label is None:
        raise UsageError("--guidance needs --class (classifier-free guidance steers towards a class)")
    return dict(steps=args.steps, schedule=args.schedule, choice_temperature=args.choice_temperature,
                sampling_temperature=args.sampling_temperature, seed=args.seed, class_label=label,
                guidance_scale=args.guidance)


def _run_steps(args, it, keep: bool):
    """Consume a DecodeStep iterator with a progress bar; returns (last step, all steps if keep)."""
    steps, last = [], None
    with _progress(args, args.steps, "decoding", "step") as bar:
        for last in it:
            if keep:
                steps.append(last)
            bar.update(1)
    return last, steps


def _save(images, paths) -> None:
    from .image import to_pil
    for pil, path in zip(to_pil(images), paths):
        pil.save(path)


def write_gif(pipe, steps, path_for, extra_first=None, extra_last=None, ms: int = 250) -> list[Path]:
    """One GIF per image: [extra_first,] the canvas after every step (unknown tokens as a grey checker)
    [, extra_last]; upscaled (nearest) to at least 256 px."""
    from PIL import Image
    from .image import to_pil
    frames = []  # frames[t][i]
    if extra_first is not None:
        frames.append(to_pil(extra_first))
    for s in steps:
        frames.append(to_pil(pipe.preview(s)[0]))
    if extra_last is not None:
        frames.append(to_pil(extra_last))
    size = frames[0][0].size[0]
    scale = max(1, 256 // size)
    paths = []
    for i in range(len(frames[0])):
        seq = [f[i].resize((size * scale, size * scale), Image.NEAREST) for f in frames]
        path = Path(path_for(i))
        seq[0].save(path, save_all=True, append_images=seq[1:], duration=[ms] * (len(seq) - 1) + [ms * 4], loop=0)
        paths.append(path)
    return paths


def steps_record(pipe, steps, settings: dict, files: list[str]) -> dict:
    """JSON-able step data: per step and image the unknown/committed counts, the committed positions,
    the mean model probability of the committed tokens and the token grid (mask id = unknown)."""
    c = pipe.config
    out = {"model": pipe.meta.get("source", "?"), "settings": settings, "grid": [c.grid_size, c.grid_size],
           "mask_token_id": c.mask_token_id, "files": files, "steps": []}
    for s in steps:
        n_com = s.committed.sum(1)
        mean_p = (s.probs * s.committed).sum(1) / n_com.clamp_min(1)
        out["steps"].append({"step": s.step, "unknown": s.unknown.sum(1).tolist(), "committed": n_com.tolist(),
                             "mean_prob_committed": [round(float(x), 6) for x in mean_p],
                             "committed_positions": [r.nonzero().flatten().tolist() for r in s.committed],
                             "tokens": s.tokens.tolist()})
    if steps:
        out["final_tokens"] = steps[-1].tokens.tolist()
    return out


def _settings(args, **extra) -> dict:
    keys = ("steps", "schedule", "choice_temperature", "sampling_temperature", "seed", "class_label", "guidance")
    return {**{k: getattr(args, k) for k in keys}, **extra}


# ----------------------------------------------------------------------------------------- commands
def cmd_generate(args) -> int:
    if args.num < 1:
        raise UsageError("-n must be >= 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    pipe = load_pipeline(args)
    kw = _decode_kwargs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep = args.gif or args.json
    files, all_steps = [], []
    for b0 in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - b0)
        kw_b = {**kw, "seed": args.seed + b0 // args.batch_size}  # batch k of a run uses seed + k
        last, steps = _run_steps(args, pipe.generate_steps(n, **kw_b), keep)
        images = pipe.decode(last.tokens)
        names = [out / f"{args.prefix}_{b0 + i:03d}.png" for i in range(n)]
        _save(images, names)
        files += [p.name for p in names]
        if args.gif:
            write_gif(pipe, steps, lambda i: out / f"{args.prefix}_{b0 + i:03d}.gif")  # last canvas = result
        all_steps.append(steps)
    if args.json:
        merged = [_cat_steps([s[t] for s in all_steps]) for t in range(len(all_steps[0]))]
        rec = steps_record(pipe, merged, _settings(args, num=args.num), files)
        (out / "steps.json").write_text(json.dumps(rec))
    print(f"wrote {len(files)} image(s) to {out}/ ({files[0]} ...)" + (" + GIFs" if args.gif else "")
          + (" + steps.json" if args.json else ""))
    return 0


def _cat_steps(parts):
    """Concatenate the same step of several batches along the batch dimension."""
    import dataclasses
    import torch
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)
           if isinstance(getattr(first, f.name), torch.Tensor)}
    return dataclasses.replace(first, **cat)


def cmd_inpaint(args) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from .image import composite, token_mask_to_pixels
    pipe = load_pipeline(args)
    S = pipe.config.img_size
    for path in (args.image, args.mask):
        if not Path(path).is_file():
            raise UsageError(f"file not found: {path}")
    with Image.open(args.image) as a, Image.open(args.mask) as b:
        if a.size != b.size:
            raise UsageError(f"mask {b.size[0]}x{b.size[1]} does not match the image {a.size[0]}x{a.size[1]}")
    img, note = read_image(args.image, S, args.fit)
    mask_img, _ = read_image(args.mask, S, args.fit, mode="L")
    mask = torch.from_numpy((np.asarray(mask_img)[..., 0] >= 128).astype(np.float32))
    if not mask.any():
        raise UsageError("the mask is empty: paint the area to regenerate in white")
    if note != f"image is already {S}x{S}":
        _note(args, note)
    kw = _decode_kwargs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, tokens, tok_mask = pipe.prepare_inpaint(img, mask, args.threshold)
    if not tok_mask.any():
        raise UsageError(f"no token is masked at --threshold {args.threshold}: enlarge the mask or lower it")
    last, steps = _run_steps(args, pipe.decode_steps(tokens, tok_mask, **kw), args.gif or args.json)
    raw = pipe.decode(last.tokens)
    pix = token_mask_to_pixels(tok_mask, pipe.config.grid_size, pipe.config.patch_size)
    result = composite(x, raw, pix, args.feather)
    _save(x, [out / "input.png"])
    _save(result, [out / "inpainted.png"])
    _save(raw, [out / "inpainted_raw.png"])
    _save(pix[:, None].expand(-1, 3, -1, -1), [out / "token_mask.png"])
    if args.gif:
        write_gif(pipe, steps, lambda i: out / "inpainted.gif", extra_first=x, extra_last=result)
    if args.json:
        rec = steps_record(pipe, steps, _settings(args, threshold=args.threshold), ["inpainted.png"])
        (out / "steps.json").write_text(json.dumps(rec))
    print(f"regenerated {int(tok_mask.sum())} of {tok_mask.numel()} tokens; wrote {out}/inpainted.png, "
          "inpainted_raw.png, token_mask.png, input.png" + (", inpainted.gif" if args.gif else "")
          + (", steps.json" if args.json else ""))
    return 0


def cmd_reconstruct(args) -> int:
    from .image import to_tensor, token_mask_to_pixels
    if not 0.0 < args.ratio <= 1.0:
        raise UsageError("--ratio must be in (0, 1]")
    pipe = load_pipeline(args)
    img, note = read_image(args.image, pipe.config.img_size, args.fit)
    if not note.startswith("image is already"):
        _note(args, note)
    kw = _decode_kwargs(args)
    seed = kw.pop("seed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    one = pipe.reconstruct(img, args.ratio, seed=seed, iterative=False, **kw)
    it = pipe.reconstruct(img, args.ratio, seed=seed, iterative=True, **kw)
    x = one.extra["gt_tokens"]
    mask = one.extra["mask"]
    g, p = pipe.config.grid_size, pipe.config.patch_size
    tok_img = pipe.decode(x)
    pix = token_mask_to_pixels(mask, g, p)[:, None]
    masked = tok_img * (1 - pix) + 0.5 * pix
    _save(to_tensor(img), [out / "input.png"])
    _save(tok_img, [out / "tokenizer.png"])
    _save(masked, [out / "masked.png"])
    _save(one.images, [out / "onepass.png"])
    _save(it.images, [out / "iterative.png"])
    metrics = {"ratio": args.ratio, "masked_tokens": int(mask.sum()), "tokens": mask.numel(), "seed": seed}
    for name, r in (("onepass", one), ("iterative", it)):
        metrics[name] = {k: r.extra[k][0] for k in ("token_accuracy", "mse_vs_tokenizer", "mse_vs_input")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name in ("onepass", "iterative"):
        m = metrics[name]
        print(f"{name:9s} token accuracy {m['token_accuracy']:.3f}  MSE vs tokenizer {m['mse_vs_tokenizer']:.5f}  "
              f"MSE vs input {m['mse_vs_input']:.5f}")
    print(f"wrote {out}/onepass.png, iterative.png, masked.png, tokenizer.png, input.png, metrics.json")
    return 0


def list_images(folder) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"not a folder: {folder}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def cmd_embed(args) -> int:
    import numpy as np
    import torch
    from .image import to_tensor
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    files = list_images(args.folder)
    pipe = load_pipeline(args)
    S = pipe.config.img_size
    feats, kept, skipped = [], [], []
    with _progress(args, len(files), "embedding", "img") as bar:
        for i in range(0, len(files), args.batch_size):
            batch, names = [], []
            for f in files[i: i + args.batch_size]:
                try:
                    batch.append(to_tensor(read_image(f, S, args.fit)[0]))
                    names.append(f)
                except UsageError as e:
                    skipped.append(str(e))
            if batch:
                feats.append(pipe.embed(torch.cat(batch), batch_size=args.batch_size))
                kept += names
            bar.update(len(files[i: i + args.batch_size]))
    if not kept:
        raise UsageError(f"none of the {len(files)} images in {args.folder} could be read ({skipped[0]})")
    for s in skipped:
        _note(args, f"skipped: {s}")
    emb = torch.cat(feats).numpy().astype(np.float32)
    prefix = _prefix(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    root = Path(args.folder).resolve()
    names = [f.resolve().relative_to(root).as_posix() for f in kept]
    np.save(prefix.with_name(prefix.name + ".npy"), emb)
    index = {"format": "mage-studio-embeddings", "model": pipe.meta.get("source", "?"), "model_info": _model_id(pipe),
             "dim": int(emb.shape[1]), "fit": args.fit, "root": str(root), "files": names}
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(index, indent=1))
    prefix.with_name(prefix.name + ".txt").write_text("\n".join(names) + "\n")
    print(f"embedded {len(names)} image(s) -> {prefix}.npy [{emb.shape[0]}, {emb.shape[1]}], {prefix}.json, "
          f"{prefix}.txt" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return 0


def _prefix(path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".npy", ".json", ".txt") else p


def _model_id(pipe) -> dict:
    c = pipe.config
    return {"img_size": c.img_size, "embed_dim": c.embed_dim, "depth": c.depth, "codebook": c.codebook_size,
            "params": pipe.model.num_params()}


def cmd_search(args) -> int:
    import numpy as np
    import torch
    from .image import to_tensor
    prefix = _prefix(args.index)
    npy, js = prefix.with_name(prefix.name + ".npy"), prefix.with_name(prefix.name + ".json")
    if not npy.is_file() or not js.is_file():
        raise UsageError(f"no index at {prefix}(.npy/.json): run `{PROG} embed FOLDER --out {prefix}` first")
    if args.top_k < 1:
        raise UsageError("-k must be >= 1")
    index = json.loads(js.read_text())
    emb = torch.from_numpy(np.load(npy)).float()
    if emb.shape[0] != len(index.get("files", [])):
        raise UsageError(f"{npy} has {emb.shape[0]} rows but {js} lists {len(index.get('files', []))} files")
    pipe = load_pipeline(args)
    if index.get("model_info") not in (None, _model_id(pipe)):
        raise UsageError(f"the index was built with another model ({index.get('model')}); "
                         "embed the folder again with this model")
    img, _ = read_image(args.query, pipe.config.img_size, args.fit or index.get("fit", "center-crop"))
    q = pipe.embed(to_tensor(img))
    sims = torch.nn.functional.cosine_similarity(q, emb, dim=1)
    top = sims.topk(min(args.top_k, len(sims)))
    print(f"{'rank':>4}  {'cosine':>7}  file")
    for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        print(f"{r:>4}  {s:7.4f}  {index['files'][i]}")
    return 0


def cmd_convert(args) -> int:
    from .convert import convert_official, convert_vqgan
    say = (lambda s: None) if args.quiet else (lambda s: print(f"... {s}", file=sys.stderr))
    if args.source is None and args.vqgan is None:
        raise UsageError("give an official MAGE checkpoint, or --vqgan CKPT to convert a tokenizer alone")
    for path in (args.source, args.vqgan):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"checkpoint not found: {path}")
    dtype = args.dtype or "float32"
    if args.source is None:
        rep = convert_vqgan(args.vqgan, args.out, dtype=dtype)
        print(f"wrote {rep['out']} ({rep['dtype']}, {rep['size_bytes'] / 2**20:.1f} MiB); "
              f"token ids vs source: {rep['vqgan_id_agreement']:.2%} equal")
        return 0
    meta = {k: v for k, v in (("name", args.name), ("dataset", args.dataset), ("license", args.license)) if v}
    rep = convert_official(args.source, args.out, vqgan=args.vqgan, dtype=dtype, config=args.config, meta=meta,
                           progress=say)
    print(f"wrote {rep['out']}/ (config.json, model.safetensors {rep['size_bytes'] / 2**20:.1f} MiB {rep['dtype']}, "
          f"README.md); MAGE {rep['mage_params'] / 1e6:.2f} M + VQGAN {rep['vqgan_params'] / 1e6:.2f} M parameters")
    print(f"check: max |logit diff| vs source {rep['max_abs_logit_diff']:.3g} (limit {rep['tolerance']:.3g}), "
          f"argmax agreement {rep['argmax_agreement']:.2%}, VQGAN ids equal {rep['vqgan_id_agreement']:.2%}")
    return 0


def cmd_info(args) -> int:
    pipe = load_pipeline(args)
    info = pipe.info()
    meta = {k: v for k, v in pipe.meta.items() if k != "source"}
    if args.json:
        print(json.dumps({"info": info, "config": pipe.config.to_dict(), "meta": meta}, indent=2, default=str))
        return 0
    w = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:>{w}}  {f'{v:,}' if isinstance(v, int) else v}")
    for k, v in meta.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        elif isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items())
        print(f"{k:>{w}}  {v}")
    return 0


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from .checkpoint import CheckpointError
    from .convert import ConversionError
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, OSError) as e:
        if os.environ.get("MAGE_STUDIO_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, ConversionError):
            print(f"{PROG}: conversion check FAILED: {msg}", file=sys.stderr)
            return 1
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
