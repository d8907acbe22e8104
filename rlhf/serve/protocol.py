"""OpenAI Chat Completions requests: checked field by field into a `ChatRequest`, or an
`ApiError` that the app answers with the body the official client expects,
`{"error": {"message", "type", "param", "code"}}`, before any stream starts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = \
            status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_chat_request(raw: bytes, max_n: int) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"We could not parse the JSON body of your request ({err}).",
                       None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter (a string)", "model",
                  "missing_required_parameter" if model is None else "invalid_type")
    req = ChatRequest(model=model, messages=parse_messages(body.get("messages")))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad(f"'stream' must be a boolean, got {stream!r}", "stream", "invalid_type")
    req.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
        if not req.stream:
            raise bad("'stream_options' is only allowed when 'stream' is true",
                      "stream_options")
        req.include_usage = bool(options.get("include_usage"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None:
        if not is_int(max_tokens) or max_tokens < 1:
            raise bad(f"Invalid '{param}': {max_tokens!r}; expected an integer of at least 1",
                      param)
        req.max_tokens = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not is_number(temperature) or not 0 <= temperature <= 2:
            raise bad(f"Invalid 'temperature': {temperature!r}; expected a number from 0 to 2",
                      "temperature")
        req.temperature = float(temperature)
    top_p = body.get("top_p")
    if top_p is not None:
        if not is_number(top_p) or not 0 < top_p <= 1:
            raise bad(f"Invalid 'top_p': {top_p!r}; expected a number in (0, 1]", "top_p")
        req.top_p = float(top_p)
    n = body.get("n")
    if n is not None:
        if not is_int(n) or not 1 <= n <= max_n:
            raise bad(f"Invalid 'n': {n!r}; this server generates from 1 to {max_n} choices "
                      "per request (its --max-batch)", "n")
        req.n = n
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
                or len(stops) > MAX_STOP:
            raise bad(f"Invalid 'stop': {stop!r}; expected a non-empty string or a list of up "
                      f"to {MAX_STOP} of them", "stop")
        req.stop = stops
    seed = body.get("seed")
    if seed is not None:
        if not is_int(seed):
            raise bad(f"Invalid 'seed': {seed!r}; expected an integer", "seed", "invalid_type")
        req.seed = seed
    if body.get("logprobs"):
        raise bad("'logprobs' is not supported by this server", "logprobs", "unsupported_value")
    if body.get("tools") or body.get("functions"):
        param = "tools" if body.get("tools") else "functions"
        raise bad("tool calling is not supported by this server", param, "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise bad("only response_format {\"type\": \"text\"} is supported", "response_format",
                  "unsupported_value")
    return req


def parse_messages(messages) -> list[dict]:
    if messages is None:
        raise bad("Missing required parameter: 'messages'.", "messages",
                  "missing_required_parameter")
    if not isinstance(messages, list):
        raise bad("Invalid 'messages': expected an array of messages.", "messages",
                  "invalid_type")
    if not messages:
        raise bad("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                  "messages", "empty_array")
    out = []
    for i, message in enumerate(messages):
        param = f"messages.[{i}]"
        if not isinstance(message, dict):
            raise bad(f"Invalid '{param}': expected an object with 'role' and 'content'.",
                      param, "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"Invalid value for '{param}.role': {role!r}. Supported values are: "
                      f"{', '.join(repr(r) for r in ROLES)}.", f"{param}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise bad(f"Invalid '{param}.content': only text content parts "
                          "({\"type\": \"text\", \"text\": ...}) are supported.",
                          f"{param}.content", "invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"Invalid type for '{param}.content': expected a string, got "
                      f"{type(content).__name__ if content is not None else 'null'}.",
                      f"{param}.content", "invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out
