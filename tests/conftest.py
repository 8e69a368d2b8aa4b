import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
COMPAT = Path(os.environ.get("MAGE_COMPAT_DIR", ROOT.parent / "shared" / "compat"))
if not COMPAT.is_dir():  # CI keeps a copy of the compat data inside the repository
    COMPAT = ROOT / "tests" / "data" / "compat"


FASHION_MNIST = (Path("/usr/share/datasets/fashion-mnist").is_dir() or bool(os.environ.get("FASHION_MNIST_DIR")))
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST, reason="needs the Fashion-MNIST package "
                                         "(apt-get install dataset-fashion-mnist)")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_module(mod, *args, torchrun=None, timeout=300):
    """``python -m mod args`` (or under ``torchrun --nproc_per_node=torchrun``) from the repository root;
    fails the test with the tail of its output when it exits non-zero."""
    cmd = [sys.executable, "-m", mod, *map(str, args)]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", mod, *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def load_vec(name):
    return torch.load(COMPAT / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def compat_dir():
    return COMPAT


@pytest.fixture(scope="session")
def tiny():
    """The official tiny checkpoint loaded into our classes: (MAGE, VQGAN)."""
    import mage
    return mage.load_official(COMPAT / "tiny_mage_checkpoint.pth")


@pytest.fixture(scope="session")
def tiny_pipe(tiny):
    import mage
    return mage.MAGEPipeline(*tiny, meta={"source": "compat tiny"}, device="cpu")
