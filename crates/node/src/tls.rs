//! TLS for the two listeners (rustls with the ring provider; no OpenSSL).
//!
//! The rule (README "Configuration", ARCHITECTURE): with `--tls-cert`, `--tls-key` and
//! `--tls-ca`, the HTTP listener serves HTTPS only and asks for no client certificate; the
//! gRPC listener serves TLS only and *verifies* a client certificate against the cluster CA
//! when one is offered (`client_auth_optional`): buyers and integrators offer none and reach
//! the public services (ledger, health, reflection), while every node-to-node call
//! (`ticketledger.raft.v1.Raft`) is refused without a verified one
//! ([`crate::net::require_peer_certificate`]). A certificate from another CA fails the
//! handshake itself.

use crate::config::Tls;
use anyhow::Context;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once on the HTTPS listener; connections beyond it are closed
/// at once (a flood of slow handshakes must not pin memory or stall accepted clients).
pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 1_024;
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 256;

/// The gRPC listener's TLS: this node's identity, client certificates verified against the
/// cluster CA when offered.
pub fn grpc_server_config(tls: &Tls) -> tonic::transport::ServerTlsConfig {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT)
}

/// The HTTPS listener's TLS: this node's identity, no client certificates.
pub fn http_server_config(tls: &Tls) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing --tls-cert")?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).context("parsing --tls-key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("--tls-cert and --tls-key do not make a usable identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS listener for `axum::serve`: handshakes run concurrently in their own tasks
/// (bounded, with a deadline), so one slow client never holds up the others.
pub struct HttpsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl HttpsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(
            tcp,
            tokio_rustls::TlsAcceptor::from(config),
            tx,
        ));
        Ok(HttpsListener { local, accepted })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_IN_FLIGHT));
    while !tx.is_closed() {
        let (stream, peer) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accepting an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in flight: connection closed");
            continue;
        };
        crate::no_delay(&stream);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this listener is gone; never reached.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
