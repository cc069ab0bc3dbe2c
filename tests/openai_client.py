"""`shardline serve` through the official `openai` Python package.

Run by tests/openai_client.rs with the interpreter from $SHARDLINE_TEST_PYTHON
(scripts/test.sh sets up a venv with `openai`, `prometheus-client` and `jsonschema`):

    python openai_client.py BASE_URL EXPECT_JSON

EXPECT_JSON: {"prompt", "max_tokens", "text", "prompt_tokens",
"completion_tokens"}: a chat prompt and what `shardline run --chat
--temperature 0` produced for it. Exits non-zero on the first failed check.
"""

import json
import sys
import threading
import urllib.request

import openai
from openai import OpenAI
from prometheus_client.openmetrics.parser import text_string_to_metric_families

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
    "List two kinds of fruit.",
    "Say hello in Spanish.",
]


def require(cond, what):
    if not cond:
        raise AssertionError(what)


def check(cond, what):
    require(cond, what)
    print(f"ok: {what.splitlines()[0][:100]}", flush=True)


def chat_stream(client, model, prompt, max_tokens, include_usage=False):
    """Streams a greedy chat answer: (text, finish_reason, usage or None)."""
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        **kwargs,
    )
    text, finish, usage, roles = [], None, None, []
    for chunk in stream:
        require(chunk.object == "chat.completion.chunk", f"chunk object: {chunk.object}")
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            text.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    require(roles == ["assistant"], f"one role delta, 'assistant': {roles}")
    return "".join(text), finish, usage


def main():
    base_url, expect = sys.argv[1], json.loads(sys.argv[2])
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=120)

    models = client.models.list().data
    check(len(models) == 1, f"one model listed: {models}")
    model = models[0].id

    # Greedy chat: the same text and counts as `shardline run --chat`.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": expect["prompt"]}],
        temperature=0,
        max_tokens=expect["max_tokens"],
    )
    check(r.object == "chat.completion", f"object: {r.object}")
    check(r.id.startswith("chatcmpl-"), f"id: {r.id}")
    check(r.model == model, f"model: {r.model}")
    msg = r.choices[0].message
    check(msg.role == "assistant", f"role: {msg.role}")
    check(msg.content == expect["text"], f"greedy chat equals shardline run:\n{msg.content!r}\n{expect['text']!r}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {r.choices[0].finish_reason}")
    u = r.usage
    check(u.prompt_tokens == expect["prompt_tokens"], f"prompt_tokens {u.prompt_tokens} == {expect['prompt_tokens']}")
    check(
        u.completion_tokens == expect["completion_tokens"],
        f"completion_tokens {u.completion_tokens} == {expect['completion_tokens']}",
    )
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, "total_tokens")
    if r.choices[0].finish_reason == "length":
        check(u.completion_tokens == expect["max_tokens"], "a 'length' answer has max_tokens tokens")

    # The same, streamed, with the usage chunk at the end.
    text, finish, usage = chat_stream(client, model, expect["prompt"], expect["max_tokens"], include_usage=True)
    check(text == expect["text"], f"streamed chat equals the whole answer: {text!r}")
    check(finish == r.choices[0].finish_reason, f"streamed finish_reason: {finish}")
    check(usage is not None, "usage chunk with include_usage")
    check(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        == (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        f"streamed usage equals the whole answer's: {usage}",
    )
    _, _, no_usage = chat_stream(client, model, expect["prompt"], 2)
    check(no_usage is None, "no usage chunk without include_usage")

    # Text completion, whole and streamed.
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    check(c.object == "text_completion", f"object: {c.object}")
    check(len(c.choices[0].text) > 0, f"completion text: {c.choices[0].text!r}")
    check(c.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {c.choices[0].finish_reason}")
    check(0 < c.usage.completion_tokens <= 8, f"completion usage: {c.usage}")
    parts = [
        ch.choices[0].text
        for ch in client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if ch.choices
    ]
    check("".join(parts) == c.choices[0].text, f"streamed completion equals the whole one: {''.join(parts)!r}")

    # Sampling with a seed is repeatable.
    a, b = (
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16, seed=42
        )
        .choices[0]
        .message.content
        for _ in range(2)
    )
    check(a == b, f"same seed, same text: {a!r} / {b!r}")

    # Errors arrive as the client's typed exceptions.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        check(False, "unknown model raises")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and e.body["code"] == "model_not_found", f"unknown model is 404: {e.body}")
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens="ten")
        check(False, "wrong type raises")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body["param"] == "max_tokens", f"wrong type is 400: {e.body}")

    # Eight concurrent greedy streams: each the text it gets alone.
    alone = {p: chat_stream(client, model, p, 24)[0] for p in PROMPTS}
    together, errors = {}, []

    def one(p):
        try:
            together[p] = chat_stream(client, model, p, 24)[0]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{p}: {e!r}")

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, f"concurrent streams succeed: {errors}")
    for p in PROMPTS:
        check(together[p] == alone[p], f"concurrent equals alone for {p!r}:\n{together[p]!r}\n{alone[p]!r}")
    check(len(set(alone.values())) > 1, "different prompts, different answers")

    # /metrics parses with the reference (OpenMetrics) parser.
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("shardline_http_requests", "shardline_tokens_generated", "shardline_active_sequences"):
        check(name in families, f"{name} in /metrics: {sorted(families)}")
    http = families["shardline_http_requests"]
    check(http.type == "counter", f"http requests is a counter: {http.type}")
    ok_chat = sum(
        s.value
        for s in http.samples
        if s.labels.get("route") == "/v1/chat/completions" and s.labels.get("status") == "200"
    )
    check(ok_chat >= 20, f"chat requests counted: {ok_chat}")
    active = families["shardline_active_sequences"].samples[0].value
    check(active == 0, f"no active sequences at the end: {active}")
    print("openai client: all checks passed", flush=True)


if __name__ == "__main__":
    main()
