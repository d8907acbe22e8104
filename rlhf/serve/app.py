"""The OpenAI-compatible web app (FastAPI): `POST /v1/chat/completions` (plain and streamed as
server-sent events), `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`.

Every request is checked (rlhf/serve/protocol.py), tokenized with the chat template and checked
against the context before it is queued, so a bad request is answered with 400/401/404 and the
OpenAI error body before any stream starts. Generation runs on the engine's thread
(rlhf/serve/engine.py); its events reach the request's asyncio queue through
`call_soon_threadsafe`. A client that goes away (mid-stream or while waiting for a plain answer)
cancels its request, which frees its slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.serve import engine as eng
from rlhf.serve.protocol import ApiError, ChatRequest, parse_chat_request

DISCONNECT_POLL_S = 0.25


def load_model_dir(path: str, dtype: str = "auto", device: str | None = None):
    """(model, tokenizer, end-of-turn token ids) from an exported directory, any Hugging Face
    checkpoint directory, or a stage's run directory (its model/). Plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    p = Path(path).expanduser()
    if not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        p = p / "model"
    if not (p / "config.json").exists():
        raise SystemExit(f"{path}: no config.json; give an exported model directory "
                         "(rlhf stage=export), a Hugging Face checkpoint or a run directory")
    tokenizer = AutoTokenizer.from_pretrained(p)
    if not tokenizer.chat_template:
        raise SystemExit(f"{path}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(
        p, dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    try:
        gen = GenerationConfig.from_pretrained(p)
    except OSError:
        gen = model.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in eos + [tokenizer.eos_token_id] if e is not None]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, sorted(set(eos)), getattr(gen, "max_new_tokens", None)


def create_app(engine: eng.Engine, model_id: str, api_key: str | None = None,
               default_max_tokens: int | None = None) -> FastAPI:
    app = FastAPI(title="rlhf-serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    tokenizer = engine.tokenizer

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = f"{request.method} {request.url.path}: {err.detail}"
        return JSONResponse(ApiError(err.status_code, message, None, code).body(),
                            status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err: RequestValidationError):
        return JSONResponse(ApiError(400, str(err)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):  # a bug, never bad input
        body = ApiError(500, f"internal error: {type(err).__name__}: {err}", None, None,
                        "server_error").body()
        return JSONResponse(body, status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided. Pass the key given to rlhf-serve "
                           "--api-key as `Authorization: Bearer <key>`.", None,
                           "invalid_api_key")

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "rlhf"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": engine.in_flight(), "waiting": len(engine.waiting)}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        check_key(request)
        if name != model_id:
            raise unknown_model(name)
        return model_card()

    def unknown_model(name: str) -> ApiError:
        return ApiError(404, f"The model `{name}` does not exist; this server serves "
                        f"`{model_id}`.", "model", "model_not_found")

    def prompt_ids(req: ChatRequest) -> list[int]:
        try:
            text = tokenizer.apply_chat_template(req.messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as err:  # the template's own checks (jinja raise_exception)
            raise ApiError(400, f"The chat template rejects these messages: {err}",
                           "messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "The messages give an empty prompt.", "messages")
        return ids

    def max_tokens(req: ChatRequest, prompt_len: int) -> int:
        room = engine.context - prompt_len
        wanted = req.max_tokens or min(room, default_max_tokens or room)
        if room < 1 or wanted > room:
            raise ApiError(400, f"This model's maximum context length is {engine.context} "
                           f"tokens. However, you requested {prompt_len + wanted} tokens "
                           f"({prompt_len} in the messages, {wanted} in the completion). Please "
                           "reduce the length of the messages or completion.",
                           "max_tokens" if req.max_tokens else "messages",
                           "context_length_exceeded")
        return wanted

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        req = parse_chat_request(await request.body(), engine.max_batch)
        if req.model != model_id:
            raise unknown_model(req.model)
        ids = prompt_ids(req)
        params = eng.SamplingParams(max_tokens=max_tokens(req, len(ids)),
                                    temperature=req.temperature, top_p=req.top_p,
                                    stop=req.stop, seed=req.seed, n=req.n)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = engine.submit(eng.Request(
            ids, params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_id, "system_fingerprint": None}
        if req.stream:
            return EngineStream(stream(req, job, events, base, len(ids)), engine, job)
        return await complete(request, req, job, events, base, len(ids))

    async def complete(request, req, job, events, base, prompt_tokens):
        texts, reasons, completion = [[] for _ in range(req.n)], [None] * req.n, 0
        try:
            while None in reasons:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        engine.cancel(job)
                        return JSONResponse({}, status_code=499)
                    continue
                if isinstance(event, eng.Token):
                    texts[event.choice].append(event.text)
                elif isinstance(event, eng.Finish):
                    reasons[event.choice] = event.reason
                    completion += event.completion_tokens
                else:
                    raise ApiError(500, event.message, None, None, "server_error")
        finally:
            if None in reasons:
                engine.cancel(job)
        return {**base, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant",
                                                     "content": "".join(texts[i]),
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": reasons[i]}
                            for i in range(req.n)],
                "usage": usage(prompt_tokens, completion)}

    async def stream(req, job, events, base, prompt_tokens):
        def chunk(choices, **extra) -> str:
            body = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            if req.include_usage and "usage" not in extra:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        def choice(i, delta, reason=None):
            return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]

        for i in range(req.n):
            yield chunk(choice(i, {"role": "assistant", "content": "", "refusal": None}))
        done, completion = 0, 0
        while done < req.n:
            event = await events.get()
            if isinstance(event, eng.Token):
                yield chunk(choice(event.choice, {"content": event.text}))
            elif isinstance(event, eng.Finish):
                done += 1
                completion += event.completion_tokens
                yield chunk(choice(event.choice, {}, event.reason))
            else:  # the official client raises APIError on an `error` event
                body = ApiError(500, event.message, None, None, "server_error").body()
                yield f"data: {json.dumps(body)}\n\n"
                return
        if req.include_usage:
            yield chunk([], usage=usage(prompt_tokens, completion))
        yield "data: [DONE]\n\n"

    return app


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class EngineStream(StreamingResponse):
    """A server-sent event stream whose request is cancelled in the engine however the
    response ends: finished, the client gone (Starlette cancels the stream), or an error."""

    def __init__(self, content, engine: eng.Engine, job: eng.Request):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.engine, self.job = engine, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)  # a no-op for a finished request
