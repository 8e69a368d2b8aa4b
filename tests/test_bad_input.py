"""Bad input gets a clear error of our own type (CheckpointError / ValueError) that says what is wrong,
never an IndexError/KeyError/RuntimeError from deep inside; malicious pickles are never executed."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import mage
from mage import CheckpointError, MAGEPipeline
from mage.checkpoint import read_state_dict
from conftest import COMPAT
from test_engine import small_pipe

TINY = COMPAT / "tiny_mage_checkpoint.pth"


@pytest.fixture(scope="module")
def sd():
    return torch.load(TINY, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def pipe():
    return small_pipe()


@pytest.fixture()
def native_dir(tmp_path, pipe):
    """A copy of the small model in our directory format, to damage."""
    return mage.save_native(tmp_path / "model", pipe.model, pipe.vqgan, meta={"class_names": pipe.class_names})


def raises(exc, match):
    """pytest.raises that also insists on the exact class (CheckpointError is a ValueError)."""
    class Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc, match=match)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            if out:
                assert self.info.type is exc, f"expected {exc.__name__}, got {self.info.type.__name__}"
            return out
    return Ctx()


# ------------------------------------------------------------------------------------ checkpoints
def test_missing_key_is_named(sd):
    bad = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.weight"}
    with raises(CheckpointError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.weight"):
        mage.load_official({"model": bad})


def test_unexpected_key_is_named(sd):
    bad = {**sd, "blocks.0.attn.gate": torch.zeros(3)}
    with raises(CheckpointError, match=r"unexpected keys \(1\): blocks\.0\.attn\.gate"):
        mage.load_official({"model": bad})


def test_misshaped_key_is_named(sd):
    bad = {**sd, "decoder_norm.weight": torch.ones(7)}
    with raises(CheckpointError, match=r"decoder_norm\.weight: checkpoint \(7,\) vs model \(32,\)"):
        mage.load_official({"model": bad})


def test_bad_vqgan_key_is_named(sd):
    bad = {k: v for k, v in sd.items() if k != "vqgan.decoder.conv_out.bias"}
    with raises(CheckpointError, match=r"does not match the VQGAN:\n  missing keys \(1\): decoder\.conv_out\.bias"):
        mage.load_official({"model": bad})


def test_non_finite_weights(sd):
    w = sd["blocks.0.norm1.weight"].clone()
    w[3] = float("nan")
    with raises(CheckpointError, match=r"non-finite values in: blocks\.0\.norm1\.weight"):
        mage.load_official({"model": {**sd, "blocks.0.norm1.weight": w}})
    b = sd["vqgan.quantize.embedding.weight"].clone()
    b[0, 0] = float("inf")
    with raises(CheckpointError, match=r"VQGAN has non-finite values in: quantize\.embedding\.weight"):
        mage.load_official({"model": {**sd, "vqgan.quantize.embedding.weight": b}})


def test_non_tensor_entry(sd):
    with raises(CheckpointError, match=r"non-tensor entries: norm\.bias \(str\)"):
        mage.load_official({"model": {**sd, "norm.bias": "zeros"}})


def test_checkpoint_without_tokenizer(sd):
    with raises(CheckpointError, match="no VQGAN weights"):
        mage.load_official({"model": {k: v for k, v in sd.items() if not k.startswith("vqgan.")}})


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_truncated_pth(tmp_path, cut):
    data = TINY.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:n])
    with raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        mage.load_official(path)
    with raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        MAGEPipeline.from_pretrained(str(path))


def test_garbage_and_wrong_container(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"hello world, not a checkpoint" * 10)
    with raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with raises(CheckpointError, match="holds a list, expected a dict of tensors"):
        mage.load_official(tmp_path / "list.pth")
    with raises(CheckpointError, match="checkpoint not found"):
        mage.load_official(tmp_path / "nope.pth")


def test_truncated_safetensors_in_model_dir(native_dir):
    w = native_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with raises(CheckpointError, match="is not a valid safetensors file"):
        MAGEPipeline.from_pretrained(str(native_dir))


def test_model_dir_with_wrong_or_broken_config(native_dir):
    cfg_path = native_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["embed_dim"] = 64  # weights no longer fit
    cfg_path.write_text(json.dumps(cfg))
    with raises(CheckpointError, match=r"shape mismatches .*token_emb\.word_embeddings\.weight"):
        mage.load_native(native_dir)
    cfg["model"]["embed_dim"], cfg["model"]["patch_mode"] = 128, "x"
    cfg_path.write_text(json.dumps(cfg))
    with raises(CheckpointError, match=r"invalid model configuration: unknown MAGEConfig fields: \['patch_mode'\]"):
        mage.load_native(native_dir)
    cfg_path.write_text("{not json")
    with raises(CheckpointError, match="config.json is not valid JSON"):
        mage.load_native(native_dir)
    (native_dir / "config.json").unlink()
    with raises(CheckpointError, match="not a MAGE Studio model directory"):
        MAGEPipeline.from_pretrained(str(native_dir))


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {"blocks.0.norm1.weight": torch.ones(2), "x": Exploit(marker)}}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    for load in (read_state_dict, mage.load_official, mage.load_vqgan, MAGEPipeline.from_pretrained):
        with raises(CheckpointError, match="refusing to load .*could run arbitrary code"):
            load(str(path) if load is MAGEPipeline.from_pretrained else path)
        assert not marker.exists(), f"{load.__name__} executed the payload"
    # the payload is live: a plain unpickler would have run it (shows the test can fail)
    if how == "pickle.dump":
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_unknown_preset(tmp_path):
    shutil.copy(TINY, tmp_path / "m.pth")
    with raises(CheckpointError, match=r"unknown preset 'vit_huge'; choose one of \['tiny_compat', 'vit_base', 'vit_large'\]"):
        mage.load_official(tmp_path / "m.pth", config="vit_huge")
    with raises(CheckpointError, match="unknown preset"):
        MAGEPipeline.from_pretrained(str(tmp_path / "m.pth"), config="vit_huge")


def test_unknown_dtype():
    with raises(ValueError, match="unknown dtype 'float8'"):
        MAGEPipeline.from_pretrained(str(TINY), dtype="float8")


# ------------------------------------------------------------------------------------ images, masks
@pytest.mark.parametrize("image,match", [
    (np.zeros((32, 32, 5), np.uint8), r"image array of shape \(32, 32, 5\)"),
    (np.zeros((1, 1, 3, 32, 32), np.float32), "image must be HxW, HxWxC or BxCxHxW"),
    (torch.zeros(1, 2, 32, 32), "image must have 3 channels, got 2"),
    (np.full((32, 32, 3), 1.5, np.float32), r"float images must be in \[0,1\]; got values in \[1.500, 1.500\]"),
    (np.full((32, 32, 3), -0.5, np.float32), r"float images must be in \[0,1\]"),
    (np.full((32, 32, 3), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((32, 32, 3), np.int32), "unsupported image dtype int32"),
    (np.zeros((32, 32, 3), bool), "unsupported image dtype bool"),
    ([[0, 1], [1, 0]], "unsupported image type list"),
    (np.zeros((16, 16, 3), np.uint8), r"images must be 32x32 for this model, got \(16, 16\)"),
])
def test_bad_images(pipe, image, match):
    with raises(ValueError, match=match):
        pipe.encode(image)
    hw = (16, 16) if getattr(image, "shape", None) == (16, 16, 3) else (32, 32)
    with raises(ValueError, match=match):
        pipe.inpaint(image, np.ones(hw), steps=1)


@pytest.mark.parametrize("mask,match", [
    (np.ones((16, 16)), r"mask \(16, 16\) does not match the image \(32, 32\)"),
    (np.ones((32, 24)), r"mask \(32, 24\) does not match the image \(32, 32\)"),
    (np.ones((2, 32, 32)), "got 2 masks for 1 images"),
    (np.ones((1, 1, 32, 32)), r"mask must be \[H,W\] or \[B,H,W\]"),
    (np.full((32, 32), np.nan), "mask values must be finite and >= 0"),
    (-np.ones((32, 32)), "mask values must be finite and >= 0"),
])
def test_bad_masks(pipe, mask, match):
    img = np.zeros((32, 32, 3), np.uint8)
    with raises(ValueError, match=match):
        pipe.inpaint(img, mask, steps=1)


def test_bad_mask_threshold(pipe):
    with raises(ValueError, match=r"mask threshold must be in \[0, 1\], got 2"):
        pipe.inpaint(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32)), threshold=2, steps=1)


# ------------------------------------------------------------------------------------ decoding options
def test_unknown_schedule(pipe):
    with raises(ValueError, match=r"unknown schedule 'cubic'; choose one of \['cosine', 'linear', 'sqrt', 'square'\]"):
        pipe.generate(1, steps=2, schedule="cubic")
    with raises(ValueError, match="unknown schedule"):
        mage.MaskGITSampler(4, "cubic")


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(pipe, steps):
    with raises(ValueError, match="steps must be >= 1"):
        pipe.generate(1, steps=steps)
    with raises(ValueError, match="steps must be >= 1"):
        pipe.inpaint(np.zeros((32, 32, 3), np.uint8), np.ones((32, 32)), steps=steps)


def test_bad_temperatures_and_counts(pipe):
    with raises(ValueError, match="sampling_temperature must be > 0"):
        pipe.generate(1, steps=1, sampling_temperature=0)
    with raises(ValueError, match="choice_temperature must be >= 0"):
        pipe.generate(1, steps=1, choice_temperature=-1)
    with raises(ValueError, match="n must be >= 1"):
        pipe.generate(0)
    with raises(ValueError, match=r"masking ratio must be in \[0, 1\]"):
        pipe.reconstruct(np.zeros((32, 32, 3), np.uint8), 1.5)
    with raises(ValueError, match="leave no room on a 8x8 token grid"):
        pipe.outpaint(np.zeros((32, 32, 3), np.uint8), left=4, right=4, steps=1)


@pytest.mark.parametrize("label,match", [
    (10, "class 10 out of range: this model has 10 classes"),
    (-1, "class -1 out of range"),
    ("Cat", r"unknown class 'Cat'; this model knows \['T-shirt/top'"),
    (2.5, "class labels must be integers or class names, got 2.5"),
    ([1, 2, 3], "got 3 class labels for 2 images"),
])
def test_bad_class_label(pipe, label, match):
    with raises(ValueError, match=match):
        pipe.generate(2, steps=1, class_label=label)


def test_class_label_on_unconditional_model(tiny_pipe):
    with raises(ValueError, match="this model is not class-conditional"):
        tiny_pipe.generate(1, steps=1, class_label=0)
