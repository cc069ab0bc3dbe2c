"""Structured output, tools and log-probabilities of `shardline serve`
through the official `openai` Python package.

Run by tests/openai_structured.rs with the interpreter from
$SHARDLINE_TEST_PYTHON (scripts/test.sh sets up a venv with `openai` and
`jsonschema`):

    python openai_structured.py BASE_URL

Exits non-zero on the first failed check.
"""

import json
import math
import sys
import time

import jsonschema
import openai
from openai import OpenAI

# Bounded sizes everywhere: the tiny test model rambles, and a constraint
# keeps its output valid, not short.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 12},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 16},
        "confidence": {"enum": ["low", "medium", "high"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "tags"],
    "additionalProperties": False,
}
SCHEMAS = [PERSON, ANSWER]
PROMPTS = [
    "Describe a person called Alice who lives in Paris.",
    "Who is Bob?",
    "Make up a person.",
    "Tell me about a sailor.",
    "What is the capital of France?",
    "Is the sky blue?",
    "Name a fruit.",
    "What is 2 + 2?",
    "Describe your best friend.",
    "Who wrote Hamlet?",
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what.splitlines()[0][:110]}", flush=True)


def json_schema_answers(client, model):
    """20 prompts (10 prompts x 2 schemas): every answer valid JSON under its schema."""
    started = time.time()
    for i, prompt in enumerate(PROMPTS):
        for j, schema in enumerate(SCHEMAS):
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": f"s{j}", "strict": True, "schema": schema},
                },
                temperature=0.7 if (i + j) % 2 else 0,
                seed=i,
                max_tokens=96,
            )
            text = r.choices[0].message.content
            check(r.choices[0].finish_reason == "stop", f"schema answer ended by the grammar: {r.choices[0].finish_reason} {text!r}")
            jsonschema.validate(json.loads(text), schema)
            check(True, f"valid under schema {j}: {text}")
    check(True, f"20 schema answers in {time.time() - started:.1f} s")
    # json_object: any object.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        check(isinstance(json.loads(text), dict), f"json_object gives an object: {text!r}")
    else:
        check(text.startswith("{"), f"json_object cut by max_tokens still starts an object: {text!r}")
    # Streamed schema answer: the same text as whole, at temperature 0.
    args = dict(
        model=model,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": PERSON}},
        temperature=0,
        max_tokens=96,
    )
    whole = client.chat.completions.create(**args).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **args) if c.choices]
    check("".join(parts) == whole, f"streamed schema answer equals the whole one: {''.join(parts)!r}")
    # A schema the engine cannot use is a 400 naming response_format.
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}},
        )
        check(False, "an unsatisfiable schema raises")
    except openai.BadRequestError as e:
        check(e.body["param"] == "response_format", f"unsatisfiable schema is 400: {e.body}")


def tool_round_trip(client, model):
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    r = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=64
    )
    choice = r.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason tool_calls: {choice.finish_reason}")
    calls = choice.message.tool_calls
    check(calls is not None and len(calls) == 1, f"one tool call: {calls}")
    call = calls[0]
    check(call.type == "function" and call.function.name == "get_weather", f"calls get_weather: {call}")
    check(call.id.startswith("call_"), f"call id: {call.id}")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
    check(True, f"arguments valid under the tool's schema: {arguments}")
    check(choice.message.content is None, f"no content with a call: {choice.message.content!r}")

    # The same call, streamed in OpenAI's delta format.
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=64, stream=True
    )
    name, args, ids, finish = "", "", [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        for tc in d.tool_calls or []:
            check(tc.index == 0, "tool call delta index 0")
            if tc.id:
                ids.append(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    check(
        (name, json.loads(args), finish, len(ids)) == ("get_weather", arguments, "tool_calls", 1),
        f"streamed call equals the whole one: {name} {args} {finish} {ids}",
    )

    # Round trip: the call and its result go back, the model answers in text.
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": arguments["city"], "weather": "sunny, 24 C"})})
    r = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=48
    )
    answer = r.choices[0]
    check(answer.message.tool_calls is None, "tool_choice none: no call")
    check(answer.finish_reason in ("stop", "length"), f"answer finish_reason: {answer.finish_reason}")
    check(len(answer.message.content or "") > 0, f"text answer after the tool result: {answer.message.content!r}")
    check(r.usage.prompt_tokens > 40, f"the tool result is in the prompt: {r.usage.prompt_tokens} tokens")
    # auto: a call or text, and whichever it is, it is well formed.
    r = client.chat.completions.create(model=model, messages=messages[:1], tools=[WEATHER_TOOL], temperature=0, max_tokens=64)
    c = r.choices[0]
    if c.message.tool_calls:
        check(c.finish_reason == "tool_calls", "auto call ends with tool_calls")
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), WEATHER_TOOL["function"]["parameters"])
    else:
        check(c.message.content and not c.message.content.startswith("{"), f"auto text: {c.message.content!r}")
    check(True, f"tool_choice auto: {'call' if c.message.tool_calls else 'text'}")
    # A named function.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello!"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=64,
    )
    check(r.choices[0].message.tool_calls[0].function.name == "get_weather", "named tool_choice forces the call")


def logprobs_checks(client, model):
    # Chat, greedy: the chosen token is the most likely one, with the same
    # logprob; the tokens' bytes make the content; alternatives sorted.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=16,
        logprobs=True,
        top_logprobs=5,
    )
    content = r.choices[0].logprobs.content
    text = r.choices[0].message.content
    check(len(content) == r.usage.completion_tokens, f"one entry per generated token: {len(content)} / {r.usage.completion_tokens}")
    check(bytes(b for e in content for b in e.bytes).decode() == text, "the tokens' bytes make the content")
    for e in content:
        tops = e.top_logprobs
        check(len(tops) == 5, "five alternatives")
        check(all(tops[k].logprob >= tops[k + 1].logprob for k in range(4)), "alternatives most likely first")
        check(tops[0].token == e.token and abs(tops[0].logprob - e.logprob) < 1e-6, f"greedy takes the top token: {e.token!r}")
        check(e.logprob <= 0 and sum(math.exp(t.logprob) for t in tops) <= 1 + 1e-4, "probabilities at most 1")
    # Completions: the logprob of each token equals the logprob the model
    # gives it as the first token after the prompt extended by the tokens
    # before it (the chain rule, request by request): a check that fails if
    # logprobs came after temperature, penalties or from the wrong row.
    prompt = "The capital of France is"
    c = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    check(c.choices[0].text == "".join(lp.tokens), f"tokens make the text: {lp.tokens}")
    check(lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))], "text_offset")
    for k, tok in enumerate(lp.tokens[:4]):
        check(max(lp.top_logprobs[k].values()) == lp.token_logprobs[k], f"greedy token {tok!r} is the top one")
        step = client.completions.create(
            model=model, prompt=prompt + "".join(lp.tokens[:k]), max_tokens=1, temperature=0, logprobs=1
        )
        if step.choices[0].logprobs.tokens[:1] == [tok]:
            got = step.choices[0].logprobs.token_logprobs[0]
            check(abs(got - lp.token_logprobs[k]) < 0.05, f"token {k} logprob {lp.token_logprobs[k]:.4f} == alone {got:.4f}")
    # Hot sampling changes the choice, not the model's logprobs.
    hot = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=1.5, seed=3, logprobs=1)
    for k, t in enumerate(hot.choices[0].logprobs.token_logprobs):
        best = max(hot.choices[0].logprobs.top_logprobs[k].values())
        check(t <= best + 1e-6, f"a sampled token is never above the top one: {t:.3f} <= {best:.3f}")


def sampling_checks(client, model):
    msgs = [{"role": "user", "content": "Tell me a short story."}]
    # n > 1: several choices, reproducible with a seed, different from each other.
    a = client.chat.completions.create(model=model, messages=msgs, n=3, seed=7, temperature=1.0, max_tokens=12)
    b = client.chat.completions.create(model=model, messages=msgs, n=3, seed=7, temperature=1.0, max_tokens=12)
    ta = [c.message.content for c in sorted(a.choices, key=lambda c: c.index)]
    tb = [c.message.content for c in sorted(b.choices, key=lambda c: c.index)]
    check([c.index for c in sorted(a.choices, key=lambda c: c.index)] == [0, 1, 2], "three choices indexed 0..2")
    check(ta == tb, f"same seed, same choices: {ta}")
    check(len(set(ta)) > 1, f"choices differ: {ta}")
    one = client.chat.completions.create(model=model, messages=msgs, seed=7, temperature=1.0, max_tokens=12)
    check(one.choices[0].message.content == ta[0], "choice 0 of n=3 is the n=1 answer with that seed")
    check(a.usage.completion_tokens > one.usage.completion_tokens, f"usage counts every choice: {a.usage}")
    streamed = {}
    for chunk in client.chat.completions.create(model=model, messages=msgs, n=3, seed=7, temperature=1.0, max_tokens=12, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    check([streamed[i] for i in range(3)] == ta, "streamed n=3 equals whole n=3")
    # logit_bias: +100 on a token makes greedy decoding choose it (its
    # text found by echoing it as a one-token prompt).
    forced = 3000
    echoed = client.completions.create(model=model, prompt=[forced], max_tokens=1, echo=True, temperature=0).choices[0].text
    after = client.completions.create(model=model, prompt=[forced], max_tokens=1, temperature=0).choices[0].text
    token_text = echoed[: len(echoed) - len(after)]
    biased = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=1, temperature=0, logit_bias={str(forced): 100}
    ).choices[0].text
    check(token_text and biased == token_text, f"logit_bias +100 forces token {forced} {token_text!r}: got {biased!r}")
    # frequency_penalty: no token repeats more than a plain run's.
    plain = client.completions.create(model=model, prompt="1, 1, 1, 1,", max_tokens=12, temperature=0).choices[0].text
    pen = client.completions.create(model=model, prompt="1, 1, 1, 1,", max_tokens=12, temperature=0, frequency_penalty=2.0).choices[0].text
    check(pen != plain, f"frequency_penalty changes a repetitive answer: {plain!r} -> {pen!r}")


def unsupported(client, model):
    for field, value in [("audio", {"voice": "alloy", "format": "wav"}), ("functions", [{"name": "f"}]), ("not_a_field", 1)]:
        try:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={field: value}
            )
            check(False, f"{field} raises")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.body["param"] == field, f"unsupported {field} is 400 naming it: {e.body}")
    try:
        client.completions.create(model=model, prompt="x", suffix="y", max_tokens=2)
        check(False, "suffix raises")
    except openai.BadRequestError as e:
        check(e.body["param"] == "suffix", f"suffix is 400 naming it: {e.body}")


def main():
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    unsupported(client, model)
    json_schema_answers(client, model)
    tool_round_trip(client, model)
    logprobs_checks(client, model)
    sampling_checks(client, model)
    print("openai structured: all checks passed", flush=True)


if __name__ == "__main__":
    main()
