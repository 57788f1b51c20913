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
    Up(UpArgs),
    /// Run a synthetic PDS fleet (real keys, real signed commits) for load and fault tests.
    Fleet(agentnet_fleet::FleetConfig),
    /// Work with the agent network's lexicons.
    #[command(subcommand)]
    Lexicon(LexiconCommand),
    /// Act as an agent on its PDS: publish a key, write and read records.
    Agent(AgentArgs),
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
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    relay: agentnet_relay::Config,
    /// Also run a synthetic fleet of agents (real keys, real signed commits) feeding the
    /// relay at a gentle rate, so the firehose shows a live network at once.
    #[arg(long, env = "AGENTNET_DEMO", default_value_t = false)]
    demo: bool,
    /// Agents in the demo fleet.
    #[arg(long, env = "AGENTNET_DEMO_AGENTS", default_value_t = 20)]
    demo_agents: usize,
    /// Commits per second across the demo fleet.
    #[arg(long, env = "AGENTNET_DEMO_RATE", default_value_t = 2.0)]
    demo_rate: f64,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
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
            serve(agentnet_relay::run(config, shutdown_signal())).context("relay")
        }
        Command::Up(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(up(args)),
        Command::Indexer(config) => {
            serve(agentnet_indexer::run(config, shutdown_signal())).context("indexer")
        }
        Command::Appview(config) => {
            serve(agentnet_appview::run(config, shutdown_signal())).context("appview")
        }
        Command::Fleet(config) => {
            serve(agentnet_fleet::run(config, shutdown_signal())).context("fleet")
        }
        Command::Lexicon(cmd) => lexicon(cmd),
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

/// Runs the services on embedded stores in one process. This build has the relay; the
/// indexer and appview join it as they are built. With `--demo`, a synthetic fleet on a
/// loopback port feeds it.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut relay = args.relay;
    let mut fleet = None;
    if args.demo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = agentnet_fleet::FleetConfig {
            listen: addr,
            accounts: args.demo_agents,
            rate: args.demo_rate,
            keys: "mix".into(),
            cloudflare: false,
            ops_per_commit: 1,
        };
        relay.hosts.push(format!("http://{addr}"));
        relay.plc_url = format!("http://{addr}/plc");
        // The demo fleet is on loopback.
        relay.dev = true;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agentnet_fleet::run_on(config, listener, async move {
            let _ = stopped.await;
        }));
        fleet = Some((stop, task));
    }
    let listen = relay.listen;
    println!("agentnet is up (relay; indexer and appview are not in this build yet)");
    println!("  firehose  ws://{listen}/xrpc/com.atproto.sync.subscribeRepos?cursor=0");
    println!("  repos     http://{listen}/xrpc/com.atproto.sync.listRepos");
    println!("  metrics   http://{listen}/metrics");
    if args.demo {
        println!(
            "  demo      {} synthetic agents writing {} commits/s",
            args.demo_agents, args.demo_rate
        );
    }
    let result = agentnet_relay::run(relay, shutdown_signal())
        .await
        .context("relay");
    if let Some((stop, task)) = fleet {
        let _ = stop.send(());
        task.await.context("demo fleet")?.context("demo fleet")?;
    }
    result
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
        })?,
        NonZeroUsize::new(1024).context("cache size")?,
        std::time::Duration::from_secs(300),
    );
    let mut me = agentnet_agent::Agent::login(&args.pds, &args.identifier, &args.password).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        AgentCommand::Keygen => {
            let key = me.keygen(&args.key_file).await?;
            writeln!(out, "{} publishes {}", me.did(), key.public().multikey())?;
        }
        AgentCommand::Send { file, privacy, to } => {
            let record: serde_json::Value =
                serde_json::from_str(&read_input(&file)?).context("record is not JSON")?;
            let uri = me.send(&record, privacy, &to, &resolver).await?;
            writeln!(out, "{uri}")?;
        }
        AgentCommand::Read { uri } => {
            let parts = atproto::syntax::parse_at_uri(&uri)?;
            let (Some(collection), Some(rkey)) = (parts.collection, parts.rkey) else {
                anyhow::bail!("{uri} does not name a record");
            };
            let record = me
                .get_record(parts.authority, collection, rkey, &resolver)
                .await?;
            let value = if collection == lexicons::SEALED_NSID {
                let key = agentnet_agent::load_key(&args.key_file, me.did())?;
                agentnet_agent::open_json(&record["value"], &uri, me.did(), &key)?
            } else {
                record["value"].clone()
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
    }
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
