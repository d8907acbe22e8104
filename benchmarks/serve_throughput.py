"""`rlhf-serve` vs. a plain sequential transformers `generate` loop: requests/s and time to
first token at concurrency 1, 4 and 16, on the demo model and the demo's held-out prompts.

    python benchmarks/serve_throughput.py                      # tiny demo model, CPU, ~2 min
    python benchmarks/serve_throughput.py --model <exported dir> --requests 64

Both answer the same prompts greedily with the same `--max-tokens` (the loop stops at the same
end-of-turn token, so both do the same work; the generated token totals are printed).

- server: `rlhf-serve <model> --max-batch 16` in its own process; `c` client threads in a
  closed loop (each sends its next request when its last answer is complete), streaming, so
  the time to the first content chunk is measured as a client sees it (HTTP included).
- loop: one process answering one prompt at a time with `model.generate` (a `TextStreamer`-
  style callback marks the first token). It is run once; for concurrency `c` the same closed
  loop of `c` clients is replayed against its measured timings (a sequential server: a request
  waits for the ones before it), so its requests/s is the same at every concurrency and its
  time to first token grows with the queue.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CACHE = Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache" / "rlhf"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(CACHE / "demo_tiny"))
    parser.add_argument("--prompts", default=str(CACHE / "demo_data" / "eval_prompts.jsonl"))
    parser.add_argument("--requests", type=int, default=48, help="per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-batch", type=int, default=16)
    return parser.parse_args()


def ensure_demo(args) -> None:
    if args.model == str(CACHE / "demo_tiny"):
        from rlhf.models.demo_tiny import DemoModelSpec, ensure_demo_model
        ensure_demo_model(args.model, DemoModelSpec())
    if args.prompts == str(CACHE / "demo_data" / "eval_prompts.jsonl"):
        from data_tools.demo.generate import DemoSpec, ensure_demo_data
        ensure_demo_data(CACHE / "demo_data", DemoSpec())


def load_prompts(path: str, n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [rows[i % len(rows)]["prompt"] for i in range(n)]


# ---------------------------------------------------------------- the plain loop
def plain_loop(model_dir: str, prompts: list, max_tokens: int) -> list[tuple[float, float, int]]:
    """(seconds to first token, seconds in all, tokens) per prompt, one after the other."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # the first call is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    timings = []
    for i, messages in enumerate([prompts[0]] + prompts):  # the first one warms up
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        streamer, start = FirstToken(), time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 streamer=streamer)
        end = time.perf_counter()
        if i:
            timings.append((streamer.first - start, end - start,
                            out.shape[1] - ids["input_ids"].shape[1]))
    return timings


def replay(timings: list[tuple[float, float, int]], clients: int) -> tuple[float, list[float]]:
    """A sequential server's requests/s and time to first token under `clients` closed-loop
    clients, from its measured per-request timings."""
    ready = [0.0] * clients  # when each client sends its next request
    server_free, ttfts = 0.0, []
    for k, (first, total, _) in enumerate(timings):
        client = min(range(clients), key=lambda c: ready[c])
        start = max(server_free, ready[client])
        ttfts.append(start + first - ready[client])
        server_free = ready[client] = start + total
    return len(timings) / server_free, ttfts


# ---------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.serve.cli", args.model, "--port",
                             str(port), "--max-batch", str(args.max_batch), "--log-level",
                             "warning", "--served-model-name", "bench"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("rlhf-serve did not start")


def one_request(client, url: str, messages: list, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first content chunk, completion tokens) of one streamed request."""
    start, first, usage = time.perf_counter(), None, 0
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    return (first or time.perf_counter()) - start, usage


def run_clients(url: str, prompts: list, clients: int, max_tokens: int):
    import httpx

    queue, lock, ttfts, tokens = list(prompts), threading.Lock(), [], []

    def client_loop():
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    messages = queue.pop(0)
                ttft, n = one_request(client, url, messages, max_tokens)
                with lock:
                    ttfts.append(ttft)
                    tokens.append(n)
    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(prompts) / (time.perf_counter() - start), ttfts, sum(tokens)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} / {max(values) * 1000:6.0f}"


def main() -> None:
    args = parse_args()
    ensure_demo(args)
    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = load_prompts(args.prompts, args.requests)
    print(f"model {args.model}, {args.requests} requests per level, max_tokens "
          f"{args.max_tokens}, greedy; {os.cpu_count()} CPUs, torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)

    proc, url = start_server(args)
    served = {}
    try:
        run_clients(url, prompts[:4], 4, args.max_tokens)  # warm-up
        for c in levels:
            served[c] = run_clients(url, prompts, c, args.max_tokens)
            print(f"  server, concurrency {c}: {served[c][0]:.2f} req/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    timings = plain_loop(args.model, prompts, args.max_tokens)
    loop_tokens = sum(t[2] for t in timings)
    print(f"\ngenerated tokens per level: server {served[levels[0]][2]}, loop {loop_tokens}\n")
    print("concurrency | rlhf-serve req/s | loop req/s | speed-up | TTFT ms median / max: "
          "rlhf-serve | loop")
    for c in levels:
        rps, ttfts, _ = served[c]
        loop_rps, loop_ttfts = replay(timings, c)
        print(f"{c:11d} | {rps:16.2f} | {loop_rps:10.2f} | {rps / loop_rps:7.2f}x | "
              f"{ms(ttfts)} | {ms(loop_ttfts)}")


if __name__ == "__main__":
    main()
