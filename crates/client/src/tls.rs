//! TLS for the client side: rustls with the ring provider only (no OpenSSL, no aws-lc).
//!
//! reqwest is built with `rustls-no-provider`, so a process must install a rustls crypto
//! provider before it builds any `reqwest::Client` (reqwest panics otherwise, even for plain
//! `http://`). [`http_builder`] does that; every HTTP client in this workspace starts from it.

use std::sync::Once;

/// Install ring as this process's rustls provider, once (a provider installed earlier by the
/// application is kept).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `reqwest::Client::builder()` after [`install_provider`]: use it instead of
/// `reqwest::Client::new()` / `builder()` anywhere in the workspace.
///
/// reqwest's default verifier (rustls-platform-verifier) refuses to build a client at all when
/// the system has no CA certificates, as in our `FROM scratch` image: then every client here,
/// `ticketctl health` included, would fail even for plain `http://`. Where the system has no
/// roots, the builder starts from an empty trust store instead: `http://` works, and an
/// `https://` peer fails verification until the caller adds a CA (`--ca-cert`).
pub fn http_builder() -> reqwest::ClientBuilder {
    install_provider();
    let builder = reqwest::Client::builder();
    if system_roots_usable() {
        builder
    } else {
        builder.tls_certs_only(Vec::<reqwest::Certificate>::new())
    }
}

/// Whether reqwest can build a client on the system's CA certificates (checked once per
/// process: loading them parses the whole system bundle).
pub fn system_roots_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        install_provider();
        reqwest::Client::builder().build().is_ok()
    })
}

/// The certificates of a PEM bundle (a CA file), or why not.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the CA file holds no CERTIFICATE".into());
    }
    Ok(certs)
}
