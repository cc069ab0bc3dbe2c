//! Tool descriptions, call grammars and reading calls back.

use super::*;
use crate::chat::ChatTemplate;
use crate::constrain::Vocab;

fn weather() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("The weather in a city.".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
            "additionalProperties": false
        }),
    }
}

fn time() -> Tool {
    Tool {
        name: "get_time".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
    }
}

/// Characters and a few pieces, token 0 the end.
fn vocab() -> (Vocab, Vec<String>) {
    let mut texts: Vec<String> = vec!["\u{ff}eos".into()];
    for c in
        " {}[]\":,_<>/\nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!?".chars()
    {
        texts.push(c.to_string());
    }
    for p in [
        "name",
        "arguments",
        "get_weather",
        "get_time",
        "<tool_call>",
        "\": \"",
        "\", \"",
    ] {
        texts.push(p.into());
    }
    let words = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 {
                vec![0xff, b'e']
            } else {
                t.as_bytes().to_vec()
            }
        })
        .collect();
    (Vocab::from_words(words, 0).unwrap(), texts)
}

/// Follows the grammar, always taking the allowed token `pick` likes best
/// (ties: the first); the text made.
fn follow(grammar: &Grammar, pick: impl Fn(&str) -> i32) -> String {
    let (v, texts) = vocab();
    let mut c = v.compile(grammar).unwrap();
    let mut out = String::new();
    for _ in 0..300 {
        let mask = c.mask().unwrap();
        let best = mask
            .ids()
            .max_by_key(|&i| (pick(&texts[i as usize]), std::cmp::Reverse(i)))
            .unwrap();
        if best == 0 {
            return out;
        }
        c.commit(best).unwrap();
        out.push_str(&texts[best as usize]);
    }
    panic!("no end: {out:?}");
}

#[test]
fn required_gives_a_call_that_parses_back() {
    let tools = [weather(), time()];
    let f = ToolFormat::default();
    let g = grammar(&tools, &ToolChoice::Required, &f).unwrap();
    assert!(matches!(g, Grammar::JsonSchema(_)));
    // Prefer letters: a city name gets written.
    let out = follow(&g, |t| {
        if t.chars().all(|c| c.is_ascii_lowercase()) {
            2
        } else {
            1
        }
    });
    let (name, args) = parse_call(&out, &tools, &f).unwrap_or_else(|| panic!("{out:?}"));
    assert!(name == "get_weather" || name == "get_time", "{out}");
    let args: Value = serde_json::from_str(&args).unwrap();
    assert!(args.is_object(), "{out}");
}

#[test]
fn a_named_function_is_the_only_one() {
    let tools = [weather(), time()];
    let g = grammar(
        &tools,
        &ToolChoice::Function("get_time".into()),
        &ToolFormat::default(),
    )
    .unwrap();
    let out = follow(&g, |_| 0);
    assert_eq!(
        parse_call(&out, &tools, &ToolFormat::default()).unwrap(),
        ("get_time".into(), "{}".into())
    );
    // An unknown name or no tools: nothing to constrain.
    assert!(grammar(
        &tools,
        &ToolChoice::Function("nope".into()),
        &ToolFormat::default()
    )
    .is_none());
    assert!(grammar(&[], &ToolChoice::Required, &ToolFormat::default()).is_none());
    assert!(grammar(&tools, &ToolChoice::None, &ToolFormat::default()).is_none());
}

#[test]
fn auto_allows_text_or_a_call() {
    let tools = [weather()];
    let f = ToolFormat::default();
    let g = grammar(&tools, &ToolChoice::Auto, &f).unwrap();
    // Preferring '{' first gives a call.
    let out = follow(&g, |t| {
        if t == "{" {
            5
        } else if t.chars().all(|c| c.is_ascii_lowercase()) {
            2
        } else {
            1
        }
    });
    assert!(parse_call(&out, &tools, &f).is_some(), "{out:?}");
    // Preferring letters gives text, which may not start with '{' or space.
    let (v, texts) = vocab();
    let mut c = v.compile(&g).unwrap();
    let mask = c.mask().unwrap();
    let id = |s: &str| texts.iter().position(|t| t == s).unwrap() as u32;
    assert!(mask.allows(id("{")) && mask.allows(id("H")));
    assert!(!mask.allows(id(" ")) && !mask.allows(id("\n")));
    c.commit(id("H")).unwrap();
    c.commit(id("i")).unwrap();
    assert!(c.mask().unwrap().allows(0), "text may end anywhere");
    assert!(parse_call("Hi there", &tools, &f).is_none());
}

#[test]
fn hermes_tags_wrap_the_call() {
    let f =
        ToolFormat::for_template("{% if tools %}<tools>{{ tools }}</tools> <tool_call>{% endif %}");
    assert_eq!(f.open, "<tool_call>\n");
    assert_eq!(
        ToolFormat::for_template("{{ messages }}"),
        ToolFormat::default()
    );
    let tools = [time()];
    let g = grammar(&tools, &ToolChoice::Required, &f).unwrap();
    let out = follow(&g, |_| 0);
    assert!(
        out.starts_with("<tool_call>\n{") && out.ends_with("}\n</tool_call>"),
        "{out:?}"
    );
    assert_eq!(parse_call(&out, &tools, &f).unwrap().0, "get_time");
    assert!(parse_call("{\"name\": \"get_time\", \"arguments\": {}}", &tools, &f).is_none());
}

#[test]
fn parse_call_wants_one_known_call() {
    let tools = [weather()];
    let f = ToolFormat::default();
    let ok = r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#;
    assert_eq!(
        parse_call(ok, &tools, &f).unwrap(),
        ("get_weather".into(), r#"{"city":"Paris"}"#.into())
    );
    for bad in [
        r#"{"name": "other", "arguments": {}}"#,
        r#"{"name": 3}"#,
        r#"[1]"#,
        r#"{"name": "get_weather", "arguments": {}} and more"#,
        "plain",
    ] {
        assert!(parse_call(bad, &tools, &f).is_none(), "{bad}");
    }
}

#[test]
fn tools_go_into_the_system_message_of_a_template_without_them() {
    let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let t = ChatTemplate::new(smol, "", "").unwrap();
    assert!(!t.knows_tools());
    let f = ToolFormat::for_template(t.source());
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Oslo"}"#.into(),
    });
    let mut result = ChatMessage::new("tool", "sunny, 20 C");
    result.tool_call_id = Some("call_1".into());
    let msgs = vec![ChatMessage::new("user", "Weather in Oslo?"), call, result];
    let prepared = prepare(&msgs, &[weather()], &ToolChoice::Auto, &f, false);
    assert_eq!(prepared.len(), 4);
    assert_eq!(prepared[0].role, "system");
    assert!(
        prepared[0].content.contains(r#""name": "get_weather""#),
        "{}",
        prepared[0].content
    );
    assert!(prepared[0]
        .content
        .ends_with("Otherwise answer in plain text."));
    assert_eq!(
        prepared[2].content,
        r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#
    );
    let text = t.render(&prepared, true).unwrap();
    assert!(
        !text.contains("Default"),
        "the tools' system message replaces the default one"
    );
    assert!(
        text.contains("<|im_start|>tool\nsunny, 20 C<|im_end|>"),
        "{text}"
    );
    // An existing system message is kept, with the tools after it.
    let with_system = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    let p = prepare(&with_system, &[time()], &ToolChoice::Required, &f, false);
    assert_eq!(p.len(), 2);
    assert!(p[0]
        .content
        .starts_with("Be brief.\n\nYou can call functions."));
    assert!(p[0].content.ends_with("Call a function now."));
    // tool_choice none: no tools shown.
    assert_eq!(
        prepare(&with_system, &[time()], &ToolChoice::None, &f, false),
        with_system.to_vec()
    );
}

#[test]
fn a_template_that_knows_tools_gets_them_and_the_calls() {
    let src = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{% if m.tool_calls is defined %}{% for c in m.tool_calls %}<{{ c.id }}:{{ c.function.name }}:{{ c.function.arguments.city }}>{% endfor %}{% elif m.role == 'tool' %}({{ m.tool_call_id }}={{ m.content }}){% else %}{{ m.content }}{% endif %}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    assert!(t.knows_tools());
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls.push(ToolCall {
        id: "call_9".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Rome"}"#.into(),
    });
    let mut result = ChatMessage::new("tool", "rain");
    result.tool_call_id = Some("call_9".into());
    let msgs = vec![ChatMessage::new("user", "Q"), call, result];
    let prepared = prepare(
        &msgs,
        &[weather()],
        &ToolChoice::Auto,
        &ToolFormat::default(),
        true,
    );
    assert_eq!(prepared, msgs);
    let tools = openai_tools(&[weather(), time()]);
    let out = t.render_with_tools(&prepared, Some(&tools), false).unwrap();
    assert_eq!(
        out,
        "[get_weather][get_time]Q<call_9:get_weather:Rome>(call_9=rain)"
    );
}
