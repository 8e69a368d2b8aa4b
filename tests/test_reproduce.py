"""The command that reproduces the embedded default model, run for a few steps (same code path)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mage
from conftest import ROOT

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir()
                                and not os.environ.get("FASHION_MNIST_DIR"),
                                reason="needs the Fashion-MNIST package (apt-get install dataset-fashion-mnist)")


def test_reproduce_script_smoke(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path), "TOK_STEPS": "3", "MAGE_STEPS": "3",
           "LIMIT": "256", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "train_default.sh")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    stats = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())["stats"]
    assert stats["steps"] == 3
    pipe = mage.MAGEPipeline.from_pretrained(tmp_path / "mage" / "model", device="cpu")
    shipped = json.loads((ROOT / "assets" / "default" / "config.json").read_text())["model"]
    assert pipe.config.to_dict() == mage.MAGEConfig.from_dict(shipped).to_dict()  # same architecture as shipped
    assert pipe.meta["training"]["steps"] == 3
    assert pipe.generate(n=1, steps=2, class_label=0).images.shape == (1, 3, 32, 32)
