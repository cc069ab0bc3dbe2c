//! shardline's chat templates (Jinja via minijinja) against llama.cpp's
//! `llama_chat_apply_template` (built-in formatting chosen by detecting the
//! template family) on SmolLM2-135M-Instruct's template.
mod common;

use common::llama_ref::{chat_apply_template, LlamaVocab};
use shardline::chat::{ChatError, ChatMessage, ChatTemplate};
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;

/// What SmolLM2's template puts first when the conversation has no system
/// message (llama.cpp's built-in ChatML does not).
const SMOL_DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn conversations() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![("system", "You are terse."), ("user", "Hello!")],
        vec![
            ("system", "You are a pirate."),
            ("user", "What is 2+2?"),
            ("assistant", "Arr, 4."),
            ("user", "And 3+3?"),
        ],
        vec![
            ("system", ""),
            (
                "user",
                "multi\nline\n\ncontent with <b>tags</b> and {{ braces }} and {% percent %}",
            ),
            ("assistant", "ünïcödé 你好 🙂"),
        ],
        vec![
            ("system", "s"),
            ("user", "  padded  "),
            ("assistant", ""),
            ("user", "\n"),
        ],
    ]
}

fn to_messages(conv: &[(&str, &str)]) -> Vec<ChatMessage> {
    conv.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

#[test]
fn smollm2_template_matches_llama_cpp() {
    let path = common::model_path();
    let gguf = Gguf::open(&path).unwrap();
    let ours = ChatTemplate::from_gguf(&gguf).expect("SmolLM2 has a chat template");
    let theirs = LlamaVocab::load(&path).unwrap();
    let source = theirs.chat_template().expect("llama.cpp sees the template");
    assert_eq!(ours.source(), source);

    let mut compared = 0;
    for conv in conversations() {
        for add_gen in [false, true] {
            let rendered = ours.render(&to_messages(&conv), add_gen).unwrap();
            let reference =
                chat_apply_template(&source, &conv, add_gen).expect("llama.cpp knows the template");
            assert_eq!(
                rendered, reference,
                "{conv:?}, add_generation_prompt={add_gen}"
            );
            compared += 1;
        }
    }
    eprintln!("{compared} renderings equal to llama.cpp's");
}

#[test]
fn smollm2_default_system_prompt_is_where_llama_cpp_differs() {
    let path = common::model_path();
    let ours = ChatTemplate::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    let source = LlamaVocab::load(&path).unwrap().chat_template().unwrap();
    for conv in [
        vec![("user", "Hi")],
        vec![("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")],
    ] {
        for add_gen in [false, true] {
            let rendered = ours.render(&to_messages(&conv), add_gen).unwrap();
            let reference = chat_apply_template(&source, &conv, add_gen).unwrap();
            // The Jinja template adds SmolLM's default system message; llama.cpp's
            // built-in ChatML formatting knows nothing of it. The rest agrees.
            assert_eq!(rendered, format!("{SMOL_DEFAULT_SYSTEM}{reference}"));
        }
    }
}

#[test]
fn builtin_chatml_matches_llama_cpp() {
    let ours = ChatTemplate::chatml();
    let mut convs = conversations();
    convs.push(vec![("user", "no system")]);
    for conv in convs {
        for add_gen in [false, true] {
            let reference = chat_apply_template("chatml", &conv, add_gen).unwrap();
            assert_eq!(
                ours.render(&to_messages(&conv), add_gen).unwrap(),
                reference
            );
        }
    }
}

/// Gemma's and Phi-3's turn formats: our Jinja rendering of a template in
/// each family's shape equals llama.cpp's built-in formatting, which it
/// picks by finding the family's markers in that same template text.
#[test]
fn gemma_and_phi3_formats_match_llama_cpp() {
    use common::families::{GEMMA_TEMPLATE, PHI3_TEMPLATE};
    let mut convs = conversations();
    convs.push(vec![("user", "no system")]);
    convs.push(vec![
        ("system", "  spaced system  "),
        ("user", "\tq\n"),
        ("assistant", " a "),
        ("user", "again"),
    ]);
    let mut compared = 0;
    for source in [GEMMA_TEMPLATE, PHI3_TEMPLATE] {
        let ours = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
        for conv in &convs {
            for add_gen in [false, true] {
                let reference =
                    chat_apply_template(source, conv, add_gen).expect("llama.cpp knows the family");
                assert_eq!(
                    ours.render(&to_messages(conv), add_gen).unwrap(),
                    reference,
                    "{conv:?}, add_generation_prompt={add_gen}"
                );
                compared += 1;
            }
        }
    }
    // llama.cpp chose the families' formats, not a generic one.
    let gemma = chat_apply_template(GEMMA_TEMPLATE, &[("user", "x")], true).unwrap();
    assert_eq!(
        gemma,
        "<start_of_turn>user\nx<end_of_turn>\n<start_of_turn>model\n"
    );
    let phi3 = chat_apply_template(PHI3_TEMPLATE, &[("user", "x")], true).unwrap();
    assert_eq!(phi3, "<|user|>\nx<|end|>\n<|assistant|>\n");
    eprintln!("{compared} renderings equal to llama.cpp's");
}

#[test]
fn template_errors_are_typed() {
    for bad in [
        "{% for m in messages %}",
        "{{ messages[0] ",
        "{% if %}x{% endif %}",
        "{% endfor %}",
    ] {
        match ChatTemplate::new(bad, "", "") {
            Err(ChatError::Syntax(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    match t.render(&[ChatMessage::new("tool", "x")], false) {
        Err(ChatError::Raised(msg)) => assert_eq!(msg, "bad role tool"),
        other => panic!("{other:?}"),
    }
    let t = ChatTemplate::new("{{ messages.nope.deeper }}", "", "").unwrap();
    assert!(matches!(t.render(&[], false), Err(ChatError::Render(_))));
}

#[test]
fn missing_template_is_an_error() {
    let path = std::env::temp_dir().join(format!("shardline-chat-{}.gguf", std::process::id()));
    GgufWriter::new()
        .add_kv("general.architecture", "llama")
        .write_file(&path)
        .unwrap();
    let gguf = Gguf::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(matches!(
        ChatTemplate::from_gguf(&gguf),
        Err(ChatError::NoTemplate)
    ));
}
