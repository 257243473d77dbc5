//! A machine with no CA certificates at all (our `FROM scratch` node image): reqwest's default
//! verifier refuses to build a client there, so `ticketctl health` failed even for plain
//! `http://` and the compose bootstrap never saw a node come up. The real `ticketctl` binary,
//! with the system trust store pointed at an empty directory, must still talk plain HTTP.

use std::process::Command;

const TICKETCTL: &str = env!("CARGO_BIN_EXE_ticketctl");

#[tokio::test]
async fn ticketctl_talks_plain_http_on_a_machine_without_ca_certificates() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let empty = tempfile::tempdir().unwrap();
    let no_roots = |cmd: &mut Command| {
        // rustls-native-certs reads only these when either is set.
        cmd.env("SSL_CERT_FILE", empty.path().join("none.pem"))
            .env("SSL_CERT_DIR", empty.path())
            .env_remove("TICKETLEDGER_URL")
            .env_remove("TICKETLEDGER_KEY");
    };

    let mut cmd = Command::new(TICKETCTL);
    cmd.args(["--timeout-secs", "5", "health", "--live", "--url", &url]);
    no_roots(&mut cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ticketctl health failed without system CA certificates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/healthz: ok"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    server.abort();
}
