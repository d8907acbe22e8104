"""The main job, `rlhf experiment=demo`, in full, on its 200 held-out prompts: SFT answers with
the right fact, the reward model agrees with the oracle's ordering of held-out answers, DPO
beats SFT by the oracle without losing facts, PPO raises the reward model's score, the four
models are compared side by side and the best one is exported.

The demo declares issue 10's quality floors (conf/experiment/demo.yaml) and prints each as met
or MISSED; this test checks that report against the figures. The demo is deterministic on one
machine but not across machines (the same recipe moved greedy scores by ~0.01-0.03 between two
machines of one kind), so the assertions below hold the figures measured on the build machine
(docs/demo.md) to bounds with that margin: where a floor sits inside the spread (SFT fact 0.81
against 0.80, RM agreement 0.948-0.996 against 0.97) or is not reached (DPO sampled 1.10x against
1.12x), the bound is what the recipe reaches with margin, and the printed floor report says
where it stands. Within one machine the figures also move when the SFT weights change by float
rounding alone: the reward model's agreement over seeds, SFT models and thread counts spans
0.948-0.996 with the demo's weight decay, and PPO's greedy fact accuracy moved between 0.765 and
0.845 with the reward model it was given (docs/demo.md, "Robustness"). The sampled figures are
means over four answers per prompt, which halves their spread from seed to seed."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf


@pytest.mark.slow
def test_demo_end_to_end(run_cli, tmp_path):
    run_dir = tmp_path / "demo"
    result = run_cli(["experiment=demo", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=1500)
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    base, sft, rm, dpo, ppo = (summary[k] for k in ("base_eval", "sft_eval", "rm", "dpo", "ppo"))
    print(json.dumps(summary, indent=1))
    # the pipeline: every step in order; the steps' own overrides reached them, {sft} became
    # the SFT run's directory
    assert list(summary) == ["base_eval", "sft", "rm", "sft_eval", "dpo", "ppo", "final_eval",
                             "export"]
    assert OmegaConf.load(run_dir / "sft" / "config.yaml").stage.learning_rate == 2e-3
    sft_eval = OmegaConf.load(run_dir / "sft_eval" / "config.yaml")
    assert sft_eval.model.path == str(run_dir / "sft")
    assert sft_eval.stage.reward_model == str(run_dir / "rm")
    assert OmegaConf.load(run_dir / "dpo" / "config.yaml").model.path == str(run_dir / "sft")
    samples = [json.loads(line) for line in open(run_dir / "sft_eval" / "samples.jsonl")]
    assert {"greedy", "sampled", "sampled_4"} <= set(samples[0]["answers"])
    assert sft["eval/samples_per_prompt"] == dpo["eval/samples_per_prompt"] == 4
    assert 0.0 <= samples[0]["scores"]["greedy"]["total"] <= 1.0
    assert "eval/reward_model_greedy" in sft
    assert base["eval/num_prompts"] == sft["eval/num_prompts"] == dpo["eval/num_prompts"] == 200
    # SFT learns the domain and answers held-out phrasings with the right fact (0.81 measured)
    assert sft["eval/oracle_fact_greedy"] >= 0.75
    assert sft["eval/oracle_greedy"] >= base["eval/oracle_greedy"] + 0.6
    # the K-wise reward model orders held-out answers as the oracle does (0.974 measured;
    # 0.961-0.994 over seeds at this weight decay, 0.948-0.996 over seeds, SFT models and
    # thread counts at 0.3; after one epoch, when it has learnt style but not yet the fact
    # check, 0.917-0.940)
    assert rm["eval/reward_accuracy"] >= 0.94 and rm["eval/num_pairs"] > 1000
    # DPO beats SFT by the oracle on sampled answers (1.124x measured, 1.092x-1.127x over
    # DPO seeds) and keeps its facts
    assert dpo["eval/oracle_sampled"] >= 1.05 * sft["eval/oracle_sampled"]
    assert dpo["eval/oracle_fact_greedy"] >= sft["eval/oracle_fact_greedy"] - 0.02
    assert dpo["eval/kl_to_reference"] > 0
    assert dpo["eval/reward_model_sampled"] > sft["eval/reward_model_sampled"]
    # the floors are checked against the same figures and printed under the summary
    floors = {f["metric"]: f for f in json.loads((run_dir / "floors.json").read_text())}
    assert floors["rm/eval/reward_accuracy"]["met"] == (rm["eval/reward_accuracy"] >= 0.97)
    ratio = floors["dpo/eval/oracle_sampled"]
    assert ratio["value"] == dpo["eval/oracle_sampled"]
    assert ratio["bar"] == pytest.approx(1.12 * sft["eval/oracle_sampled"])
    assert ratio["met"] == (dpo["eval/oracle_sampled"] >= ratio["bar"])
    report = result.output.split("=== quality floors")[1]
    assert report.count("met   ") + report.count("MISSED") == 6
    # PPO optimises the reward model's score; the oracle says whether that helped (1.189x
    # sampled measured, 1.183x-1.201x over PPO seeds) or was reward hacking. PPO-ptx on the
    # rankings' best answers holds its facts: over 800 sampled answers 0.729 against SFT's
    # 0.564; greedy, over 200 answers, 0.82 against 0.81 (0.815-0.83 over seeds; without
    # PPO-ptx 0.765-0.81), so the greedy bound leaves room for the spread between machines
    assert ppo["eval/num_prompts"] == 200 and ppo["eval/kl_to_reference"] > 0
    assert ppo["eval/reward_model_sampled"] > sft["eval/reward_model_sampled"]
    assert ppo["eval/oracle_sampled"] >= 1.12 * sft["eval/oracle_sampled"]
    assert ppo["eval/oracle_fact_sampled"] >= sft["eval/oracle_fact_sampled"]
    assert ppo["eval/oracle_fact_greedy"] >= sft["eval/oracle_fact_greedy"] - 0.03
    assert ppo["ppo/ptx_loss"] > 0  # the demo's PPO step mixes in the SFT loss
    # the four models side by side, SFT the baseline, and the table under the summary
    final = summary["final_eval"]
    for name in ("untrained", "dpo", "ppo"):
        assert 0 <= final[f"eval/{name}/win_rate_sampled_low"] <= \
            final[f"eval/{name}/win_rate_sampled"] <= final[f"eval/{name}/win_rate_sampled_high"]
    assert final["eval/untrained/win_rate_greedy"] < 0.2 < final["eval/dpo/win_rate_greedy"]
    table = result.output.split("=== final_eval")[1].split("===")[0]
    assert all(name in table for name in ("untrained", "sft", "dpo", "ppo"))
    assert (run_dir / "compare" / "compare.csv").exists()
    assert {p.name for p in (run_dir / "compare").glob("*.png")} >= {"train_loss.png",
                                                                  "ppo_score_mean.png"}
    # the best of SFT, DPO and PPO by the sampled oracle score, exported
    best = max(("sft_eval", "dpo", "ppo"), key=lambda k: summary[k]["eval/oracle_sampled"])
    chosen = json.loads((run_dir / "export" / "lineage.json").read_text())["selection"]
    assert chosen["chosen"].rstrip("/").endswith(best), chosen
    assert summary["export"]["export/eval/oracle_sampled"] == summary[best]["eval/oracle_sampled"]
    assert (run_dir / "export" / "model" / "model.safetensors").exists()
    assert best in (run_dir / "export" / "model" / "README.md").read_text()
    # the summary table fits a 100-column terminal
    table = result.output.split("=== summary")[1].split("=== final_eval")[0]
    assert max(map(len, table.splitlines())) <= 100
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sft_eval/eval/oracle_greedy"] == sft["eval/oracle_greedy"]
