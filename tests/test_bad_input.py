"""Bad input stops with one clear message naming the file/line/field and the fix, never a
traceback from inside TRL; the bad rows are written out with their reasons.

The stages raise a UserError, which `rlhf` prints as one `rlhf: error:` line with exit code 2
(test_the_cli_prints_a_user_error_as_one_line, the one case run as a real process); the
other cases run the stage in this process and check the UserError's message."""

from __future__ import annotations

import json

import pytest


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


@pytest.mark.parametrize("bad_row,expected", [
    ({"text": "no messages here"}, r"train.jsonl:2: no `messages` field"),
    ({"messages": [{"role": "bot", "content": "x"}]},
     r"train.jsonl:2: `messages\[0\].role` is 'bot'; use one of system, user, assistant"),
    ({"messages": []}, r"train.jsonl:2: `messages` is empty"),
    ({"messages": [{"role": "user", "content": "only a question"}]},
     r"train.jsonl:2: `messages` ends with a 'user' turn; it must end with 'assistant'"),
    ({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]},
     r"train.jsonl:2: `messages\[0\].content` must be text, not int"),
    ('{"messages": [', r"train.jsonl:2: not valid JSON"),
])
def test_bad_sft_row(run_stage, tmp_path, bad_row, expected):
    import re
    train = _write(tmp_path / "train.jsonl", [GOOD, bad_row, GOOD])
    message = run_stage.fails(["stage=sft", "data=custom", f"data.sft_train={train}"],
                              tmp_path / "run")
    assert re.search(expected, message), message
    # the bad row is kept with its reason, not lost
    listed = [json.loads(l) for l in open(tmp_path / "run" / "bad_rows.jsonl")]
    assert len(listed) == 1 and listed[0]["where"].endswith("train.jsonl:2")


def test_the_cli_prints_a_user_error_as_one_line(run_cli, tmp_path):
    """The real `rlhf` process: a UserError becomes one line and exit code 2, no traceback."""
    train = _write(tmp_path / "train.jsonl", [GOOD, {"messages": [{"role": "bot",
                                                                   "content": "x"}]}])
    result = run_cli(["stage=sft", "data=custom", f"data.sft_train={train}",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.output[-2000:]
    assert "Traceback" not in result.output
    error_lines = [l for l in result.output.splitlines() if l.startswith("rlhf: error:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(
        f"rlhf: error: {train}:2: `messages[0].role` is 'bot'; use one of system, user, "
        "assistant"), result.output[-2000:]
    listed = [json.loads(l) for l in open(tmp_path / "run" / "bad_rows.jsonl")]
    assert len(listed) == 1 and listed[0]["where"] == f"{train}:2"


def test_missing_data_file(run_stage, tmp_path):
    message = run_stage.fails(["stage=sft", "data=custom",
                               f"data.sft_train={tmp_path}/nope.jsonl"], tmp_path / "run")
    assert f"{tmp_path}/nope.jsonl: no such file or directory" in message


def test_data_file_not_set(run_stage, tmp_path):
    message = run_stage.fails(["stage=sft", "data=custom"], tmp_path / "run")
    assert "stage=sft needs data.sft_train; set data.sft_train=" in message


def test_empty_data_file(run_stage, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    message = run_stage.fails(["stage=sft", "data=custom",
                               f"data.sft_train={tmp_path}/empty.jsonl"], tmp_path / "run")
    assert "empty.jsonl: the file is empty" in message


def test_model_path_does_not_exist(run_stage, tmp_path):
    message = run_stage.fails(["stage=sft", f"model.path={tmp_path}/no_model", "model.demo=null",
                               "debug=tiny"], tmp_path / "run")
    assert f"model.path={tmp_path}/no_model: no such directory" in message


def test_wrong_model_path_builds_no_demo_model(run_stage, tmp_path):
    """model=demo_tiny with a mistyped model.path: an error naming the field, not a random
    tiny model built (and trained) there; nothing is written, the run directory included."""
    message = run_stage.fails(["stage=sft", f"model.path={tmp_path}/typo", "debug=tiny"],
                              tmp_path / "run")
    assert message.startswith(f"model.path={tmp_path}/typo: no such directory"), message
    assert "cache_dir" in message  # says where the demo model is built
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_demo_model_is_built_only_in_the_cache(run_stage, tmp_path, monkeypatch):
    """A path in cache_dir (e.g. a second architecture) still builds the demo model there."""
    from rlhf.models import loading

    built = []
    monkeypatch.setattr(loading, "ensure_demo_model", lambda path, spec: built.append(path))
    cfg = run_stage.compose([f"model.path={run_stage.cache_dir}/demo_wide",
                             "model.demo.hidden_size=64"])
    loading.prepare_inputs(cfg)
    assert built == [f"{run_stage.cache_dir}/demo_wide"]


def test_bad_config_combination_stops_before_training(run_stage, tmp_path):
    message = run_stage.fails(["stage=sft", "stage.global_batch_size=30",
                               "stage.per_device_batch_size=8"], tmp_path / "run")
    assert "stage.global_batch_size=30 is not divisible" in message
    assert not (tmp_path / "run").exists()  # stopped before the stage started: nothing written


def test_a_pipeline_step_that_does_not_compose_is_one_line(run_cli, tmp_path):
    result = run_cli(["stage=pipeline", "pipeline.steps=[{name: a, stage: sft, overrides: "
                      "['stage.learning_rate=fast']}]", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    errors = [l for l in result.output.splitlines() if l.startswith("rlhf: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.output[-3000:]
    assert errors[0].startswith("rlhf: error: pipeline step 'a' (stage=sft): its config does "
                                "not compose: "), errors[0]
    # the reason is on the same line (Hydra's text puts it on the next one)
    assert "'fast'" in errors[0] and "could not be converted" in errors[0], errors[0]
    assert "Traceback" not in result.output
