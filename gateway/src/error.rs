use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emostream_protocol::wire::ErrorBody;

/// Every way the gateway refuses a request. A refused request has counted nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The body is not the JSON (or NDJSON) it claims to be.
    Malformed {
        reason: String,
        field: Option<String>,
    },
    /// The body is larger than the route allows.
    TooLarge { limit: usize },
    /// Neither JSON nor NDJSON.
    UnsupportedMediaType,
    /// Well-formed, but a field is missing or invalid.
    Invalid { reason: String, field: String },
    /// The producer's queue is full or the broker did not acknowledge: nothing was counted.
    Unavailable { reason: &'static str },
}

impl GatewayError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        GatewayError::Invalid {
            reason: reason.into(),
            field: field.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Malformed { .. } => StatusCode::BAD_REQUEST,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            GatewayError::Malformed { reason, field } => ErrorBody {
                error: reason,
                field,
            },
            GatewayError::TooLarge { limit } => ErrorBody {
                error: format!("body larger than {limit} bytes"),
                field: None,
            },
            GatewayError::UnsupportedMediaType => ErrorBody {
                error: "content-type must be application/json or application/x-ndjson".into(),
                field: None,
            },
            GatewayError::Invalid { reason, field } => ErrorBody {
                error: reason,
                field: Some(field),
            },
            GatewayError::Unavailable { reason } => ErrorBody {
                error: reason.into(),
                field: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
