//! `agentnet`: one binary for every agentnet service and tool.

use std::io::Write;
use std::path::PathBuf;
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
    Up(agentnet::up::UpArgs),
    /// Index whole repos from PDSes (every repo a host lists, or named accounts): each
    /// verified against its account's key, resumable where it stopped.
    Backfill(agentnet_indexer::backfill::BackfillConfig),
    /// Run a synthetic PDS fleet (real keys, real signed commits) for load and fault tests.
    Fleet(agentnet_fleet::FleetConfig),
    /// Work with the agent network's lexicons.
    #[command(subcommand)]
    Lexicon(LexiconCommand),
    /// Act as an agent on its PDS: publish a key, write and read records.
    Agent(AgentArgs),
    /// Make a new appview key: prints its secret (base64) on standard output for
    /// `--appview-key` / `AGENTNET_APPVIEW_KEY`, to give every appview and indexer of one
    /// deployment, and its public multikey on standard error.
    AppviewKey,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The agent's PDS.
    #[arg(long, env = "AGENTNET_AGENT_PDS")]
    pds: String,
    /// Handle or DID to log in as.
    #[arg(long, env = "AGENTNET_AGENT_IDENTIFIER")]
    identifier: String,
    /// Password (an app password is enough).
    #[arg(long, env = "AGENTNET_AGENT_PASSWORD", hide_env_values = true)]
    password: String,
    /// Where the agent's private X25519 key is kept.
    #[arg(
        long,
        env = "AGENTNET_AGENT_KEY_FILE",
        default_value = "./agent-key.json"
    )]
    key_file: PathBuf,
    /// PLC directory for resolving recipients.
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    plc_url: String,
    /// Allow loopback and private hosts (local testing only).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    dev: bool,
    /// The appview to query (`inbox`, `recall`, `query`); its DID is read from its
    /// `/.well-known/did.json`.
    #[arg(
        long,
        env = "AGENTNET_APPVIEW_URL",
        default_value = "http://127.0.0.1:2470"
    )]
    appview: String,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Create (or reuse) the agent's X25519 key and publish it as agent.envelope.key/self.
    Keygen,
    /// Write a record (JSON with its $type) as public, shared or private.
    Send {
        /// The record file; `-` reads standard input.
        file: PathBuf,
        /// private (sealed for the author), shared (sealed for --to), or public.
        #[arg(long, default_value = "private")]
        privacy: agentnet_agent::Privacy,
        /// A recipient DID for shared records (repeatable).
        #[arg(long = "to")]
        to: Vec<String>,
    },
    /// Read a record by AT-URI, opening it if it is sealed for this agent.
    Read {
        /// at://did/collection/rkey
        uri: String,
    },
    /// The agent's inbox from the appview, newest first (sealed items opened locally).
    Inbox {
        /// Most items.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Records nearest in meaning to a query, among those the agent may see.
    Recall {
        /// What to recall.
        q: String,
        /// Most results.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Serve this agent's session to a tool over standard input and output, one JSON object
    /// per line: writes, appview queries and the live inbox as events. The Pi extension
    /// drives agentnet through this (see agent/src/rpc.rs for the protocol).
    Rpc {
        /// Do not also seal shared records for the appview (it then cannot index them: no
        /// tasks, threads or recall over them).
        #[arg(long, env = "AGENTNET_AGENT_NO_APPVIEW_SEAL", default_value_t = false)]
        no_appview_seal: bool,
        /// Do not subscribe to the appview's live inbox.
        #[arg(long, env = "AGENTNET_AGENT_NO_LIVE", default_value_t = false)]
        no_live: bool,
    },
    /// Any appview query, as this agent: `query agent.comms.listTasks status=open`.
    Query {
        /// The query's NSID.
        nsid: String,
        /// Parameters as name=value.
        params: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LexiconCommand {
    /// List the embedded lexicon documents.
    List,
    /// Print one lexicon document.
    Show {
        /// The NSID, e.g. agent.comms.message.
        nsid: String,
    },
    /// Validate a record (JSON, with its `$type`) against the lexicons.
    Validate {
        /// The record file; `-` reads standard input.
        file: PathBuf,
        /// Record key to check against the collection's key type.
        #[arg(long, default_value = "3kznmn7xqxl22")]
        rkey: String,
    },
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
            serve(agentnet::relay(config, shutdown_signal())).context("relay")
        }
        Command::Up(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(agentnet::up::run(args, shutdown_signal())),
        Command::Indexer(config) => {
            serve(agentnet_indexer::run(config, shutdown_signal())).context("indexer")
        }
        Command::Appview(config) => {
            serve(agentnet_appview::run(config, shutdown_signal())).context("appview")
        }
        Command::Backfill(config) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let summary = rt
                .block_on(agentnet_indexer::backfill::run(config, shutdown_signal()))
                .context("backfill")?;
            println!(
                "backfill: {} accounts: {} written ({} records, {} rows, {} vectors, {} bytes), {} already current, {} not the host's, {} failed{}",
                summary.accounts,
                summary.done,
                summary.records,
                summary.rows,
                summary.vectors,
                summary.bytes,
                summary.current,
                summary.wrong_host,
                summary.failed,
                if summary.interrupted { "; stopped before the end: run it again to resume" } else { "" },
            );
            if summary.failed > 0 {
                anyhow::bail!(
                    "{} accounts could not be backfilled (see the log); run again to retry them",
                    summary.failed
                );
            }
            Ok(())
        }
        Command::Fleet(config) => {
            serve(agentnet_fleet::run(config, shutdown_signal())).context("fleet")
        }
        Command::Lexicon(cmd) => lexicon(cmd),
        Command::AppviewKey => {
            let key = atproto::envelope::EncryptionKey::generate();
            eprintln!(
                "public key (published by the appview): {}",
                key.public().multikey()
            );
            println!("{}", key.to_base64());
            Ok(())
        }
        Command::Agent(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(agent(args)),
    }
}

fn serve<E: std::error::Error + Send + Sync + 'static>(
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(fut)?;
    Ok(())
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

fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        Ok(std::io::read_to_string(std::io::stdin())?)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    use std::num::NonZeroUsize;
    let resolver = atproto::identity::CachingResolver::new(
        atproto::identity::HttpResolver::new(atproto::identity::ResolverConfig {
            plc_url: args.plc_url.clone(),
            dev: args.dev,
            timeout: std::time::Duration::from_secs(10),
            egress: None,
        })?,
        NonZeroUsize::new(1024).context("cache size")?,
        std::time::Duration::from_secs(300),
    );
    if let AgentCommand::Rpc {
        no_appview_seal,
        no_live,
    } = args.command
    {
        let config = agentnet_agent::rpc::Config {
            pds: args.pds,
            identifier: args.identifier,
            password: args.password,
            key_file: args.key_file,
            appview_url: args.appview,
            resolver,
            seal_for_appview: !no_appview_seal,
            live: !no_live,
        };
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        return Ok(agentnet_agent::rpc::serve(config, stdin, tokio::io::stdout()).await?);
    }
    let mut me = agentnet_agent::Agent::login(&args.pds, &args.identifier, &args.password).await?;
    let mut out = std::io::stdout().lock();
    match &args.command {
        AgentCommand::Keygen => {
            let key = me.keygen(&args.key_file).await?;
            writeln!(out, "{} publishes {}", me.did(), key.public().multikey())?;
        }
        AgentCommand::Send { file, privacy, to } => {
            let record: serde_json::Value =
                serde_json::from_str(&read_input(file)?).context("record is not JSON")?;
            let uri = me.send(&record, *privacy, to, &resolver).await?;
            writeln!(out, "{uri}")?;
        }
        AgentCommand::Inbox { limit } => {
            let limit = limit.to_string();
            appview_query(
                &me,
                &args,
                "agent.comms.getInbox",
                &[("limit", &limit)],
                &mut out,
            )
            .await?;
        }
        AgentCommand::Recall { q, limit } => {
            let limit = limit.to_string();
            let params = [("q", q.as_str()), ("limit", limit.as_str())];
            appview_query(&me, &args, "agent.memory.recall", &params, &mut out).await?;
        }
        AgentCommand::Query { nsid, params } => {
            let mut pairs = Vec::with_capacity(params.len());
            for p in params {
                pairs.push(
                    p.split_once('=')
                        .with_context(|| format!("parameter {p} is not name=value"))?,
                );
            }
            appview_query(&me, &args, nsid, &pairs, &mut out).await?;
        }
        AgentCommand::Rpc { .. } => anyhow::bail!("the rpc session is served before this point"),
        AgentCommand::Read { uri } => {
            let parts = atproto::syntax::parse_at_uri(uri)?;
            let (Some(collection), Some(rkey)) = (parts.collection, parts.rkey) else {
                anyhow::bail!("{uri} does not name a record");
            };
            let record = me
                .get_record(parts.authority, collection, rkey, &resolver)
                .await?;
            let value = if collection == lexicons::SEALED_NSID {
                let key = agentnet_agent::load_key(&args.key_file, me.did())?;
                agentnet_agent::open_json(&record["value"], uri, me.did(), &key)?
            } else {
                record["value"].clone()
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
    }
    Ok(())
}

/// Runs an appview query as the agent and prints the answer, with sealed items opened by
/// the agent's own key where it has one.
async fn appview_query(
    me: &agentnet_agent::Agent,
    args: &AgentArgs,
    nsid: &str,
    params: &[(&str, &str)],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let appview = agentnet_agent::Appview::discover(&args.appview).await?;
    let mut answer = me.query(&appview, nsid, params).await?;
    if let Ok(key) = agentnet_agent::load_key(&args.key_file, me.did()) {
        agentnet_agent::open_items(&mut answer, me.did(), &key);
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}

fn lexicon(cmd: LexiconCommand) -> anyhow::Result<()> {
    match cmd {
        LexiconCommand::List => {
            let mut out = std::io::stdout().lock();
            for (nsid, _) in lexicons::DOCUMENTS {
                writeln!(out, "{nsid}")?;
            }
        }
        LexiconCommand::Show { nsid } => {
            let (_, text) = lexicons::DOCUMENTS
                .iter()
                .find(|(n, _)| *n == nsid)
                .with_context(|| format!("no lexicon {nsid}"))?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
        LexiconCommand::Validate { file, rkey } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let json: serde_json::Value =
                serde_json::from_str(&text).context("record is not JSON")?;
            let collection = json["$type"]
                .as_str()
                .context("record has no $type")?
                .to_string();
            let data = atproto::data::json_to_ipld(&json)?;
            lexicons::catalog()?.validate_record(&collection, &rkey, &data)?;
            println!("valid {collection}");
        }
    }
    Ok(())
}
