"""Keeps secrets out of logged configs: values under secret-looking keys, and values that look
like credentials wherever they are (W&B, Hugging Face, OpenAI-style keys)."""

from __future__ import annotations

import re

REDACTED = "***"
# whole name parts only: `hf_token` is a secret, `max_new_tokens` and `tokenizer_path` are not
_SECRET_KEY = re.compile(r"(^|_)(api_?key|secret(_key)?|access_key|private_key|token|password|"
                         r"passwd|credentials?|auth)$", re.I)
_SECRET_TEXT = (r"(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,}|\b[0-9a-f]{40}\b|"
                r"local-[0-9a-f]{40,}|ghp_[A-Za-z0-9]{30,})")
_SECRET_VALUE = re.compile(f"^{_SECRET_TEXT}$")
_SECRET_IN_TEXT = re.compile(_SECRET_TEXT)
# `key=value` and `key: value` inside a text: an override, Hydra's override_dirname
# (`a=1,b.api_key=x`), a mapping given on the command line (`[{_target_: f, api_key: x}]`)
_ASSIGNMENT = re.compile(r"(?<![\w.-])((?:[+~]*[\w-]+\.)*([\w-]+)(?:=|:\s*))"
                         r"('[^']*'|\"[^\"]*\"|\[[^\]\[{]*\]|[^,}\]\[{\n]*)")


def is_secret_key(name: str) -> bool:
    """A key whose value is a secret (`hf_token`, `api_key`), by its last part."""
    return bool(_SECRET_KEY.search(name))


def redact(node):
    """Return a copy of a plain dict/list config tree with secret values replaced by ***."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and node[k] not in (None, "")
                    else redact(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    if isinstance(node, str) and _SECRET_VALUE.match(node.strip()):
        return REDACTED
    return node


def redact_text(text: str) -> str:
    """A text with the values of secret keys and every credential-shaped word replaced."""
    text = _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED if is_secret_key(m.group(2))
                           else m.group(0), text)
    return _SECRET_IN_TEXT.sub(REDACTED, text)


def redact_saved(node):
    """`redact`, and `redact_text` on every text left: for the files Hydra writes (.hydra/,
    multirun.yaml), whose override lists hold secrets given on the command line."""
    node = redact(node)
    if isinstance(node, dict):
        return {k: redact_saved(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact_saved(v) for v in node]
    return redact_text(node) if isinstance(node, str) else node


def redact_arg(arg: str) -> str:
    """A command-line override with secrets removed: `hf_token=...` or any credential inside."""
    return redact_text(arg)
