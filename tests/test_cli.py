"""`mage-studio` / `python -m mage`: every command on a small model, in-process (plus one real subprocess)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mage
from mage.cli import main
from mage.image import fit_image, to_tensor
from conftest import COMPAT, ROOT
from test_hub import make_small_model

ARGS = ["--threads", "1", "-q"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_small_model(tmp_path_factory.mktemp("cli_model")))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return mage.MAGEPipeline.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 4 readable images (one nested, sizes not the model's) and one broken file."""
    d = tmp_path_factory.mktemp("imgs")
    (d / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i, path in enumerate(["a.png", "b.jpg", "c.png", "sub/d.png"]):
        arr = np.zeros((40, 48, 3), np.uint8)
        arr[:, :] = rng.integers(0, 255, 3)  # a flat colour ...
        arr[5 + 5 * i: 25, 8: 30 + 3 * i] = rng.integers(0, 255, 3)  # ... with a rectangle
        Image.fromarray(arr).save(d / path)
    (d / "broken.png").write_text("not an image")
    return d


def run(capsys, *argv):
    code = main([*ARGS, *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("generate", "inpaint", "reconstruct", "embed", "search", "convert", "info"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--schedule {cosine,linear,square,sqrt}" in out and "--guidance" in out and "--gif" in out


def test_generate(model_dir, pipe, tmp_path, capsys):
    out = tmp_path / "gen"
    code, stdout, _ = run(capsys, "generate", "-n", 3, "--batch-size", 2, "--steps", 4, "--seed", 5, "--class", 1,
                          "--guidance", 1.0, "--schedule", "linear", "--gif", "--json", "--out", out,
                          "--model", model_dir)  # model option after the command
    assert code == 0 and "wrote 3 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.gif", "sample_000.png", "sample_001.gif",
                                                     "sample_001.png", "sample_002.gif", "sample_002.png",
                                                     "steps.json"]
    S = pipe.config.img_size
    assert Image.open(out / "sample_002.png").size == (S, S)
    gif = Image.open(out / "sample_000.gif")
    assert gif.n_frames == 4  # the canvas after each step (the last one is the result)
    rec = json.loads((out / "steps.json").read_text())
    N = pipe.config.num_tokens
    assert [s["step"] for s in rec["steps"]] == [0, 1, 2, 3]
    assert [s["unknown"] for s in rec["steps"]] == [[c] * 3 for c in mage.schedule_counts(N, 4, "linear")]
    assert sum(sum(s["committed"]) for s in rec["steps"]) == 3 * N
    # same seed, same settings -> the same tokens through the library (batch 0 uses the seed itself)
    ref = pipe.generate(2, steps=4, seed=5, class_label=1, guidance_scale=1.0, schedule="linear").tokens
    assert torch.equal(torch.tensor(rec["final_tokens"][:2]), ref)
    assert np.array_equal(np.asarray(Image.open(out / "sample_000.png")), mage.image.to_uint8(pipe.decode(ref))[0])


def test_inpaint(model_dir, pipe, images, tmp_path, capsys):
    S, p = pipe.config.img_size, pipe.config.patch_size
    mask = np.zeros((40, 48), np.uint8)
    mask[8:30, 12:34] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "inp"
    code, stdout, _ = run(capsys, "--model", model_dir, "inpaint", images / "a.png", tmp_path / "mask.png",
                          "--steps", 3, "--feather", 0, "--out", out, "--json")
    assert code == 0
    assert {f.name for f in out.iterdir()} == {"input.png", "inpainted.png", "inpainted_raw.png", "token_mask.png",
                                               "steps.json"}
    tok = np.asarray(Image.open(out / "token_mask.png"))[..., 0] > 0
    n_tok = int(stdout.split("regenerated ")[1].split(" ")[0])
    assert 0 < n_tok < pipe.config.num_tokens and tok.sum() == n_tok * p * p
    inp, res = np.asarray(Image.open(out / "input.png")), np.asarray(Image.open(out / "inpainted.png"))
    raw = np.asarray(Image.open(out / "inpainted_raw.png"))
    assert np.array_equal(inp[~tok], res[~tok]) and np.array_equal(raw[tok], res[tok])
    fitted = np.asarray(fit_image(Image.open(images / "a.png"), S, "center-crop")[0])
    assert np.array_equal(inp, fitted)


def test_reconstruct(model_dir, pipe, images, tmp_path, capsys):
    out = tmp_path / "rec"
    code, stdout, _ = run(capsys, "--model", model_dir, "reconstruct", images / "b.jpg", "--ratio", 0.5,
                          "--steps", 3, "--out", out)
    assert code == 0 and "onepass" in stdout and "iterative" in stdout
    assert {f.name for f in out.iterdir()} == {"input.png", "tokenizer.png", "masked.png", "onepass.png",
                                               "iterative.png", "metrics.json"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["masked_tokens"] == round(0.5 * pipe.config.num_tokens)
    img = fit_image(Image.open(images / "b.jpg"), pipe.config.img_size)[0]
    ref = pipe.reconstruct(img, 0.5, seed=0, iterative=False)
    assert m["onepass"]["token_accuracy"] == pytest.approx(ref.extra["token_accuracy"][0])
    assert np.array_equal(np.asarray(Image.open(out / "onepass.png")), mage.image.to_uint8(ref.images)[0])


def test_embed_and_search(model_dir, pipe, images, tmp_path, capsys):
    code, stdout, err = main([*ARGS[:2], "--model", model_dir, "embed", str(images), "--out",
                              str(tmp_path / "idx" / "emb"), "--batch-size", "3"]), *capsys.readouterr()
    assert code == 0 and "(1 skipped)" in stdout and "broken.png" in err
    emb = np.load(tmp_path / "idx" / "emb.npy")
    names = (tmp_path / "idx" / "emb.txt").read_text().split()
    index = json.loads((tmp_path / "idx" / "emb.json").read_text())
    assert names == index["files"] == ["a.png", "b.jpg", "c.png", "sub/d.png"]
    assert emb.shape == (4, pipe.config.embed_dim) and emb.dtype == np.float32
    ref = pipe.embed(to_tensor(fit_image(Image.open(images / "sub" / "d.png"), pipe.config.img_size)[0]))
    np.testing.assert_allclose(emb[3], ref[0].numpy(), atol=1e-5)

    code, stdout, _ = run(capsys, "--model", model_dir, "search", images / "c.png", "--index", tmp_path / "idx" / "emb",
                          "-k", 2)
    assert code == 0
    rows = [line.split() for line in stdout.strip().splitlines()[1:]]
    assert len(rows) == 2 and rows[0][2] == "c.png" and float(rows[0][1]) == pytest.approx(1.0, abs=1e-4)
    e = torch.from_numpy(emb)
    cos = torch.nn.functional.cosine_similarity(e[2:3], e).numpy()
    second = int(np.argsort(-cos)[1])
    assert rows[1][2] == names[second] and float(rows[1][1]) == pytest.approx(cos[second], abs=1e-4)


def test_convert_and_info(tmp_path, capsys):
    out = tmp_path / "tiny"
    code, stdout, _ = run(capsys, "convert", COMPAT / "tiny_mage_checkpoint.pth", "--out", out, "--dtype", "bfloat16",
                          "--dataset", "synthetic", "--license", "MIT")
    assert code == 0 and "check: max |logit diff| vs source" in stdout
    assert {f.name for f in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert "bfloat16" in (out / "README.md").read_text() and "synthetic" in (out / "README.md").read_text()
    code, stdout, _ = run(capsys, "--model", out, "info", "--json")
    assert code == 0
    info = json.loads(stdout)
    model, vq, _ = mage.load_native(out)
    assert info["info"]["MAGE parameters"] == model.num_params()
    assert info["config"] == model.config.to_dict() and info["meta"]["dataset"] == "synthetic"
    code, stdout, _ = run(capsys, "--model", out, "info")
    assert code == 0 and "token grid  16x16" in stdout


@pytest.mark.parametrize("argv,message", [
    (["inpaint", "{img}", "{img2}"], "does not match the image"),
    (["generate", "--class", "Shoe"], "unknown class 'Shoe'"),
    (["generate", "--guidance", "2"], "--guidance needs --class"),
    (["embed", "{nowhere}"], "not a folder"),
    (["search", "{img}", "--index", "{nowhere}"], "run `mage-studio embed"),
    (["convert", "{img}", "--out", "{nowhere}"], "checkpoint"),
])
def test_bad_input_gives_one_line_and_exit_2(argv, message, model_dir, images, tmp_path, capsys):
    Image.new("RGB", (10, 10)).save(tmp_path / "small.png")
    fill = {"img": images / "a.png", "img2": tmp_path / "small.png", "nowhere": tmp_path / "nowhere"}
    code, stdout, err = run(capsys, "--model", model_dir, *[a.format(**fill) for a in argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_subprocess_python_m_mage(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "mage", "--model", "nobody/nothing", "info"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("mage-studio info: error: model 'nobody/nothing' is not in the local Hugging Face "
                                f"cache ({tmp_path / 'hf' / 'hub'}) and downloads are disabled (HF_HUB_OFFLINE=1)")
