//! A synthetic PDS fleet: N accounts with real keys (secp256k1, P-256, Ed25519) writing real
//! signed commits with sync 1.1 proofs, served over `com.atproto.sync.subscribeRepos` as
//! fast as asked. The fleet is also the accounts' PLC directory (`GET /plc/{did}`), so a
//! relay pointed at it with `--plc-url http://…/plc` verifies everything for real.
//!
//! Fault injection (`POST /_fleet/inject?kind=…`) emits the bad input a relay must survive:
//! forged signatures, events for accounts hosted elsewhere, replayed revs, oversized blocks,
//! ops that do not invert, garbage and truncated frames, floods, and commits that are made
//! but never emitted (a broken chain). With `&did=…` it claims an account of another host
//! (`claim_account`, `claim_identity`, `claim_sync`, `claim_commit`). Its `getRepo` can be
//! made to fail and its DID documents to answer slowly, for repair and lookup faults.
//!
//! Cloudflare-style mode (`--cloudflare`) behaves like a single-account Worker PDS: the
//! account is `did:web` served by the host itself, commits carry no `prevData`, and
//! `listRepos` returns no cursor.

mod conversation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atproto::commit::{RepoWriter, Write};
use atproto::crypto::{Algorithm, Keypair};
use atproto::frame::{encode_frame, AccountEvent, CommitEvent, Frame, IdentityEvent};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;

/// In conversation traffic, an agent re-publishes its key record every this many commits.
const KEY_EVERY: u64 = 8;
/// Generated traffic emits an `#identity` instead of a commit every this many events.
const IDENTITY_EVERY: usize = 25;

/// Fleet settings. Every option has a default and an `AGENTNET_FLEET_…` override.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetConfig {
    /// Address to serve subscribeRepos, getRepo, listRepos and the PLC directory on.
    #[arg(long, env = "AGENTNET_FLEET_LISTEN", default_value = "127.0.0.1:2590")]
    pub listen: SocketAddr,
    /// Number of accounts.
    #[arg(long, env = "AGENTNET_FLEET_ACCOUNTS", default_value_t = 100)]
    pub accounts: usize,
    /// Commits per second across all accounts (0: only on request through the control API).
    #[arg(long, env = "AGENTNET_FLEET_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Signing keys: k256, p256, ed25519, or mix (round robin).
    #[arg(long, env = "AGENTNET_FLEET_KEYS", default_value = "mix")]
    pub keys: String,
    /// Behave like a Cloudflare-hosted PDS: one did:web account served by this host,
    /// commits without prevData, listRepos without cursor.
    #[arg(long, env = "AGENTNET_FLEET_CLOUDFLARE", default_value_t = false)]
    pub cloudflare: bool,
    /// Ops per commit.
    #[arg(long, env = "AGENTNET_FLEET_OPS_PER_COMMIT", default_value_t = 1)]
    pub ops_per_commit: usize,
    /// What the accounts write: `messages` (a plain message to themselves per op, for load
    /// and fault tests) or `conversation` (agents with published keys messaging, asking,
    /// answering, handing off, broadcasting and remembering at all three privacy levels;
    /// one op per commit).
    #[arg(long, env = "AGENTNET_FLEET_TRAFFIC", default_value = "messages")]
    pub traffic: String,
    /// In conversation traffic, the appview shared records are also sealed for
    /// (`DID=MULTIKEY`, its X25519 key), so it can index them for their recipients.
    #[arg(long, env = "AGENTNET_FLEET_APPVIEW")]
    pub appview: Option<String>,
}

/// Why the fleet stopped.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Bad settings.
    #[error("invalid fleet configuration: {0}")]
    Config(String),
    /// A commit could not be made.
    #[error(transparent)]
    Commit(#[from] atproto::commit::CommitError),
    /// The server failed.
    #[error("fleet server: {0}")]
    Serve(String),
}

struct Account {
    did: String,
    writer: RepoWriter,
    /// A PDS endpoint other than this fleet (for wrong-host faults).
    elsewhere: bool,
    /// The last frame emitted for this account (for replay faults).
    last_frame: Option<Frame>,
    /// Commits made (conversation traffic re-announces its key every few).
    commits: u64,
}

struct Inner {
    config: FleetConfig,
    /// Conversation traffic's keys and open requests.
    conversation: Option<conversation::Conversation>,
    /// Every account's DID, by index.
    dids: Vec<String>,
    base_url: String,
    accounts: Vec<Mutex<Account>>,
    /// Every frame emitted, index = seq - 1.
    log: std::sync::RwLock<Vec<Bytes>>,
    live: broadcast::Sender<(u64, Bytes)>,
    next: std::sync::atomic::AtomicUsize,
    /// Serializes seq assignment with appending to the log.
    seq_lock: Mutex<()>,
    /// Fired when serving stops, so open streams end like a host going down.
    disconnect: broadcast::Sender<()>,
    /// Identity changes announced (each gets a new handle).
    renames: std::sync::atomic::AtomicUsize,
    /// `getRepo` calls still to fail (HTTP 500).
    fail_get_repo: std::sync::atomic::AtomicUsize,
    /// `getRepo` calls answered.
    get_repo_calls: std::sync::atomic::AtomicUsize,
    /// DID documents answered only after a delay.
    slow_docs: std::sync::Mutex<std::collections::HashMap<String, Duration>>,
}

/// A running fleet.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

fn now() -> String {
    atproto::syntax::datetime_now()
}

/// A did:plc-shaped identifier derived from the account index (24 base32 characters).
fn plc_did(i: usize) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("agentnet-fleet-{i}").as_bytes());
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = digest
        .iter()
        .take(24)
        .map(|b| ALPHA[(*b % 32) as usize] as char)
        .collect();
    format!("did:plc:{id}")
}

impl Fleet {
    /// Creates the accounts (each with a genesis commit) for a fleet served at `addr`.
    pub fn new(config: FleetConfig, addr: SocketAddr) -> Result<Fleet, FleetError> {
        if config.cloudflare && config.accounts != 1 {
            return Err(FleetError::Config(
                "a Cloudflare-style host has exactly one account".into(),
            ));
        }
        if config.accounts == 0 || config.ops_per_commit == 0 || config.ops_per_commit > 200 {
            return Err(FleetError::Config(
                "need accounts and 1 to 200 ops per commit".into(),
            ));
        }
        let algs: Vec<Algorithm> = match config.keys.as_str() {
            "k256" => vec![Algorithm::K256],
            "p256" => vec![Algorithm::P256],
            "ed25519" => vec![Algorithm::Ed25519],
            "mix" => vec![Algorithm::K256, Algorithm::P256, Algorithm::Ed25519],
            other => return Err(FleetError::Config(format!("unknown key type {other}"))),
        };
        let base_url = format!("http://{addr}");
        let mut accounts = Vec::with_capacity(config.accounts + 1);
        // One extra account claims another PDS, for wrong-host faults.
        let total = if config.cloudflare {
            1
        } else {
            config.accounts + 1
        };
        for i in 0..total {
            let did = if config.cloudflare {
                format!("did:web:{}", addr.to_string().replace(':', "%3A"))
            } else {
                plc_did(i)
            };
            let writer = RepoWriter::new(did.clone(), Keypair::generate(algs[i % algs.len()]))?;
            accounts.push(Mutex::new(Account {
                did,
                writer,
                elsewhere: !config.cloudflare && i == config.accounts,
                last_frame: None,
                commits: 0,
            }));
        }
        let conversation = match config.traffic.as_str() {
            "messages" => None,
            "conversation" => {
                let appview = match &config.appview {
                    None => None,
                    Some(spec) => {
                        let (did, key) = spec.split_once('=').ok_or_else(|| {
                            FleetError::Config("--appview takes DID=MULTIKEY".into())
                        })?;
                        let key = atproto::envelope::EncryptionPublicKey::from_multikey(key)
                            .map_err(|e| FleetError::Config(format!("appview key: {e}")))?;
                        Some((did.to_string(), key))
                    }
                };
                Some(conversation::Conversation::new(total, appview))
            }
            other => return Err(FleetError::Config(format!("unknown traffic {other}"))),
        };
        let mut dids = Vec::with_capacity(total);
        for a in &accounts {
            dids.push(a.try_lock().map(|a| a.did.clone()).unwrap_or_default());
        }
        let (live, _) = broadcast::channel(65_536);
        Ok(Fleet(Arc::new(Inner {
            config,
            conversation,
            dids,
            base_url,
            accounts,
            log: std::sync::RwLock::new(Vec::new()),
            live,
            next: std::sync::atomic::AtomicUsize::new(0),
            seq_lock: Mutex::new(()),
            disconnect: broadcast::channel(1).0,
            renames: std::sync::atomic::AtomicUsize::new(0),
            fail_get_repo: std::sync::atomic::AtomicUsize::new(0),
            get_repo_calls: std::sync::atomic::AtomicUsize::new(0),
            slow_docs: std::sync::Mutex::new(std::collections::HashMap::new()),
        })))
    }

    /// The fleet's base URL (its PDS endpoint).
    pub fn url(&self) -> &str {
        &self.0.base_url
    }

    /// The PLC directory URL to give a relay.
    pub fn plc_url(&self) -> String {
        format!("{}/plc", self.0.base_url)
    }

    /// Every account's DID (the wrong-host account last).
    pub async fn dids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.0.accounts {
            out.push(a.lock().await.did.clone());
        }
        out
    }

    /// Every account's DID and the public key its commits are signed with.
    pub async fn signing_keys(&self) -> Vec<(String, atproto::crypto::PublicKey)> {
        let mut out = Vec::new();
        for a in &self.0.accounts {
            let a = a.lock().await;
            out.push((a.did.clone(), a.writer.key().public_key()));
        }
        out
    }

    /// A service-auth token for account `i` to call `lxm` on `aud`, as the account's PDS
    /// mints one (`getServiceAuth`): signed with its repo key, valid for a minute.
    pub async fn service_auth(&self, i: usize, aud: &str, lxm: &str) -> Option<String> {
        let a = self.0.accounts.get(i)?.lock().await;
        let now = atproto::syntax::now_millis() / 1000;
        let claims = atproto::auth::Claims {
            iss: a.did.clone(),
            aud: aud.to_string(),
            exp: now + 60,
            iat: Some(now),
            lxm: Some(lxm.to_string()),
            jti: Some(format!("{:016x}", rand::random::<u64>())),
        };
        Some(atproto::auth::mint(a.writer.key(), &claims))
    }

    /// Account `i`'s latest revision.
    pub async fn last_rev(&self, i: usize) -> Option<String> {
        self.0
            .accounts
            .get(i)?
            .lock()
            .await
            .writer
            .rev()
            .map(str::to_string)
    }

    /// Makes the next `n` `getRepo` calls fail with HTTP 500.
    pub fn fail_get_repo(&self, n: usize) {
        self.0
            .fail_get_repo
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// `getRepo` calls answered so far (failed ones included).
    pub fn get_repo_calls(&self) -> usize {
        self.0
            .get_repo_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers `did`'s DID document only after `delay` (zero: at once again).
    pub fn slow_document(&self, did: &str, delay: Duration) {
        let mut slow = self.0.slow_docs.lock().unwrap_or_else(|p| p.into_inner());
        if delay.is_zero() {
            slow.remove(did);
        } else {
            slow.insert(did.to_string(), delay);
        }
    }

    async fn document_delay(&self, did: &str) {
        let delay = self
            .0
            .slow_docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(did)
            .copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }

    /// Emits an event of `kind` about `did`, an account this fleet does not host, as a
    /// hostile host would; returns what the relay should count it as.
    pub async fn claim(&self, kind: &str, did: &str) -> Result<&'static str, FleetError> {
        let frame = match kind {
            "claim_account" => Frame::Account(AccountEvent {
                seq: 0,
                did: did.to_string(),
                time: now(),
                active: false,
                status: Some("takendown".into()),
            }),
            "claim_identity" => Frame::Identity(IdentityEvent {
                seq: 0,
                did: did.to_string(),
                time: now(),
                handle: Some("mallory.example.com".into()),
            }),
            "claim_commit" | "claim_sync" => {
                // A repo of the victim's DID signed by a key the victim never had.
                let mut forger = RepoWriter::new(did, Keypair::generate(Algorithm::K256))?;
                let rkey = forger.next_rkey().to_string();
                let record =
                    json!({"$type": "agent.memory.note", "text": "forged", "createdAt": now()});
                let ev = forger.commit(
                    &[Write::Create {
                        collection: "agent.memory.note".into(),
                        rkey,
                        record: atproto::data::to_cbor(&record).unwrap_or_default(),
                    }],
                    &now(),
                )?;
                if kind == "claim_commit" {
                    Frame::Commit(Box::new(ev))
                } else {
                    let car = atproto::car::read_car(&ev.blocks, atproto::car::CarLimits::FIREHOSE)
                        .map_err(|e| FleetError::Config(e.to_string()))?;
                    let block = car
                        .blocks
                        .get(&ev.commit)
                        .ok_or_else(|| FleetError::Config("commit block missing".into()))?;
                    let blocks =
                        atproto::car::write_car(&[ev.commit], [(&ev.commit, block.as_slice())])
                            .map_err(|e| FleetError::Config(e.to_string()))?;
                    Frame::Sync(atproto::frame::SyncEvent {
                        seq: 0,
                        did: did.to_string(),
                        blocks: blocks.into(),
                        rev: ev.rev,
                        time: now(),
                    })
                }
            }
            other => return Err(FleetError::Config(format!("unknown claim {other}"))),
        };
        self.publish(frame).await;
        Ok("wrong_host")
    }

    /// Firehose subscribers attached now (each sees every frame emitted from then on).
    pub fn subscribers(&self) -> usize {
        self.0.live.receiver_count()
    }

    /// Every frame emitted so far, in order (index = seq - 1).
    pub fn frames(&self) -> Vec<Bytes> {
        self.0.log.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Frames emitted so far.
    pub fn emitted(&self) -> usize {
        self.0.log.read().map(|l| l.len()).unwrap_or(0)
    }

    async fn publish(&self, frame: Frame) -> u64 {
        let _guard = self.0.seq_lock.lock().await;
        let mut log = self.0.log.write().unwrap_or_else(|p| p.into_inner());
        let seq = log.len() as u64 + 1;
        let mut frame = frame;
        frame.set_seq(seq as i64);
        let bytes = Bytes::from(encode_frame(&frame).unwrap_or_default());
        log.push(bytes.clone());
        let _ = self.0.live.send((seq, bytes));
        seq
    }

    async fn publish_raw(&self, bytes: Bytes) {
        let _guard = self.0.seq_lock.lock().await;
        let mut log = self.0.log.write().unwrap_or_else(|p| p.into_inner());
        log.push(bytes.clone());
        let seq = log.len() as u64;
        let _ = self.0.live.send((seq, bytes));
    }

    /// Announces every regular account (`#identity`, `#account`) and makes its genesis
    /// commit.
    pub async fn genesis(&self) -> Result<(), FleetError> {
        for i in 0..self.0.accounts.len() {
            let did = self.0.accounts[i].lock().await.did.clone();
            if !self.0.config.cloudflare {
                self.publish(Frame::Identity(IdentityEvent {
                    seq: 0,
                    did: did.clone(),
                    time: now(),
                    handle: None,
                }))
                .await;
                self.publish(Frame::Account(AccountEvent {
                    seq: 0,
                    did: did.clone(),
                    time: now(),
                    active: true,
                    status: None,
                }))
                .await;
            }
            self.write_one(i).await?;
        }
        Ok(())
    }

    /// An `#identity` for account `i`, as a PDS emits when an account's handle or
    /// document changes.
    pub async fn announce(&self, i: usize) -> u64 {
        let did = self.0.accounts[i].lock().await.did.clone();
        // A new handle each time, as a rename would give.
        let n = self
            .0
            .renames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.publish(Frame::Identity(IdentityEvent {
            seq: 0,
            did,
            time: now(),
            handle: Some(format!("agent{i}-{n}.fleet.test")),
        }))
        .await
    }

    /// One commit by account `i`: creates, now and then an update or a delete.
    pub async fn write_one(&self, i: usize) -> Result<u64, FleetError> {
        let ev = {
            let mut a = self.0.accounts[i].lock().await;
            let writes = self.writes_for(&mut a, i);
            let mut ev = a.writer.commit(&writes, &now())?;
            if self.0.config.cloudflare {
                ev.prev_data = None;
            }
            a.last_frame = Some(Frame::Commit(Box::new(ev.clone())));
            ev
        };
        Ok(self.publish(Frame::Commit(Box::new(ev))).await)
    }

    fn writes_for(&self, a: &mut Account, i: usize) -> Vec<Write> {
        let talking = self
            .0
            .conversation
            .as_ref()
            .filter(|_| i < self.0.config.accounts);
        if let Some(c) = talking {
            let rkey = a.writer.next_rkey().to_string();
            a.commits += 1;
            // The key at genesis, again on the first generated commit and every few after,
            // so a relay that joins late (it starts at the live tail) still passes every
            // agent's key to the index.
            if a.commits <= 2 || a.commits % KEY_EVERY == 1 {
                let (collection, rkey, record) = (
                    "agent.envelope.key".to_string(),
                    "self".to_string(),
                    c.key_record(i),
                );
                return vec![if a.commits == 1 {
                    Write::Create {
                        collection,
                        rkey,
                        record,
                    }
                } else {
                    Write::Update {
                        collection,
                        rkey,
                        record,
                    }
                }];
            }
            // The regular accounts talk among themselves (the wrong-host account, last,
            // keeps writing plain messages).
            let w = c.next(i, &self.0.dids[..self.0.config.accounts], &rkey);
            return vec![Write::Create {
                collection: w.collection,
                rkey,
                record: w.record,
            }];
        }
        let n = self.0.config.ops_per_commit;
        (0..n)
            .map(|_| {
                let rkey = a.writer.next_rkey().to_string();
                let record = json!({
                    "$type": "agent.comms.message",
                    "sender": a.did,
                    "recipient": a.did,
                    "content": {"kind": "text", "text": format!("synthetic message {rkey}")},
                    "createdAt": now(),
                });
                Write::Create {
                    collection: "agent.comms.message".into(),
                    rkey,
                    record: atproto::data::to_cbor(&record).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Emits one fault of `kind`; returns what the relay should count it as.
    pub async fn inject(&self, kind: &str) -> Result<&'static str, FleetError> {
        let regular = if self.0.config.cloudflare {
            1
        } else {
            self.0.config.accounts
        };
        let i = self
            .0
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % regular;
        match kind {
            "forged_signature" => {
                let mut ev = self.commit_event(i).await?;
                // Re-sign the same commit with a stranger's key.
                let mut car = atproto::car::read_car(&ev.blocks, atproto::car::CarLimits::FIREHOSE)
                    .map_err(|e| FleetError::Config(e.to_string()))?;
                let commit: atproto::commit::Commit =
                    atproto::data::from_cbor(&car.blocks[&ev.commit])
                        .map_err(|e| FleetError::Config(e.to_string()))?;
                let forged = atproto::commit::Commit::sign(
                    &commit.did,
                    commit.data,
                    &commit.rev,
                    &Keypair::generate(Algorithm::K256),
                )
                .map_err(|e| FleetError::Config(e.to_string()))?;
                let (cid, bytes) = atproto::data::encode_block(&forged)
                    .map_err(|e| FleetError::Config(e.to_string()))?;
                car.blocks.remove(&ev.commit);
                car.blocks.insert(cid, bytes);
                ev.commit = cid;
                ev.blocks = atproto::car::write_car(
                    &[cid],
                    car.blocks.iter().map(|(c, b)| (c, b.as_slice())),
                )
                .map_err(|e| FleetError::Config(e.to_string()))?
                .into();
                self.publish(Frame::Commit(Box::new(ev))).await;
                Ok("bad_signature")
            }
            "bad_inversion" => {
                let mut ev = self.commit_event(i).await?;
                ev.prev_data = Some(atproto::data::cid_for_cbor(b"not the previous tree"));
                self.publish(Frame::Commit(Box::new(ev))).await;
                Ok("inversion")
            }
            "replayed_rev" => {
                self.write_one(i).await?;
                let frame = self.0.accounts[i].lock().await.last_frame.clone();
                if let Some(f) = frame {
                    self.publish(f).await;
                }
                Ok("stale_rev")
            }
            "wrong_host" => {
                let last = self.0.accounts.len() - 1;
                if self.0.config.cloudflare {
                    return Err(FleetError::Config(
                        "no foreign account in Cloudflare mode".into(),
                    ));
                }
                self.write_one(last).await?;
                Ok("wrong_host")
            }
            "oversized" => {
                let ev = {
                    let mut a = self.0.accounts[i].lock().await;
                    let rkey = a.writer.next_rkey().to_string();
                    let big = json!({"$type": "agent.memory.note", "text": "x".repeat(2_100_000), "createdAt": now()});
                    let w = Write::Create {
                        collection: "agent.memory.note".into(),
                        rkey,
                        record: atproto::data::to_cbor(&big).unwrap_or_default(),
                    };
                    a.writer.commit(&[w], &now())?
                };
                self.publish(Frame::Commit(Box::new(ev))).await;
                Ok("too_big")
            }
            "garbage" => {
                self.publish_raw(Bytes::from_static(
                    b"\xa2\x62op\x01\x61t\x67#commit\xff\xff not cbor",
                ))
                .await;
                Ok("malformed")
            }
            "truncated" => {
                let ev = self.commit_event(i).await?;
                let mut bytes = encode_frame(&Frame::Commit(Box::new(ev))).unwrap_or_default();
                bytes.truncate(bytes.len() / 2);
                self.publish_raw(Bytes::from(bytes)).await;
                Ok("malformed")
            }
            "skip_commit" => {
                // A commit made but never emitted: the next one does not follow on.
                self.commit_event(i).await?;
                Ok("desync")
            }
            "flood" => {
                for _ in 0..200 {
                    self.write_one(i).await?;
                }
                Ok("rate_limited")
            }
            other => Err(FleetError::Config(format!("unknown fault {other}"))),
        }
    }

    /// A fresh commit by account `i`, not yet published.
    async fn commit_event(&self, i: usize) -> Result<CommitEvent, FleetError> {
        let mut a = self.0.accounts[i].lock().await;
        let writes = self.writes_for(&mut a, i);
        Ok(a.writer.commit(&writes, &now())?)
    }

    fn did_doc(
        &self,
        did: &str,
        elsewhere: bool,
        key: &atproto::crypto::PublicKey,
    ) -> serde_json::Value {
        let endpoint = if elsewhere {
            "https://elsewhere.invalid".to_string()
        } else {
            self.0.base_url.clone()
        };
        json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": did,
            "alsoKnownAs": [],
            "verificationMethod": [{"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": key.multikey()}],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}],
        })
    }

    async fn find(&self, did: &str) -> Option<usize> {
        for (i, a) in self.0.accounts.iter().enumerate() {
            if a.lock().await.did == did {
                return Some(i);
            }
        }
        None
    }

    /// The HTTP router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe))
            .route("/xrpc/com.atproto.sync.getRepo", get(get_repo))
            .route("/xrpc/com.atproto.sync.listRepos", get(list_repos))
            .route(
                "/xrpc/com.atproto.server.describeServer",
                get(describe_server),
            )
            .route("/plc/{did}", get(plc_doc))
            .route("/.well-known/did.json", get(web_doc))
            .route("/_fleet/inject", post(inject))
            .route("/_fleet/write", post(write))
            .with_state(self.clone())
    }

    /// Serves the fleet's endpoints on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), FleetError> {
        let disconnect = self.0.disconnect.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Upgraded WebSockets outlive graceful shutdown; end them explicitly.
                let _ = disconnect.send(());
            })
            .await
            .map_err(|e| FleetError::Serve(e.to_string()))
    }

    /// Writes commits at the configured rate until cancelled.
    pub async fn generate(&self, cancel: CancellationToken) -> Result<(), FleetError> {
        if self.0.config.rate <= 0.0 {
            cancel.cancelled().await;
            return Ok(());
        }
        let regular = if self.0.config.cloudflare {
            1
        } else {
            self.0.config.accounts
        };
        let mut tick = tokio::time::interval(
            Duration::from_secs_f64(1.0 / self.0.config.rate).max(Duration::from_micros(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let n = self.0.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let i = n % regular;
                    // Now and then an account's identity changes, as on a real PDS.
                    if n % IDENTITY_EVERY == IDENTITY_EVERY - 1 {
                        self.announce(i).await;
                    } else {
                        self.write_one(i).await?;
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<u64>,
}

async fn subscribe(
    ws: WebSocketUpgrade,
    Query(q): Query<CursorQuery>,
    State(fleet): State<Fleet>,
) -> Response {
    ws.on_upgrade(move |socket| stream(socket, fleet, q.cursor))
}

async fn stream(socket: WebSocket, fleet: Fleet, cursor: Option<u64>) {
    let mut down = fleet.0.disconnect.subscribe();
    tokio::select! {
        _ = down.recv() => {}
        _ = stream_frames(socket, fleet.clone(), cursor) => {}
    }
}

async fn stream_frames(mut socket: WebSocket, fleet: Fleet, cursor: Option<u64>) {
    let mut rx = fleet.0.live.subscribe();
    let mut last = match cursor {
        Some(c) => c,
        None => fleet.emitted() as u64,
    };
    loop {
        let backlog: Vec<Bytes> = {
            let log = fleet.0.log.read().unwrap_or_else(|p| p.into_inner());
            log.iter().skip(last as usize).take(4096).cloned().collect()
        };
        if backlog.is_empty() {
            break;
        }
        for b in backlog {
            last += 1;
            if socket.send(Message::Binary(b)).await.is_err() {
                return;
            }
        }
    }
    // Like a real PDS, answer what the subscriber sends (pings, Close) once a second; the
    // WebSocket layer replies to a ping as it reads it.
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = housekeeping.tick() => {
                while let Some(msg) = futures::FutureExt::now_or_never(socket.recv()) {
                    match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            let _ = futures::SinkExt::flush(&mut socket).await;
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                continue;
            }
        };
        match item {
            Ok((seq, bytes)) if seq > last => {
                if socket.send(Message::Binary(bytes)).await.is_err() {
                    return;
                }
                last = seq;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[derive(Deserialize)]
struct DidQuery {
    did: String,
}

async fn get_repo(State(fleet): State<Fleet>, Query(q): Query<DidQuery>) -> Response {
    use std::sync::atomic::Ordering;
    fleet.0.get_repo_calls.fetch_add(1, Ordering::Relaxed);
    let failing = fleet
        .0
        .fail_get_repo
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "InternalServerError", "message": "injected failure"})),
        )
            .into_response();
    }
    let Some(i) = fleet.find(&q.did).await else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "RepoNotFound", "message": q.did})),
        )
            .into_response();
    };
    let car = fleet.0.accounts[i].lock().await.writer.export_car();
    match car {
        Ok(bytes) => ([("content-type", "application/vnd.ipld.car")], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "InternalServerError", "message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn describe_server(State(fleet): State<Fleet>) -> Json<serde_json::Value> {
    let host = fleet
        .0
        .base_url
        .trim_start_matches("http://")
        .replace(':', "%3A");
    Json(json!({"did": format!("did:web:{host}"), "availableUserDomains": []}))
}

async fn list_repos(State(fleet): State<Fleet>) -> Json<serde_json::Value> {
    let mut repos = Vec::new();
    for a in &fleet.0.accounts {
        let a = a.lock().await;
        if let Some((head, _)) = a.writer.head() {
            repos.push(json!({"did": a.did, "head": head.to_string(), "rev": a.writer.rev(), "active": true}));
        }
    }
    // Cloudflare-hosted PDSes answer without a cursor.
    if fleet.0.config.cloudflare {
        Json(json!({"repos": repos}))
    } else {
        Json(json!({"repos": repos, "cursor": null}))
    }
}

async fn plc_doc(State(fleet): State<Fleet>, Path(did): Path<String>) -> Response {
    fleet.document_delay(&did).await;
    let Some(i) = fleet.find(&did).await else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "DID not registered"})),
        )
            .into_response();
    };
    let a = fleet.0.accounts[i].lock().await;
    Json(fleet.did_doc(&a.did, a.elsewhere, &a.writer.key().public_key())).into_response()
}

async fn web_doc(State(fleet): State<Fleet>) -> Response {
    if !fleet.0.config.cloudflare {
        return StatusCode::NOT_FOUND.into_response();
    }
    let a = fleet.0.accounts[0].lock().await;
    Json(fleet.did_doc(&a.did, false, &a.writer.key().public_key())).into_response()
}

#[derive(Deserialize)]
struct InjectQuery {
    kind: String,
    did: Option<String>,
}

async fn inject(State(fleet): State<Fleet>, Query(q): Query<InjectQuery>) -> Response {
    let injected = match &q.did {
        Some(did) => fleet.claim(&q.kind, did).await,
        None => fleet.inject(&q.kind).await,
    };
    match injected {
        Ok(counted_as) => Json(json!({"countedAs": counted_as})).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "InvalidRequest", "message": e.to_string()})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct WriteQuery {
    count: Option<usize>,
}

async fn write(State(fleet): State<Fleet>, Query(q): Query<WriteQuery>) -> Response {
    let regular = if fleet.0.config.cloudflare {
        1
    } else {
        fleet.0.config.accounts
    };
    for _ in 0..q.count.unwrap_or(1).min(100_000) {
        let i = fleet
            .0
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % regular;
        if let Err(e) = fleet.write_one(i).await {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "InternalServerError", "message": e.to_string()})),
            )
                .into_response();
        }
    }
    Json(json!({"emitted": fleet.emitted()})).into_response()
}

/// Runs a fleet on `listener` until `shutdown` resolves.
pub async fn run_on(
    config: FleetConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), FleetError> {
    let addr = listener
        .local_addr()
        .map_err(|e| FleetError::Serve(e.to_string()))?;
    let fleet = Fleet::new(config, addr)?;
    fleet.genesis().await?;
    let cancel = CancellationToken::new();
    let generator = {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        // A failing generator stops the server too, so the failure surfaces.
        tokio::spawn(async move {
            let result = fleet.generate(cancel.clone()).await;
            cancel.cancel();
            result
        })
    };
    tracing::info!(url = fleet.url(), plc = %fleet.plc_url(), "synthetic PDS fleet running");
    let server_cancel = cancel.clone();
    let served = fleet
        .serve(listener, async move {
            tokio::select! {
                _ = shutdown => {}
                _ = server_cancel.cancelled() => {}
            }
        })
        .await;
    cancel.cancel();
    let generated = generator
        .await
        .map_err(|e| FleetError::Serve(e.to_string()))?;
    served.and(generated)
}

/// Runs a fleet on `config.listen`.
pub async fn run(
    config: FleetConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), FleetError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| FleetError::Serve(e.to_string()))?;
    run_on(config, listener, shutdown).await
}
