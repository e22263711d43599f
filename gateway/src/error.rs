use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use emostream_protocol::client::NotANetwork;
use emostream_protocol::wire::ErrorBody;

/// Why the gateway cannot start, or is not ready: each names the setting or the resource.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("gateway.emoji_allow_list: {0:?} is not one emoji of Unicode's RGI list")]
    AllowList(String),
    #[error(
        "gateway.cors_origins: {0:?} is not an origin: write scheme://host[:port] in lower \
         case, without a path or a trailing slash (\"*\" is not taken: list each page's origin)"
    )]
    CorsOrigin(String),
    #[error("gateway.trusted_proxies: {0}")]
    TrustedProxy(#[from] NotANetwork),
    #[error("{0}")]
    Auth(String),
    #[error("creating the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("broker unreachable: {0}")]
    BrokerUnreachable(#[source] rdkafka::error::KafkaError),
    #[error("topic {0} is missing")]
    TopicMissing(String),
    #[error("topic {topic} has {found} partitions, kafka.events_partitions says {expected}")]
    Partitions {
        topic: String,
        found: usize,
        expected: u32,
    },
    #[error(
        "topic {topic} has max.message.bytes = {found}, the gateway's records reach {needed} \
         bytes (twice its flush threshold): raise max.message.bytes on the topic"
    )]
    RecordLimit {
        topic: String,
        found: u64,
        needed: usize,
    },
    #[error(
        "topic {topic} has min.insync.replicas = {found} on a cluster of {brokers} brokers: an \
         acknowledged tap can be lost with its partition's leader; set it to 2 or more, or \
         allow it with gateway.allow_min_insync_replicas_below_2 = true"
    )]
    MinInsyncReplicas {
        topic: String,
        found: u64,
        brokers: usize,
    },
    #[error("the Kafka producer failed for good, exiting to be restarted: {0}")]
    Fatal(String),
    #[error("the gateway's batcher stopped, exiting to be restarted: {0}")]
    BatcherStopped(String),
    #[error("the readiness check did not finish: {0}")]
    Check(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Every way the gateway refuses a request. A refused request has counted nothing, except a
/// `BrokerUnavailable` after its record was sent: the broker may have written it without
/// answering (a non-2xx promises nothing either way). A 408 is only ever sent before the taps
/// reach the producer, so it never hides taps that may land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The body is not the JSON (or NDJSON) it claims to be.
    Malformed {
        reason: String,
        field: Option<String>,
    },
    /// The body is larger than the route allows.
    TooLarge { limit: usize },
    /// The request's taps encode to more than one Kafka record holds.
    EncodedTooLarge { limit: usize },
    /// Neither JSON nor NDJSON.
    UnsupportedMediaType,
    /// Well-formed, but a field is missing or invalid.
    Invalid { reason: String, field: String },
    /// A token bucket is empty: the user's (`field` names it) or the client IP's (`field` None).
    RateLimited {
        field: Option<String>,
        retry_after_s: u64,
    },
    /// The client (its IP, or its IPv6 /64) already holds its share of the in-flight budget.
    ShareFull,
    /// `[auth]` is on and the request has no valid user token.
    Unauthenticated(String),
    /// The token is valid, but a tap is for another user than its `sub`.
    OtherUser { field: String },
    /// The stream is not open and `max_live_streams` are: nothing was counted.
    StreamsFull { max: usize },
    /// The stream is not open and the client opened its most new streams for now.
    NewStreamsLimited { retry_after_s: u64 },
    /// The in-flight budget or the ingest queue is full: nothing was counted.
    Overloaded { reason: &'static str },
    /// The broker cannot be reached or did not acknowledge: nothing was counted.
    BrokerUnavailable { reason: &'static str },
    /// The broker refused the record holding these taps for good (too large, invalid): a
    /// retry cannot pass, and nothing was counted.
    RecordRefused { reason: &'static str },
    /// The body was not read within `request_timeout_ms` (nothing reached the producer).
    Timeout { after_ms: u64 },
    /// The body arrived slower than `min_body_bytes_per_s` (nothing reached the producer).
    TooSlow { min_bytes_per_s: u64 },
    /// No route has this path.
    NotFound,
    /// The path exists, the method does not.
    MethodNotAllowed,
}

/// The reason a response was refused, attached to the response so the metrics middleware can
/// count rejections by reason without every handler doing it.
#[derive(Debug, Clone, Copy)]
pub struct Rejection(pub &'static str);

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
            GatewayError::TooLarge { .. } | GatewayError::EncodedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::RateLimited { .. }
            | GatewayError::ShareFull
            | GatewayError::NewStreamsLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded { .. }
            | GatewayError::BrokerUnavailable { .. }
            | GatewayError::StreamsFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RecordRefused { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Timeout { .. } | GatewayError::TooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::OtherUser { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The `reason` label of `emostream_gateway_rejections_total`: one of [`REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::Malformed { .. } => "malformed",
            GatewayError::TooLarge { .. } | GatewayError::EncodedTooLarge { .. } => "too_large",
            GatewayError::UnsupportedMediaType => "unsupported_media_type",
            GatewayError::Invalid { .. } => "invalid_field",
            GatewayError::RateLimited { field: Some(_), .. } => "rate_limited_user",
            GatewayError::RateLimited { field: None, .. } => "rate_limited_ip",
            GatewayError::ShareFull => "share_full",
            GatewayError::StreamsFull { .. } => "streams_full",
            GatewayError::NewStreamsLimited { .. } => "rate_limited_new_streams",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::BrokerUnavailable { .. } => "broker_unavailable",
            GatewayError::RecordRefused { .. } => "record_refused",
            GatewayError::Timeout { .. } => "timeout",
            GatewayError::TooSlow { .. } => "too_slow",
            GatewayError::NotFound => "not_found",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::Unauthenticated(_) => "unauthenticated",
            GatewayError::OtherUser { .. } => "other_user",
        }
    }
}

/// Every rejection reason, so `/metrics` can show each one from the start (at zero).
pub const REASONS: [&str; 18] = [
    "malformed",
    "too_large",
    "unsupported_media_type",
    "invalid_field",
    "rate_limited_user",
    "rate_limited_ip",
    "share_full",
    "streams_full",
    "rate_limited_new_streams",
    "overloaded",
    "broker_unavailable",
    "record_refused",
    "timeout",
    "too_slow",
    "not_found",
    "method_not_allowed",
    "unauthenticated",
    "other_user",
];

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let reason = self.reason();
        let retry_after_s = match &self {
            GatewayError::RateLimited { retry_after_s, .. }
            | GatewayError::NewStreamsLimited { retry_after_s } => Some(*retry_after_s),
            // A place frees when a stream has gone idle: not soon.
            GatewayError::StreamsFull { .. } => Some(30),
            // The broker's reconnect backoff and the flush interval are both well under a second,
            // and so is a client's own request that holds its share.
            GatewayError::Overloaded { .. }
            | GatewayError::BrokerUnavailable { .. }
            | GatewayError::ShareFull => Some(1),
            _ => None,
        };
        let body = match self {
            GatewayError::Malformed { reason, field } => ErrorBody {
                error: reason,
                field,
            },
            GatewayError::TooLarge { limit } => ErrorBody {
                error: format!("body larger than {limit} bytes"),
                field: None,
            },
            GatewayError::EncodedTooLarge { limit } => ErrorBody {
                error: format!(
                    "the taps encode to more than one Kafka record holds ({limit} bytes); \
                     send fewer in one request"
                ),
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
            GatewayError::RateLimited { field, .. } => ErrorBody {
                error: match field {
                    Some(_) => "too many emojis from this user, slow down".into(),
                    None => "too many requests from this address, slow down".into(),
                },
                field,
            },
            GatewayError::ShareFull => ErrorBody {
                error: "this address holds its share of the ingest budget, retry shortly".into(),
                field: None,
            },
            GatewayError::StreamsFull { max } => ErrorBody {
                error: format!(
                    "this stream is not live and the most live streams ({max}) are: it cannot \
                     open now, nothing was counted; retry later"
                ),
                field: Some("stream".into()),
            },
            GatewayError::NewStreamsLimited { .. } => ErrorBody {
                error: "this address opened too many new streams, slow down; taps for streams \
                        already live are taken"
                    .into(),
                field: Some("stream".into()),
            },
            GatewayError::Overloaded { reason }
            | GatewayError::BrokerUnavailable { reason }
            | GatewayError::RecordRefused { reason } => ErrorBody {
                error: reason.into(),
                field: None,
            },
            GatewayError::Timeout { after_ms } => ErrorBody {
                error: format!("request body not read within {after_ms} ms"),
                field: None,
            },
            GatewayError::TooSlow { min_bytes_per_s } => ErrorBody {
                error: format!("request body arrived slower than {min_bytes_per_s} bytes/s"),
                field: None,
            },
            GatewayError::NotFound => ErrorBody {
                error: "no such route".into(),
                field: None,
            },
            GatewayError::MethodNotAllowed => ErrorBody {
                error: "method not allowed on this route".into(),
                field: None,
            },
            GatewayError::Unauthenticated(why) => ErrorBody {
                error: why,
                field: None,
            },
            GatewayError::OtherUser { field } => ErrorBody {
                error: "the user token is for another user than this tap's user_id".into(),
                field: Some(field),
            },
        };
        let unauthenticated = status == StatusCode::UNAUTHORIZED;
        let mut response = (status, Json(body)).into_response();
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response.extensions_mut().insert(Rejection(reason));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emostream_protocol::client::TrustedProxies;

    #[test]
    fn a_bad_trusted_proxy_is_named_with_its_setting() {
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
            let refused = TrustedProxies::new(&[bad.into()]).unwrap_err();
            assert_eq!(
                StartError::from(refused).to_string(),
                format!("gateway.trusted_proxies: {bad:?} is not an address or a CIDR network")
            );
        }
    }
}
