//! DID resolution over HTTP against a loopback server: did:plc through a PLC URL, did:web
//! with a port, the legacy and Multikey document shapes, caching, forced refresh, and
//! refusal of oversized or mismatched documents.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atproto::crypto::{Algorithm, Keypair};
use atproto::identity::{
    CachingResolver, DidResolver, HttpResolver, IdentityError, ResolverConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PLC_DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

/// Serves `GET /<anything>` from a function of the path, counting requests. Stops when the
/// test's runtime ends.
async fn serve(
    route: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let route = Arc::new(route);
    let host = format!("127.0.0.1:{}", addr.port());
    let served_host = host.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let route = route.clone();
            let host = served_host.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = route(&host, &path);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (host, hits)
}

fn doc(did: &str, method_type: &str, key: &str, pds: &str) -> String {
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": ["at://agent.test"],
        "verificationMethod": [{"id": format!("{did}#atproto"), "type": method_type, "controller": did, "publicKeyMultibase": key}],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    })
    .to_string()
}

fn dev_resolver(plc: &str) -> HttpResolver {
    HttpResolver::new(ResolverConfig {
        plc_url: format!("http://{plc}"),
        dev: true,
        timeout: Duration::from_secs(5),
        egress: None,
    })
    .expect("client")
}

#[tokio::test]
async fn plc_resolution_cache_and_refresh() {
    let key = Keypair::generate(Algorithm::K256).public_key();
    // The PLC server on npm serves the legacy shape: a multibase key without multicodec.
    let legacy_mb = multibase::encode(multibase::Base::Base58Btc, key.compressed_bytes());
    let body = doc(
        PLC_DID,
        "EcdsaSecp256k1VerificationKey2019",
        &legacy_mb,
        "http://127.0.0.1:2583",
    );
    let (addr, hits) = serve(move |_, path| {
        if path == format!("/{PLC_DID}") {
            (200, body.clone())
        } else {
            (404, "{}".into())
        }
    })
    .await;
    let cache = CachingResolver::new(
        dev_resolver(&addr),
        NonZeroUsize::new(16).expect("nonzero"),
        Duration::from_secs(60),
    );

    let id = cache.identity(PLC_DID).await.expect("resolves");
    assert_eq!(id.signing_key, key);
    assert_eq!(id.pds.as_deref(), Some("http://127.0.0.1:2583"));
    assert_eq!(id.handle.as_deref(), Some("agent.test"));
    cache.identity(PLC_DID).await.expect("cached");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "second lookup is served from the cache"
    );
    cache.refresh(PLC_DID).await.expect("forced re-resolve");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "refresh goes to the network"
    );

    let missing = cache.identity("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").await;
    assert!(
        matches!(missing, Err(IdentityError::NotFound(_))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn web_resolution_with_port_and_multikey() {
    let key = Keypair::generate(Algorithm::Ed25519).public_key();
    let mk = key.multikey();
    let (addr, _) = serve(move |host, path| {
        let did = format!("did:web:{}", host.replace(':', "%3A"));
        match path {
            "/.well-known/did.json" => (200, doc(&did, "Multikey", &mk, "http://127.0.0.1:1")),
            _ => (404, "{}".into()),
        }
    })
    .await;
    let did = format!("did:web:{}", addr.replace(':', "%3A"));
    let doc = dev_resolver("127.0.0.1:1")
        .resolve(&did)
        .await
        .expect("did:web resolves in dev mode");
    assert_eq!(doc.signing_key().expect("key"), key);

    // Outside dev mode the same DID is refused before any request is made.
    let strict = HttpResolver::new(ResolverConfig::default()).expect("client");
    assert!(matches!(
        strict.resolve(&did).await,
        Err(IdentityError::Forbidden(_))
    ));
}

#[tokio::test]
async fn mismatched_and_oversized_documents_are_refused() {
    let key = Keypair::generate(Algorithm::P256).public_key().multikey();
    let (addr, _) = serve(move |_, path| match path {
        // A document for another DID.
        "/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa" => (
            200,
            doc(
                "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
                "Multikey",
                &key,
                "http://x",
            ),
        ),
        // Larger than any real DID document.
        "/did:plc:cccccccccccccccccccccccc" => (
            200,
            format!(
                "{{\"id\":\"did:plc:cccccccccccccccccccccccc\",\"pad\":\"{}\"}}",
                "x".repeat(100_000)
            ),
        ),
        _ => (404, "{}".into()),
    })
    .await;
    let r = dev_resolver(&addr);
    assert!(matches!(
        r.resolve("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").await,
        Err(IdentityError::BadDocument(_))
    ));
    assert!(matches!(
        r.resolve("did:plc:cccccccccccccccccccccccc").await,
        Err(IdentityError::BadDocument(_))
    ));
    assert!(matches!(
        r.resolve("did:plc:dddddddddddddddddddddddd").await,
        Err(IdentityError::NotFound(_))
    ));
}
