//! Helpers shared by the benchmarks that drive real `sting serve` processes.

use std::time::Duration;

/// Reads a starting node's stdout until it prints where it listens; returns the base URL
/// (without `/api`).
pub fn listen_url(stdout: std::process::ChildStdout) -> String {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(url) = line.split("listening on ").nth(1) {
            return url
                .trim()
                .trim_end_matches("/api")
                .replace("localhost", "127.0.0.1");
        }
    }
    panic!("sting exited before listening");
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}
