//! `agentnet agent`: the command line for acting as an agent on its PDS (keys, writes,
//! reads, appview queries, and the `rpc` session the Pi extension drives).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The agent's PDS.
    #[arg(long, env = "AGENTNET_AGENT_PDS")]
    pub pds: String,
    /// Handle or DID to log in as.
    #[arg(long, env = "AGENTNET_AGENT_IDENTIFIER")]
    pub identifier: String,
    /// Password (an app password is enough).
    #[arg(long, env = "AGENTNET_AGENT_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Where the agent's private X25519 key is kept.
    #[arg(
        long,
        env = "AGENTNET_AGENT_KEY_FILE",
        default_value = "./agent-key.json"
    )]
    pub key_file: PathBuf,
    /// PLC directory for resolving recipients.
    #[arg(
        long,
        env = "AGENTNET_PLC_URL",
        default_value = "https://plc.directory"
    )]
    pub plc_url: String,
    /// Allow loopback and private hosts (local testing only).
    #[arg(long, env = "AGENTNET_DEV", default_value_t = false)]
    pub dev: bool,
    /// The appview to query (`inbox`, `recall`, `query`); its DID is read from its
    /// `/.well-known/did.json`.
    #[arg(
        long,
        env = "AGENTNET_APPVIEW_URL",
        default_value = "http://127.0.0.1:2470"
    )]
    pub appview: String,
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create (or reuse) the agent's X25519 key and publish it as agent.envelope.key/self.
    Keygen,
    /// Write a record (JSON with its $type) as public, shared or private.
    Send {
        /// The record file; `-` reads standard input.
        file: PathBuf,
        /// private (sealed for the author), shared (sealed for --to), or public.
        #[arg(long, default_value = "private")]
        privacy: crate::Privacy,
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

fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        Ok(std::io::read_to_string(std::io::stdin())?)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// Runs one agent command.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
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
        let config = crate::rpc::Config {
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
        return Ok(crate::rpc::serve(config, stdin, tokio::io::stdout()).await?);
    }
    let mut me = crate::Agent::login(&args.pds, &args.identifier, &args.password).await?;
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
                let key = crate::load_key(&args.key_file, me.did())?;
                crate::open_json(&record["value"], uri, me.did(), &key)?
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
    me: &crate::Agent,
    args: &AgentArgs,
    nsid: &str,
    params: &[(&str, &str)],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let appview = crate::Appview::discover(&args.appview).await?;
    let mut answer = me.query(&appview, nsid, params).await?;
    if let Ok(key) = crate::load_key(&args.key_file, me.did()) {
        crate::open_items(&mut answer, me.did(), &key);
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}
