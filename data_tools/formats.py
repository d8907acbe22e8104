"""The training formats, each defined once: what `rlhf-data` writes is what every stage reads.

Both sides call these functions. `rlhf-data` checks every cleaned record with them as the last
step before writing it (a record that fails goes to quarantine.jsonl with its reason); the
stages check every row they load with them (a row that fails goes to <run dir>/bad_rows.jsonl
and the stage stops, naming file, line and field). So a row `rlhf-data` keeps is a row every
stage accepts, and a row a stage would reject never leaves `rlhf-data`.

One JSON object per row:
  sft       {"messages": [{"role": ..., "content": ...}, ...]}
  prompts   {"prompt": [messages], ...}                  other columns are kept (reward functions)
  pairs     {"prompt": [messages], "chosen": answer, "rejected": answer, "margin": number | null}
  rankings  {"prompt": [messages], "responses": [answer, ...], "ranks": [...], "scores": [...]}

The rules; [the reason key] a failure reports (`category` in quarantine.jsonl and
bad_rows.jsonl):
  row       a JSON object                                               [wrong_type]
  messages  a non-empty list of {role, content}; role: system, user or  [empty, missing_field,
            assistant; content: text                                     unknown_role, wrong_type]
  sft       `messages` ends with an assistant turn that is not blank    [role_order, empty_answer]
  prompt    messages, or a plain string (one user turn), ending with a  [role_order, empty_prompt]
            user turn that is not blank
  answer    text, {"role": "assistant", "content": text}, or a list     [wrong_type, role_order,
            holding one such message; not blank                          empty_answer]
  pair      `chosen` and `rejected` differ                              [pair_identical]
            `margin`: a number or null                                  [wrong_type]
  ranking   K >= 2 answers                                   [ranking_needs_two_responses]
            no answer twice                                  [ranking_duplicate_response]
            `ranks`: one integer per answer, lower is better, equal ones tie; default: best
            first, or from `scores` when only they are given [ranking_bad_ranks]
            `scores`: one finite number per answer, higher is better   [ranking_bad_scores]
            a better rank never has a lower score            [ranking_ranks_contradict_scores]
            at least two different ranks (all tied: nothing to learn)  [ranking_all_tied]

Every check returns the row in its normal form (answers as assistant messages, ranks filled in)
or raises `BadRow(message, category, field)`; the message names the field.
"""

from __future__ import annotations

import math

from data_tools.ranking import ranks_from_scores

ROLES = ("system", "user", "assistant")


class BadRow(ValueError):
    """A row that cannot be used. The message is the reason (it names the field), `category`
    a short key for counting, `field` the field at fault (None: the whole row)."""

    def __init__(self, message: str, category: str = "invalid_row", field: str | None = None):
        super().__init__(message)
        self.category = category
        self.field = field


def check_object(row) -> dict:
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, not {type(row).__name__}", "wrong_type")
    return row


def check_text(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise BadRow(f"`{field}` is missing, expected text", "missing_field", field)
    raise BadRow(f"`{field}` must be text, not {type(value).__name__}", "wrong_type", field)


def check_number(value, field: str, category: str = "wrong_type") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow(f"`{field}` must be a number, not {value!r}", category, field)
    if not math.isfinite(value):
        raise BadRow(f"`{field}` must be a finite number, not {value!r}", category, field)
    return float(value)


def check_messages(value, field: str, final_role: str | None = None) -> list[dict]:
    """A non-empty list of {role, content} turns (other keys are dropped); with `final_role`,
    the last turn has that role and is not blank."""
    if value is None:
        raise BadRow(f"`{field}` is missing; give a list of {{role, content}} messages",
                     "missing_field", field)
    if not isinstance(value, list):
        raise BadRow(f"`{field}` must be a list of {{role, content}} messages, not "
                     f"{type(value).__name__}", "wrong_type", field)
    if not value:
        needs = {"assistant": "a user turn and an assistant answer",
                 "user": "a user turn"}.get(final_role or "", "at least one turn")
        raise BadRow(f"`{field}` is empty; it needs {needs}", "empty", field)
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise BadRow(f"`{where}` must be an object with `role` and `content`",
                         "missing_field" if isinstance(msg, dict) else "wrong_type", where)
        role = msg["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise BadRow(f"`{where}.role` is {role!r}; use one of {', '.join(ROLES)} "
                         "(`rlhf-data` maps other speaker names)", "unknown_role",
                         f"{where}.role")
        out.append({"role": role, "content": check_text(msg["content"], f"{where}.content")})
    if final_role:
        last = len(out) - 1
        if out[last]["role"] != final_role:
            raise BadRow(f"`{field}` ends with a {out[last]['role']!r} turn; it must end with "
                         f"{final_role!r}", "role_order", field)
        if not out[last]["content"].strip():
            what = "the answer" if final_role == "assistant" else "the question"
            raise BadRow(f"`{field}[{last}].content` is blank; {what} needs text",
                         "empty_answer" if final_role == "assistant" else "empty_prompt",
                         f"{field}[{last}].content")
    return out


def check_prompt(value, field: str = "prompt") -> list[dict]:
    """Messages ending with a user turn that is not blank; a plain string is one user turn."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    return check_messages(value, field, final_role="user")


def check_answer(value, field: str) -> dict:
    """Text, an assistant message, or a list holding one -> {"role": "assistant", "content"}."""
    if isinstance(value, list):
        if len(value) != 1:
            raise BadRow(f"`{field}` must be one answer (text or one assistant message), not a "
                         f"list of {len(value)}", "wrong_type", field)
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", "assistant")
        if role != "assistant":
            raise BadRow(f"`{field}.role` is {role!r}; an answer is an 'assistant' message",
                         "role_order", f"{field}.role")
        text = check_text(value.get("content"), f"{field}.content")
    else:
        text = check_text(value, field)
    if not text.strip():
        raise BadRow(f"`{field}` is blank; an answer needs text", "empty_answer", field)
    return {"role": "assistant", "content": text}


def _require(row: dict, keys: tuple[str, ...], example: str) -> None:
    for key in keys:
        if key not in row:
            raise BadRow(f"no `{key}` field; {example}", "missing_field", key)


# ----------------------------------------------------------------- the four formats
def sft_row(row) -> dict:
    """{"messages": [...]} ending with the assistant's answer; other fields are dropped."""
    _require(check_object(row), ("messages",),
             'an SFT row is {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
    return {"messages": check_messages(row["messages"], "messages", final_role="assistant")}


def prompt_row(row) -> dict:
    """{"prompt": [...]} ending with a user turn; other fields are kept (the demo's `product`
    and `intent` reach the reward functions)."""
    _require(check_object(row), ("prompt",),
             'a prompt row is {"prompt": [{"role": "user", "content": ...}]}')
    return {**row, "prompt": check_prompt(row["prompt"])}


def pair_row(row) -> dict:
    """-> {"prompt", "chosen", "rejected" (assistant messages), "margin" (float or None)}."""
    _require(check_object(row), ("prompt", "chosen", "rejected"),
             'a preference row is {"prompt": [...], "chosen": ..., "rejected": ...}')
    prompt = check_prompt(row["prompt"])
    chosen = check_answer(row["chosen"], "chosen")
    rejected = check_answer(row["rejected"], "rejected")
    if chosen["content"].strip() == rejected["content"].strip():
        raise BadRow("`chosen` and `rejected` are the same text; a pair needs two different "
                     "answers", "pair_identical", "rejected")
    margin = row.get("margin")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "margin": None if margin is None else check_number(margin, "margin")}


def _check_ranks(ranks, k: int) -> list[int]:
    usage = f"`ranks` must give one integer rank per response ({k}); rank 1 is best, equal " \
            "ranks are ties"
    if not isinstance(ranks, list) or len(ranks) != k:
        raise BadRow(usage, "ranking_bad_ranks", "ranks")
    out = []
    for r in ranks:
        if isinstance(r, float) and r.is_integer():
            r = int(r)
        if isinstance(r, bool) or not isinstance(r, int):
            raise BadRow(f"{usage}; {r!r} is not an integer", "ranking_bad_ranks", "ranks")
        out.append(r)
    return out


def _check_scores(scores, k: int) -> list[float]:
    if not isinstance(scores, list) or len(scores) != k:
        raise BadRow(f"`scores` must give one number per response ({k}); higher is better",
                     "ranking_bad_scores", "scores")
    return [check_number(s, f"scores[{i}]", "ranking_bad_scores") for i, s in enumerate(scores)]


def ranking_row(row) -> dict:
    """-> {"prompt", "responses" (assistant messages), "ranks" (ints), "scores" (or None)}."""
    _require(check_object(row), ("prompt", "responses"),
             'a ranking row is {"prompt": [...], "responses": [...]} with `ranks` or `scores` '
             "(best first if neither)")
    prompt = check_prompt(row["prompt"])
    responses = row["responses"]
    if not isinstance(responses, list):
        raise BadRow(f"`responses` must be a list of answers, not {type(responses).__name__}",
                     "wrong_type", "responses")
    if len(responses) < 2:
        raise BadRow(f"`responses` needs K >= 2 answers to rank, found {len(responses)}",
                     "ranking_needs_two_responses", "responses")
    answers = [check_answer(r, f"responses[{i}]") for i, r in enumerate(responses)]
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        j = first_seen.setdefault(answer["content"].strip(), i)
        if j != i:
            raise BadRow(f"`responses` lists the same answer twice (responses[{j}] and "
                         f"responses[{i}]); rank each answer once", "ranking_duplicate_response",
                         f"responses[{i}]")
    k = len(answers)
    scores = None if row.get("scores") is None else _check_scores(row["scores"], k)
    if row.get("ranks") is not None:
        ranks = _check_ranks(row["ranks"], k)
    elif scores is not None:
        ranks = ranks_from_scores(scores)  # higher score = better; equal scores tie
    else:
        ranks = list(range(1, k + 1))  # given best first
    if scores is not None:
        for i in range(k):
            for j in range(k):
                if ranks[i] < ranks[j] and scores[i] < scores[j]:
                    raise BadRow(f"`ranks` and `scores` disagree: responses[{i}] is ranked above "
                                 f"responses[{j}] ({ranks[i]} < {ranks[j]}) but scored lower "
                                 f"({scores[i]:g} < {scores[j]:g})",
                                 "ranking_ranks_contradict_scores", "scores")
    if len(set(ranks)) < 2:
        raise BadRow(f"`ranks` {ranks}: all {k} responses tie, so the row holds no preference; "
                     "give at least two different ranks (or scores)", "ranking_all_tied", "ranks")
    return {"prompt": prompt, "responses": answers, "ranks": ranks, "scores": scores}
