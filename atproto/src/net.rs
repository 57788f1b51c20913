//! Building the URLs agentnet sends: every query value percent-encoded, so a DID such as
//! `did:web:localhost%3A8798` reaches the peer as the same DID (unencoded, the `%3A` would
//! be decoded to `:` and name a different DID).

use std::fmt::Write;

/// `value` with every byte outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`)
/// percent-encoded.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `{base}/xrpc/{method}?k=v&…` with `base`'s trailing slashes removed and every key and
/// value percent-encoded.
pub fn xrpc_url(base: &str, method: &str, query: &[(&str, &str)]) -> String {
    let mut url = format!("{}/xrpc/{method}", base.trim_end_matches('/'));
    for (i, (k, v)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&percent_encode(k));
        url.push('=');
        url.push_str(&percent_encode(v));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            xrpc_url(
                "http://localhost:8798/",
                "com.atproto.sync.getRepo",
                &[("did", "did:web:localhost%3A8798")]
            ),
            "http://localhost:8798/xrpc/com.atproto.sync.getRepo?did=did%3Aweb%3Alocalhost%253A8798"
        );
        assert_eq!(
            xrpc_url(
                "https://r.example",
                "m",
                &[("cursor", "a&b=c d"), ("limit", "5")]
            ),
            "https://r.example/xrpc/m?cursor=a%26b%3Dc%20d&limit=5"
        );
        assert_eq!(percent_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
