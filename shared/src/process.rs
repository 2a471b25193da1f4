//! Process plumbing both binaries share: log setup, the shutdown signal and
//! running a command on a runtime to an exit code.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Logs to stderr, filtered by `RUST_LOG` or else `default_filter`; colours
/// only on a terminal.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    shutdown
}

/// Cancels `token` on the first SIGTERM or SIGINT (from now on).
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested: finishing what is in flight");
        token.cancel();
    });
}

/// Runs `command` to completion on `runtime` (or says why there is no
/// runtime): success is exit code 0; an error is printed as
/// `error: {e:#}` (with anyhow, the cause chain) on stderr and is exit code 1.
pub fn exit_code_of<E: Display>(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    command: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
