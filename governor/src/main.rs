//! The `governor` binary: argument parsing, logging and exit codes. The work is in the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// The spilo governor: runs beside one PostgreSQL instance and keeps the cluster highly available.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the governor for the member described in a configuration file.
    Run {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The watchdog process the governor spawns for itself (reads its stdin; not for humans).
    #[command(hide = true)]
    Watchdog,
    /// Check a configuration file and the machine, then exit.
    Check {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Watchdog) {
        governor::watchdog::run();
        return ExitCode::SUCCESS;
    }
    // One TLS crypto provider for the process (the REST API's HTTPS and its clients), chosen
    // explicitly so no dependency's feature set can leave it ambiguous.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            let loaded = governor::config::load(&config)?;
            governor::preflight::check(&loaded.config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Watchdog => Ok(()),
        Command::Run { config } => {
            let loaded = governor::config::load(&config)?;
            governor::preflight::check(&loaded.config)?;
            let shutdown = CancellationToken::new();
            let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
            let r = governor::runtime::run(loaded, shutdown.clone()).await;
            signals.abort();
            r
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
