//! The HTTP surface: small handlers over one [`AppState`].

use crate::batcher::BatcherHandle;
use crate::metrics::Metrics;
use crate::parse::{self, BodyFormat};
use crate::GatewayError;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use emostream_protocol::wire::ErrorBody;
use emostream_protocol::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

/// The seed route carries one emoji; anything near this size is not one.
const SINGLE_BODY_LIMIT: usize = 4 * 1024;
/// A batch: about 10,000 emojis.
const BATCH_BODY_LIMIT: usize = 1024 * 1024;
/// The stream of the seeds' route, which has no stream in its path.
const DEFAULT_STREAM: &str = "main";

#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    batcher: BatcherHandle,
    metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(config: Arc<Config>, batcher: BatcherHandle) -> Self {
        AppState {
            config,
            batcher,
            metrics: Arc::default(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/send_emoji", post(send_emoji))
        .route("/v1/streams/{stream}/emojis", post(stream_emojis))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn send_emoji(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        if BodyFormat::from_content_type(content_type(&headers))? != BodyFormat::Json {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let tap = parse::seed_body(&read_body(body, SINGLE_BODY_LIMIT).await?)?;
        state
            .batcher
            .submit(DEFAULT_STREAM, std::slice::from_ref(&tap))
            .await
    }
    .await;
    respond(&state, "/send_emoji", result)
}

async fn stream_emojis(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        parse::stream_id(&stream)?;
        let format = BodyFormat::from_content_type(content_type(&headers))?;
        let taps = parse::batch_body(&read_body(body, BATCH_BODY_LIMIT).await?, format)?;
        state.batcher.submit(&stream, &taps).await
    }
    .await;
    respond(&state, "/v1/streams/{stream}/emojis", result)
}

fn respond(
    state: &AppState,
    route: &'static str,
    result: Result<emostream_protocol::wire::Accepted, GatewayError>,
) -> Response {
    let response = match result {
        Ok(accepted) => {
            state.metrics.accepted(accepted.accepted);
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Err(e) => e.into_response(),
    };
    state.metrics.request(route, response.status().as_u16());
    response
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| {
            s.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
        });
        if too_large {
            GatewayError::TooLarge { limit }
        } else {
            GatewayError::Malformed {
                reason: format!("could not read the body: {e}"),
                field: None,
            }
        }
    })
}

/// Ready when the broker answers and the events topic exists. The metadata call blocks, so it
/// runs on the blocking pool.
async fn readyz(State(state): State<AppState>) -> Response {
    let brokers = state.config.kafka.brokers.clone();
    let topic = state.config.kafka.events_topic.clone();
    let check = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!("topic {topic} is missing")),
        }
    })
    .await;
    match check {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: reason,
                field: None,
            }),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: e.to_string(),
                field: None,
            }),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such route".into(),
            field: None,
        }),
    )
        .into_response()
}
