//! The `spilo` binary: argument parsing, output and exit codes. The work is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use spilo_model::ClusterName;
use std::path::PathBuf;
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
    /// Check cluster files: YAML, the schema, and the rules across fields and files.
    Validate {
        /// Files or directories (default: clusters/).
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Ask for a new cluster's settings (like `senza init`) and write its file.
    Init(Box<spilo::init::InitArgs>),
    /// Print the JSON Schema of cluster files (committed as schemas/cluster.schema.json).
    #[command(hide = true)]
    Schema,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("clusters")]
            } else {
                paths
            };
            let files = spilo::spec::read_files(&paths)?;
            let checked = spilo::spec::validate_files(&files);
            match format {
                Format::Text => {
                    print!("{}", spilo::spec::render_text(&checked.diagnostics));
                    let errors = checked
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == spilo::spec::Severity::Error)
                        .count();
                    let warnings = checked.diagnostics.len() - errors;
                    eprintln!(
                        "{} file(s) checked: {errors} error(s), {warnings} warning(s)",
                        files.len()
                    );
                }
                Format::Json => println!("{}", spilo::spec::render_json(&checked.diagnostics)),
            }
            Ok(if checked.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Init(args) => {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut out = std::io::stdout();
            let path = spilo::init::run(&args, &mut input, &mut out)?;
            println!("Check it with: spilo validate {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", spilo::spec::schema_json());
            Ok(ExitCode::SUCCESS)
        }
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
