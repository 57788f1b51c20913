//! The way out: every URL agentnet sends and every outbound connection it makes.
//!
//! - URLs: every query value percent-encoded ([`xrpc_url`]), so a DID such as
//!   `did:web:localhost%3A8798` reaches the peer as the same DID (unencoded, the `%3A`
//!   would be decoded to `:` and name a different DID).
//! - Egress ([`Egress`]): outbound HTTP and WebSocket connections are checked against the
//!   addresses a name **resolves to**, not the URL's text, so a hostile host, DID document
//!   or token issuer cannot point the relay or appview at loopback, private, link-local,
//!   CGNAT, unique-local, multicast or unspecified addresses (IPv4-mapped and other
//!   IPv4-embedding IPv6 forms included). Redirects are re-checked. Dev mode, or an explicit
//!   allow-list of networks, lets chosen addresses through.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;

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

/// Why an outbound connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The URL does not parse or has no host.
    #[error("not a usable URL: {0}")]
    BadUrl(String),
    /// The scheme is not http(s) or ws(s).
    #[error("scheme not allowed: {0}")]
    Scheme(String),
    /// The address is one outbound connections may not reach.
    #[error("refusing to connect to {0}: a loopback, private or otherwise internal address (dev mode is off)")]
    Forbidden(String),
    /// The name did not resolve.
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
    /// No permitted address accepted the connection.
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
}

/// Whether `ip` is outside the public internet: loopback, private (RFC 1918), link-local,
/// CGNAT (100.64/10), "this network" (0/8), benchmarking (198.18/15), documentation,
/// reserved (240/4), broadcast and multicast for IPv4; loopback, unspecified, unique-local
/// (fc00::/7), link-local and site-local, multicast and documentation for IPv6, and the
/// IPv4 inside IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
/// addresses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique-local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || o[0] >= 240 // reserved
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2]));
    }
    None
}

/// Which destinations outbound connections may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Let internal addresses through too (dev mode: everything on loopback).
    pub allow_internal: bool,
    /// Networks let through even though internal (an operator's own services).
    pub allow: Vec<ipnet::IpNet>,
}

impl EgressPolicy {
    /// A policy that refuses internal addresses unless `dev`.
    pub fn new(dev: bool) -> Self {
        EgressPolicy {
            allow_internal: dev,
            allow: Vec::new(),
        }
    }

    /// Whether `ip` may be reached.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_internal || !is_internal(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Resolves host names to addresses (the system resolver unless a test supplies its own).
#[async_trait]
pub trait Lookup: Send + Sync {
    /// Every address `host` resolves to.
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver.
pub struct SystemLookup;

#[async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The one guarded way out. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish()
    }
}

/// Most redirects followed (each re-checked).
const MAX_REDIRECTS: usize = 5;

impl Egress {
    /// Egress under `policy`, resolving names with the system resolver.
    pub fn new(policy: EgressPolicy) -> Self {
        Egress {
            policy: Arc::new(policy),
            lookup: Arc::new(SystemLookup),
        }
    }

    /// The same policy with another resolver (tests point names at loopback with it).
    pub fn with_lookup(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = lookup;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Checks a URL's scheme and, when its host is an address literal (in any form the URL
    /// standard reads: `[::ffff:127.0.0.1]`, `2130706433`, `0x7f.1`, `127.0.0.1.`), that
    /// address. Names are checked when they resolve.
    pub fn check_url(&self, url: &str) -> Result<url::Url, EgressError> {
        let parsed =
            url::Url::parse(url).map_err(|e| EgressError::BadUrl(format!("{url}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https" | "ws" | "wss") {
            return Err(EgressError::Scheme(parsed.scheme().to_string()));
        }
        match parsed.host() {
            None => return Err(EgressError::BadUrl(url.to_string())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) => {
                // `localhost` and its subdomains are loopback by definition (RFC 6761),
                // whatever a resolver says.
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost"))
                    && !self.policy.permits(IpAddr::V4(Ipv4Addr::LOCALHOST))
                {
                    return Err(EgressError::Forbidden(name));
                }
            }
        }
        Ok(parsed)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        if self.policy.permits(ip) {
            Ok(())
        } else {
            Err(EgressError::Forbidden(ip.to_string()))
        }
    }

    /// The permitted addresses `host` resolves to; an error when it resolves to none or
    /// only to forbidden ones.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs = self
            .lookup
            .lookup(host, port)
            .await
            .map_err(|e| EgressError::Resolve(host.to_string(), e.to_string()))?;
        if addrs.is_empty() {
            return Err(EgressError::Resolve(
                host.to_string(),
                "no addresses".into(),
            ));
        }
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.policy.permits(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(EgressError::Forbidden(format!(
                "{host} ({})",
                addrs
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(allowed)
    }

    /// Connects a TCP stream to the first permitted address `url`'s host resolves to (for
    /// WebSocket clients, which then speak TLS and HTTP over it themselves).
    pub async fn connect(&self, url: &str) -> Result<tokio::net::TcpStream, EgressError> {
        let parsed = self.check_url(url)?;
        let host = parsed
            .host_str()
            .ok_or_else(|| EgressError::BadUrl(url.to_string()))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| EgressError::BadUrl(url.to_string()))?;
        let mut last = None;
        for addr in self.resolve(host, port).await? {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(EgressError::Connect(
            host.to_string(),
            last.unwrap_or_else(|| "no address".into()),
        ))
    }

    /// An HTTP client whose every connection goes through this egress: names resolve
    /// through the guarded resolver, and redirects are followed (at most five) only to
    /// URLs that pass [`Egress::check_url`]. Send only URLs that pass it too: use
    /// [`Egress::get`], which checks first.
    pub fn client(&self, builder: reqwest::ClientBuilder) -> reqwest::Result<GuardedClient> {
        let redirects = self.clone();
        let client = builder
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                match redirects.check_url(attempt.url().as_str()) {
                    Ok(_) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            }))
            .build()?;
        Ok(GuardedClient {
            client,
            egress: self.clone(),
        })
    }

    /// Like [`Egress::client`], following no redirects at all.
    pub fn client_without_redirects(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> reqwest::Result<GuardedClient> {
        let client = builder
            .dns_resolver(Arc::new(GuardedResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(GuardedClient {
            client,
            egress: self.clone(),
        })
    }
}

/// An HTTP client that can only be used through the egress check.
#[derive(Clone, Debug)]
pub struct GuardedClient {
    client: reqwest::Client,
    egress: Egress,
}

impl GuardedClient {
    /// A GET of `url` after the egress check of its scheme and address literal.
    pub fn get(&self, url: &str) -> Result<reqwest::RequestBuilder, EgressError> {
        let parsed = self.egress.check_url(url)?;
        Ok(self.client.get(parsed))
    }

    /// A POST of `url` after the same check.
    pub fn post(&self, url: &str) -> Result<reqwest::RequestBuilder, EgressError> {
        let parsed = self.egress.check_url(url)?;
        Ok(self.client.post(parsed))
    }

    /// The egress it goes through.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }
}

struct GuardedResolver(Egress);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let addrs = egress
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
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

    struct Names(Vec<(&'static str, IpAddr)>);

    #[async_trait]
    impl Lookup for Names {
        async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let found: Vec<SocketAddr> = self
                .0
                .iter()
                .filter(|(n, _)| *n == host)
                .map(|(_, ip)| SocketAddr::new(*ip, port))
                .collect();
            if found.is_empty() {
                return Err(std::io::Error::other("unknown name"));
            }
            Ok(found)
        }
    }

    #[test]
    fn internal_addresses_in_every_form() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(is_internal(ip.parse().expect(ip)), "{ip} is internal");
        }
        for ip in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip.parse().expect(ip)), "{ip} is public");
        }
    }

    #[test]
    fn literal_forms_are_read_as_the_url_standard_reads_them() {
        let strict = Egress::new(EgressPolicy::new(false));
        for url in [
            "http://127.0.0.1:2583/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
            "https://localhost/",
            "https://localhost./",
            "https://x.localhost/",
            "https://[fd00::1]/",
            "wss://169.254.169.254/xrpc/com.atproto.sync.subscribeRepos",
        ] {
            assert!(
                matches!(strict.check_url(url), Err(EgressError::Forbidden(_))),
                "{url} refused"
            );
        }
        assert!(matches!(
            strict.check_url("file:///etc/passwd"),
            Err(EgressError::Scheme(_))
        ));
        assert!(strict.check_url("https://pds.example.com/").is_ok());
        let dev = Egress::new(EgressPolicy::new(true));
        assert!(dev.check_url("http://127.0.0.1:2583/").is_ok());
        let allowed = Egress::new(EgressPolicy {
            allow_internal: false,
            allow: vec!["10.0.0.0/8".parse().expect("net")],
        });
        assert!(allowed.check_url("http://10.9.9.9/").is_ok());
        assert!(allowed.check_url("http://192.168.0.1/").is_err());
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        let names = Arc::new(Names(vec![
            ("rebind.example", "127.0.0.1".parse().expect("ip")),
            ("mixed.example", "10.0.0.7".parse().expect("ip")),
            ("mixed.example", "93.184.216.34".parse().expect("ip")),
            ("public.example", "93.184.216.34".parse().expect("ip")),
        ]));
        let egress = Egress::new(EgressPolicy::new(false)).with_lookup(names);
        assert!(
            egress.check_url("http://rebind.example/").is_ok(),
            "the text looks harmless"
        );
        assert!(matches!(
            egress.resolve("rebind.example", 80).await,
            Err(EgressError::Forbidden(_))
        ));
        assert_eq!(
            egress
                .resolve("mixed.example", 443)
                .await
                .expect("one public address"),
            vec!["93.184.216.34:443".parse::<SocketAddr>().expect("addr")],
            "only the permitted addresses are dialled"
        );
        assert!(egress.resolve("public.example", 443).await.is_ok());
        assert!(matches!(
            egress.resolve("nowhere.example", 443).await,
            Err(EgressError::Resolve(..))
        ));

        // Through an HTTP client: a name resolving to loopback is refused before any byte
        // is sent, though a server listens there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = egress.client(reqwest::Client::builder()).expect("client");
        let err = client
            .get(&format!("http://rebind.example:{port}/"))
            .expect("passes the text check")
            .send()
            .await
            .expect_err("refused at resolution");
        assert!(format!("{err:?}").contains("Forbidden"), "{err:?}");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "nothing connected"
        );
        assert!(client.get(&format!("http://127.0.0.1:{port}/")).is_err());
    }

    #[tokio::test]
    async fn redirects_to_internal_addresses_are_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A "public" server (allowed by the allow-list) that redirects to the metadata
        // address.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let egress = Egress::new(EgressPolicy {
            allow_internal: false,
            allow: vec!["127.0.0.1/32".parse().expect("net")],
        });
        let client = egress.client(reqwest::Client::builder()).expect("client");
        let err = client
            .get(&format!("http://127.0.0.1:{port}/"))
            .expect("allowed")
            .send()
            .await
            .expect_err("the redirect is refused");
        assert!(
            err.is_redirect() || format!("{err:?}").contains("refusing"),
            "{err:?}"
        );
    }
}
