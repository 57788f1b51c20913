//! `agentnet lexicon`: the network's lexicons, listed, shown, and used to validate records.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LexiconCommand {
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

/// Runs one lexicon command.
pub fn run(cmd: LexiconCommand) -> anyhow::Result<()> {
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
