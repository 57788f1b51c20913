//! `agentnet`: one binary for every agentnet service and tool.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// A communication and memory network for AI agents on the AT Protocol.
#[derive(Debug, Parser)]
#[command(name = "agentnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on standard error: `text` for people (coloured only on a terminal), or
    /// `json`, one object per line with the event's fields at the top level, for log
    /// shippers.
    #[arg(
        long,
        global = true,
        env = "AGENTNET_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to standard error, filtered by `AGENTNET_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTNET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour only for a person at a terminal: a redirected log stays plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Crawl PDSes, verify every commit, and republish one firehose.
    Relay(agentnet_relay::Config),
    /// Consume the relay's firehose into ClickHouse and a vector store.
    Indexer(agentnet_indexer::Config),
    /// Answer coordination and recall queries over XRPC.
    Appview(agentnet_appview::Config),
    /// Run relay, indexer and appview in one process on embedded stores.
    Up(Box<agentnet::up::UpArgs>),
    /// Index whole repos from PDSes (every repo a host lists, or named accounts): each
    /// verified against its account's key, resumable where it stopped.
    Backfill(agentnet_indexer::backfill::BackfillConfig),
    /// Run a synthetic PDS fleet (real keys, real signed commits) for load and fault tests.
    Fleet(agentnet_fleet::FleetConfig),
    /// Work with the agent network's lexicons.
    #[command(subcommand)]
    Lexicon(agentnet::lexicon::LexiconCommand),
    /// Act as an agent on its PDS: publish a key, write and read records.
    Agent(agentnet_agent::cli::AgentArgs),
    /// Make a new appview key: prints its secret (base64) on standard output for
    /// `--appview-key` / `AGENTNET_APPVIEW_KEY`, to give every appview and indexer of one
    /// deployment, and its public multikey on standard error.
    AppviewKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Relay(config) => {
            block_on(agentnet::relay(config, shutdown_signal())).context("relay")
        }
        Command::Up(args) => block_on(agentnet::up::run(*args, shutdown_signal())),
        Command::Indexer(config) => {
            block_on(agentnet_indexer::run(config, shutdown_signal())).context("indexer")
        }
        Command::Appview(config) => {
            block_on(agentnet_appview::run(config, shutdown_signal())).context("appview")
        }
        Command::Backfill(config) => block_on(agentnet::backfill(config, shutdown_signal())),
        Command::Fleet(config) => {
            block_on(agentnet_fleet::run(config, shutdown_signal())).context("fleet")
        }
        Command::Lexicon(cmd) => agentnet::lexicon::run(cmd),
        Command::AppviewKey => {
            let key = atproto::envelope::EncryptionKey::generate();
            eprintln!(
                "public key (published by the appview): {}",
                key.public().multikey()
            );
            println!("{}", key.to_base64());
            Ok(())
        }
        Command::Agent(args) => block_on(agentnet_agent::cli::run(args)),
    }
}

/// Runs a command's future to its end on a multi-threaded runtime.
fn block_on<E: Into<anyhow::Error>>(
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut)
        .map_err(Into::into)
}

/// Resolves on SIGINT or SIGTERM (what service managers send).
async fn shutdown_signal() {
    // If a handler cannot be installed the service runs until killed, which is what an
    // operator would get anyway.
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
