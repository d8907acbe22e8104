"""Loading tokenizers and causal LMs from a directory or a hub id, the way users' models load.

`model.path` may be a Hugging Face checkpoint directory, a hub id, or the run directory of an
earlier stage (its checkpoint lives in `<run dir>/model`).
"""

from __future__ import annotations

import os
from pathlib import Path

from data_tools.demo.generate import ensure_demo_data
from rlhf.errors import ModelLoadError
from rlhf.models.demo_tiny import MANIFEST as DEMO_MANIFEST
from rlhf.models.demo_tiny import ensure_demo_model

CHECKPOINT_SUBDIR = "model"


def prepare_inputs(cfg) -> None:
    """Check model.path, then build the demo data and tiny model once (when the config asks
    for them). The path is checked first, so a wrong one stops before anything is written."""
    from omegaconf import OmegaConf

    build_model = check_model_path(cfg)
    if cfg.data.demo is not None:
        ensure_demo_data(cfg.data.dir, OmegaConf.to_object(cfg.data.demo))
    if build_model:
        ensure_demo_model(cfg.model.path, OmegaConf.to_object(cfg.model.demo))


def check_model_path(cfg) -> bool:
    """Raise for a model.path that does not exist; return whether to build (or rebuild, for a
    changed spec) the demo model there.

    The demo model is built only inside cache_dir: anywhere else a path that does not exist is
    a typo, and building there would train a random model without a word. A trained model
    (an SFT run) is kept."""
    path = Path(cfg.model.path).expanduser()
    in_cache = path.resolve().is_relative_to(Path(cfg.cache_dir).expanduser().resolve())
    if cfg.model.demo is not None and in_cache:
        return not path.exists() or (path / DEMO_MANIFEST).exists()
    if cfg.model.demo is not None and not path.exists() and _looks_local(cfg.model.path):
        raise ModelLoadError(f"model.path={cfg.model.path}: no such directory; give an existing "
                             f"checkpoint directory (the demo model is built only in "
                             f"cache_dir={cfg.cache_dir})")
    resolve_model_path(cfg.model.path)
    return False


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.sep + os.sep in path or \
        path.count("/") > 1


def resolve_model_path(path: str, field: str = "model.path") -> str:
    """A checkpoint directory, a run directory holding `model/`, or a hub id."""
    p = Path(path).expanduser()
    if (p / CHECKPOINT_SUBDIR / "config.json").exists():
        return str(p / CHECKPOINT_SUBDIR)
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ModelLoadError(f"{field}={path}: the directory has no config.json; give a "
                                 "Hugging Face checkpoint directory or a stage's run directory")
        return str(p)
    if _looks_local(path):
        raise ModelLoadError(f"{field}={path}: no such directory; give an existing checkpoint "
                             "directory or a hub id such as Qwen/Qwen2.5-0.5B-Instruct")
    return path


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    path = resolve_model_path(model_cfg.tokenizer_path or model_cfg.path,
                              "model.tokenizer_path" if model_cfg.tokenizer_path else "model.path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.revision,
                                                  trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model.path={path}: cannot load a tokenizer ({err})") from None
    if model_cfg.chat_template_path:
        tokenizer.chat_template = Path(model_cfg.chat_template_path).read_text()
    if not tokenizer.chat_template:
        raise ModelLoadError(f"model.path={path}: the tokenizer has no chat template; set "
                             "model.chat_template_path to a Jinja template file")
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(model_cfg):
    import torch
    return "auto" if model_cfg.dtype.value == "auto" else getattr(torch, model_cfg.dtype.value)


def load_causal_lm(model_cfg, path: str | None = None):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path or model_cfg.path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, revision=model_cfg.revision, dtype=torch_dtype(model_cfg),
            trust_remote_code=model_cfg.trust_remote_code, use_safetensors=True,
            attn_implementation=model_cfg.attn_implementation)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model.path={path}: cannot load the model ({err})") from None


def peft_config(model_cfg, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig for `model.lora.enabled=true`, else None (full fine-tuning).
    task_type SEQ_CLS (reward models) also trains and saves the new score head."""
    lora = model_cfg.lora
    if not lora.enabled:
        return None
    from peft import LoraConfig

    targets = list(lora.target_modules)
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      task_type=task_type)
