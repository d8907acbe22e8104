"""Export a stage's model as a clean Hugging Face directory with a model card.

    rlhf stage=export model.path=outputs/demo/<run>/dpo
    rlhf stage=export "stage.candidates=[<sft_eval run>,<dpo run>]" \
        stage.select_by=eval/oracle_fact_greedy           # the best of several runs

Writes `<run dir>/model/`: safetensors weights (LoRA merged into the base when the run saved an
adapter only; DeepSpeed ZeRO shards consolidated when the run saved no full weights), the
tokenizer with its chat template, `generation_config.json` (end-of-turn and pad tokens) and
`README.md`, a model card with the training lineage (every stage back to the base model: run
ids, data files with their sha256, key hyperparameters, metrics) and the evaluation metrics.
Nothing from this project is needed to load it: `AutoModelForCausalLM.from_pretrained(dir)`.
The lineage is also kept as `<run dir>/lineage.json`. An eval run stands for the model it
evaluated (its `model.path`), so `stage.candidates` may list eval runs. docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.loading import CHECKPOINT_SUBDIR, resolve_model_path
from rlhf.stages.common import StageRun

# the hyperparameters shown in the card for each stage, when its config has them
KEY_HYPERPARAMETERS = (
    "learning_rate", "lr_scheduler", "warmup_ratio", "num_epochs", "max_steps",
    "global_batch_size", "max_length", "seed", "assistant_only_loss", "packing", "objective",
    "train_sampling", "data_format", "pairs", "loss_type", "beta", "sft_weight", "ld_alpha",
    "entropy_coef", "ptx_coef", "ptx_data",
    "reference", "num_generations", "temperature", "max_new_tokens", "kl_coef", "ppo_epochs",
    "reward_model")
# which data.* files each stage reads (rm/dpo: by stage.data_format)
STAGE_DATA = {"sft": ("sft_train", "sft_eval"), "eval": ("eval_prompts",),
              "grpo": ("prompts_train", "eval_prompts"), "rloo": ("prompts_train", "eval_prompts"),
              "ppo": ("prompts_train", "eval_prompts")}
# the stages that train a model (an eval or export run only points at one)
TRAINING_STAGES = ("sft", "rm", "dpo", "grpo", "rloo", "ppo")
MAX_LINEAGE = 32


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    source, choice = choose_source(cfg)
    lineage = trace_lineage(source)
    model_dir = model_dir_of(source)
    final, tmp = out / CHECKPOINT_SUBDIR, out / ".tmp-model"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model, tokenizer = load_merged(model_dir, cfg)
    kind = "reward model" if not is_causal_lm(model) else "chat model"
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size=stage.max_shard_size)
    tokenizer.save_pretrained(tmp)
    if is_causal_lm(model):
        generation_config(model, tokenizer, model_dir, stage.max_new_tokens).save_pretrained(tmp)
    check_plain(tmp)
    newest = next((e for e in lineage if e.get("stage") in TRAINING_STAGES), {})
    name = stage.model_name or f"{newest.get('model_name') or cfg.model.name}-" \
        f"{newest.get('stage', 'base')}"
    card = model_card(name, kind, lineage, choice, cfg, count_parameters(model))
    (tmp / "README.md").write_text(card)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (out / "lineage.json").write_text(json.dumps({"source": str(source), "selection": choice,
                                                  "lineage": lineage}, indent=1) + "\n")
    print(f"rlhf: exported {source} to {final}")
    size = sum(f.stat().st_size for f in final.glob("*.safetensors"))
    metrics = {"export/parameters": count_parameters(model),
               "export/size_mb": round(size / 2**20, 3),
               "export/lineage_stages": sum(1 for e in lineage if "stage" in e)}
    if choice:
        metrics[f"export/{stage.select_by}"] = choice["value"]
    return stage_run.finish(metrics)


# ---------------------------------------------------------------- which run
def choose_source(cfg) -> tuple[str, dict | None]:
    """model.path, or the best of stage.candidates by stage.select_by."""
    stage = cfg.stage
    if not stage.candidates:
        return cfg.model.path, None
    scored = []
    for path in stage.candidates:
        run = run_dir_of(path)
        if run is None or not (run / "metrics.json").exists():
            raise ConfigError(f"stage.candidates: {path} is not a run directory with a "
                              "metrics.json; list the run directories of earlier stages")
        metrics = json.loads((run / "metrics.json").read_text())
        value = metrics.get(stage.select_by)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ConfigError(f"stage.select_by={stage.select_by}: {run}/metrics.json has no "
                              f"number under that name; it has {', '.join(sorted(metrics))}")
        scored.append((value, str(path)))
    best = (max if stage.higher_is_better else min)(scored, key=lambda vp: vp[0])
    return best[1], {"metric": stage.select_by, "higher_is_better": stage.higher_is_better,
                     "value": best[0], "chosen": best[1],
                     "candidates": [{"run": p, "value": v} for v, p in scored]}


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory behind a path (a run dir, or its model/), or None for a plain
    checkpoint or a hub id."""
    p = Path(path).expanduser()
    if (p / "config.yaml").exists() and ((p / "metrics.json").exists()
                                         or (p / CHECKPOINT_SUBDIR).is_dir()):
        return p
    if p.name == CHECKPOINT_SUBDIR and (p.parent / "config.yaml").exists():
        return p.parent
    return None


def model_dir_of(source: str) -> str:
    """The checkpoint to export: the run's model/, or for a run without one (eval) the model
    it ran on."""
    seen = set()
    path = source
    while True:
        run = run_dir_of(path)
        if run is None or (run / CHECKPOINT_SUBDIR).is_dir():
            return resolve_model_path(str(path), "stage=export's source")
        if run in seen:
            raise ConfigError(f"{source}: its runs' model.path point at each other")
        seen.add(run)
        path = started_from(run)


def started_from(run: Path) -> str:
    """The model.path a run ran on (for an export run: the run it exported); an eval run
    over several models stands for none."""
    if (run / "lineage.json").exists():
        return json.loads((run / "lineage.json").read_text())["source"]
    cfg = OmegaConf.load(run / "config.yaml")
    if OmegaConf.select(cfg, "stage.models") and not (run / CHECKPOINT_SUBDIR).is_dir():
        raise ConfigError(f"{run} evaluated several models (stage.models), so it stands for "
                          "none of them; give the run of the model itself")
    return OmegaConf.select(cfg, "model.path")


# ---------------------------------------------------------------- lineage
def trace_lineage(source: str) -> list[dict]:
    """The exported run, the run it started from, ... and the base model, newest first."""
    lineage, path = [], source
    for _ in range(MAX_LINEAGE):
        run = run_dir_of(path)
        if run is None:
            lineage.append(base_entry(str(path)))
            return lineage
        entry = run_entry(run)
        lineage.append(entry)
        path = started_from(run)
    raise ConfigError(f"{source}: the lineage is longer than {MAX_LINEAGE} runs; is there a loop "
                      "of model.path?")


def run_entry(run: Path) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=False)
    stage, model, data = cfg.get("stage", {}), cfg.get("model", {}), cfg.get("data", {})
    metrics = json.loads((run / "metrics.json").read_text()) \
        if (run / "metrics.json").exists() else {}
    run_id = (run / "wandb_run_id").read_text().strip() if (run / "wandb_run_id").exists() \
        else None
    hyper = {k: stage[k] for k in KEY_HYPERPARAMETERS if k in stage and stage[k] is not None}
    for key, value in (stage.get("heldout") or {}).items():
        if key == "reward_model" and value:
            hyper["heldout.reward_model"] = value
    lora = model.get("lora") or {}
    if lora.get("enabled"):
        hyper["lora"] = f"r={lora.get('r')}, alpha={lora.get('alpha')}"
    dist = cfg.get("distributed") or {}
    if dist.get("backend") not in (None, "none"):
        hyper["distributed"] = f"{dist.get('name')} x{dist.get('nproc_per_node')}"
    debug = {k: v for k, v in (cfg.get("debug") or {}).items() if v is not None}
    if debug:
        hyper["debug"] = ", ".join(f"{k}={v}" for k, v in debug.items())
    return {"stage": stage.get("name"), "run_dir": str(run.resolve()), "run_name": run.name,
            "wandb_run_id": run_id, "model_path": model.get("path"),
            "model_name": model.get("name"), "experiment": cfg.get("experiment_name"),
            "hyperparameters": hyper, "data": data_files(stage, data), "metrics": metrics}


def data_files(stage: dict, data: dict) -> list[dict]:
    name = stage.get("name")
    if name in ("rm", "dpo"):
        fmt = stage.get("data_format", "rankings")
        fields = (f"{fmt}_train", f"{fmt}_eval") + (("eval_prompts",) if name == "dpo" else ())
    else:
        fields = STAGE_DATA.get(name, ())
    if name == "ppo" and stage.get("ptx_coef"):  # PPO-ptx's SFT loss reads one more file
        fields += ("rankings_train" if stage.get("ptx_data") == "rankings" else "sft_train",)
    files = []
    for field_name in fields:
        path = data.get(field_name)
        if not path:
            continue
        entry = {"field": f"data.{field_name}", "path": str(path)}
        p = Path(path)
        if p.exists():
            entry.update(sha256=sha256_of(p), rows=count_rows(p))
        else:
            entry["missing"] = True
        files.append(entry)
    return files


def base_entry(path: str) -> dict:
    entry = {"base_model": path}
    p = Path(path).expanduser()
    if p.is_dir():
        weights = sorted(p.glob("*.safetensors"))
        entry["weights_sha256"] = sha256_of_files(weights) if weights else None
        manifest = p / "rlhf_demo_model.json"
        if manifest.exists():
            entry["note"] = "the demo's tiny Llama, built by rlhf (" + \
                json.dumps(json.loads(manifest.read_text()), sort_keys=True) + ")"
    return entry


def sha256_of(path: Path) -> str:
    if path.is_dir():  # a `datasets` directory: every file, in order, with its name
        return sha256_of_files(sorted(f for f in path.rglob("*") if f.is_file()), path)
    return sha256_of_files([path])


def sha256_of_files(files: list[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for f in files:
        if root is not None:
            digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def count_rows(path: Path) -> int | None:
    if path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


# ---------------------------------------------------------------- the weights
def load_merged(model_dir: str, cfg):
    """The model with any LoRA adapter merged and any ZeRO shards consolidated, and its
    tokenizer (chat template from model.chat_template_path when given)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    path = Path(model_dir)
    dtype = "auto" if cfg.stage.dtype.value == "auto" else getattr(torch, cfg.stage.dtype.value)
    try:
        if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
            model = merge_adapter(path, dtype)  # a LoRA run under ZeRO-3 saved its adapter only
        elif has_weights(path) or not path.exists():
            model = auto_class(AutoConfig.from_pretrained(model_dir)).from_pretrained(
                model_dir, dtype=dtype)
        else:
            model = consolidate_zero(path, dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{model_dir}: cannot load the model to export ({err})") from None
    if cfg.model.chat_template_path:
        tokenizer.chat_template = Path(cfg.model.chat_template_path).read_text()
    if is_causal_lm(model) and not tokenizer.chat_template:
        raise ModelLoadError(f"{model_dir}: the tokenizer has no chat template; set "
                             "model.chat_template_path to a Jinja template file")
    return model, tokenizer


def auto_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if getattr(config, "auto_map", None):
        raise ModelLoadError(f"{config.name_or_path}: the model needs its own code "
                             "(trust_remote_code); stage=export writes models that load with "
                             "plain transformers only")
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM


def has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def merge_adapter(path: Path, dtype):
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig

    base_path = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    base = auto_class(AutoConfig.from_pretrained(base_path)).from_pretrained(base_path,
                                                                               dtype=dtype)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def consolidate_zero(path: Path, dtype):
    """A ZeRO-3 run saved with stage3_gather_16bit_weights_on_model_save=false: config.json
    beside DeepSpeed's sharded checkpoint (global_step*/); DeepSpeed's zero_to_fp32 gathers
    the full fp32 state dict."""
    import torch
    from transformers import AutoConfig

    if not (path / "latest").exists() and not any(path.glob("global_step*")):
        raise ModelLoadError(f"{path}: no weights (*.safetensors) and no DeepSpeed checkpoint "
                             "(global_step*/) to consolidate")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(path))
    config = AutoConfig.from_pretrained(str(path))
    model = auto_class(config).from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.startswith("lm_head."))]
    if missing or unexpected:
        raise ModelLoadError(f"{path}: the consolidated ZeRO checkpoint does not fit "
                             f"config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if dtype != "auto":
        model = model.to(dtype)
    return model


def is_causal_lm(model) -> bool:
    return hasattr(model, "generate") and not type(model).__name__.endswith(
        "ForSequenceClassification")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def generation_config(model, tokenizer, model_dir: str, max_new_tokens: int):
    """The source's generation config, with the end-of-turn token(s) and a pad token set, so
    `generate` stops at the end of the assistant's turn without any argument."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = GenerationConfig()
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else \
        [gen.eos_token_id] if gen.eos_token_id is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    if not eos:
        raise ModelLoadError(f"{model_dir}: neither the tokenizer nor the generation config "
                             "names an end-of-sequence token; generation would never stop")
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.max_new_tokens = max_new_tokens
    model.generation_config = gen
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = gen.pad_token_id
    return gen


def check_plain(directory: Path) -> None:
    """What the export must not hold: code to trust, adapters, training state, our manifests."""
    config = json.loads((directory / "config.json").read_text())
    if "auto_map" in config:
        raise ModelLoadError("the exported config.json has an auto_map (custom code)")
    for name in ("adapter_config.json", "rlhf_demo_model.json", "training_args.bin"):
        (directory / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- the model card
def model_card(name: str, kind: str, lineage: list[dict], choice: dict | None, cfg,
               parameters: int) -> str:
    base = lineage[-1].get("base_model", "")
    runs = [e for e in lineage if "stage" in e]
    trained = [e["stage"] for e in reversed(runs) if e["stage"] in TRAINING_STAGES]
    hub_base = base if base and not Path(base).expanduser().exists() else None
    front = {"library_name": "transformers",
             "pipeline_tag": "text-generation" if kind == "chat model" else "text-classification",
             "tags": ["rlhf", *dict.fromkeys(trained)]}
    if cfg.stage.license:
        front["license"] = cfg.stage.license
    if hub_base:
        front["base_model"] = hub_base
    lines = ["---", OmegaConf.to_yaml(OmegaConf.create(front)).strip(), "---", "",
             f"# {name}", "",
             f"A {kind} ({parameters:,} parameters) trained from `{base}` by "
             f"{' -> '.join(trained) or 'no training stage'} with the rlhf framework. "
             "It loads with plain transformers "
             "(no `trust_remote_code`).", ""]
    if kind == "chat model":
        lines += usage_section()
    lines += evaluation_section(runs, choice)
    lines += lineage_section(lineage)
    return "\n".join(lines) + "\n"


def usage_section() -> list[str]:
    return ["## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "", "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")",
            "model = AutoModelForCausalLM.from_pretrained(\"<this directory>\")",
            "messages = [{\"role\": \"user\", \"content\": \"Hello!\"}]",
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
            "return_tensors=\"pt\", return_dict=True)",
            "out = model.generate(**ids)  # stops at the end of the turn "
            "(generation_config.json)",
            "print(tokenizer.decode(out[0, ids[\"input_ids\"].shape[1]:], "
            "skip_special_tokens=True))", "```", "",
            "Or chat in a terminal, or serve an OpenAI-compatible API:", "", "```",
            "rlhf-chat <this directory>",
            "rlhf-serve <this directory> --port 8000", "```", ""]


def evaluation_section(runs: list[dict], choice: dict | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if choice:
        lines += [f"Chosen among {len(choice['candidates'])} runs by `{choice['metric']}` "
                  f"({'highest' if choice['higher_is_better'] else 'lowest'} wins):", "",
                  "| run | value | |", "| --- | --- | --- |"]
        lines += [f"| `{c['run']}` | {fmt(c['value'])} | "
                  f"{'**exported**' if c['run'] == choice['chosen'] else ''} |"
                  for c in choice["candidates"]]
        lines.append("")
    # the evaluation of the exported model: an eval run of it, else the newest run's eval/*
    evaluated = next((e for e in runs if e["stage"] == "eval"), None) or \
        next((e for e in runs if any(k.startswith("eval/") for k in e["metrics"])), None)
    if evaluated is None:
        return lines + ["No evaluation was run on this model.", ""]
    metrics = {k: v for k, v in evaluated["metrics"].items()
               if k.startswith("eval/") and shown_metric(k, v)}
    lines += [f"Held-out metrics from the `{evaluated['stage']}` run "
              f"`{evaluated['run_name']}`:", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {fmt(v)} |" for k, v in sorted(metrics.items())]
    return lines + [""]


def lineage_section(lineage: list[dict]) -> list[str]:
    lines = ["## Training lineage", "",
             "Newest first, back to the base model. Data hashes are sha256 of the files as they "
             "were when the model was exported.", ""]
    for i, e in enumerate(lineage, 1):
        if "stage" not in e:
            lines += [f"### {i}. base model: `{e['base_model']}`", ""]
            if e.get("weights_sha256"):
                lines.append(f"- weights sha256: `{e['weights_sha256']}`")
            if e.get("note"):
                lines.append(f"- {e['note']}")
            lines.append("")
            continue
        run_id = f", W&B run id `{e['wandb_run_id']}`" if e.get("wandb_run_id") else ""
        lines += [f"### {i}. stage `{e['stage']}`: run `{e['run_name']}`{run_id}", "",
                  f"- run directory: `{e['run_dir']}`",
                  f"- started from: `{e['model_path']}`"]
        if e.get("experiment"):
            lines.append(f"- experiment: `{e['experiment']}`")
        for d in e["data"]:
            if d.get("missing"):
                lines.append(f"- `{d['field']}`: `{d['path']}` (no longer there)")
            else:
                rows = f", {d['rows']} rows" if d.get("rows") is not None else ""
                lines.append(f"- `{d['field']}`: `{d['path']}`{rows}, sha256 `{d['sha256']}`")
        if e["hyperparameters"]:
            lines.append("- hyperparameters: " + ", ".join(
                f"{k}={v}" for k, v in e["hyperparameters"].items()))
        shown = {k: v for k, v in e["metrics"].items() if shown_metric(k, v)}
        if shown:
            lines.append("- metrics: " + ", ".join(f"{k}={fmt(v)}" for k, v in
                                                    sorted(shown.items())))
        lines.append("")
    return lines


def shown_metric(key: str, value) -> bool:
    """Quality figures, not timings or memory."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if key.endswith(("runtime", "_per_second", "num_tokens")) or key == "runtime_s":
        return False
    return key.startswith(("eval/", "rewards/", "train/loss", "train/steps", "objective/"))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
