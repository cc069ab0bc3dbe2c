//! Greedy decoding straight on a [`Pipeline`], below the engine.

use shardline::exec::pipeline::Pipeline;
use shardline::kv::Cell;

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `n` greedy tokens after `prompt` in sequence 0, which is then cleared.
pub async fn greedy(p: &mut Pipeline, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_with_logits(p, prompt, n).await.0
}

/// Like [`greedy`], also returning the logits of the prompt's last token.
pub async fn greedy_with_logits(
    p: &mut Pipeline,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<f32>) {
    let cells: Vec<Cell> = (0..prompt.len())
        .map(|i| Cell {
            seq: 0,
            pos: i as u32,
        })
        .collect();
    let first = p.decode(prompt, &cells, &[prompt.len() - 1]).await.unwrap();
    let mut out = vec![argmax(&first)];
    while out.len() < n {
        let pos = (prompt.len() + out.len() - 1) as u32;
        let logits = p
            .decode(&[*out.last().unwrap()], &[Cell { seq: 0, pos }], &[0])
            .await
            .unwrap();
        out.push(argmax(&logits));
    }
    p.remove_seq(0);
    (out, first)
}
