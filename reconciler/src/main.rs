//! The `spilo` binary: argument parsing, output and exit codes. The work is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use spilo_model::ClusterName;
use std::process::ExitCode;

/// spilo: highly available PostgreSQL clusters declared in git.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the members of a running cluster (name, host:port, role, state, timeline, lag).
    List {
        /// The cluster (etcd scope).
        cluster: ClusterName,
        /// etcd client endpoints, comma separated.
        #[arg(
            long,
            env = "SPILO_ETCD",
            value_delimiter = ',',
            default_value = "127.0.0.1:2379"
        )]
        etcd: Vec<String>,
        /// The etcd key namespace.
        #[arg(long, default_value = "/service")]
        namespace: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::List {
            cluster,
            etcd,
            namespace,
            format,
        } => {
            let summary = spilo::list::read_summary(&etcd, &namespace, &cluster).await?;
            match format {
                Format::Text => print!("{}", summary.to_table()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
            }
            Ok(())
        }
    }
}
