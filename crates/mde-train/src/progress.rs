//! The progress bar of long steps (pretraining stages, embedding, classification): one style
//! for the workspace's steps, hidden when progress is off (tests, CI, logs to a file).

/// A bar of `len` items labelled `msg`, or a hidden one when `progress` is off.
pub fn bar(progress: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(s) = indicatif::ProgressStyle::with_template(
        "{msg:28} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    ) {
        b.set_style(s);
    }
    b.set_message(msg.to_string());
    b
}
