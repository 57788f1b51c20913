//! The agent side of agentnet: an agent logs in to its PDS, publishes its X25519 key, and
//! writes `agent.*` records — public (plaintext), shared (sealed for named recipients) or
//! private (sealed for itself) — with the standard repo XRPC calls. The `agentnet agent`
//! subcommand is a thin entry point over this.

pub mod cli;
pub mod rpc;

use std::path::Path;

use atproto::envelope::{self, EncryptionKey, EncryptionPublicKey, Recipient, Sealed};
use atproto::identity::{CachingResolver, DidResolver};
use atproto::syntax::{datetime_now, TidClock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Largest XRPC response read, in bytes.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Why an agent operation failed.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The PDS or another service answered with an error.
    #[error("{method}: {status} {error}: {message}")]
    Xrpc {
        /// The XRPC method.
        method: String,
        /// HTTP status.
        status: u16,
        /// The XRPC error name.
        error: String,
        /// Its message.
        message: String,
    },
    /// The request could not be made.
    #[error("{0}: {1}")]
    Http(String, String),
    /// A recipient has not published an encryption key.
    #[error("{0} has published no agent.envelope.key")]
    NoKey(String),
    /// DID resolution failed.
    #[error(transparent)]
    Identity(#[from] atproto::identity::IdentityError),
    /// Sealing or opening failed.
    #[error(transparent)]
    Envelope(#[from] envelope::EnvelopeError),
    /// The record does not fit its lexicon or the data model.
    #[error("invalid record: {0}")]
    Record(String),
    /// The local key file could not be read or written.
    #[error("key file {0}: {1}")]
    KeyFile(String, String),
}

/// Who can read a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privacy {
    /// Sealed for the author alone; never indexed.
    Private,
    /// Sealed for named recipients.
    Shared,
    /// Plaintext.
    Public,
}

impl std::str::FromStr for Privacy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "private" => Ok(Privacy::Private),
            "shared" => Ok(Privacy::Shared),
            "public" => Ok(Privacy::Public),
            _ => Err(format!(
                "privacy must be private, shared or public, not {s}"
            )),
        }
    }
}

/// A logged-in session on the agent's PDS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The agent's DID.
    pub did: String,
    /// Its handle.
    pub handle: String,
    /// Bearer token for the PDS.
    pub access_jwt: String,
}

/// An agent connected to its PDS.
pub struct Agent {
    pds: String,
    http: reqwest::Client,
    session: Session,
    clock: TidClock,
}

/// Reads a JSON response, bounded, turning XRPC errors into [`AgentError::Xrpc`].
async fn xrpc_json(
    method: &str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, AgentError> {
    let mut resp = resp.map_err(|e| AgentError::Http(method.into(), e.to_string()))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| AgentError::Http(method.into(), e.to_string()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(AgentError::Http(method.into(), "response too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(AgentError::Xrpc {
            method: method.into(),
            status: status.as_u16(),
            error: value["error"].as_str().unwrap_or("Unknown").into(),
            message: value["message"].as_str().unwrap_or_default().into(),
        });
    }
    Ok(value)
}

impl Agent {
    /// Logs in with `com.atproto.server.createSession`.
    pub async fn login(pds: &str, identifier: &str, password: &str) -> Result<Agent, AgentError> {
        let pds = pds.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| AgentError::Http("client".into(), e.to_string()))?;
        let method = "com.atproto.server.createSession";
        let v = xrpc_json(
            method,
            http.post(format!("{pds}/xrpc/{method}"))
                .json(&json!({"identifier": identifier, "password": password}))
                .send()
                .await,
        )
        .await?;
        let session: Session = serde_json::from_value(v)
            .map_err(|e| AgentError::Http(method.into(), e.to_string()))?;
        Ok(Agent {
            pds,
            http,
            session,
            clock: TidClock::new(0),
        })
    }

    /// Another handle on the same PDS session (for minting service tokens beside this
    /// one); it writes with its own record-key clock.
    pub fn clone_session(&self) -> Agent {
        Agent {
            pds: self.pds.clone(),
            http: self.http.clone(),
            session: self.session.clone(),
            clock: TidClock::new(1),
        }
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The agent's DID.
    pub fn did(&self) -> &str {
        &self.session.did
    }

    async fn procedure(&self, method: &str, body: &Value) -> Result<Value, AgentError> {
        let url = format!("{}/xrpc/{method}", self.pds);
        xrpc_json(
            method,
            self.http
                .post(url)
                .bearer_auth(&self.session.access_jwt)
                .json(body)
                .send()
                .await,
        )
        .await
    }

    /// Writes a record at `collection/rkey` (`com.atproto.repo.putRecord`); returns its URI.
    pub async fn put_record(
        &self,
        collection: &str,
        rkey: &str,
        record: &Value,
    ) -> Result<String, AgentError> {
        let v = self
            .procedure(
                "com.atproto.repo.putRecord",
                &json!({"repo": self.did(), "collection": collection, "rkey": rkey, "record": record}),
            )
            .await?;
        Ok(v["uri"].as_str().unwrap_or_default().to_string())
    }

    /// Creates the X25519 key (kept in `key_file`, mode 0600) and publishes its public half
    /// as `agent.envelope.key/self`. An existing key file for this DID is reused.
    pub async fn keygen(&self, key_file: &Path) -> Result<EncryptionKey, AgentError> {
        let key = match load_key(key_file, self.did()) {
            Ok(k) => k,
            Err(_) => {
                let k = EncryptionKey::generate();
                save_key(key_file, self.did(), &k)?;
                k
            }
        };
        let record = json!({
            "$type": lexicons::KEY_NSID,
            "publicKey": key.public().multikey(),
            "createdAt": datetime_now(),
        });
        self.put_record(lexicons::KEY_NSID, "self", &record).await?;
        Ok(key)
    }

    /// Writes an `agent.*` record with the given privacy. `record` is the inner record's
    /// JSON with its `$type`; shared records are sealed for `recipients` (and the author,
    /// so it can read its own), private ones for the author alone. Returns the AT-URI.
    pub async fn send<R: DidResolver>(
        &mut self,
        record: &Value,
        privacy: Privacy,
        recipients: &[String],
        resolver: &CachingResolver<R>,
    ) -> Result<String, AgentError> {
        let collection = record["$type"]
            .as_str()
            .ok_or_else(|| AgentError::Record("no $type".into()))?
            .to_string();
        let rkey = self.clock.next_tid().to_string();
        let data =
            atproto::data::json_to_ipld(record).map_err(|e| AgentError::Record(e.to_string()))?;
        let catalog = lexicons::catalog().map_err(|e| AgentError::Record(e.to_string()))?;
        catalog
            .validate_record(&collection, &rkey, &data)
            .map_err(|e| AgentError::Record(e.to_string()))?;
        if privacy == Privacy::Public {
            return self.put_record(&collection, &rkey, record).await;
        }
        let mut dids: Vec<String> = vec![self.did().to_string()];
        if privacy == Privacy::Shared {
            for r in recipients {
                if !dids.contains(r) {
                    dids.push(r.clone());
                }
            }
        }
        let mut keys = Vec::with_capacity(dids.len());
        for did in &dids {
            keys.push(self.published_key(did, resolver).await?);
        }
        let plaintext =
            atproto::data::to_cbor(&data).map_err(|e| AgentError::Record(e.to_string()))?;
        let uri = format!("at://{}/{}/{rkey}", self.did(), lexicons::SEALED_NSID);
        let rcpts: Vec<Recipient<'_>> = dids
            .iter()
            .zip(&keys)
            .map(|(did, key)| Recipient { did, key })
            .collect();
        let sealed = envelope::seal(&uri, &collection, &datetime_now(), &plaintext, &rcpts)?;
        self.put_record(lexicons::SEALED_NSID, &rkey, &sealed_json(&sealed)?)
            .await
    }

    /// A DID's published X25519 key: the `keyAgreement` key of its DID document (how
    /// services such as the appview publish theirs), else the `agent.envelope.key/self`
    /// record in its own repo on its own PDS.
    pub async fn published_key<R: DidResolver>(
        &self,
        did: &str,
        resolver: &CachingResolver<R>,
    ) -> Result<EncryptionPublicKey, AgentError> {
        let in_document = match resolver.identity(did).await {
            Ok(id) => id.document.key_agreement_multikey().map(str::to_string),
            // A service DID may have no repo signing key; its document can still carry one.
            Err(_) => resolver
                .document(did)
                .await?
                .key_agreement_multikey()
                .map(str::to_string),
        };
        if let Some(mk) = in_document {
            return Ok(EncryptionPublicKey::from_multikey(&mk)?);
        }
        let record = self
            .get_record(did, lexicons::KEY_NSID, "self", resolver)
            .await
            .map_err(|e| match e {
                AgentError::Xrpc { .. } => AgentError::NoKey(did.into()),
                other => other,
            })?;
        let mk = record["value"]["publicKey"]
            .as_str()
            .ok_or_else(|| AgentError::NoKey(did.into()))?;
        Ok(EncryptionPublicKey::from_multikey(mk)?)
    }

    /// A service JWT from the agent's PDS (`com.atproto.server.getServiceAuth`) for
    /// service `aud` and method `lxm`.
    pub async fn service_token(&self, aud: &str, lxm: &str) -> Result<String, AgentError> {
        let method = "com.atproto.server.getServiceAuth";
        let v = xrpc_json(
            method,
            self.http
                .get(format!("{}/xrpc/{method}", self.pds))
                .bearer_auth(&self.session.access_jwt)
                .query(&[("aud", aud), ("lxm", lxm)])
                .send()
                .await,
        )
        .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AgentError::Http(method.into(), "no token in the answer".into()))
    }

    /// Calls appview query `nsid` as this agent: a fresh service token for `appview`
    /// (its DID and URL) and method `nsid`, then `GET /xrpc/{nsid}` with `params`.
    pub async fn query(
        &self,
        appview: &Appview,
        nsid: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, AgentError> {
        let token = self.service_token(&appview.did, nsid).await?;
        appview.query(&self.http, Some(&token), nsid, params).await
    }

    /// A handle's DID, as the agent's PDS resolves it (`com.atproto.identity.resolveHandle`).
    pub async fn resolve_handle(&self, handle: &str) -> Result<String, AgentError> {
        let method = "com.atproto.identity.resolveHandle";
        let v = xrpc_json(
            method,
            self.http
                .get(format!("{}/xrpc/{method}", self.pds))
                .query(&[("handle", handle)])
                .send()
                .await,
        )
        .await?;
        let did = v["did"]
            .as_str()
            .ok_or_else(|| AgentError::Http(method.into(), "no did in the answer".into()))?;
        atproto::syntax::validate_did(did)
            .map_err(|e| AgentError::Http(method.into(), e.to_string()))?;
        Ok(did.to_string())
    }

    /// One page of the agent's own records in `collection`, newest first
    /// (`com.atproto.repo.listRecords` on its PDS).
    pub async fn list_own_records(
        &self,
        collection: &str,
        limit: usize,
    ) -> Result<Vec<Value>, AgentError> {
        let method = "com.atproto.repo.listRecords";
        let limit = limit.clamp(1, 100).to_string();
        let v = xrpc_json(
            method,
            self.http
                .get(format!("{}/xrpc/{method}", self.pds))
                .query(&[
                    ("repo", self.did()),
                    ("collection", collection),
                    ("limit", limit.as_str()),
                    ("reverse", "false"),
                ])
                .send()
                .await,
        )
        .await?;
        Ok(v["records"].as_array().cloned().unwrap_or_default())
    }

    /// `com.atproto.repo.getRecord` from the repo's own PDS.
    pub async fn get_record<R: DidResolver>(
        &self,
        did: &str,
        collection: &str,
        rkey: &str,
        resolver: &CachingResolver<R>,
    ) -> Result<Value, AgentError> {
        let id = resolver.identity(did).await?;
        let pds = id
            .pds
            .as_deref()
            .ok_or_else(|| AgentError::NoKey(did.into()))?
            .trim_end_matches('/');
        let method = "com.atproto.repo.getRecord";
        let resp = self
            .http
            .get(format!("{pds}/xrpc/{method}"))
            .query(&[("repo", did), ("collection", collection), ("rkey", rkey)])
            .send()
            .await;
        xrpc_json(method, resp).await
    }
}

/// The JSON form of a sealed record (bytes as `$bytes`), as the PDS's XRPC takes it.
pub fn sealed_json(sealed: &Sealed) -> Result<Value, AgentError> {
    let cbor = atproto::data::to_cbor(&TypedSealed {
        kind: lexicons::SEALED_NSID,
        sealed,
    })
    .map_err(|e| AgentError::Record(e.to_string()))?;
    let ipld: atproto::Ipld =
        atproto::data::from_cbor(&cbor).map_err(|e| AgentError::Record(e.to_string()))?;
    Ok(atproto::data::ipld_to_json(&ipld))
}

#[derive(Serialize)]
struct TypedSealed<'a> {
    #[serde(rename = "$type")]
    kind: &'static str,
    #[serde(flatten)]
    sealed: &'a Sealed,
}

/// Opens a sealed record's JSON (as `getRecord` returns it) found at `uri`, as `did`.
pub fn open_json(
    value: &Value,
    uri: &str,
    did: &str,
    key: &EncryptionKey,
) -> Result<Value, AgentError> {
    let ipld = atproto::data::json_to_ipld(value).map_err(|e| AgentError::Record(e.to_string()))?;
    let cbor = atproto::data::to_cbor(&ipld).map_err(|e| AgentError::Record(e.to_string()))?;
    let sealed: Sealed =
        atproto::data::from_cbor(&cbor).map_err(|e| AgentError::Record(e.to_string()))?;
    let plaintext = envelope::open(&sealed, uri, did, key)?;
    let inner: atproto::Ipld =
        atproto::data::from_cbor(&plaintext).map_err(|e| AgentError::Record(e.to_string()))?;
    Ok(atproto::data::ipld_to_json(&inner))
}

/// Reads the agent's private key file.
pub fn load_key(path: &Path, did: &str) -> Result<EncryptionKey, AgentError> {
    EncryptionKey::load(path, did).map_err(|e| AgentError::KeyFile(path.display().to_string(), e))
}

/// Writes the agent's private key file, readable by its owner only.
pub fn save_key(path: &Path, did: &str, key: &EncryptionKey) -> Result<(), AgentError> {
    key.save(path, did)
        .map_err(|e| AgentError::KeyFile(path.display().to_string(), e))
}

/// An appview, found by URL: its DID is read from its `/.well-known/did.json`.
#[derive(Debug, Clone)]
pub struct Appview {
    /// Its DID (the audience of service tokens).
    pub did: String,
    /// Its base URL.
    pub url: String,
}

impl Appview {
    /// Reads the DID document at `url` (the appview's own `did:web` document).
    pub async fn discover(url: &str) -> Result<Appview, AgentError> {
        let url = url.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| AgentError::Http("client".into(), e.to_string()))?;
        let doc = xrpc_json(
            "did.json",
            http.get(format!("{url}/.well-known/did.json")).send().await,
        )
        .await?;
        let did = doc["id"]
            .as_str()
            .ok_or_else(|| AgentError::Http("did.json".into(), "no id".into()))?;
        atproto::syntax::validate_did(did)
            .map_err(|e| AgentError::Http("did.json".into(), e.to_string()))?;
        Ok(Appview {
            did: did.to_string(),
            url,
        })
    }

    /// `GET /xrpc/{nsid}` with `params`, authenticated with `token` when given.
    pub async fn query(
        &self,
        http: &reqwest::Client,
        token: Option<&str>,
        nsid: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, AgentError> {
        let mut req = http.get(format!("{}/xrpc/{nsid}", self.url)).query(params);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        xrpc_json(nsid, req.send().await).await
    }
}

/// Opens, in place, every sealed record in an appview answer that `did` can open with
/// `key` (items the appview could not decrypt arrive sealed); returns how many it opened.
pub fn open_items(answer: &mut Value, did: &str, key: &EncryptionKey) -> usize {
    let mut opened = 0;
    let mut visit = |item: &mut Value| {
        let sealed = item["record"]["$type"].as_str() == Some(lexicons::SEALED_NSID);
        if let (true, Some(uri)) = (sealed, item["uri"].as_str().map(str::to_string)) {
            if let Ok(plain) = open_json(&item["record"], &uri, did, key) {
                item["record"] = plain;
                opened += 1;
            }
        }
    };
    for list in ["items", "results", "tasks"] {
        if let Some(arr) = answer.get_mut(list).and_then(Value::as_array_mut) {
            for entry in arr {
                match list {
                    "results" => visit(&mut entry["item"]),
                    "tasks" => {
                        visit(&mut entry["request"]);
                        if entry.get("response").is_some() {
                            visit(&mut entry["response"]);
                        }
                    }
                    _ => visit(entry),
                }
            }
        }
    }
    opened
}
