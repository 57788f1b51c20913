//! Inter-service JWTs minted by the reference PDS (`com.atproto.server.getServiceAuth`)
//! verify against the caller's DID document from its PLC; tokens for another service or
//! method, or altered, do not.

mod support;

use atproto::auth::{verify, AuthError};
use serde_json::json;
use support::Pds;

const APPVIEW: &str = "did:web:appview.agentnet.test";

#[tokio::test]
async fn reference_pds_service_tokens_verify() {
    let mut pds = tokio::task::spawn_blocking(Pds::start)
        .await
        .expect("start");
    let (pds, dids, token) = tokio::task::spawn_blocking(move || {
        let dids = pds.call(json!({"op": "accounts", "names": ["ada"]}));
        let token = pds.call(json!({"op": "serviceAuth", "name": "ada", "aud": APPVIEW, "lxm": "agent.comms.getInbox"}));
        (pds, dids, token)
    })
    .await
    .expect("PDS calls");
    let did = dids["dids"]["ada"].as_str().expect("did").to_string();
    let token = token["token"].as_str().expect("token").to_string();

    let resolver = pds.resolver();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;

    let claims = verify(
        &token,
        APPVIEW,
        Some("agent.comms.getInbox"),
        &resolver,
        now,
    )
    .await
    .expect("verifies");
    assert_eq!(claims.did(), did);
    assert_eq!(
        verify(
            &token,
            "did:web:other.agentnet.test",
            Some("agent.comms.getInbox"),
            &resolver,
            now
        )
        .await,
        Err(AuthError::Audience)
    );
    assert_eq!(
        verify(&token, APPVIEW, Some("agent.memory.recall"), &resolver, now).await,
        Err(AuthError::Method)
    );
    assert_eq!(
        verify(
            &token,
            APPVIEW,
            Some("agent.comms.getInbox"),
            &resolver,
            now + 3600
        )
        .await,
        Err(AuthError::Expired)
    );
    // Flip one character inside the signature (not its last, which also carries padding).
    let mut altered: Vec<char> = token.chars().collect();
    let at = altered.len() - 10;
    altered[at] = if altered[at] == 'A' { 'B' } else { 'A' };
    let altered: String = altered.into_iter().collect();
    assert_eq!(
        verify(
            &altered,
            APPVIEW,
            Some("agent.comms.getInbox"),
            &resolver,
            now
        )
        .await,
        Err(AuthError::Signature)
    );
    drop(pds);
}
