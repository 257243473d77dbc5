//! The payment provider boundary: what the checkout saga needs from a provider, and the HTTP
//! implementation that speaks the provider API of [`api::payments`] (served by the simulated
//! provider in [`crate::sim`], and the shape a real provider adapter would fill).

use api::payments::{Charge, ChargeRequest, ChargeStatus};
use std::future::Future;
use std::time::Duration;

/// A charge's answer when it was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured {
        provider_ref: String,
    },
    Declined {
        reason: String,
    },
    /// The key was cancelled before the charge was decided: it never captures.
    Cancelled,
    /// Received but not decided yet (a repeat while the first is in flight).
    Pending,
}

/// What a cancel found: after it, the charge's outcome is final. A cancel voids only an
/// undecided charge; one already captured stays captured (and is reported), so a cancel that
/// arrives late can never take back money for a booking made meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No money moved (never received, still pending, declined, or cancelled before).
    NothingCharged { reason: String },
    /// It had captured before the cancel: the capture stands.
    Captured { provider_ref: String },
    /// It had captured and was refunded since (by an explicit refund).
    Refunded { provider_ref: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time: the charge may or may not have happened.
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// A definitive refusal of the request itself (a bug or a misconfiguration).
    #[error("the provider refused the request: {0}")]
    Refused(String),
}

impl ProviderError {
    /// Whether the outcome of the call is unknown (it may have taken effect).
    pub fn is_unknown(&self) -> bool {
        !matches!(self, ProviderError::Refused(_))
    }
}

/// A payment provider. Every call is idempotent by the checkout's key.
pub trait Provider: Send + Sync + 'static {
    /// Authorize and capture `req.amount_minor`.
    fn charge(
        &self,
        req: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, ProviderError>> + Send;
    /// What the provider knows of a key (`None`: it never received it).
    fn lookup(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Charge>, ProviderError>> + Send;
    /// Make sure the key never captures: void it if undecided, refund it if captured.
    fn cancel(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<CancelOutcome, ProviderError>> + Send;
    /// Refund a captured charge in full (idempotent: refunding a refunded one is fine).
    fn refund(&self, key: &str) -> impl Future<Output = Result<String, ProviderError>> + Send;
}

/// A provider reached over HTTP (`POST /v1/charges`, `GET /v1/charges/{key}`,
/// `POST /v1/charges/{key}/cancel`, `POST /v1/charges/{key}/refund`).
#[derive(Clone)]
pub struct HttpProvider {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl HttpProvider {
    /// `base` like `http://127.0.0.1:7400`; each call is bounded by `timeout`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> HttpProvider {
        HttpProvider {
            base: base.into().trim_end_matches('/').to_string(),
            http: client::tls::http_builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("an HTTP client builds"),
            timeout,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&ChargeRequest>,
    ) -> Result<(u16, Vec<u8>), ProviderError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if status >= 500 || status == 429 {
            return Err(ProviderError::Unavailable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )));
        }
        Ok((status, bytes.to_vec()))
    }

    fn transport(&self, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(self.timeout)
        } else {
            ProviderError::Unavailable(e.to_string())
        }
    }
}

fn decode(status: u16, body: &[u8]) -> Result<Charge, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(ProviderError::Refused(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::Unavailable(format!("undecodable answer: {e}")))
}

impl Provider for HttpProvider {
    async fn charge(&self, req: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/charges", Some(req))
            .await?;
        let c = decode(status, &body)?;
        Ok(match c.status {
            ChargeStatus::Captured => ChargeOutcome::Captured {
                provider_ref: c.charge_id,
            },
            ChargeStatus::Declined => ChargeOutcome::Declined {
                reason: c.reason.unwrap_or_else(|| "declined".into()),
            },
            ChargeStatus::Cancelled => ChargeOutcome::Cancelled,
            ChargeStatus::Pending => ChargeOutcome::Pending,
            // A refunded charge under this key: money moved and went back; never book it.
            ChargeStatus::Refunded => ChargeOutcome::Cancelled,
        })
    }

    async fn lookup(&self, key: &str) -> Result<Option<Charge>, ProviderError> {
        let (status, body) = self
            .call(reqwest::Method::GET, &format!("/v1/charges/{key}"), None)
            .await?;
        if status == 404 {
            return Ok(None);
        }
        decode(status, &body).map(Some)
    }

    async fn cancel(&self, key: &str) -> Result<CancelOutcome, ProviderError> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/charges/{key}/cancel"),
                None,
            )
            .await?;
        let c = decode(status, &body)?;
        Ok(match c.status {
            ChargeStatus::Refunded => CancelOutcome::Refunded {
                provider_ref: c.charge_id,
            },
            ChargeStatus::Captured => CancelOutcome::Captured {
                provider_ref: c.charge_id,
            },
            ChargeStatus::Cancelled | ChargeStatus::Declined => CancelOutcome::NothingCharged {
                reason: c.reason.unwrap_or_else(|| format!("{:?}", c.status)),
            },
            s => {
                return Err(ProviderError::Refused(format!(
                    "cancel answered a charge in state {s:?}"
                )));
            }
        })
    }

    async fn refund(&self, key: &str) -> Result<String, ProviderError> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/charges/{key}/refund"),
                None,
            )
            .await?;
        let c = decode(status, &body)?;
        match c.status {
            ChargeStatus::Refunded => Ok(c.charge_id),
            s => Err(ProviderError::Refused(format!(
                "refund answered a charge in state {s:?}"
            ))),
        }
    }
}
