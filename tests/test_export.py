"""stage=export: a clean Hugging Face directory with a model card (rlhf-chat is tested in
tests/test_serve.py, on the served model).

The export of a few SFT steps on the tiny demo model is built once per session in cache_dir
(`exported_model`, also served by tests/test_serve.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def exported_model(run_stage, cache_dir: Path) -> tuple[Path, Path]:
    """(SFT run dir, export run dir): 4 SFT steps on the demo model, then stage=export."""
    sft, export = cache_dir / "deploy_sft", cache_dir / "deploy_export"
    if not (sft / "metrics.json").exists():
        run_stage(["stage=sft", "debug=tiny", "stage.learning_rate=1e-2",
                   "stage.max_length=128"], sft)
    if not (export / "metrics.json").exists():
        run_stage(["stage=export", f"model.path={sft}", "stage.license=apache-2.0"], export)
    return sft, export


@pytest.fixture(scope="module")
def export_runs(run_stage, cache_dir):
    return exported_model(run_stage, cache_dir)


def test_export_is_a_clean_hf_dir_with_model_card(export_runs):
    sft, export = export_runs
    model = export / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md", "chat_template.jinja", "config.json", "generation_config.json",
        "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((model / "config.json").read_text())
    assert "auto_map" not in config
    gen = json.loads((model / "generation_config.json").read_text())
    tokenizer = json.loads((model / "tokenizer_config.json").read_text())
    assert tokenizer["eos_token"] == "<|end|>" and tokenizer["pad_token"] == "<|pad|>"
    assert gen["eos_token_id"] == 1 and gen["pad_token_id"] == 0  # <|end|>, <|pad|>
    card = (model / "README.md").read_text()
    sft_cfg = (sft / "config.yaml").read_text()
    # lineage: the SFT run, its data with hashes, its hyperparameters, back to the base
    assert "license: apache-2.0" in card and "library_name: transformers" in card
    assert "# demo_tiny-sft\n" in card
    assert f"run directory: `{sft.resolve()}`" in card
    assert "`data.sft_train`" in card and "3000 rows, sha256 `" in card
    lineage = json.loads((export / "lineage.json").read_text())["lineage"]
    assert [e.get("stage") for e in lineage] == ["sft", None]
    data = lineage[0]["data"][0]
    import hashlib
    assert data["sha256"] == hashlib.sha256(Path(data["path"]).read_bytes()).hexdigest()
    assert "learning_rate=0.01" in card and "learning_rate: 0.01" in sft_cfg
    assert lineage[1]["base_model"].endswith("demo_tiny") and "base model:" in card
    assert "| `eval/loss` |" in card  # the SFT run's held-out metrics
    metrics = json.loads((export / "metrics.json").read_text())
    assert metrics["export/parameters"] > 0 and metrics["export/lineage_stages"] == 1


def test_export_loads_with_plain_transformers_in_a_fresh_process(export_runs):
    """Nothing from rlhf on the path, no trust_remote_code: load, template, generate."""
    script = textwrap.dedent("""
        import sys
        sys.path = [p for p in sys.path if p not in ("", ".", REPO)]
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(MODEL)
        model = AutoModelForCausalLM.from_pretrained(MODEL)
        ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        out = model.generate(**ids, max_new_tokens=8)
        assert "rlhf" not in sys.modules
        print("GENERATED", out.shape[1] - ids["input_ids"].shape[1])
    """).replace("MODEL", repr(str(export_runs[1] / "model"))).replace(
        "REPO", repr(str(Path(__file__).resolve().parent.parent)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 1 <= int(proc.stdout.split("GENERATED")[1]) <= 8


def test_export_merges_a_lora_adapter_saved_alone(run_stage, cache_dir, tmp_path):
    """A LoRA run under ZeRO-3 saves model/ as an adapter only: the export merges it into the
    base, and the merged model computes what base + adapter compute."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = str(cache_dir / "demo_tiny")
    run = tmp_path / "lora_run"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "model")
    (run / "config.yaml").write_text(f"stage: {{name: sft}}\nmodel: {{path: {base}}}\n")
    (run / "metrics.json").write_text("{}")
    export = tmp_path / "export"
    run_stage(["stage=export", f"model.path={run / 'model'}"], export)
    merged = AutoModelForCausalLM.from_pretrained(export / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits)
    assert not (export / "model" / "adapter_config.json").exists()


def test_export_picks_the_best_candidate(run_stage, cache_dir, export_runs, tmp_path):
    """stage.candidates + stage.select_by: an eval run stands for the model it evaluated."""
    sft, _ = export_runs
    eval_run = tmp_path / "sft_eval"
    eval_run.mkdir()
    (eval_run / "config.yaml").write_text(f"stage: {{name: eval}}\nmodel: {{path: {sft}}}\n")
    (eval_run / "metrics.json").write_text(json.dumps({"eval/score": 0.9}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(f"stage: {{name: eval}}\nmodel: {{path: {sft}}}\n")
    (other / "metrics.json").write_text(json.dumps({"eval/score": 0.5}))
    out = tmp_path / "export"
    metrics = run_stage(["stage=export", f"stage.candidates=[{other},{eval_run}]",
                         "stage.select_by=eval/score"], out)
    assert metrics["export/eval/score"] == 0.9
    card = (out / "model" / "README.md").read_text()
    assert "Chosen among 2 runs by `eval/score`" in card and "| `eval/score` | 0.9 |" in card
    assert "# demo_tiny-sft\n" in card  # named after the newest training stage
    lineage = json.loads((out / "lineage.json").read_text())["lineage"]
    assert [e.get("stage") for e in lineage] == ["eval", "sft", None]
    assert run_stage.fails(["stage=export", f"stage.candidates=[{other}]"], tmp_path / "x") \
        .startswith("stage.candidates lists 1 run(s) but stage.select_by is not set")


def test_the_card_lists_the_ppo_ptx_data_file(tmp_path):
    """A PPO run with stage.ptx_coef also learnt from the file of its ptx_data: the card's data
    section names it, with its rows; without ptx it names only the prompts."""
    from rlhf.stages.export import data_files

    rankings, prompts = tmp_path / "rankings.jsonl", tmp_path / "prompts.jsonl"
    rankings.write_text('{"a": 1}\n{"a": 2}\n')
    prompts.write_text('{"a": 1}\n')
    data = {"prompts_train": str(prompts), "rankings_train": str(rankings),
            "sft_train": str(tmp_path / "absent.jsonl")}
    with_ptx = data_files({"name": "ppo", "ptx_coef": 2.0, "ptx_data": "rankings"}, data)
    assert [(f["field"], f.get("rows")) for f in with_ptx] == [
        ("data.prompts_train", 1), ("data.rankings_train", 2)]
    without = data_files({"name": "ppo", "ptx_coef": 0.0, "ptx_data": "rankings"}, data)
    assert [f["field"] for f in without] == ["data.prompts_train"]
