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
pub fn http_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
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
