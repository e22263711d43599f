//! Every way the broadcaster fails: at start-up (returned from `run`) and per request (answered
//! as an [`ErrorBody`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emostream_protocol::config::ConfigError;
use emostream_protocol::wire::ErrorBody;

#[derive(Debug)]
pub enum Error {
    /// The configuration file could not be read or is invalid.
    Config(ConfigError),
    /// The role names something the configuration does not have, or the role's settings are unusable.
    Role(String),
    /// A listen address could not be bound.
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The Kafka consumer could not be created.
    Kafka(rdkafka::error::KafkaError),
    /// `/register` found no subscriber heard from in the last few seconds.
    NoLiveSubscriber,
    /// `/register` found every live subscriber full.
    Full,
    /// A subscriber cannot take this viewer now (why, for the client): it is full, carries its
    /// most streams, or has lost its upstream. Answered before the upgrade.
    Unavailable(String),
    /// No such route.
    NotFound,
    /// A viewer without a valid token, or a link without the shared secret.
    Unauthorized(&'static str),
    /// `/register` from a client over its registration rate (`ip_registrations_per_s`,
    /// `ip_burst_registrations`); it may try again in this many seconds.
    TooManyRegistrations { retry_after_s: u64 },
    /// `[auth]` is on and `/register` came without a valid user token.
    Unauthenticated(String),
    /// `[auth]` is on and `/register` names another user than the token's `sub`.
    OtherUser,
    /// A request field that parsed but is not acceptable.
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// A request axum could not extract (bad JSON, bad query, not a WebSocket upgrade …).
    Rejected { status: StatusCode, message: String },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Role(e) => write!(f, "{e}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Kafka(e) => write!(f, "cannot create the Kafka consumer: {e}"),
            Error::NoLiveSubscriber => write!(f, "no live subscriber"),
            Error::Full => write!(f, "every live subscriber is full; retry later"),
            Error::Unavailable(why) => write!(f, "{why}"),
            Error::NotFound => write!(f, "not found"),
            Error::Unauthorized(why) => write!(f, "{why}"),
            Error::TooManyRegistrations { .. } => {
                write!(f, "too many registrations from this address, slow down")
            }
            Error::Unauthenticated(why) => write!(f, "{why}"),
            Error::OtherUser => write!(f, "the user token is for another user than user_id"),
            Error::Invalid { message, .. } => write!(f, "{message}"),
            Error::MethodNotAllowed => write!(f, "method not allowed"),
            Error::Rejected { message, .. } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Bind { source, .. } => Some(source),
            Error::Kafka(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Error::Kafka(e)
    }
}

/// axum's rejections carry their own status and text; only their body shape changes.
macro_rules! from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for Error {
            fn from(r: $rejection) -> Self {
                Error::Rejected { status: r.status(), message: r.body_text() }
            }
        }
    )*};
}

from_rejection!(
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::PathRejection,
    axum::extract::ws::rejection::WebSocketUpgradeRejection
);

/// Seconds a client refused with 503 should wait before asking again.
const RETRY_AFTER_S: &str = "2";

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::NoLiveSubscriber | Error::Full | Error::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Unauthenticated(_) => {
                let body = ErrorBody {
                    error: self.to_string(),
                    field: None,
                };
                let headers = [(header::WWW_AUTHENTICATE, "Bearer")];
                return (StatusCode::UNAUTHORIZED, headers, Json(body)).into_response();
            }
            Error::TooManyRegistrations { retry_after_s } => {
                let body = ErrorBody {
                    error: self.to_string(),
                    field: None,
                };
                let headers = [(header::RETRY_AFTER, HeaderValue::from(*retry_after_s))];
                return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
            }
            Error::OtherUser => StatusCode::FORBIDDEN,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Rejected { status, .. } => *status,
            // Start-up failures never reach a handler; should one, say nothing about internals.
            Error::Config(_) | Error::Role(_) | Error::Bind { .. } | Error::Kafka(_) => {
                let body = ErrorBody {
                    error: "internal error".into(),
                    field: None,
                };
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        let field = match &self {
            Error::Invalid { field, .. } => Some((*field).to_owned()),
            _ => None,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A refused viewer goes to register again elsewhere: its connection is of no more
            // use here, and a flood of them must not keep descriptors. Retry-After asks clients
            // that retry in place not to come back at once, all together.
            let body = ErrorBody {
                error: self.to_string(),
                field,
            };
            let headers = [
                (header::CONNECTION, "close"),
                (header::RETRY_AFTER, RETRY_AFTER_S),
            ];
            return (status, headers, Json(body)).into_response();
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                field,
            }),
        )
            .into_response()
    }
}
