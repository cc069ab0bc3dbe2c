//! The cost model's prediction as a table, one row per stage.

use std::fmt;

use super::{layer_range, Plan, Prediction};

/// A plan's predicted times, printed as a table with the totals and the
/// devices left out.
#[derive(Debug)]
pub struct PredictionTable<'a>(pub &'a Plan, pub &'a Prediction);

impl fmt::Display for PredictionTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (plan, p) = (self.0, self.1);
        let load_head = format!("{} streams ms", p.streams);
        let prompt_head = format!("prompt {} ms", p.prompt_chunk);
        let headers = [
            "stage",
            "device",
            "layers",
            "decode ms",
            &load_head,
            &prompt_head,
        ];
        let ms = |v: f64| format!("{v:.2}");
        let mut rows: Vec<[String; 6]> = plan
            .stages
            .iter()
            .zip(&p.stages)
            .enumerate()
            .map(|(i, (s, t))| {
                let (a, b, c) = match t {
                    Some(t) => (ms(t.decode_ms), ms(t.load_ms), ms(t.prompt_ms)),
                    None => ("?".into(), "?".into(), "?".into()),
                };
                [
                    i.to_string(),
                    s.target.to_string(),
                    layer_range(&s.layers),
                    a,
                    b,
                    c,
                ]
            })
            .collect();
        if let Some(t) = &p.head {
            let devices: Vec<String> = plan
                .head_shares
                .iter()
                .map(|h| h.target.to_string())
                .collect();
            rows.push([
                "head".into(),
                devices.join(" + "),
                "output rows".into(),
                ms(t.decode_ms),
                ms(t.load_ms),
                ms(t.prompt_ms),
            ]);
        }
        super::display::write_table(f, &headers, &rows, 3)?;
        writeln!(
            f,
            "predicted: decode {:.1} tok/s (1 stream), prompt {:.1} tok/s, {} streams {:.1} tok/s (batched) / {:.1} tok/s (pipelined)",
            p.decode_tok_s, p.prompt_tok_s, p.streams, p.load_tok_s, p.pipelined_tok_s
        )?;
        if p.stages.iter().any(Option::is_none) {
            writeln!(
                f,
                "(stages marked ? have no measured speed and count as 0 ms)"
            )?;
        }
        for l in &p.left_out {
            writeln!(f, "left out: {}/{}: {}", l.endpoint, l.device, l.reason)?;
        }
        Ok(())
    }
}
