//! The plan as a table, one row per stage.

use std::fmt;

use super::{layer_range, Plan, Target};

/// The table's column headers.
pub(super) const HEADERS: [&str; 9] = [
    "stage",
    "device",
    "kind",
    "layers",
    "weights",
    "KV",
    "compute",
    "output",
    "free after",
];

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seqs = if self.n_seq_max == 1 {
            "sequence"
        } else {
            "sequences"
        };
        write!(
            f,
            "{} layers, context {} (f16 KV shared by {} {seqs}), batch {}, strategy {}, reserve {} per device",
            self.n_layer,
            self.n_ctx,
            self.n_seq_max,
            self.n_batch,
            self.strategy,
            human_bytes(self.reserve)
        )?;
        if self.output_tied {
            f.write_str(", output tied to token_embd.weight")?;
        }
        writeln!(f)?;

        let mut rows: Vec<[String; 9]> = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                [
                    i.to_string(),
                    s.target.to_string(),
                    s.kind.short().to_owned(),
                    layer_range(&s.layers),
                    if s.expert_bytes > 0 {
                        format!(
                            "{} ({} experts)",
                            human_bytes(s.weight_bytes),
                            human_bytes(s.expert_bytes)
                        )
                    } else {
                        human_bytes(s.weight_bytes)
                    },
                    human_bytes(s.kv_bytes),
                    human_bytes(s.compute_bytes),
                    if s.holds_output || s.output_bytes > 0 {
                        human_bytes(s.output_bytes)
                    } else {
                        "-".to_owned()
                    },
                    s.free_after.map_or_else(|| "-".to_owned(), human_bytes),
                ]
            })
            .collect();
        let sum =
            |field: fn(&super::Stage) -> u64| human_bytes(self.stages.iter().map(field).sum());
        rows.push([
            "total".to_owned(),
            String::new(),
            String::new(),
            format!("{} layers", self.n_layer),
            sum(|s| s.weight_bytes),
            sum(|s| s.kv_bytes),
            sum(|s| s.compute_bytes),
            sum(|s| s.output_bytes),
            String::new(),
        ]);

        // Text columns left-aligned, sizes right-aligned.
        write_table(f, &HEADERS, &rows, 4)?;
        for e in &self.excluded {
            writeln!(f, "left out {}/{}: {}", e.endpoint, e.device, e.reason)?;
        }
        let slots: Vec<String> = self
            .stages
            .iter()
            .filter_map(|s| match (&s.target, s.spare_slot) {
                (
                    Target::Remote {
                        endpoint, device, ..
                    },
                    Some(slot),
                ) => Some(format!("{endpoint}/{slot} for {endpoint}/{device}")),
                _ => None,
            })
            .collect();
        if !slots.is_empty() {
            writeln!(
                f,
                "spare graph slots (prompt chunks, shares of the head): {}",
                slots.join(", ")
            )?;
        }
        if !self.head_shares.is_empty() {
            let shares: Vec<String> = self
                .head_shares
                .iter()
                .map(|h| format!("{}-{} on {}", h.rows.start, h.rows.end - 1, h.target))
                .collect();
            writeln!(
                f,
                "output head split by vocabulary rows, computed at once: {}",
                shares.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Bytes as a short human-readable size (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Writes `headers` and `rows` as aligned columns, two spaces apart: the
/// first `left` columns left-aligned (text), the rest right-aligned
/// (numbers); trailing blanks trimmed.
pub(crate) fn write_table<H: AsRef<str>, C: AsRef<str>, const N: usize>(
    f: &mut fmt::Formatter<'_>,
    headers: &[H; N],
    rows: &[[C; N]],
    left: usize,
) -> fmt::Result {
    let mut widths = headers.each_ref().map(|h| h.as_ref().len());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_ref().len());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: [&str; N]| -> fmt::Result {
        let mut text = String::new();
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let sep = if k == 0 { "" } else { "  " };
            if k < left {
                text.push_str(&format!("{sep}{cell:<w$}"));
            } else {
                text.push_str(&format!("{sep}{cell:>w$}"));
            }
        }
        writeln!(f, "{}", text.trim_end())
    };
    line(f, headers.each_ref().map(AsRef::as_ref))?;
    for row in rows {
        line(f, row.each_ref().map(AsRef::as_ref))?;
    }
    Ok(())
}
