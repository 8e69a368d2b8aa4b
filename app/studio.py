"""The app's event handlers: validate inputs, call the library (mage.*), turn results into pictures.

Everything model-related lives in ``mage``; this module is glue. Handlers raise ``gr.Error`` with a
plain sentence for bad input and never let a stack trace reach the user.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from mage import SCHEDULES, viz
from mage import image as im

log = logging.getLogger("mage.app")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
NONE_CLASS = "none (unconditional)"
FIT_MODES = list(im.FIT_MODES)
LIMITS = {"steps": 64, "images": 16, "side": 4096, "pixels": 16_000_000, "topk": 32, "upload_set": 512}
RUN_TTL_S = 3600  # exported files are kept this long


# ------------------------------------------------------------------------------------------ helpers
def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(f) or f != int(f):
        raise gr.Error(f"{name} must be a whole number (got {value!r})")
    if not lo <= f <= hi:
        raise gr.Error(f"{name} must be between {lo} and {hi} (got {int(f)})")
    return int(f)


def _float(value, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number (got {value!r})") from None
    if not math.isfinite(f) or f > hi or f < lo or (lo_open and f <= lo):
        raise gr.Error(f"{name} must be {'>' if lo_open else '>='} {lo} and <= {hi} (got {value!r})")
    return f


def _check_image(img, what: str = "image") -> Image.Image:
    if img is None:
        raise gr.Error(f"Upload or pick an {what} first.")
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3) or img.size == 0:
            raise gr.Error(f"The {what} has an unsupported shape {img.shape}.")
        img = Image.fromarray(img.astype(np.uint8) if img.dtype != np.uint8 else img)
    if not isinstance(img, Image.Image):
        raise gr.Error(f"The {what} could not be read.")
    w, h = img.size
    if max(w, h) > LIMITS["side"] or w * h > LIMITS["pixels"]:
        raise gr.Error(f"The {what} is {w}x{h}; the limit is {LIMITS['side']} px per side and "
                       f"{LIMITS['pixels'] // 1_000_000} megapixels.")
    return img


def _choice(value, name: str, choices) -> str:
    if value not in choices:
        raise gr.Error(f"{name} must be one of {list(choices)} (got {value!r})")
    return value


def _run_dir() -> Path:
    """A fresh folder for exported files; folders older than RUN_TTL_S are removed."""
    root = Path(tempfile.gettempdir()) / "mage_studio_runs"
    root.mkdir(exist_ok=True)
    now = time.time()
    for d in root.iterdir():
        try:
            if now - d.stat().st_mtime > RUN_TTL_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
    d = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


def example_paths() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


# ------------------------------------------------------------------------------------------- studio

def streamed_as_files(handler):
    """Streamed handlers: hand images to Gradio as PNG files of our own instead of arrays.

    Gradio caches a streamed array under a hash of its content and rewrites that file each time the same
    image is sent again, while the client may still be downloading it (a truncated-response race seen in
    CI); files are copied into its cache atomically and never rewritten."""
    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        d = None
        for out in handler(*args, **kwargs):
            out = list(out)
            for i, v in enumerate(out):
                if isinstance(v, np.ndarray) and v.ndim == 3:
                    d = d or _run_dir()
                    path = d / f"{uuid.uuid4().hex[:12]}.png"
                    Image.fromarray(v).save(path)
                    out[i] = str(path)
            yield tuple(out)
    return wrapper


class Studio:
    """Holds the pipeline and the shared (read-only) gallery; one method per UI action."""

    def __init__(self, pipe, load_message: str | None = None, gallery_dir=None, load_gallery: bool = True):
        self.pipe = pipe
        self.load_message = load_message
        c = pipe.config
        self.size, self.grid, self.patch, self.N = c.img_size, c.grid_size, c.patch_size, c.num_tokens
        names = pipe.class_names or [f"class {i}" for i in range(c.num_classes)]
        self.class_names = names[: c.num_classes] if c.num_classes else []
        self.class_choices = [NONE_CLASS] + self.class_names
        self.gallery, self.gallery_error = None, None
        if load_gallery:
            self._load_gallery(gallery_dir)

    def _load_gallery(self, gallery_dir):
        try:
            from mage.gallery import load_gallery
            self.gallery = load_gallery(self.pipe, gallery_dir)
            if self.gallery.recomputed:
                log.info("gallery embeddings recomputed for this model (%d images)", len(self.gallery))
        except Exception as e:
            self.gallery_error = f"{type(e).__name__}: {e}"
            log.warning("no retrieval gallery: %s", self.gallery_error)

    def warmup(self) -> float:
        """One tiny decode + every picture helper once (first-call costs: lazy imports, kernels). Seconds."""
        t0 = time.perf_counter()
        for _ in self.generate(2, "cosine", 4.5, 1.0, 0, 1, NONE_CLASS, 0.0):
            pass
        return time.perf_counter() - t0

    # --------------------------------------------------------------- display helpers
    def factor(self, n: int) -> int:
        return max(1, (256 if n <= 4 else 128) // self.size)

    def show(self, images, n: int | None = None) -> np.ndarray:
        """uint8 [B,S,S,3] or float [B,3,S,S] -> one nearest-upscaled grid image."""
        a = viz.as_uint8(images)
        return viz.tile(viz.upscale(a, self.factor(n or len(a))))

    def fit(self, img, mode: str = "center-crop") -> tuple[torch.Tensor, str]:
        img = _check_image(img)
        mode = _choice(mode, "fit mode", FIT_MODES)
        pil, desc = im.fit_image(img, self.size, mode)
        return im.to_tensor(pil), desc

    def _class(self, cls, guidance) -> tuple[object, float]:
        if cls in (None, "", NONE_CLASS):
            if guidance:
                gr.Warning("Guidance needs a class: it is ignored for unconditional generation.")
            return None, 0.0
        _choice(cls, "class", self.class_choices)
        return self.class_names.index(cls), float(guidance)

    def _decode_kw(self, steps, seed, choice_t, samp_t, cls, guidance, schedule="cosine") -> dict:
        label, g = self._class(cls, _float(guidance, "guidance scale", 0.0, 20.0))
        return dict(steps=_int(steps, "steps", 1, LIMITS["steps"]),
                    schedule=_choice(schedule, "schedule", list(SCHEDULES)),
                    choice_temperature=_float(choice_t, "choice temperature", 0.0, 50.0),
                    sampling_temperature=_float(samp_t, "sampling temperature", 0.0, 10.0, lo_open=True),
                    seed=_int(seed, "seed", 0, 2**31 - 1), class_label=label, guidance_scale=g)

    # --------------------------------------------------------------- generate
    def schedule_plot(self, steps, schedule):
        from .plots import schedule_plot, to_image
        steps = _int(steps, "steps", 1, LIMITS["steps"])
        return to_image(schedule_plot(self.N, steps, _choice(schedule, "schedule", list(SCHEDULES))))

    @staticmethod
    def random_seed() -> int:
        return int(np.random.default_rng().integers(0, 2**31 - 1))

    def _frame(self, rec: dict, k: int):
        """Display images + status for step k (0-based) of a recorded run."""
        n = rec["n"]
        vals = viz.confidence_values(rec["probs"][k].astype(np.float32), self.pipe.config.codebook_size)
        conf = viz.token_image(vals, self.grid, self.patch)
        left = rec["left"][k]
        status = (f"step {k + 1}/{rec['num_steps']} - unknown tokens left: "
                  f"{', '.join(map(str, left)) if n <= 4 else sum(left)}"
                  + (f" - {rec['times'][k]:.2f} s" if rec.get("times") else ""))
        return self.show(rec["canvas"][k]), self.show(rec["pred"][k]), self.show(conf), status

    @streamed_as_files
    def generate(self, steps, schedule, choice_t, samp_t, seed, n, cls, guidance):
        """Stream one update per decoding step, then the commit-order map and the exports."""
        kw = self._decode_kw(steps, seed, choice_t, samp_t, cls, guidance, schedule)
        n = _int(n, "number of images", 1, LIMITS["images"])
        T = kw["steps"]
        rec = {"n": n, "num_steps": T, "canvas": [], "pred": [], "probs": [], "left": [], "times": []}
        steps_seen = []
        t0 = time.perf_counter()
        skip = gr.skip()
        for s in self.pipe.generate_steps(n, **kw):
            canvas, pred = self.pipe.preview(s)
            rec["canvas"].append(im.to_uint8(canvas))
            rec["pred"].append(im.to_uint8(pred))
            rec["probs"].append(s.probs.numpy().astype(np.float16))
            rec["left"].append(s.unknown.sum(1).tolist())
            rec["times"].append(time.perf_counter() - t0)
            steps_seen.append(s)
            if not s.is_last:
                c, p, h, status = self._frame(rec, s.step)
                yield c, p, h, skip, gr.update(maximum=T, value=s.step + 1), status, skip, skip, skip, skip, skip
        order = viz.commit_order(steps_seen)
        rec["order"] = order.numpy()
        rec["final"] = rec["canvas"][-1]
        rec["kw"] = {k: v for k, v in kw.items()}
        order_img = viz.tile(viz.order_image(order, T, self.grid, cell=self.patch * self.factor(n)))
        gif, pngs, js_path, record = self._export(rec, steps_seen)
        c, p, h, status = self._frame(rec, T - 1)
        status += " - done"
        yield (c, p, h, order_img, gr.update(maximum=T, value=T, interactive=True), status, rec, gif, pngs,
               js_path, record)

    def _export(self, rec: dict, steps) -> tuple[str, list[str], str, dict]:
        d = _run_dir()
        f = max(1, 128 // self.size)
        frames = [viz.tile(viz.upscale(c, f)) for c in rec["canvas"]]
        gif = viz.save_gif(frames, d / "decoding_steps.gif")
        pngs = []
        for i, a in enumerate(rec["final"]):
            p = d / f"image_{i:02d}.png"
            Image.fromarray(a).save(p)
            pngs.append(str(p))
        grid = d / f"grid_x{self.factor(rec['n'])}.png"
        Image.fromarray(self.show(rec["final"])).save(grid)
        pngs.append(str(grid))
        record = viz.steps_record(steps, self.pipe.config.mask_token_id)
        record["settings"] = {k: v for k, v in rec["kw"].items()}
        record["settings"]["class_label"] = (None if rec["kw"]["class_label"] is None
                                             else self.class_names[rec["kw"]["class_label"]])
        js = viz.save_json(record, d / "steps.json")
        return str(gif), pngs, str(js), record

    def scrub(self, k, rec):
        if not rec:
            gr.Warning("Generate first; then the slider scrubs through the steps.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        k = _int(k, "step", 1, rec["num_steps"])
        return self._frame(rec, k - 1)

    # --------------------------------------------------------------- inpaint / outpaint
    def load_source(self, img, mode):
        """Fit an uploaded/example image and put it (upscaled) into the mask editor."""
        if img is None:
            return None, "", None
        x, desc = self.fit(img, mode)
        disp = self.show(x)
        return {"background": disp, "layers": [], "composite": disp}, f"Input: {desc}.", disp

    def editor_mask(self, editor) -> np.ndarray | None:
        """Painted fraction [S,S] in [0,1] from the editor layers' alpha (None when nothing is painted)."""
        if not isinstance(editor, dict):
            return None
        alpha = None
        for layer in editor.get("layers") or []:
            if layer is None:
                continue
            a = np.asarray(layer)
            a = (a[..., 3] > 0) if a.ndim == 3 and a.shape[-1] == 4 else (a.reshape(a.shape[:2] + (-1,)).max(-1) > 0)
            alpha = a if alpha is None else (alpha | a if alpha.shape == a.shape else alpha)
        if alpha is None or not alpha.any():
            return None
        m = Image.fromarray(alpha.astype(np.float32)).resize((self.size, self.size), Image.BOX)
        return np.clip(np.asarray(m), 0, 1)

    def _token_mask(self, editor, threshold) -> torch.Tensor:
        threshold = _float(threshold, "token threshold", 0.0, 1.0)
        m = self.editor_mask(editor)
        if m is None:
            raise gr.Error("Paint over the part of the image to regenerate first.")
        tok = im.pixel_to_token_mask(torch.from_numpy(m), self.patch, threshold)
        if not tok.any():
            raise gr.Error("The painted area covers no whole token at this threshold: paint more or lower it.")
        return tok

    def preview_mask(self, img, editor, mode, threshold):
        if img is None:
            return None, "Upload or pick an image, then paint the region to regenerate."
        x, _ = self.fit(img, mode)
        m = self.editor_mask(editor)
        if m is None:
            return self.show(x), "Nothing painted yet: paint over the region to regenerate."
        threshold = _float(threshold, "token threshold", 0.0, 1.0)
        tok = im.pixel_to_token_mask(torch.from_numpy(m), self.patch, threshold)
        k = int(tok.sum())
        return (self.show(viz.mark_tokens(x, tok, self.grid, self.patch)),
                f"{k} of {self.N} tokens ({k / self.N:.0%}) will be regenerated (a token counts when at least "
                f"{threshold:.0%} of its {self.patch}x{self.patch} pixels are painted).")

    def _stream_fill(self, x: torch.Tensor, tok: torch.Tensor, feather: int, kw: dict):
        """Decode the tokens in ``tok`` of image ``x``; yields (canvas, prediction, result|None, status)."""
        tokens = self.pipe.encode(x).cpu()
        pix = im.token_mask_to_pixels(tok, self.grid, self.patch)
        t0 = time.perf_counter()
        for s in self.pipe.decode_steps(tokens, tok, **kw):
            canvas, pred = self.pipe.preview(s)
            shown = im.composite(x, canvas, pix, 0)
            status = (f"step {s.step + 1}/{s.num_steps} - {int(s.unknown.sum())} of {int(tok.sum())} tokens "
                      f"still unknown - {time.perf_counter() - t0:.2f} s")
            if not s.is_last:
                yield self.show(shown), self.show(pred), None, status
        final = self.pipe.decode(s.tokens)
        out = im.composite(x, final, pix, feather)
        yield self.show(shown), self.show(pred), self.show(out), status + " - done (composited with the original)"

    @streamed_as_files
    def inpaint(self, img, editor, mode, threshold, feather, steps, seed, choice_t, samp_t, cls, guidance):
        x, desc = self.fit(img, mode)
        tok = self._token_mask(editor, threshold)
        kw = self._decode_kw(steps, seed, choice_t, samp_t, cls, guidance)
        feather = _int(feather, "feather", 0, 8)
        preview = self.show(viz.mark_tokens(x, tok, self.grid, self.patch))
        for c, p, r, status in self._stream_fill(x, tok, feather, kw):
            yield preview, c, p, (r if r is not None else gr.skip()), f"{status} (input: {desc})"

    def _outpaint_canvas(self, img, mode, left, right, top, bottom):
        x, desc = self.fit(img, mode)
        g = self.grid
        ext = [_int(v, name, 0, g - 1)
               for v, name in zip((left, right, top, bottom), ("left", "right", "top", "bottom"))]
        if ext[0] + ext[1] >= g or ext[2] + ext[3] >= g:
            raise gr.Error(f"The extensions leave no room for the image on the {g}x{g} token grid: "
                           f"left+right and top+bottom must each be below {g}.")
        canvas, mask = im.outpaint_canvas(x, g, self.patch, *ext)
        tok = im.pixel_to_token_mask(mask, self.patch, 0.5)
        inner = f"{g - ext[0] - ext[1]}x{g - ext[2] - ext[3]}"
        return canvas, tok, (f"{desc}; shrunk to {inner} tokens and placed with {ext[0]}/{ext[1]}/{ext[2]}/{ext[3]} "
                             f"new token columns/rows left/right/top/bottom ({int(tok.sum())} new tokens)")

    def preview_outpaint(self, img, mode, left, right, top, bottom):
        if img is None:
            return None, "Upload or pick an image first."
        canvas, tok, desc = self._outpaint_canvas(img, mode, left, right, top, bottom)
        if not tok.any():
            return self.show(canvas), desc + ". Choose at least one side to extend."
        return self.show(viz.mark_tokens(canvas, tok, self.grid, self.patch)), desc + "."

    @streamed_as_files
    def outpaint(self, img, mode, left, right, top, bottom, steps, seed, choice_t, samp_t, cls, guidance):
        canvas, tok, desc = self._outpaint_canvas(img, mode, left, right, top, bottom)
        if not tok.any():
            raise gr.Error("Choose how many tokens to extend on at least one side.")
        kw = self._decode_kw(steps, seed, choice_t, samp_t, cls, guidance)
        preview = self.show(viz.mark_tokens(canvas, tok, self.grid, self.patch))
        for c, p, r, status in self._stream_fill(canvas, tok, 0, kw):
            yield preview, c, p, (r if r is not None else gr.skip()), f"{status} (input: {desc})"

    # --------------------------------------------------------------- retrieval
    def _query_embedding(self, img):
        x, desc = self.fit(img, "center-crop")
        return self.pipe.embed(x), x, desc

    def _collection(self, which, user_set):
        """-> (thumbnails uint8 [N,S,S,3], names [N], embeddings [N,D], index)."""
        if which == "my images":
            if not user_set:
                raise gr.Error("Upload and embed your own images first (or search the shipped gallery).")
            return user_set["images"], user_set["names"], user_set["embeddings"], user_set["index"]
        if self.gallery is None:
            raise gr.Error(f"No gallery is shipped with this model ({self.gallery_error or 'not loaded'}). "
                           "Upload your own images to search in.")
        g = self.gallery
        names = [g.label_name(i) for i in range(len(g))]
        return g.images, names, g.embeddings, g.index

    def retrieve(self, img, which, k, user_set):
        from mage.retrieval import pca_2d
        from .plots import pca_plot, to_image
        _choice(which, "search in", ["shipped gallery", "my images"])
        k = _int(k, "k", 1, LIMITS["topk"])
        images, names, emb, index = self._collection(which, user_set)
        q, _, desc = self._query_embedding(img)
        scores, idx = index.search(q, k)
        scores, idx = scores[0].tolist(), idx[0].tolist()
        f = max(1, 96 // self.size)
        items = [(viz.upscale(images[i][None], f)[0], f"{names[i]} - cos {s:.3f}") for i, s in zip(idx, scores)]
        rows = [[r + 1, names[i], round(s, 4), int(i)] for r, (i, s) in enumerate(zip(idx, scores))]
        pts, qp = pca_2d(emb, q)
        fig = pca_plot(pts.numpy(), names, qp.numpy(), idx, title=f"{which}: {len(names)} images (PCA of embeddings)")
        return items, rows, to_image(fig), f"Query: {desc}. Top {len(idx)} of {len(names)} by cosine similarity."

    def use_generated(self, rec, which):
        if not rec:
            raise gr.Error("Nothing generated yet: run the Generate tab first.")
        i = _int(which, "image number", 1, rec["n"])
        return Image.fromarray(rec["final"][i - 1])

    def embed_set(self, files, progress=gr.Progress()):
        """Embed an uploaded set of images (any size: centre-cropped to the model size)."""
        from mage.retrieval import EmbeddingIndex
        if not files:
            raise gr.Error("Choose some image files first.")
        files = files if isinstance(files, list) else [files]
        if len(files) > LIMITS["upload_set"]:
            raise gr.Error(f"At most {LIMITS['upload_set']} images per set (got {len(files)}).")
        xs, names, bad = [], [], []
        for f in progress.tqdm(files, desc="reading images"):
            path = f if isinstance(f, str) else getattr(f, "name", str(f))
            try:
                with Image.open(path) as pil:
                    x, _ = self.fit(pil.convert("RGB"), "center-crop")
            except gr.Error:
                raise
            except Exception:
                bad.append(Path(path).name)
                continue
            xs.append(x)
            names.append(Path(path).stem)
        if bad:
            gr.Warning(f"Skipped {len(bad)} file(s) that are not readable images: {', '.join(bad[:5])}")
        if len(xs) < 2:
            raise gr.Error("Need at least 2 readable images to build a searchable set.")
        x = torch.cat(xs)
        progress(0, desc="embedding")
        emb = self.pipe.embed(x, batch_size=32, progress=lambda d, t: progress(d / t, desc="embedding"))
        user_set = {"images": im.to_uint8(x), "names": names, "embeddings": emb,
                    "index": EmbeddingIndex(emb, names=names, backend="torch")}
        return user_set, "my images", f"Embedded {len(names)} images ({emb.shape[1]}-d)."

    def download_embeddings(self, which, user_set):
        _choice(which, "search in", ["shipped gallery", "my images"])
        _, names, emb, _ = self._collection(which, user_set)
        d = _run_dir()
        stem = "gallery" if which == "shipped gallery" else "my_images"
        npy = d / f"{stem}_embeddings.npy"
        np.save(npy, emb.float().numpy())
        meta = d / f"{stem}_labels.json"
        meta.write_text(json.dumps({"labels": list(names), "shape": list(emb.shape),
                                    "embedding": "MAGE mean-pooled encoder output (not normalised)",
                                    "model": self.pipe.meta.get("source", "?")}))
        return [str(npy), str(meta)]

    # --------------------------------------------------------------- masking ratio
    RATIOS = [i / 10 for i in range(11)]

    def _curve(self, x, seed, steps, progress):
        c = {"ratios": self.RATIOS, "acc_onepass": [], "acc_iter": [], "mse_onepass": [], "mse_iter": []}
        for r in progress.tqdm(self.RATIOS, desc="accuracy vs ratio"):
            a = self.pipe.reconstruct(x, r, seed=seed, iterative=False)
            b = self.pipe.reconstruct(x, r, seed=seed, iterative=True, steps=steps)
            c["acc_onepass"].append(a.extra["token_accuracy"][0] if r > 0 else float("nan"))
            c["acc_iter"].append(b.extra["token_accuracy"][0] if r > 0 else float("nan"))
            c["mse_onepass"].append(a.extra["mse_vs_tokenizer"][0])
            c["mse_iter"].append(b.extra["mse_vs_tokenizer"][0])
        return c

    def reconstruct(self, img, ratio_pct, seed, steps, curve_state, progress=gr.Progress()):
        from .plots import ratio_plot, to_image
        ratio = _float(ratio_pct, "masking ratio", 0.0, 100.0) / 100
        seed = _int(seed, "seed", 0, 2**31 - 1)
        steps = _int(steps, "steps", 1, LIMITS["steps"])
        x, desc = self.fit(img, "center-crop")
        one = self.pipe.reconstruct(x, ratio, seed=seed, iterative=False)
        it = self.pipe.reconstruct(x, ratio, seed=seed, iterative=True, steps=steps)
        mask = one.extra["mask"]
        masked = viz.checker_tokens(x, mask, self.grid, self.patch)
        key = f"{hash(x.numpy().tobytes())}-{seed}-{steps}"
        if not curve_state or curve_state.get("key") != key:
            curve_state = {"key": key, "curve": self._curve(x, seed, steps, progress)}
        fig = ratio_plot(curve_state["curve"], ratio, self.pipe.config)
        k = int(mask.sum())

        def pct(v):
            return "n/a" if k == 0 else f"{v:.0%}"
        text = (f"Input: {desc}. Masked {k} of {self.N} tokens ({ratio:.0%}).\n\n"
                f"| | token accuracy | pixel MSE vs tokenizer | pixel MSE vs input |\n|---|---|---|---|\n"
                f"| one pass | {pct(one.extra['token_accuracy'][0])} | {one.extra['mse_vs_tokenizer'][0]:.4f} "
                f"| {one.extra['mse_vs_input'][0]:.4f} |\n"
                f"| iterative ({steps} steps) | {pct(it.extra['token_accuracy'][0])} | "
                f"{it.extra['mse_vs_tokenizer'][0]:.4f} | {it.extra['mse_vs_input'][0]:.4f} |")
        return (self.show(masked), self.show(one.images), self.show(it.images), self.show(x), text, to_image(fig),
                curve_state)

    # --------------------------------------------------------------- model
    def model_info(self) -> dict:
        info = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                for k, v in self.pipe.info().items()}
        meta = {k: v for k, v in self.pipe.meta.items() if isinstance(v, (str, int, float, bool, list)) or v is None}
        return {"info": info, "meta": meta, "load_message": self.load_message,
                "gallery": None if self.gallery is None else {"images": len(self.gallery),
                                                              "recomputed": self.gallery.recomputed},
                "limits": dict(LIMITS)}

    def model_markdown(self) -> str:
        info, meta = self.pipe.info(), self.pipe.meta
        lines = []
        if self.load_message:
            lines.append(f"> **Note:** {self.load_message}\n")
        lines.append(f"**Loaded:** {meta.get('source', '?')}\n")
        lines.append("| property | value |\n|---|---|")
        for k in ("dataset", "license", "licence"):
            if meta.get(k):
                lines.append(f"| {k} | {meta[k]} |")
        for k, v in info.items():
            if k == "source":
                continue
            lines.append(f"| {k} | {v:,} |" if isinstance(v, int) and v > 9999 else f"| {k} | {v} |")
        if self.class_names:
            lines.append(f"| class names | {', '.join(self.class_names)} |")
        lines.append(f"| retrieval gallery | "
                     + (f"{len(self.gallery)} images" + (" (embeddings recomputed for this model)"
                                                           if self.gallery.recomputed else "")
                        if self.gallery is not None else f"none ({self.gallery_error})") + " |")
        lines.append(HOW_TO_LOAD)
        return "\n".join(lines)


HOW_TO_LOAD = """
### Loading another model
Start the app with `--model` (or the environment variable `MAGE_MODEL`):

| source | example |
|---|---|
| the embedded default | `python app.py` |
| a directory in MAGE Studio format (`config.json` + `model.safetensors`) | `python app.py --model runs/my_model` |
| an official MAGE checkpoint + its VQGAN tokenizer | `python app.py --model mage-vitb-1600.pth --vqgan vqgan_jax_strongaug.ckpt` |
| a Hugging Face Hub repo | `python app.py --model owner/mage-fashion` |

`--device` / `MAGE_DEVICE` chooses `cpu`, `cuda` or `auto` (default). A model that fails to load is reported
here and the app runs on the embedded default instead.
"""
