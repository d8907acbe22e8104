"""rlhf-serve <model dir> [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch N]

Serves an exported model (rlhf stage=export), any Hugging Face chat model directory or a
stage's run directory behind the OpenAI Chat Completions API, as `vllm serve` does:

    rlhf-serve outputs/demo/<run>/export/model --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "outputs/demo/<run>/export/model", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

API_KEY_ENV = "RLHF_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rlhf-serve", description="Serve a chat model behind the OpenAI Chat Completions "
        "API (POST /v1/chat/completions, GET /v1/models, GET /health).")
    parser.add_argument("model", help="exported model directory (rlhf stage=export), Hugging "
                        "Face checkpoint directory, or a stage's run directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help="require `Authorization: Bearer KEY` (default: $RLHF_API_KEY; "
                        "none: no key)")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="most sequences generated at once (a request with n choices "
                        "takes n); the others wait in a queue (default 16)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the model path as given)")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="torch device (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        parser.error(f"--max-batch={args.max_batch} must be at least 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port={args.port} is not a TCP port")
    return args


def build(args: argparse.Namespace):
    """(FastAPI app, started engine) for these arguments."""
    from rlhf.serve.app import create_app, load_model_dir
    from rlhf.serve.engine import Engine

    model, tokenizer, eos, default_max = load_model_dir(args.model, args.dtype, args.device)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, eos_token_ids=eos).start()
    app = create_app(engine, args.served_model_name or args.model, args.api_key, default_max)
    return app, engine


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    if not is_loopback(args.host) and not args.api_key:
        print(f"rlhf-serve: warning: listening on {args.host} without --api-key: anyone who "
              "can reach this port can use the model", file=sys.stderr)
    app, engine = build(args)
    print(f"rlhf-serve: serving {args.served_model_name or args.model} on "
          f"http://{args.host}:{args.port}/v1 (max batch {args.max_batch})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=5)
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
