//! Progress bars on a terminal, nothing otherwise (structured logs carry
//! progress for scheduled runs).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `total` rows (`None` when unknown) that draws only
/// when stderr is a terminal and `CI` is not set.
pub fn rows_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let visible = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    if !visible {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    let template = if total.is_some() {
        "{prefix:>8} [{elapsed_precise}] {wide_bar:.cyan/blue} {human_pos}/{human_len} rows ({per_sec}, ETA {eta})"
    } else {
        "{prefix:>8} [{elapsed_precise}] {spinner} {human_pos} rows ({per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
