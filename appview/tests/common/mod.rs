//! Loopback parts for the appview's tests and benchmarks: a PLC directory serving test
//! accounts, an appview on a free port, service tokens minted for it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use agentnet_appview::{Appview, Limits, Parts};
use atproto::auth::{mint, Claims};
use atproto::crypto::Keypair;

/// The appview's DID in these tests.
pub const APPVIEW: &str = "did:web:appview.agentnet.test";

/// A PLC directory on loopback serving the given accounts, counting lookups.
pub async fn plc(accounts: Vec<(String, &Keypair)>) -> (String, Arc<AtomicUsize>) {
    let lookups = Arc::new(AtomicUsize::new(0));
    let docs: Arc<Vec<(String, String)>> = Arc::new(
        accounts
            .iter()
            .map(|(did, key)| (did.clone(), key.public_key().multikey()))
            .collect(),
    );
    let counted = lookups.clone();
    let app = axum::Router::new().route(
        "/{did}",
        axum::routing::get(move |axum::extract::Path(did): axum::extract::Path<String>| {
            let (docs, counted) = (docs.clone(), counted.clone());
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                match docs.iter().find(|(d, _)| *d == did) {
                    Some((did, key)) => axum::Json(serde_json::json!({
                        "id": did,
                        "verificationMethod": [{"id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": key}],
                        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "http://127.0.0.1:9"}],
                    }))
                    .into_response(),
                    None => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, lookups)
}

/// An appview on loopback over `records`.
pub async fn appview(records: &store::Records, plc_url: &str, limits: Limits) -> u16 {
    appview_with_recall(records, None, plc_url, limits).await
}

/// An appview on loopback over `records`, answering recall with `recall`.
pub async fn appview_with_recall(
    records: &store::Records,
    recall: Option<(store::embed::Batcher, store::Vectors)>,
    plc_url: &str,
    limits: Limits,
) -> u16 {
    let app = Appview::new(Parts {
        did: APPVIEW.into(),
        public_url: "http://127.0.0.1".into(),
        key: atproto::envelope::EncryptionKey::generate().public(),
        records: records.clone(),
        recall,
        plc_url: plc_url.into(),
        dev: true,
        limits,
    })
    .expect("appview");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let router = agentnet_appview::router(app.clone())
        .route("/metrics", agentnet_appview::metrics_route(&app))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

pub fn token(did: &str, key: &Keypair, lxm: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    mint(
        key,
        &Claims {
            iss: did.into(),
            aud: APPVIEW.into(),
            exp: now + 60,
            iat: Some(now),
            lxm: Some(lxm.into()),
            jti: Some(format!("{did}-{}", rand_suffix())),
        },
    )
}

/// A well-formed did:plc that no directory knows.
pub fn plc_did(mut i: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut id = vec![b'x'; 24];
    for slot in id.iter_mut().rev() {
        *slot = ALPHA[i % 32];
        i /= 32;
    }
    format!("did:plc:{}", String::from_utf8_lossy(&id))
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}
