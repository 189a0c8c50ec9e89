//! What the Strata binaries (`strata-broker`, `strata`) share as processes: logging set-up,
//! the shutdown signal and how a fatal error is reported.

use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs to stderr, filtered by `STRATA_LOG` (or `RUST_LOG`), else by `default_filter`.
/// openraft's own messages are shown from `error` up unless the filter names it: it warns
/// on every heartbeat to a peer that is down, which the node reports itself.
pub fn init_logging(default_filter: &str) {
    let filter = std::env::var("STRATA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_filter.to_string());
    let filter = if filter.contains("openraft") {
        filter
    } else {
        format!("{filter},openraft=error")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Completes on SIGINT or SIGTERM (on SIGINT alone if SIGTERM cannot be listened for).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// The process's exit code for `result`; a failure is reported on stderr as one line.
#[allow(clippy::print_stderr)] // reporting a fatal error on stderr is the point
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already shows.
pub fn describe(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn describe_skips_causes_already_in_the_message() {
        let inner = anyhow::anyhow!("permission denied");
        let e = inner.context("opening /data: permission denied");
        assert_eq!(describe(&e), "opening /data: permission denied");
        let e = anyhow::anyhow!("disk full").context("appending");
        assert_eq!(describe(&e), "appending: disk full");
    }
}
