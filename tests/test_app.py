"""The Gradio app end to end: launched in-process on 127.0.0.1 and driven with gradio_client.

Uses the shipped default model (assets/default) when present, otherwise a randomly initialised model of
the same architecture; the assertions compare the app's outputs with direct library calls, so they hold
for either.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
NONE = "none (unconditional)"
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


# ------------------------------------------------------------------------------------------ fixtures
def make_pipe(tmp: Path):
    """The shipped default model, or a random one of the same architecture saved in our format."""
    from mage import MAGE, VQGAN, MAGEConfig, MAGEPipeline, VQGANConfig, save_native
    if (ROOT / "assets" / "default" / "config.json").is_file():
        return MAGEPipeline.from_pretrained("default", device="cpu")
    from train.data import FASHION_CLASSES
    cfg = MAGEConfig(img_size=32, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                     decoder_num_heads=4, num_classes=10,
                     vqgan=VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32, n_embed=512))
    torch.manual_seed(0)
    d = save_native(tmp / "random_model", MAGE(cfg), VQGAN(cfg.vqgan),
                    meta={"class_names": FASHION_CLASSES, "dataset": "random init (tests)", "license": "MIT"})
    return MAGEPipeline.from_pretrained(str(d), device="cpu")


def make_gallery(pipe, tmp: Path):
    """The shipped gallery when it belongs to the shipped model; else 64 Fashion-MNIST test images."""
    from mage.gallery import DEFAULT_GALLERY_DIR, save_gallery
    if (ROOT / "assets" / "default" / "config.json").is_file() and (DEFAULT_GALLERY_DIR / "gallery.json").is_file():
        return DEFAULT_GALLERY_DIR
    from train.data import FASHION_CLASSES, load_fashion_mnist
    x, y = load_fashion_mnist("test", pipe.config.img_size)
    return save_gallery(tmp / "gallery", x[100:164], y[100:164], FASHION_CLASSES, {"dataset": "test split"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app import Studio, build_demo, launch
    tmp = tmp_path_factory.mktemp("app")
    pipe = make_pipe(tmp)
    studio = Studio(pipe, None, gallery_dir=make_gallery(pipe, tmp))
    demo = build_demo(studio)
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(server, tmp_path):
    from gradio_client import Client
    return Client(server[1], verbose=False, download_files=str(tmp_path), analytics_enabled=False)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fitted(studio, path):
    from mage import image as im
    return im.to_tensor(im.fit_image(Image.open(path), studio.size, "center-crop")[0])


def editor_value(tmp: Path, size: int = 256, box=(0, 0, 128, 256)):
    """An ImageEditor payload: grey background, one layer painted (alpha) over ``box``."""
    from gradio_client import handle_file
    bg = np.full((size, size, 3), 90, np.uint8)
    layer = np.zeros((size, size, 4), np.uint8)
    x0, y0, x1, y1 = box
    layer[y0:y1, x0:x1] = (255, 48, 48, 255)
    Image.fromarray(bg).save(tmp / "bg.png")
    Image.fromarray(layer).save(tmp / "layer.png")
    Image.fromarray(bg).save(tmp / "composite.png")
    return {"background": handle_file(str(tmp / "bg.png")), "layers": [handle_file(str(tmp / "layer.png"))],
            "composite": handle_file(str(tmp / "composite.png"))}


# ------------------------------------------------------------------------------------------- tests
def test_every_endpoint_is_named(server, client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    expected = {"/generate", "/random_seed", "/schedule_plot", "/scrub", "/preview_mask", "/inpaint", "/outpaint",
                "/preview_outpaint", "/retrieve", "/use_generated", "/embed_set", "/download_embeddings",
                "/reconstruct", "/model_info"}
    assert expected <= names


def test_generate_streams_every_step_and_matches_library(server, client):
    from mage import schedule_counts
    from mage import image as im
    studio = server[0]
    job = client.submit(8, "cosine", 4.5, 1.0, 3, 2, NONE, 0.0, api_name="/generate")
    updates = list(job)
    final = job.result()
    assert len(updates) == 8  # one streamed update per decoding step
    counts = schedule_counts(studio.N, 8, "cosine")
    for k, u in enumerate(updates[:-1]):
        assert u[5].startswith(f"step {k + 1}/8 - unknown tokens left: {counts[k]}, {counts[k]}")
    canvas, pred, conf, order, scrub, status, gif, pngs, js_file, record = final
    assert status.endswith("done")
    # the final canvas equals the library's generate() for the same settings, upscaled with nearest
    ref = studio.pipe.generate(2, steps=8, schedule="cosine", choice_temperature=4.5, sampling_temperature=1.0,
                               seed=3)
    f = studio.factor(2)
    ref_u8 = im.to_uint8(ref.images)
    assert np.array_equal(png(canvas), studio.show(ref_u8))
    assert png(canvas).shape == (studio.size * f, 2 * studio.size * f + 4, 3)
    assert np.array_equal(png(pred), png(canvas))  # nothing unknown at the end
    assert png(conf).shape == png(order).shape == png(canvas).shape
    # exports: GIF with one frame per step, native-size PNGs equal to the library's images, JSON record
    assert Image.open(gif).n_frames == 8
    natives = sorted((p for p in pngs if Path(p).name.startswith("image_")), key=lambda p: Path(p).name)
    assert [png(p).shape for p in natives] == [(studio.size, studio.size, 3)] * 2
    assert all(np.array_equal(png(p), ref_u8[i]) for i, p in enumerate(natives))
    assert json.loads(Path(js_file).read_text()) == record
    assert record["num_steps"] == 8 and [s["unknown_left"] for s in record["steps"]] == [[c, c] for c in counts]
    order_arr = np.array(record["commit_order"])
    assert order_arr.min() == 0 and order_arr.max() == 7  # every token fixed exactly once, at some step
    fixed_per_step = [int((order_arr == t).sum()) for t in range(8)]
    assert fixed_per_step == [2 * (a - b) for a, b in zip([studio.N] + counts[:-1], counts)]
    assert np.array_equal(np.array(record["steps"][-1]["tokens"]), ref.tokens.numpy())


def test_same_seed_same_bytes(client):
    args = (6, "linear", 4.5, 1.0, 11, 1, "Trouser", 2.0)
    a = client.predict(*args, api_name="/generate")
    b = client.predict(*args, api_name="/generate")
    c = client.predict(*args[:4], 12, *args[5:], api_name="/generate")
    assert Path(a[0]).read_bytes() == Path(b[0]).read_bytes()
    assert Path(a[6]).read_bytes() == Path(b[6]).read_bytes()  # GIF too
    assert a[9]["steps"][-1]["tokens"] == b[9]["steps"][-1]["tokens"]
    assert c[9]["steps"][-1]["tokens"] != a[9]["steps"][-1]["tokens"]


def test_scrub_and_use_generated_keep_session_state(server, client):
    studio = server[0]
    final = client.predict(5, "cosine", 4.5, 1.0, 0, 3, NONE, 0.0, api_name="/generate")
    c1, p1, h1, status = client.predict(1, api_name="/scrub")
    assert status.startswith("step 1/5")
    assert not np.array_equal(png(c1), png(final[0]))  # step 1 still has unknown (checker) tokens
    c5, *_ = client.predict(5, api_name="/scrub")
    assert np.array_equal(png(c5), png(final[0]))
    img = client.predict(2, api_name="/use_generated")
    native = sorted((p for p in final[7] if Path(p).name.startswith("image_")), key=lambda p: Path(p).name)[1]
    assert np.array_equal(png(img), png(native))


@pytest.mark.parametrize("args, message", [  # Gradio's component checks, then the handler's own
    ((65, "cosine", 4.5, 1.0, 0, 1, NONE, 0.0), "65 is greater than maximum value 64"),
    ((8, "cosine", 4.5, 1.0, 0, 17, NONE, 0.0), "17 is greater than maximum value 16"),
    ((8, "zigzag", 4.5, 1.0, 0, 1, NONE, 0.0), "zigzag is not in the list of choices"),
    ((8, "cosine", 4.5, 0.0, 0, 1, NONE, 0.0), "0.0 is less than minimum value 0.1"),
    ((8, "cosine", 4.5, 1.0, 0, 1, "Unicorn", 0.0), "Unicorn is not in the list of choices"),
    ((8, "cosine", 4.5, 1.0, 2**31, 1, NONE, 0.0), "seed must be between 0 and 2147483647"),
])
def test_generate_rejects_bad_input_with_a_message(client, args, message):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=message) as e:
        client.predict(*args, api_name="/generate")
    assert "Traceback" not in str(e.value)


def test_schedule_plot_and_seed(client):
    square = png(client.predict(12, "square", api_name="/schedule_plot"))
    cosine = png(client.predict(12, "cosine", api_name="/schedule_plot"))
    assert square.shape == cosine.shape and square.shape[0] > 200 and not np.array_equal(square, cosine)
    seeds = {client.predict(api_name="/random_seed") for _ in range(3)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)


def test_inpaint_composites_and_matches_library(server, client, tmp_path):
    from gradio_client import handle_file
    from mage import image as im
    studio = server[0]
    src = EXAMPLES[0]
    ed = editor_value(tmp_path)  # left half painted
    mask_img, info = client.predict(handle_file(str(src)), ed, "center-crop", 0.5, api_name="/preview_mask")
    half = studio.N // 2
    assert info.startswith(f"{half} of {studio.N} tokens")
    out = client.predict(handle_file(str(src)), ed, "center-crop", 0.5, 0, 6, 5, 4.5, 1.0, NONE, 0.0,
                         api_name="/inpaint")
    preview, canvas, pred, result, status = out
    assert "done" in status and "already" in status
    x = fitted(studio, src)
    mask = torch.zeros(studio.size, studio.size)
    mask[:, : studio.size // 2] = 1
    ref = studio.pipe.inpaint(x, mask, threshold=0.5, feather=0, steps=6, seed=5)
    assert np.array_equal(png(result), studio.show(ref.images))
    right = np.s_[:, png(result).shape[1] // 2:]
    assert np.array_equal(png(result)[right], studio.show(x)[right])  # untouched outside the mask
    assert np.array_equal(png(preview), png(mask_img))
    # nothing painted -> a clear error, not a stack trace
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="Paint over the part"):
        client.predict(handle_file(str(src)), editor_value(tmp_path, box=(0, 0, 0, 0)), "center-crop", 0.5, 0, 6,
                       5, 4.5, 1.0, NONE, 0.0, api_name="/inpaint")


def test_inpaint_streams_steps(client, tmp_path):
    from gradio_client import handle_file
    job = client.submit(handle_file(str(EXAMPLES[1])), editor_value(tmp_path), "pad", 0.25, 1, 5, 0, 4.5, 1.0,
                        NONE, 0.0, api_name="/inpaint")
    statuses = [u[4] for u in job]
    assert len(statuses) == 5 and statuses[0].split(". ")[-1].startswith("step 1/5")


def test_outpaint_matches_library(server, client, tmp_path):
    from gradio_client import handle_file
    studio = server[0]
    # a non-square image of another size: centre-cropped and resized, as the message says
    big = Image.open(EXAMPLES[2]).convert("RGB").resize((90, 60))
    big.save(tmp_path / "wide.png")
    prev, info = client.predict(handle_file(str(tmp_path / "wide.png")), "center-crop", 1, 2, 0, 1,
                                api_name="/preview_outpaint")
    assert "center-cropped 90x60" in info and "new tokens" in info
    out = client.predict(handle_file(str(tmp_path / "wide.png")), "center-crop", 1, 2, 0, 1, 4, 7, 4.5, 1.0,
                         NONE, 0.0, api_name="/outpaint")
    x = studio.fit(Image.open(tmp_path / "wide.png"), "center-crop")[0]
    ref = studio.pipe.outpaint(x, 1, 2, 0, 1, steps=4, seed=7)
    assert np.array_equal(png(out[3]), studio.show(ref.images))
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="no room"):
        client.predict(handle_file(str(tmp_path / "wide.png")), "center-crop", 4, 4, 0, 0, 4, 7, 4.5, 1.0,
                       NONE, 0.0, api_name="/outpaint")


def test_retrieval_finds_the_query_itself(server, client, tmp_path):
    from gradio_client import handle_file
    studio = server[0]
    g = studio.gallery
    i = 5
    Image.fromarray(g.images[i]).save(tmp_path / "q.png")
    items, table, plot, info = client.predict(handle_file(str(tmp_path / "q.png")), "shipped gallery", 6,
                                              api_name="/retrieve")
    rows = table["data"]
    assert len(items) == len(rows) == 6
    assert rows[0][3] == i and rows[0][2] > 0.999  # the image itself, cosine 1
    scores = [r[2] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert [r[1] for r in rows] == [g.label_name(r[3]) for r in rows]
    assert png(plot).shape[0] > 200


def test_own_image_set_embed_search_download(server, client, tmp_path):
    from gradio_client import handle_file
    studio = server[0]
    (tmp_path / "notes.png").write_text("not an image")
    files = [handle_file(str(p)) for p in EXAMPLES[:4]] + [handle_file(str(tmp_path / "notes.png"))]
    which, info = client.predict(files, api_name="/embed_set")
    assert which == "my images" and info.startswith("Embedded 4 images")
    items, table, _, _ = client.predict(handle_file(str(EXAMPLES[2])), "my images", 3, api_name="/retrieve")
    assert table["data"][0][1] == EXAMPLES[2].stem and table["data"][0][2] > 0.999
    npy, meta = client.predict("my images", api_name="/download_embeddings")
    emb = np.load(npy)
    ref = studio.pipe.embed(torch.cat([fitted(studio, p) for p in EXAMPLES[:4]])).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)
    assert json.loads(Path(meta).read_text())["labels"] == [p.stem for p in EXAMPLES[:4]]
    npy2, _ = client.predict("shipped gallery", api_name="/download_embeddings")
    assert np.load(npy2).shape == tuple(studio.gallery.embeddings.shape)


def test_masking_ratio_tab(server, client):
    from gradio_client import handle_file
    studio = server[0]
    src = EXAMPLES[3]
    masked, one, it, orig, text, plot, = client.predict(handle_file(str(src)), 50, 1, 4, api_name="/reconstruct")
    assert f"Masked {studio.N // 2} of {studio.N} tokens" in text
    x = fitted(studio, src)
    ref_one = studio.pipe.reconstruct(x, 0.5, seed=1, iterative=False)
    ref_it = studio.pipe.reconstruct(x, 0.5, seed=1, iterative=True, steps=4)
    assert np.array_equal(png(one), studio.show(ref_one.images))
    assert np.array_equal(png(it), studio.show(ref_it.images))
    assert np.array_equal(png(orig), studio.show(x))
    assert png(plot).shape[0] > 200
    # ratio 0: nothing masked, the masked input is the input itself
    masked0, *_ = client.predict(handle_file(str(src)), 0, 1, 4, api_name="/reconstruct")
    assert np.array_equal(png(masked0), studio.show(x))


def test_model_info(server, client):
    studio = server[0]
    info = client.predict(api_name="/model_info")
    assert info["info"]["MAGE parameters"] == studio.pipe.model.num_params()
    assert info["meta"]["class_names"] == studio.pipe.class_names
    assert info["limits"]["steps"] == 64


# ------------------------------------------------------------------------- loading and command line
def test_failed_model_falls_back_to_default_with_message(server, monkeypatch, tmp_path):
    import mage.pipeline
    from app import Studio, load_pipeline
    studio = server[0]
    d = studio.pipe.save_pretrained(tmp_path / "as_default")
    monkeypatch.setattr(mage.pipeline, "DEFAULT_MODEL_DIR", Path(d))
    pipe, msg = load_pipeline(str(tmp_path / "missing.pth"), device="cpu")
    assert "Could not load the model" in msg and "missing.pth" in msg and "embedded default" in msg
    assert pipe.model.num_params() == studio.pipe.model.num_params()
    assert msg in Studio(pipe, msg, load_gallery=False).model_markdown()
    monkeypatch.setattr(mage.pipeline, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(RuntimeError, match="embedded default model could not be loaded"):
        load_pipeline("default", device="cpu")


def test_command_line_and_environment(monkeypatch):
    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    monkeypatch.setenv("MAGE_MODEL", "owner/repo")
    monkeypatch.setenv("MAGE_DEVICE", "cpu")
    args = main.parse_args([])
    assert (args.model, args.device, args.port, args.host) == ("owner/repo", "cpu", 7860, "127.0.0.1")
    args = main.parse_args(["--model", "runs/x", "--vqgan", "vq.ckpt", "--port", "9000"])
    assert (args.model, args.vqgan, args.port) == ("runs/x", "vq.ckpt", 9000)
    from app.loading import is_local, pick_device
    assert is_local("default") and not is_local("owner/repo")
    assert pick_device("cpu") == ("cpu", None)
    if not torch.cuda.is_available():
        dev, note = pick_device("cuda")
        assert dev == "cpu" and "not available" in note



# ------------------------------------------------------------------------------------ mage.viz
def test_viz_helpers():
    from mage import viz
    a = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    up = viz.upscale(a, 3)
    assert up.shape == (2, 12, 12, 3) and (up[:, ::3, ::3] == a).all() and (up[:, 2::3, 2::3] == a).all()
    assert viz.tile(a, pad=1).shape == (4, 9, 3) and viz.tile(a[:1]).shape == (4, 4, 3)
    v = viz.confidence_values(torch.tensor([1.0, 1 / 512, 1 / 512 ** 0.5, 1e-9]), 512)
    assert torch.allclose(v, torch.tensor([1.0, 0.0, 0.5, 0.0]), atol=1e-6)
    # marking: only the masked token (top-left of a 2x2 grid of 4x4 patches) changes colour
    img = torch.full((1, 3, 8, 8), 0.5)
    marked = viz.mark_tokens(img, torch.tensor([[True, False, False, False]]), 2, 4, lines=False)
    assert (marked[0, :4, :4] != 127).any() and (marked[0, 4:, :] == 127).all() and (marked[0, :, 4:] == 127).all()
    order = torch.tensor([[0, 1, -1, 3]])
    o = viz.order_image(order, 4, 2, cell=16)
    assert o.shape == (1, 32, 32, 3) and (o[0, 16:, :16] == 220).all()  # the given token is light grey


def test_commit_order_and_record_from_a_real_decode(server):
    from mage import viz
    studio = server[0]
    x = fitted(studio, EXAMPLES[0])
    mask = torch.zeros(studio.size, studio.size)
    mask[: studio.size // 2] = 1  # top half regenerated
    _, tokens, tok = studio.pipe.prepare_inpaint(x, mask)
    steps = list(studio.pipe.decode_steps(tokens, tok, steps=5, seed=0))
    order = viz.commit_order(steps)
    assert ((order >= 0) == tok).all() and order.max() == 4  # given tokens -1, the rest fixed in 5 steps
    rec = viz.steps_record(steps, studio.pipe.config.mask_token_id)
    assert rec["commit_order"] == order.tolist()
    assert sum(len(s["committed"][0]) for s in rec["steps"]) == int(tok.sum())
    assert (np.array(rec["steps"][0]["tokens"][0])[~tok[0].numpy()] == tokens[0][~tok[0]].numpy()).all()
