"""`shardline serve` through the official `ollama` Python package.

Run by tests/ollama_serve.rs with the interpreter from $SHARDLINE_TEST_PYTHON
(scripts/test.sh sets up a venv with `ollama`):

    python ollama_client.py BASE_URL EXPECT_JSON

EXPECT_JSON: {"model", "digest", "system", "num_predict"}: the Ollama model
served (built by the test around the test model) and what its layers hold.
Exits non-zero on the first failed check.
"""

import json
import sys
import urllib.error
import urllib.request

import ollama
from ollama import Client, ResponseError

PROMPT = "What is the capital of France?"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what.splitlines()[0][:100]}", flush=True)


def post_raw(base, path, data):
    req = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get_json(base, path):
    with urllib.request.urlopen(base + path, timeout=60) as r:
        return json.loads(r.read())


def main():
    base, expect = sys.argv[1], json.loads(sys.argv[2])
    model = expect["model"]
    c = Client(host=base)
    greedy = {"temperature": 0, "num_predict": 8}

    # Listing, details, version.
    tags = c.list()
    names = [m.model for m in tags.models]
    check(names == [model], f"/api/tags lists {names}")
    m = tags.models[0]
    check(m.digest == expect["digest"], f"digest {m.digest}")
    check(m.size > 1_000_000, f"size {m.size}")
    d = m.details
    check(
        d.format == "gguf" and d.family == "llama" and d.quantization_level == "Q4_1",
        f"details {d}",
    )
    check(d.parameter_size.endswith("M"), f"parameter_size {d.parameter_size}")
    show = c.show(model)
    check("FROM " in show.modelfile and "num_predict" in show.parameters, "show: modelfile, parameters")
    check(show.modelinfo["general.architecture"] == "llama", "show: model_info")
    check("<|im_start|>" in show.template, "show: template")
    ps = c.ps()
    check([p.model for p in ps.models] == [model], "/api/ps lists the model")
    version = get_json(base, "/api/version")
    check(isinstance(version.get("version"), str), f"/api/version {version}")
    v1 = get_json(base, "/v1/models")
    check([x["id"] for x in v1["data"]] == [model], "/v1/models lists the Ollama name")

    # Chat, whole and streamed: greedy, so the same text.
    msgs = [{"role": "user", "content": PROMPT}]
    r = c.chat(model=model, messages=msgs, options=greedy, stream=False)
    text = r.message.content
    check(r.message.role == "assistant" and text, f"chat: {text!r}")
    check(r.done and r.done_reason in ("stop", "length"), f"chat done_reason {r.done_reason}")
    check(0 < r.eval_count <= 8 and r.prompt_eval_count > 10, f"chat counts {r.eval_count} {r.prompt_eval_count}")
    check(r.total_duration > 0 and r.eval_duration >= 0, "chat durations")
    parts = list(c.chat(model=model, messages=msgs, options=greedy, stream=True))
    check(len(parts) >= 3 and parts[-1].done and not parts[0].done, f"chat stream of {len(parts)} parts")
    check("".join(p.message.content for p in parts) == text, "streamed chat is the same text")
    check(parts[-1].eval_count == r.eval_count, "streamed chat counts")
    # The model's system layer is the default system prompt: saying it
    # explicitly changes nothing.
    same = c.chat(
        model=model,
        messages=[{"role": "system", "content": expect["system"]}] + msgs,
        options=greedy,
    )
    check(same.message.content == text and same.prompt_eval_count == r.prompt_eval_count, "system layer used")

    # Generate: the params layer's num_predict is the default.
    g = c.generate(model=model, prompt=PROMPT, options={"temperature": 0}, stream=False)
    check(g.response and g.done, f"generate: {g.response!r}")
    check(0 < g.eval_count <= expect["num_predict"], f"params num_predict used: {g.eval_count}")
    check(g.prompt_eval_count < len(g.context) <= g.prompt_eval_count + g.eval_count, "generate context")
    gs = list(c.generate(model=model, prompt=PROMPT, options={"temperature": 0}, stream=True))
    check("".join(p.response for p in gs) == g.response, "streamed generate is the same text")
    follow = c.generate(model=model, prompt="And of Spain?", context=g.context, options=greedy)
    check(follow.done and follow.prompt_eval_count > len(g.context), "generate with context")
    raw = c.generate(model=model, prompt="The capital of France is", raw=True, options=greedy)
    check(raw.response and raw.prompt_eval_count < 10, f"raw generate: {raw.response!r}")
    load = c.chat(model=model, messages=[])
    check(load.done and load.done_reason == "load", "empty chat loads")
    unknown_opts = c.chat(model=model, messages=msgs, options={"num_gpu": 99, "mirostat": 2, "num_predict": 2, "no_such_option": 1})
    check(unknown_opts.done and unknown_opts.eval_count <= 2, "unknown options are ignored")

    # Errors, in Ollama's shape.
    try:
        c.chat(model="nosuch:model", messages=msgs)
        check(False, "unknown model refused")
    except ResponseError as e:
        check(e.status_code == 404 and model in e.error, f"unknown model: 404 {e.error}")
    try:
        c.chat(model=model, messages=msgs, options={"temperature": "hot"})
        check(False, "bad option refused")
    except ResponseError as e:
        check(e.status_code == 400 and "temperature" in e.error, f"bad option: 400 {e.error}")
    status, body = post_raw(base, "/api/chat", b"{not json")
    check(status == 400 and "error" in body, f"bad JSON: {status} {body}")
    status, body = post_raw(base, "/api/generate", b'{"model": 5}')
    check(status == 400 and "model" in body["error"], f"model of the wrong type: {status} {body}")
    status, body = post_raw(base, "/api/show", b'{"model": "nosuch"}')
    check(status == 404 and "error" in body, f"show unknown: {status} {body}")
    # The server is still up after all that.
    check(c.chat(model=model, messages=msgs, options=greedy).message.content == text, "still serving")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
