//! Parsing request bodies: defaults, types, field names in errors.

use super::*;
use serde_json::json;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn chat_defaults_follow_openai() {
    let r = ChatRequest::parse(&obj(json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "u1", "unknown_field": null
    })))
    .unwrap();
    assert_eq!(r.common.sampler.temperature, 1.0);
    assert_eq!(r.common.sampler.top_p, 1.0);
    assert_eq!(r.common.sampler.top_k, 0);
    assert_eq!(r.common.sampler.min_p, 0.0);
    assert_eq!(r.common.max_tokens, None);
    assert!(!r.common.stream);
    assert_eq!(r.messages, vec![ChatMessage::new("user", "hi")]);
}

#[test]
fn wrong_types_name_the_field() {
    let e = ChatRequest::parse(&obj(json!({
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"
    })))
    .unwrap_err();
    assert_eq!(e.status, 400);
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
    assert_eq!(e.code, Some("invalid_type"));

    let e =
        ChatRequest::parse(&obj(json!({"messages": [{"role": 1, "content": "hi"}]}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    let e = ChatRequest::parse(&obj(json!({"messages": "hi"}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
    let e = ChatRequest::parse(&obj(
        json!({"messages": [{"role": "user", "content": "x"}], "stop": 3}),
    ))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("stop"));
    let e = ChatRequest::parse(&obj(
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
    ))
    .unwrap_err();
    assert_eq!(e.code, Some("invalid_value"));
    let e = ChatRequest::parse(&obj(
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
    ))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
    let e = ChatRequest::parse(&obj(json!({"model": 5, "messages": []}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("model"));
}

#[test]
fn content_parts_stop_and_seed() {
    let r = ChatRequest::parse(&obj(json!({
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
            {"role": "assistant", "content": null},
        ],
        "stop": "\n", "seed": -1, "max_completion_tokens": 5, "max_tokens": 9,
        "stream": true, "stream_options": {"include_usage": true}, "temperature": null,
    })))
    .unwrap();
    assert_eq!(r.messages[0], ChatMessage::new("system", "be brief"));
    assert_eq!(r.messages[1], ChatMessage::new("assistant", ""));
    assert_eq!(r.common.stop, vec!["\n".to_string()]);
    assert_eq!(r.common.sampler.seed, u64::MAX);
    assert_eq!(r.common.max_tokens, Some(5));
    assert!(r.common.stream && r.common.include_usage);
    assert_eq!(r.common.sampler.temperature, 1.0);
}

#[test]
fn completion_prompts() {
    let p = |v: Value| CompletionRequest::parse(&obj(json!({ "prompt": v }))).map(|r| r.prompt);
    assert_eq!(p(json!("hi")).unwrap(), Prompt::Text("hi".into()));
    assert_eq!(p(json!(["hi"])).unwrap(), Prompt::Text("hi".into()));
    assert_eq!(p(json!([1, 2, 3])).unwrap(), Prompt::Tokens(vec![1, 2, 3]));
    assert_eq!(p(json!([[4, 5]])).unwrap(), Prompt::Tokens(vec![4, 5]));
    assert_eq!(
        p(json!(["a", "b"])).unwrap_err().code,
        Some("invalid_value")
    );
    assert_eq!(p(json!([1, -2])).unwrap_err().code, Some("invalid_type"));
    assert_eq!(p(json!(7)).unwrap_err().code, Some("invalid_type"));
    assert_eq!(
        CompletionRequest::parse(&obj(json!({}))).unwrap_err().code,
        Some("missing_required_parameter")
    );
}

#[test]
fn malformed_bodies() {
    assert_eq!(parse_object(b"{").unwrap_err().code, Some("invalid_json"));
    assert_eq!(parse_object(b"[1]").unwrap_err().code, Some("invalid_json"));
    assert!(parse_object(b"{}").is_ok());
}

#[test]
fn fields_this_server_would_ignore_are_named() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for field in [
        "unknown_field",
        "audio",
        "functions",
        "prediction",
        "modalities",
        "store",
    ] {
        let e = ChatRequest::parse(&obj(json!({"messages": msgs, field: true}))).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some(field));
        assert_eq!(e.code, Some("unsupported_parameter"));
    }
    let e = CompletionRequest::parse(&obj(json!({"prompt": "x", "suffix": "y"}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("suffix"));
    let e = CompletionRequest::parse(&obj(json!({"prompt": "x", "tools": []}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools"));
    let e =
        CompletionRequest::parse(&obj(json!({"prompt": "x", "n": 2, "best_of": 3}))).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("best_of"));
    let e = CompletionRequest::parse(&obj(json!({"prompt": "x", "echo": true, "logprobs": 2})))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("echo"));
}

#[test]
fn sampling_extras_and_logprobs() {
    let r = ChatRequest::parse(&obj(json!({
        "messages": [{"role": "user", "content": "hi"}],
        "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"42": -100, "7": 3.5},
        "n": 3, "logprobs": true, "top_logprobs": 4, "seed": 9,
    })))
    .unwrap();
    let s = &r.common.sampler;
    assert_eq!((s.presence_penalty, s.frequency_penalty), (0.5, -1.0));
    let mut bias = s.logit_bias.clone();
    bias.sort_by_key(|b| b.0);
    assert_eq!(bias, [(7, 3.5), (42, -100.0)]);
    assert_eq!((r.common.n, r.common.logprobs, s.seed), (3, Some(4), 9));
    let bad = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ChatRequest::parse(&obj(body)).unwrap_err().param.unwrap()
    };
    assert_eq!(bad(json!({"presence_penalty": 3})), "presence_penalty");
    assert_eq!(bad(json!({"logit_bias": {"x": 1}})), "logit_bias");
    assert_eq!(bad(json!({"logit_bias": {"5": 101}})), "logit_bias.5");
    assert_eq!(bad(json!({"top_logprobs": 2})), "top_logprobs");
    assert_eq!(
        bad(json!({"logprobs": true, "top_logprobs": 21})),
        "top_logprobs"
    );
    assert_eq!(bad(json!({"n": 0})), "n");
    assert_eq!(bad(json!({"n": 17})), "n");
    let c = CompletionRequest::parse(&obj(json!({"prompt": "x", "logprobs": 3, "echo": false})))
        .unwrap();
    assert_eq!(c.common.logprobs, Some(3));
}

#[test]
fn response_formats() {
    let rf = |v: Value| {
        ChatRequest::parse(&obj(
            json!({"messages": [{"role": "user", "content": "hi"}], "response_format": v}),
        ))
        .map(|r| r.common.response_format)
    };
    assert_eq!(rf(json!({"type": "text"})).unwrap(), None);
    assert_eq!(
        rf(json!({"type": "json_object"})).unwrap(),
        Some(Grammar::json_object())
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert_eq!(
        rf(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}})).unwrap(),
        Some(Grammar::JsonSchema(schema))
    );
    let param = |v: Value| rf(v).unwrap_err().param.unwrap();
    assert_eq!(param(json!({"type": "yaml"})), "response_format.type");
    assert_eq!(param(json!({})), "response_format.type");
    assert_eq!(
        param(json!({"type": "json_schema"})),
        "response_format.json_schema"
    );
    assert_eq!(
        param(json!({"type": "json_schema", "json_schema": {"schema": {}}})),
        "response_format.json_schema.name"
    );
    assert_eq!(
        param(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}})),
        "response_format.json_schema.schema"
    );
    assert_eq!(param(json!("json")), "response_format");
}

#[test]
fn tools_choices_and_tool_messages() {
    let tools = json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]);
    let r = ChatRequest::parse(&obj(json!({
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        "tools": tools, "parallel_tool_calls": false,
    })))
    .unwrap();
    assert_eq!(r.tool_choice, ToolChoice::Auto);
    assert_eq!(r.tools[0].name, "f");
    assert_eq!(r.messages[1].tool_calls[0].arguments, "{\"a\": 1}");
    assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("call_1"));
    let choice = |c: Value| {
        ChatRequest::parse(&obj(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": c}),
        ))
    };
    assert_eq!(
        choice(json!("required")).unwrap().tool_choice,
        ToolChoice::Required
    );
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "f"}}))
            .unwrap()
            .tool_choice,
        ToolChoice::Function("f".into())
    );
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "g"}}))
            .unwrap_err()
            .param
            .as_deref(),
        Some("tool_choice")
    );
    assert_eq!(
        choice(json!("sometimes")).unwrap_err().param.as_deref(),
        Some("tool_choice")
    );
    let bad = |body: Value| ChatRequest::parse(&obj(body)).unwrap_err().param.unwrap();
    assert_eq!(
        bad(json!({"messages": [{"role": "tool", "content": "x"}]})),
        "messages[0].tool_call_id"
    );
    assert_eq!(
        bad(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]})
        ),
        "tools[0].type"
    );
    assert_eq!(
        bad(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]})
        ),
        "tools[0].function.name"
    );
    assert_eq!(
        bad(json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})),
        "tool_choice"
    );
    assert_eq!(
        bad(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "response_format": {"type": "json_object"}})
        ),
        "response_format"
    );
}
