use super::*;
use crate::chat::tools::ToolCall;

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// ChatML over the whole conversation, as Ollama's library templates
/// write it (`$last` from `slice`, `eq`, `len`).
const CHATML_MESSAGES: &str = "{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role \"assistant\") }}<|im_end|>
<|im_start|>assistant
{{ end }}
{{- end }}";

/// ChatML one turn at a time (the older shape).
const CHATML_TURNS: &str = "{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
";

#[test]
fn whole_conversation_template() {
    let t = GoTemplate::new(CHATML_MESSAGES).unwrap();
    let out = t
        .render(&[msg("system", "Be brief."), msg("user", "Hi.")], None)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    );
    // Runs of one role are merged, as Ollama does.
    let out = t
        .render(&[msg("user", "a"), msg("user", "b")], None)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn one_turn_at_a_time_template() {
    let t = GoTemplate::new(CHATML_TURNS).unwrap();
    let conv = [
        msg("system", "S"),
        msg("user", "one"),
        msg("assistant", "1"),
        msg("user", "two"),
    ];
    let out = t.render(&conv, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\none<|im_end|>\n<|im_start|>assistant\n1<|im_end|>\n\
         <|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"
    );
    // A conversation that ends with the assistant continues its text.
    let out = t
        .render(&[msg("user", "q"), msg("assistant", "The answer")], None)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nThe answer"
    );
}

#[test]
fn tools_and_calls_as_ollama_prints_them() {
    let src = "{{- if .Tools }}[{{ range .Tools }}{{ json . }};{{ .Function.Name }};{{ end }}]{{ end }}
{{- range .Messages }}{{ .Role }}:{{ .Content }}
{{- range .ToolCalls }}<call>{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}</call>{{ end }}|
{{- end }}";
    let t = GoTemplate::new(src).unwrap();
    let tools = serde_json::json!([{
        "type": "function",
        "function": {"name": "weather", "description": "d",
                     "parameters": {"type": "object", "properties": {"City": {"type": "string"}}}}
    }]);
    let mut call = msg("assistant", "");
    call.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "weather".into(),
        arguments: r#"{"City":"Oslo"}"#.into(),
    });
    let out = t
        .render(
            &[msg("user", "w?"), call, msg("tool", "cold")],
            Some(&tools),
        )
        .unwrap();
    let tool_json = serde_json::to_string(&tools[0]).unwrap();
    assert_eq!(
        out,
        format!(
            "[{tool_json};weather;]user:w?|assistant:<call>{{\"name\": \"weather\", \"arguments\": {{\"City\":\"Oslo\"}}}}</call>|tool:cold|"
        )
    );
}

#[test]
fn errors_are_errors() {
    // Does not parse.
    assert!(GoTemplate::new("{{ .System").is_err());
    // A field of a string fails at run time with a message, not a panic.
    let t = GoTemplate::new("{{ .System.Name }}").unwrap();
    assert!(t.render(&[msg("system", "x")], None).is_err());
    // Through ChatTemplate: the error names the template's language.
    let e = crate::chat::ChatTemplate::go("{{ .System").unwrap_err();
    assert!(e.to_string().contains("Go"), "{e}");
}
