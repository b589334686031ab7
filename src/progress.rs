//! A terminal progress bar for transfers.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use labmesh_transfer::Progress;

/// A progress bar fed from a [`Progress`] while `fut` runs, when stdout is a
/// terminal; nothing otherwise.
pub async fn with_bar<T>(
    label: &str,
    progress: Arc<Progress>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    if !std::io::stdout().is_terminal() {
        return fut.await;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                let (done, total) = progress.get();
                bar.set_length(total.max(done));
                bar.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let out = fut.await;
    ticker.abort();
    bar.finish_and_clear();
    out
}
