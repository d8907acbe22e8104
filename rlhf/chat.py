"""rlhf-chat <model dir>: chat with a model in the terminal.

    rlhf-chat outputs/demo/<run>/export/model --system "You are a support agent."

Multi-turn through the model's chat template; the answer is printed token by token as it is
generated. Commands: /reset (forget the conversation, keep the system prompt), /exit (or
end of input). When the conversation outgrows the model's context, the oldest turns are
dropped (the system prompt stays). Plain transformers: any Hugging Face chat model directory
loads, as does a stage's run directory (its model/).
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlhf-chat", description="Chat with a model in the "
                                     "terminal. Commands: /reset, /exit.")
    parser.add_argument("model", help="exported model directory (rlhf stage=export), Hugging "
                        "Face checkpoint directory, or a stage's run directory")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer (default: generation_config.json's, else 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("--temperature must be >= 0 and --top-p in (0, 1]")
    return args


class Chat:
    def __init__(self, model, tokenizer, eos: list[int], system: str | None,
                 max_new_tokens: int, temperature: float, top_p: float):
        self.model, self.tokenizer, self.eos = model, tokenizer, eos
        self.system, self.max_new_tokens = system, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self) -> list[int]:
        """The conversation as token ids, the oldest turns dropped until the answer fits."""
        while True:
            ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True,
                                                     tokenize=False)
            ids = self.tokenizer(ids, add_special_tokens=False)["input_ids"]
            turns = len(self.messages) - bool(self.system)
            if len(ids) + self.max_new_tokens <= self.context or turns <= 1:
                return ids[-(self.context - 1):]
            del self.messages[int(bool(self.system))]  # the oldest turn after the system
            print("[the oldest turn no longer fits the context and was dropped]",
                  file=sys.stderr)

    def answer(self, text: str, out=sys.stdout) -> str:
        import torch
        from transformers import TextStreamer

        self.messages.append({"role": "user", "content": text})
        ids = torch.tensor([self.prompt()], device=self.model.device)
        streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        streamer.on_finalized_text = lambda piece, stream_end=False: print(
            piece, end="" if not stream_end else "\n", file=out, flush=True)
        sampling = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p) \
            if self.temperature > 0 else dict(do_sample=False)
        max_new = min(self.max_new_tokens, self.context - ids.shape[1])
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                eos_token_id=self.eos, pad_token_id=self.tokenizer.pad_token_id,
                streamer=streamer, **sampling)
        new = output[0, ids.shape[1]:].tolist()
        reply = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from rlhf.serve.app import load_model_dir

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model, tokenizer, eos, default_max = load_model_dir(args.model, args.dtype)
    chat = Chat(model, tokenizer, eos, args.system, args.max_new_tokens or default_max or 256,
                args.temperature, args.top_p)
    interactive = sys.stdin.isatty()
    print(f"rlhf-chat: {args.model}. /reset starts over, /exit quits.", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"[unknown command {text.split()[0]}; /reset or /exit]", file=sys.stderr)
            continue
        print("assistant> ", end="", flush=True)
        chat.answer(text)


if __name__ == "__main__":
    main()
