//! Byte progress bars on stderr, shown only when stderr is a terminal (logs
//! and pipes get `tracing` lines instead).

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `total` bytes labelled `what` (e.g. "uploading"), with rate,
/// ETA and a message slot; hidden unless `enabled` and stderr is a
/// terminal.
pub fn byte_bar(what: &str, total: u64, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}} {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}
