//! Load a model onto rpc-servers and stream a chat answer, using shardline as
//! a library.
//!
//! ```sh
//! cargo run --example generate -- MODEL.gguf [HOST:PORT,HOST:PORT] "your question"
//! ```
//!
//! Without servers it starts two local workers (the `shardline` binary must
//! have been built: `cargo build`).

use std::io::Write;

use shardline::chat::ChatMessage;
use shardline::engine::{Engine, Event, GenerateRequest, Prompt};
use shardline::sample::SamplerConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: generate MODEL.gguf [SERVERS] [QUESTION]")?;
    let servers: Vec<String> = args
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let question = args
        .next()
        .unwrap_or_else(|| "Why is the sky blue?".to_string());

    let worker_exe = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|dir| dir.join("shardline"));
    let mut builder = Engine::builder(model).servers(servers).ctx(2048);
    if let Some(exe) = worker_exe {
        builder = builder.worker_exe(exe);
    }
    let engine = builder.build().await?;
    eprintln!("{}", engine.plan());

    let request = GenerateRequest {
        prompt: Prompt::Text(String::new()), // chat() fills it in
        max_tokens: 200,
        sampler: SamplerConfig::default(),
        stop: Vec::new(),
        stop_at_eog: true,
    };
    // Dropping the stream would cancel the request.
    let mut stream = engine.chat(&[ChatMessage::new("user", question)], request)?;
    while let Some(event) = stream.next().await {
        match event {
            Event::Text(piece) => {
                print!("{piece}");
                std::io::stdout().flush()?;
            }
            Event::Done(usage) => eprintln!("\n{usage:?}"),
            Event::Error(e) => return Err(e.into()),
        }
    }
    Ok(())
}
