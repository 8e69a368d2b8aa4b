"""The Gradio Blocks layout: five tabs wired to :class:`app.studio.Studio` handlers."""
from __future__ import annotations

import os

import gradio as gr

from mage import SCHEDULES

from .studio import FIT_MODES, LIMITS, NONE_CLASS, ROOT, Studio, example_paths

TITLE = "MAGE Studio"
CSS = """
.pixel img, .pixel canvas { image-rendering: pixelated; }
#inpaint-src img, #query img, #ratio-img img { width: 100%; height: 100%; object-fit: contain; }
#status textarea { font-family: monospace; }
"""
RATIO_TEXT = """
**Why the masking ratio matters.** MAGE is trained by hiding a random fraction of an image's tokens and
predicting them back. With a *low* ratio most of the picture is visible: the missing tokens can be
filled in from their neighbours, so the network must learn what objects look like and how parts fit
together - good **representations** (what the retrieval tab uses). With a *high* ratio almost nothing is
left: the network must invent plausible content from scratch - this is **generation**. MAGE samples the
ratio from a truncated Gaussian (shaded in the plot) that covers both, so one model learns both.
Iterative decoding turns a one-shot guess into a sequence of easier guesses: each step commits only the
most confident tokens and lets the rest see them.
"""


def gpu(fn):
    """On Hugging Face ZeroGPU Spaces, run ``fn`` with a GPU attached (``spaces.GPU``); else unchanged."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def out_image(label: str, pixel: bool = True, **kw) -> gr.Image:
    """An output image with its caption above it (Gradio's own label would cover the top token row)."""
    with gr.Column(min_width=160):
        gr.Markdown(f"**{label}**", elem_classes="caption")
        return gr.Image(label=label, show_label=False, format="png", interactive=False,
                        elem_classes="pixel" if pixel else None, **kw)


def _decode_controls(studio: Studio, steps: int = 12):
    with gr.Accordion("Decoding settings", open=False):
        with gr.Row():
            st = gr.Slider(1, LIMITS["steps"], value=steps, step=1, label="steps")
            seed = gr.Number(0, precision=0, label="seed", minimum=0)
        with gr.Row():
            ct = gr.Slider(0.0, 20.0, value=4.5, step=0.5, label="choice temperature")
            tt = gr.Slider(0.1, 3.0, value=1.0, step=0.05, label="sampling temperature")
        with gr.Row():
            cls = gr.Dropdown(studio.class_choices, value=NONE_CLASS, label="class",
                              interactive=bool(studio.class_names))
            gs = gr.Slider(0.0, 10.0, value=0.0, step=0.5, label="guidance scale")
    return st, seed, ct, tt, cls, gs


def build_demo(studio: Studio, concurrency: int | None = None) -> gr.Blocks:
    """The app. ``concurrency``: how many model calls run at once (default: env MAGE_CONCURRENCY or 1 on
    CPU, 2 on GPU)."""
    if concurrency is None:
        concurrency = int(os.environ.get("MAGE_CONCURRENCY", 1 if studio.pipe.device.type == "cpu" else 2))
    model_ev = dict(concurrency_limit=concurrency, concurrency_id="model")
    examples = example_paths()
    S = studio.size

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nMAGE (MAsked Generative Encoder) - watch iterative decoding, inpaint, retrieve "
                    f"and explore masking. Model: **{studio.pipe.meta.get('source', '?')}** "
                    f"({S}x{S} images, {studio.grid}x{studio.grid} tokens).")
        if studio.load_message:
            gr.Markdown(f"> **Warning:** {studio.load_message}", elem_id="load-warning")
        gen_state = gr.State(None)

        # ---------------------------------------------------------------- 1. generate
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    steps = gr.Slider(1, LIMITS["steps"], value=12, step=1, label="steps")
                    schedule = gr.Dropdown(list(SCHEDULES), value="cosine", label="schedule")
                    sched_plot = gr.Image(label="unknown tokens per step", format="png", show_label=False,
                                          interactive=False, buttons=[])
                    choice_t = gr.Slider(0.0, 20.0, value=4.5, step=0.5, label="choice temperature",
                                         info="Gumbel noise on the confidences (annealed to 0)")
                    samp_t = gr.Slider(0.1, 3.0, value=1.0, step=0.05, label="sampling temperature")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="seed", minimum=0, scale=3)
                        dice = gr.Button("random", scale=1, min_width=60)
                    n = gr.Slider(1, LIMITS["images"], value=1, step=1, label="number of images")
                    cls = gr.Dropdown(studio.class_choices, value=NONE_CLASS, label="class",
                                      interactive=bool(studio.class_names))
                    guidance = gr.Slider(0.0, 10.0, value=0.0, step=0.5, label="guidance scale",
                                         info="classifier-free guidance (needs a class)")
                    run = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Column(scale=3):
                    status = gr.Textbox(label="status", interactive=False, elem_id="status")
                    with gr.Row():
                        canvas = out_image("canvas (grey checker = unknown)", elem_id="gen-canvas")
                        pred = out_image("model's full prediction")
                    with gr.Row():
                        conf = out_image("confidence (log scale: chance .. certain)")
                        order = out_image("commit order (step that fixed each token)")
                    scrub = gr.Slider(1, 12, value=12, step=1, label="scrub through the steps", interactive=True,
                                      elem_id="scrub")
                    with gr.Accordion("Export", open=False):
                        with gr.Row():
                            gif = gr.File(label="animated GIF of the steps")
                            pngs = gr.File(label="final images (PNG)", file_count="multiple")
                            js_file = gr.File(label="per-step token data (JSON)")
                        js = gr.JSON(label="per-step token data", open=False)
            gen_out = [canvas, pred, conf, order, scrub, status, gen_state, gif, pngs, js_file, js]
            run.click(gpu(studio.generate), [steps, schedule, choice_t, samp_t, seed, n, cls, guidance], gen_out,
                      api_name="generate", **model_ev)
            dice.click(studio.random_seed, None, seed, api_name="random_seed")
            for ev in (steps.change, schedule.change):
                ev(studio.schedule_plot, [steps, schedule], sched_plot, api_name=False, show_progress="hidden")
            demo.load(studio.schedule_plot, [steps, schedule], sched_plot, api_name="schedule_plot")
            scrub.input(studio.scrub, [scrub, gen_state], [canvas, pred, conf, status], api_name="scrub",
                        show_progress="hidden", trigger_mode="always_last")

        # ---------------------------------------------------------------- 2. inpaint / outpaint
        with gr.Tab("Inpaint / outpaint", id="inpaint"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    src = gr.Image(type="pil", label="image (any size)", sources=["upload", "clipboard"],
                                   elem_id="inpaint-src", format="png", height=200, elem_classes="pixel")
                    if examples:
                        gr.Examples(examples, inputs=src, label="Fashion-MNIST test images",
                                    examples_per_page=12)
                    fit_mode = gr.Radio(FIT_MODES, value="center-crop", label="fit to the model size")
                    fit_info = gr.Markdown()
                with gr.Column(scale=2):
                    with gr.Tab("Inpaint"):
                        editor = gr.ImageEditor(
                            type="numpy", label="paint the region to regenerate", sources=[], transforms=[],
                            layers=False, canvas_size=(256, 256), height=340, elem_id="mask-editor",
                            brush=gr.Brush(colors=["#ff3030"], color_mode="fixed", default_size=24))
                        with gr.Row():
                            threshold = gr.Slider(0.0, 1.0, value=0.25, step=0.05, label="token threshold",
                                                  info="fraction of a token that must be painted")
                            feather = gr.Slider(0, 4, value=1, step=1, label="feather (px)")
                        ip_controls = _decode_controls(studio)
                        ip_run = gr.Button("Inpaint", variant="primary", elem_id="inpaint-btn")
                    with gr.Tab("Outpaint"):
                        g = studio.grid
                        with gr.Row():
                            sides = [gr.Slider(0, g - 1, value=v, step=1, label=f"{name} (tokens)")
                                     for name, v in (("left", 2), ("right", 2), ("top", 0), ("bottom", 0))]
                        op_controls = _decode_controls(studio)
                        op_run = gr.Button("Outpaint", variant="primary", elem_id="outpaint-btn")
                with gr.Column(scale=2):
                    mask_prev = out_image("token mask (red = regenerated)", elem_id="mask-preview")
                    mask_info = gr.Markdown()
                    ip_status = gr.Textbox(label="status", interactive=False, elem_id="ip-status")
                    with gr.Row():
                        ip_canvas = out_image("decoding")
                        ip_pred = out_image("prediction")
                    ip_result = out_image("result (composited with the original)", elem_id="ip-result")
            for ev in (src.change, fit_mode.change):
                ev(studio.load_source, [src, fit_mode], [editor, fit_info, mask_prev], api_name=False)
            editor.change(studio.preview_mask, [src, editor, fit_mode, threshold], [mask_prev, mask_info],
                          api_name="preview_mask", show_progress="hidden")
            threshold.release(studio.preview_mask, [src, editor, fit_mode, threshold], [mask_prev, mask_info],
                              api_name=False, show_progress="hidden")
            ip_out = [mask_prev, ip_canvas, ip_pred, ip_result, ip_status]
            ip_run.click(gpu(studio.inpaint), [src, editor, fit_mode, threshold, feather, *ip_controls], ip_out,
                         api_name="inpaint", **model_ev)
            for s in sides:
                s.release(studio.preview_outpaint, [src, fit_mode, *sides], [mask_prev, mask_info],
                          api_name=False, show_progress="hidden")
            op_run.click(gpu(studio.outpaint), [src, fit_mode, *sides, *op_controls], ip_out, api_name="outpaint",
                         **model_ev)
            # API-only twin of the outpaint preview (the sliders call it without an API name)
            gr.Button("preview outpaint", visible=False).click(
                studio.preview_outpaint, [src, fit_mode, *sides], [mask_prev, mask_info], api_name="preview_outpaint")

        # ---------------------------------------------------------------- 3. retrieval
        with gr.Tab("Retrieval", id="retrieval"):
            user_set = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    query = gr.Image(type="pil", label="query image", sources=["upload", "clipboard"],
                                     elem_id="query", format="png", height=200, elem_classes="pixel")
                    if examples:
                        gr.Examples(examples, inputs=query, label="examples", examples_per_page=12)
                    with gr.Row():
                        gen_idx = gr.Number(1, precision=0, minimum=1, maximum=LIMITS["images"], label="image #",
                                            scale=1, min_width=60)
                        use_gen = gr.Button("use the image I just generated", scale=3)
                    which = gr.Radio(["shipped gallery", "my images"], value="shipped gallery", label="search in")
                    k = gr.Slider(1, LIMITS["topk"], value=8, step=1, label="top-k")
                    search = gr.Button("Search", variant="primary", elem_id="search-btn")
                    with gr.Accordion("Your own image set", open=False):
                        files = gr.File(file_count="multiple", file_types=["image"], label="images")
                        embed_btn = gr.Button("Embed my images")
                        set_info = gr.Markdown()
                    dl_btn = gr.Button("Download embeddings (.npy)")
                    dl = gr.File(label="embeddings", file_count="multiple")
                with gr.Column(scale=2):
                    r_info = gr.Markdown(
                        f"Shipped gallery: {len(studio.gallery)} images." if studio.gallery is not None
                        else f"No shipped gallery ({studio.gallery_error or 'not loaded'}); upload your own set.")
                    neigh = gr.Gallery(label="nearest neighbours", columns=4, height="auto", format="png",
                                       elem_id="neighbours", elem_classes="pixel", allow_preview=False)
                    table = gr.Dataframe(headers=["rank", "label", "cosine", "row"], label="scores",
                                         interactive=False)
                    pca = gr.Image(label="PCA map of the embeddings", format="png", interactive=False)
            r_out = [neigh, table, pca, r_info]
            search.click(gpu(studio.retrieve), [query, which, k, user_set], r_out, api_name="retrieve", **model_ev)
            use_gen.click(studio.use_generated, [gen_state, gen_idx], query, api_name="use_generated").success(
                gpu(studio.retrieve), [query, which, k, user_set], r_out, api_name=False, **model_ev)
            embed_btn.click(gpu(studio.embed_set), [files], [user_set, which, set_info], api_name="embed_set",
                            **model_ev)
            dl_btn.click(studio.download_embeddings, [which, user_set], dl, api_name="download_embeddings")

        # ---------------------------------------------------------------- 4. masking ratio
        with gr.Tab("Masking ratio", id="ratio"):
            curve_state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    r_img = gr.Image(type="pil", label="image", sources=["upload", "clipboard"], format="png",
                                     elem_id="ratio-img", height=200, elem_classes="pixel")
                    if examples:
                        gr.Examples(examples, inputs=r_img, label="examples", examples_per_page=12)
                    ratio = gr.Slider(0, 100, value=50, step=5, label="masking ratio (%)", elem_id="ratio")
                    with gr.Row():
                        r_seed = gr.Number(0, precision=0, minimum=0, label="seed")
                        r_steps = gr.Slider(1, LIMITS["steps"], value=8, step=1, label="iterative steps")
                    r_run = gr.Button("Reconstruct", variant="primary", elem_id="ratio-btn")
                    gr.Markdown(RATIO_TEXT)
                with gr.Column(scale=2):
                    with gr.Row():
                        r_masked = out_image("masked input")
                        r_one = out_image("one pass")
                        r_iter = out_image("iterative")
                        r_orig = out_image("input")
                    r_text = gr.Markdown()
                    r_plot = gr.Image(label="accuracy and error vs masking ratio", format="png", interactive=False)
            r_in = [r_img, ratio, r_seed, r_steps, curve_state]
            r_outs = [r_masked, r_one, r_iter, r_orig, r_text, r_plot, curve_state]
            r_run.click(gpu(studio.reconstruct), r_in, r_outs, api_name="reconstruct", **model_ev)
            ratio.release(gpu(studio.reconstruct), r_in, r_outs, api_name=False, **model_ev)
            r_img.change(lambda: None, None, curve_state, api_name=False)

        # ---------------------------------------------------------------- 5. model
        with gr.Tab("Model", id="model"):
            gr.Markdown(studio.model_markdown(), elem_id="model-info")
            info_btn = gr.Button("Show as JSON")
            info_json = gr.JSON(label="model info")
            info_btn.click(studio.model_info, None, info_json, api_name="model_info")

    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kw):
    """Launch with the offline-safe settings (no share link, no SSR, no analytics)."""
    kw.setdefault("max_file_size", "20mb")
    return demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, css=CSS,
                       allowed_paths=[str(ROOT / "assets")], footer_links=["api", "gradio"], **kw)
