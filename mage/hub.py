"""MAGE Studio models on the Hugging Face Hub: download, upload and the model card.

A model is a directory (or Hub repo) with ``config.json`` + ``model.safetensors`` (see
:func:`mage.checkpoint.save_native`) and a ``README.md`` model card written by :func:`write_model_card`.

    from mage import MAGEPipeline
    pipe = MAGEPipeline.from_pretrained("owner/mage-fashion")     # cached under $HF_HOME/hub
    pipe.push_to_hub("me/my-mage", variant="bf16")               # half the download size

Downloads go through ``huggingface_hub`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
tokens); nothing here talks HTTP itself. Every failure becomes a :class:`CheckpointError` with one
clear sentence.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .checkpoint import CheckpointError, FORMAT_NAME
from .config import MAGEConfig

REQUIRED_FILES = ("config.json", "model.safetensors")
OPTIONAL_FILES = ("README.md",)
VARIANTS = {"fp32": None, "float32": None, "fp16": "float16", "float16": "float16",
            "bf16": "bfloat16", "bfloat16": "bfloat16"}
_LICENSES = {"mit": "mit", "apache-2.0": "apache-2.0", "apache 2.0": "apache-2.0", "cc-by-4.0": "cc-by-4.0",
             "cc-by-nc-4.0": "cc-by-nc-4.0", "bsd-3-clause": "bsd-3-clause"}


# ------------------------------------------------------------------------------------- environment
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set *now* (huggingface_hub reads it once at import time)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def cache_dir() -> str | None:
    """The Hub cache folder from the current environment (``HF_HUB_CACHE``, else ``HF_HOME``/hub);
    None = huggingface_hub's own default. Read at call time so a changed environment is honoured."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _where() -> str:
    if cache_dir():
        return cache_dir()
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


# ---------------------------------------------------------------------------------------- download
def download_model(repo_id: str, revision: str | None = None, local_files_only: bool | None = None) -> str:
    """Fetch (or find in the cache) a MAGE Studio model repo and return the local snapshot directory.

    ``local_files_only=None`` means "offline if ``HF_HUB_OFFLINE`` is set". Only ``config.json``,
    ``model.safetensors`` and ``README.md`` are downloaded.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    offline = is_offline() if local_files_only is None else bool(local_files_only)
    at = repo_id + (f"@{revision}" if revision else "")
    why_offline = "HF_HUB_OFFLINE=1" if local_files_only is None else "local_files_only=True"
    not_cached = f"model {at!r} is not in the local Hugging Face cache ({_where()})"
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir(), local_files_only=offline,
                                 allow_patterns=list(REQUIRED_FILES + OPTIONAL_FILES))
    except HFValidationError as e:
        raise CheckpointError(f"{repo_id!r} is neither an existing local path nor a valid Hugging Face repo id "
                              f"('owner/name'): {str(e).splitlines()[0]}") from None
    except GatedRepoError:
        raise CheckpointError(f"the Hub repo {repo_id!r} is gated: accept its conditions on the Hub and log in "
                              "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id!r} is neither a local path nor a Hub repo (or the repo is private and no "
                              "valid token was given: log in with `hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointError(f"{not_cached} and downloads are disabled ({why_offline})") from None
        raise CheckpointError(f"{not_cached} and the Hub could not be reached (check the network)") from None
    except (HfHubHTTPError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"could not download {at!r} from the Hub: {msg}") from None
    missing = [f for f in REQUIRED_FILES if not (Path(path) / f).is_file()]
    if missing and offline:
        raise CheckpointError(f"{not_cached} and downloads are disabled ({why_offline}): "
                              f"the cached snapshot lacks {', '.join(missing)}")
    if missing:
        raise CheckpointError(f"the Hub repo {at!r} is not a MAGE Studio model: it has no {' / '.join(missing)} "
                              "(official .pth files can be converted with `mage-studio convert`)")
    return path


# ------------------------------------------------------------------------------------- model card
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _table(rows: dict) -> list[str]:
    return ["| | |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]


def model_card(meta: dict, config: MAGEConfig, weights_dtype: str = "float32", repo_id: str | None = None) -> str:
    """The README.md text of a model: YAML header for the Hub, then what the model is, what it was trained
    on and how, its licence, metrics when known, and how to load it. Everything comes from ``meta``."""
    meta = dict(meta or {})
    lic = str(meta.get("license", "unknown"))
    hub_lic = _LICENSES.get(lic.strip().lower(), "other")
    c = config
    kind = (f"class-conditional ({c.num_classes} classes)" if c.num_classes else "unconditional")
    tags = ["mage", "masked-generative-encoder", "masked-image-modeling", "vqgan", "image-generation",
            "mage-studio"]
    head = ["---", f"license: {hub_lic}"]
    if hub_lic == "other":
        head.append(f"license_name: {json.dumps(lic)}")
    head += ["library_name: mage-studio", "tags:"] + [f"- {t}" for t in tags]
    if c.num_classes == 0:
        head.append("pipeline_tag: unconditional-image-generation")
    if meta.get("hf_dataset"):
        head += ["datasets:", f"- {meta['hf_dataset']}"]
    head.append("---")

    name = meta.get("name") or (repo_id or "MAGE model")
    load = repo_id or "path/to/this/folder"
    article = "An" if kind.startswith("u") else "A"
    body = [f"# {name}", "",
            meta.get("description") or
            (f"{article} {kind} MAGE model (MAsked Generative Encoder, Li et al., CVPR 2023): a ViT trained by masked "
             f"token modelling over VQGAN tokens. It generates {c.img_size}x{c.img_size} images by iterative "
             "decoding, inpaints/outpaints/reconstructs images, and gives image embeddings."), ""]
    body += ["## Training data", "", str(meta.get("dataset", "not recorded")), ""]
    if meta.get("class_names"):
        body += ["Classes: " + ", ".join(f"`{i}` {n}" for i, n in enumerate(meta["class_names"])), ""]
    body += ["## How it was trained", ""]
    training = meta.get("training")
    if isinstance(training, dict) and training:
        body += _table(training) + [""]
    else:
        body += [str(training or "not recorded"), ""]
    if meta.get("converted_from"):
        body += [f"Converted from {_fmt(meta['converted_from'])} with `mage-studio convert` "
                 "(logits checked against the source checkpoint).", ""]
    metrics = meta.get("metrics")
    body += ["## Metrics", ""]
    body += (_table(metrics) if isinstance(metrics, dict) and metrics else ["No metrics recorded for this model."])
    body += ["", "## Licence", "", lic + (f" ({meta['license_note']})" if meta.get("license_note") else ""), ""]
    arch = {"image size": f"{c.img_size}x{c.img_size}", "token grid": f"{c.grid_size}x{c.grid_size}",
            "codebook": c.codebook_size, "encoder": f"{c.depth} blocks x {c.embed_dim} ({c.num_heads} heads)",
            "decoder": f"{c.decoder_depth} blocks x {c.decoder_embed_dim} ({c.decoder_num_heads} heads)",
            "conditioning": kind, "weights dtype": weights_dtype}
    body += ["## Architecture", ""] + _table(arch) + [""]
    body += ["## Usage", "", "```python", "from mage import MAGEPipeline",
             f'pipe = MAGEPipeline.from_pretrained("{load}")',
             "images = pipe.generate(n=4, steps=12, seed=0).images   # [4,3,H,W] in [0,1]", "```", "",
             "```bash", f"mage-studio --model {load} generate -n 4 --out samples/", "```", "",
             f"Files: `config.json` ({FORMAT_NAME} format, model configuration + metadata), `model.safetensors` "
             "(MAGE weights and the VQGAN tokenizer under `vqgan.`).", ""]
    other = {k: v for k, v in meta.items() if k not in
             ("name", "description", "dataset", "class_names", "training", "converted_from", "metrics", "license",
              "license_note", "hf_dataset", "source", "citation")}
    if other:
        body += ["## Other metadata", ""] + _table(other) + [""]
    body += ["## Citation", "", "```bibtex", meta.get("citation") or
             "@inproceedings{li2023mage,\n  title={MAGE: MAsked Generative Encoder to Unify Representation "
             "Learning and Image Synthesis},\n  author={Li, Tianhong and Chang, Huiwen and Mishra, Shlok Kumar "
             "and Zhang, Han and Katabi, Dina and Krishnan, Dilip},\n  booktitle={CVPR},\n  year={2023}\n}",
             "```", ""]
    return "\n".join(head + [""] + body)


def write_model_card(directory, meta: dict, config: MAGEConfig, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into a model directory (the weights dtype is read from its config.json)."""
    d = Path(directory)
    dtype = "float32"
    if (d / "config.json").is_file():
        dtype = json.loads((d / "config.json").read_text()).get("dtype", dtype)
    path = d / "README.md"
    path.write_text(model_card(meta, config, dtype, repo_id))
    return path


# ------------------------------------------------------------------------------------------ upload
def variant_dtype(variant: str | None):
    """"fp16"/"bf16"/None -> torch dtype (None = keep float32)."""
    import torch
    if variant is None:
        return None
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
    return None if VARIANTS[variant] is None else getattr(torch, VARIANTS[variant])


def stage_for_upload(pipe_or_dir, directory, variant: str | None = None, repo_id: str | None = None) -> Path:
    """Fill ``directory`` with the files :func:`push_to_hub` uploads: a pipeline is saved there; a model
    directory is validated and linked (re-saved only when a ``variant`` dtype is asked for)."""
    from .checkpoint import load_native
    from .pipeline import MAGEPipeline
    dtype, out = variant_dtype(variant), Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(pipe_or_dir, (str, os.PathLike)):
        src = Path(pipe_or_dir)
        model, vq, meta = load_native(src)  # validates the folder before anything is uploaded
        if dtype is None:
            for f in REQUIRED_FILES + OPTIONAL_FILES:
                if (src / f).is_file():
                    os.symlink((src / f).resolve(), out / f)
            if not (out / "README.md").exists():
                write_model_card(out, meta, model.config, repo_id)
            return out
        pipe_or_dir = MAGEPipeline(model, vq, meta=meta, device="cpu")
    pipe_or_dir.save_pretrained(out, dtype=dtype)
    write_model_card(out, {k: v for k, v in pipe_or_dir.meta.items() if k != "source"}, pipe_or_dir.config, repo_id)
    return out


def push_to_hub(pipe_or_dir, repo_id: str, private: bool = False, token: str | None = None,
                variant: str | None = None, revision: str | None = None,
                commit_message: str = "Upload MAGE Studio model") -> str:
    """Create ``repo_id`` if needed and upload the model (a :class:`MAGEPipeline` or a model directory).
    ``variant`` "fp16"/"bf16" stores half-precision weights (half the download; loading casts back to
    fp32); ``revision`` uploads to that branch (created if missing), e.g. keep fp32 on main and a
    "bf16" branch. Returns the URL of the commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError

    if is_offline():
        raise CheckpointError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set")
    with tempfile.TemporaryDirectory(prefix="mage-push-") as tmp:
        folder = stage_for_upload(pipe_or_dir, tmp, variant, repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                     allow_patterns=list(REQUIRED_FILES + OPTIONAL_FILES),
                                     commit_message=commit_message)
        except HFValidationError as e:
            raise CheckpointError(f"{repo_id!r} is not a valid Hub repo id: {str(e).splitlines()[0]}") from None
        except (HfHubHTTPError, OSError) as e:
            raise CheckpointError(f"could not upload to {repo_id!r}: {str(e).splitlines()[0] if str(e) else e!r} "
                                  "(log in with `hf auth login` or pass token=)") from None
    return getattr(info, "commit_url", str(info))
