//! Every failure a client can see, as an RFC 9457 problem with a stable code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::{Code, Rejection};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    pub fn unauthenticated(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    /// 503 with `Retry-After`: no quorum, no leader, a timeout, or too much load.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

/// The HTTP status of a domain rejection (docs/http-api.md).
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::InvalidInput | Code::LimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Forbidden | Code::AdmissionRequired => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::HoldExpired => StatusCode::GONE,
        Code::SeatUnavailable
        | Code::HoldNotLive
        | Code::SaleNotOpen
        | Code::SoldOut
        | Code::AlreadyExists
        | Code::IdempotencyConflict
        | Code::InvalidState
        | Code::TicketUsed => StatusCode::CONFLICT,
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        ApiError::new(status_of(r.code), r.code.as_str(), r.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = api::Problem {
            type_: format!("https://ticketledger.dev/problems/{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_string(),
            instance: None,
        };
        let body = serde_json::to_vec(&problem).expect("problems serialize");
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(api::PROBLEM_JSON),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Middleware: every error leaves as a problem. axum's own rejections (a query string that
/// does not parse, a raw body over its limit, a method the route lacks) answer plain text;
/// they keep their status and text, as a problem with a code for that status.
pub async fn problems_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == api::PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are a line; a larger body is not one of them, so it is not echoed.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(status, code, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_4xx() {
        for code in Code::ALL {
            let s = status_of(code);
            assert!(s.is_client_error(), "{code:?} -> {s}");
        }
    }
}
