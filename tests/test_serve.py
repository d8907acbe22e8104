"""rlhf-serve through the official `openai` client (and raw HTTP where the wire format is the
point): plain and streamed answers, batching of concurrent requests, every bad request, a
client that disconnects mid-stream, usage counts; and rlhf-chat on the same model.

One server for the module, in a thread of this process, built by the same `parse_args` and
`build` as `rlhf-serve`. It serves the export of tests/test_export.py with its weights
redrawn at random (std 0.1): the 4-step SFT model ends every answer at once, and the random
weights give long, prompt-dependent greedy answers whose top-2 logit gaps (0.1-0.8) are far
above the float noise of batching, so "the same tokens" is a real check."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.test_export import exported_model

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key"
MAX_BATCH = 8
PROMPTS = [f"Where is my order {i}?" + " Please check the shipping status." * (i % 4)
           for i in range(16)]


def messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def served(run_stage, cache_dir, tmp_path_factory):
    import torch
    import uvicorn
    from transformers import AutoModelForCausalLM

    from rlhf.serve.cli import build, parse_args

    _, export = exported_model(run_stage, cache_dir)
    model_dir = tmp_path_factory.mktemp("serve") / "model"
    shutil.copytree(export / "model", model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parse_args([str(model_dir), "--port", str(port), "--api-key", KEY,
                       "--max-batch", str(MAX_BATCH), "--served-model-name", "tiny"])
    assert args.host == "127.0.0.1"
    app, engine = build(args)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    yield {"url": f"http://127.0.0.1:{port}", "engine": engine, "model_dir": model_dir,
           "client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                                   max_retries=0, timeout=300)}
    server.should_exit = True
    thread.join(timeout=10)
    engine.stop()


def reference(served, text: str, max_new_tokens: int) -> tuple[str, int, int]:
    """(answer, prompt tokens, answer tokens) by plain transformers greedy `generate`."""
    import torch

    engine = served["engine"]
    tok = engine.tokenizer
    ids = tok.apply_chat_template(messages(text), add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    with torch.no_grad():
        out = engine.model.generate(torch.tensor([ids], device=engine.model.device),
                                    max_new_tokens=max_new_tokens,
                                    do_sample=False)[0, len(ids):].tolist()
    if tok.eos_token_id in out:
        out = out[:out.index(tok.eos_token_id) + 1]
    return tok.decode(out, skip_special_tokens=True), len(ids), len(out)


def ask(served, text: str, stream: bool = False, max_tokens: int = 12, **kw):
    """(content, finish_reason, usage) through the official client."""
    client = served["client"]
    if not stream:
        r = client.chat.completions.create(model="tiny", messages=messages(text),
                                           max_tokens=max_tokens, temperature=0, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    parts, reason, usage = [], None, None
    for chunk in client.chat.completions.create(
            model="tiny", messages=messages(text), max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(parts), reason, usage


def test_health_and_models(served):
    assert httpx.get(served["url"] + "/health").json()["status"] == "ok"
    assert [m.id for m in served["client"].models.list()] == ["tiny"]
    assert served["client"].models.retrieve("tiny").id == "tiny"


def test_plain_and_streamed_answers_match_transformers_and_usage(served):
    text = PROMPTS[3]
    expected, prompt_tokens, answer_tokens = reference(served, text, 12)
    assert len(expected) > 10
    for stream in (False, True):
        content, reason, usage = ask(served, text, stream=stream)
        assert content == expected
        assert reason == ("length" if answer_tokens == 12 else "stop")
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == \
            (prompt_tokens, answer_tokens, prompt_tokens + answer_tokens)


def test_stream_wire_format(served):
    """The events the official client parses: role first, content chunks, finish_reason,
    then `data: [DONE]`."""
    with httpx.stream("POST", served["url"] + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "messages": messages("Hi"), "max_tokens": 5,
                            "stream": True, "temperature": 0}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "length"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_16_concurrent_requests_match_single_requests(served):
    engine = served["engine"]
    single = [ask(served, p, stream=i % 2 == 1, max_tokens=16) for i, p in enumerate(PROMPTS)]
    engine.peak_in_flight = 0
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda ip: ask(served, ip[1], stream=ip[0] % 2 == 0,
                                                max_tokens=16), enumerate(PROMPTS)))
    for (a, ra, ua), (b, rb, ub) in zip(single, together):
        assert (a, ra, ua.completion_tokens) == (b, rb, ub.completion_tokens)
    assert 1 < engine.peak_in_flight <= MAX_BATCH  # batched, never beyond --max-batch


def test_sampling_parameters(served):
    client, text = served["client"], PROMPTS[5]
    greedy = ask(served, text, max_tokens=16)[0]

    def sample(**kw):
        r = client.chat.completions.create(model="tiny", messages=messages(text),
                                           max_tokens=16, **kw)
        return [c.message.content for c in r.choices], r.usage

    three, usage = sample(n=3, temperature=1.0, seed=7)
    assert len(three) == 3 and len(set(three)) > 1 and usage.completion_tokens <= 48
    assert sample(n=3, temperature=1.0, seed=7)[0] == three  # a seed repeats
    assert sample(n=2, temperature=0)[0] == [greedy, greedy]
    assert sample(temperature=1.0, top_p=1e-6, seed=1)[0] == [greedy]  # only the top token
    stop = greedy[4:7]
    content, reason, _ = ask(served, text, max_tokens=16, stop=["\x00never", stop])
    assert (content, reason) == (greedy[:greedy.index(stop)], "stop")


BAD = [  # (body, status, param, code)
    (b"{not json", 400, None, "invalid_json"),
    ({"model": "tiny"}, 400, "messages", "missing_required_parameter"),
    ({"model": "tiny", "messages": []}, 400, "messages", "empty_array"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.[0].role", "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 42}]}, 400,
     "messages.[0].content", "invalid_type"),
    ({"model": "tiny", "messages": [{"role": "user", "content": {"a": 1}}]}, 400,
     "messages.[0].content", "invalid_type"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000},
     400, "max_tokens", "context_length_exceeded"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi " * 300}]}, 400,
     "messages", "context_length_exceeded"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n",
     "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": MAX_BATCH + 1},
     400, "n", "invalid_value"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
     400, "temperature", "invalid_value"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model",
     "model_not_found"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_are_answered_before_any_stream(served, stream):
    for body, status, param, code in BAD:
        if isinstance(body, dict):
            body = json.dumps({**body, "stream": stream}).encode()
        r = httpx.post(served["url"] + "/v1/chat/completions", content=body,
                       headers={"Authorization": f"Bearer {KEY}",
                                "Content-Type": "application/json"})
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert (error["type"], error["param"], error["code"]) == \
            ("invalid_request_error", param, code), body
    wrong_key = openai.OpenAI(base_url=served["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong_key.chat.completions.create(model="tiny", messages=messages("hi"), stream=stream)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        served["client"].chat.completions.create(model="nope", messages=messages("hi"),
                                                 stream=stream)
    assert ask(served, "still up?", max_tokens=3)[1] == "length"  # the server still answers


def test_disconnect_mid_stream_frees_the_slot(served):
    engine = served["engine"]
    before = engine.cancelled_sequences
    with httpx.stream("POST", served["url"] + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "messages": messages("Tell me a long story"),
                            "max_tokens": 200, "stream": True, "temperature": 0}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)  # a token or two, then hang up
    deadline = time.time() + 60
    while (engine.in_flight() or engine.cancelled_sequences == before) \
            and time.time() < deadline:
        time.sleep(0.02)
    assert engine.cancelled_sequences == before + 1 and engine.in_flight() == 0
    assert ask(served, PROMPTS[0], max_tokens=4)[1] == "length"


def test_end_of_turn_token_ends_the_answer(served, cache_dir):
    """The 4-step SFT model answers with <|end|> at once: finish_reason "stop", empty text,
    the end-of-turn token counted."""
    from rlhf.serve.app import load_model_dir
    from rlhf.serve.engine import Engine, Finish, Request, SamplingParams, Token

    model, tokenizer, eos, _ = load_model_dir(str(cache_dir / "deploy_export"))
    engine = Engine(model, tokenizer, max_batch=2, eos_token_ids=eos).start()
    events, done = [], threading.Event()
    ids = tokenizer.apply_chat_template(messages("Hi"), add_generation_prompt=True,
                                        tokenize=True, return_dict=False)

    def emit(event):
        events.append(event)
        if isinstance(event, Finish):
            done.set()
    engine.submit(Request(ids, SamplingParams(max_tokens=20, temperature=0), emit))
    assert done.wait(120)
    engine.stop()
    assert [e for e in events if isinstance(e, Token)] == []
    assert events[-1] == Finish(0, "stop", 1)


def test_rlhf_chat_through_stdin(served):
    """Multi-turn with the chat template, /reset and /exit, driven through stdin as a user
    types; each streamed answer is the server's greedy answer to the same conversation."""
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.chat", str(served["model_dir"]), "--system",
         "You are a support agent.", "--temperature", "0", "--max-new-tokens", "6"],
        input="Hello\nWhere is my order?\n/reset\n/bogus\nHello\n/exit\nnever read\n",
        text=True, capture_output=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [a[:-1] for a in proc.stdout.split("assistant> ")[1:]]  # each ends with "\n"
    assert len(answers) == 3  # nothing after /exit
    assert "[conversation reset]" in proc.stderr and "unknown command /bogus" in proc.stderr
    client = served["client"]

    def server(history):
        return client.chat.completions.create(model="tiny", messages=history, max_tokens=6,
                                              temperature=0).choices[0].message.content
    first = server(messages("Hello"))
    assert answers[0] == first and answers[2] == first  # /reset forgot the first two turns
    second = messages("Hello") + [{"role": "assistant", "content": first.strip()},
                                  {"role": "user", "content": "Where is my order?"}]
    assert answers[1] == server(second)
