//! Every refusal the gateway makes without a broker, through `app(state).oneshot(..)`: exact
//! status, `field` and headers. The producer points at a port nobody listens on; no request
//! here gets as far as Kafka.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use emostream_gateway::{app, AppState, Batcher, Metrics};
use emostream_protocol::wire::ErrorBody;
use emostream_protocol::Config;
use http_body_util::BodyExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

fn config(extra_gateway: &str) -> Config {
    config_with_broker("127.0.0.1:1", extra_gateway)
}

fn config_text_with_clusters(clusters: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "127.0.0.1:1"
[gateway]
listen = "127.0.0.1:0"
[dataflow]
processes = ["127.0.0.1:2101"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = {clusters}
"#
    )
}

fn config_with_broker(brokers: &str, extra_gateway: &str) -> Config {
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
[gateway]
listen = "127.0.0.1:0"
{extra_gateway}
[dataflow]
processes = ["127.0.0.1:2101"]
[broadcaster]
main = "127.0.0.1:9000"
clusters = []
"#
    );
    Config::from_toml(&text).expect("a valid test configuration")
}

fn gateway(extra_gateway: &str) -> Router {
    gateway_for(config(extra_gateway))
}

fn gateway_for(config: Config) -> Router {
    let metrics = Arc::new(Metrics::default());
    let (_batcher, handle) = Batcher::start(&config, Arc::clone(&metrics)).expect("a producer");
    app(AppState::new(&config, handle, metrics).expect("valid rules"))
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn error(&self) -> ErrorBody {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn field(&self) -> Option<String> {
        self.error().field
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = gateway("");
    let a = send(&app, post("/send_emoji", JSON, r#"{"user_id":"#)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.field(), None);
    assert!(a.error().error.starts_with("malformed JSON"), "{}", a.body);
    let a = send(&app, post("/v1/streams/main/emojis", JSON, "[]")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error().error, "the body holds no emoji");
    let nd = "{\"user_id\":\"a\",\"emoji\":\"🔥\"}\n{\"user_id\":\n";
    let a = send(&app, post("/v1/streams/main/emojis", NDJSON, nd)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.field().as_deref(), Some("items[1]"));
    let a = send(
        &app,
        post("/v1/streams/main/emojis", NDJSON, vec![0xff, 0xfe]),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error().error, "body is not UTF-8");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = gateway("");
    let big_seed = format!(
        r#"{{"user_id":"u","emoji_type":"🔥","pad":"{}"}}"#,
        "x".repeat(4096)
    );
    let a = send(&app, post("/send_emoji", JSON, big_seed)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error().error, "body larger than 4096 bytes");
    assert_eq!(a.field(), None);
    let item = r#"{"user_id":"u","emoji":"🔥"}"#;
    let batch = format!("[{}]", vec![item; 1024 * 1024 / item.len() + 1].join(","));
    let a = send(&app, post("/v1/streams/main/emojis", JSON, batch)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error().error, "body larger than 1048576 bytes");
}

#[tokio::test]
async fn an_emoji_padded_with_marks_or_tags_is_refused_with_a_reason() {
    let app = gateway("");
    // 10 MB of combining marks after an emoji: over either route's body cap, refused unread.
    let marks = "\u{0300}".repeat(5 * 1024 * 1024);
    for (path, body, limit) in [
        (
            "/send_emoji",
            format!(r#"{{"user_id":"u","emoji_type":"🔥{marks}"}}"#),
            4096,
        ),
        (
            "/v1/streams/main/emojis",
            format!(r#"{{"user_id":"u","emoji":"🔥{marks}"}}"#),
            1048576,
        ),
    ] {
        let a = send(&app, post(path, JSON, body)).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(
            a.error(),
            ErrorBody {
                error: format!("body larger than {limit} bytes"),
                field: None
            }
        );
    }
    // Within the body cap, the same floods are not an emoji: marks, tag characters (a
    // well-formed tag sequence that is no RGI flag, and a long one), variation selectors.
    let floods = [
        format!("🔥{}", "\u{0300}".repeat(1000)),
        "🔥\u{0300}".to_string(),
        format!("🏴{}\u{E007F}", "\u{E0061}".repeat(5)),
        format!("🏴{}\u{E007F}", "\u{E0061}".repeat(300)),
        "❤\u{FE0F}\u{FE0F}".to_string(),
    ];
    for flood in &floods {
        for (path, body, field) in [
            (
                "/send_emoji",
                serde_json::json!({"user_id": "u", "emoji_type": flood}),
                "emoji_type",
            ),
            (
                "/v1/streams/main/emojis",
                serde_json::json!([{"user_id": "u", "emoji": "🔥"}, {"user_id": "u", "emoji": flood}]),
                "items[1].emoji",
            ),
        ] {
            let a = send(&app, post(path, JSON, body.to_string())).await;
            assert_eq!(
                a.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} {flood:?}"
            );
            let emoji_field = field.rsplit('.').next().unwrap();
            assert_eq!(
                a.error(),
                ErrorBody {
                    error: format!("{emoji_field} must be exactly one emoji of Unicode's RGI list"),
                    field: Some(field.into())
                }
            );
        }
    }
}

#[tokio::test]
async fn wrong_content_types_are_415() {
    let app = gateway("");
    let seed = r#"{"user_id":"u","emoji_type":"🔥"}"#;
    for (path, ct) in [
        ("/send_emoji", "text/plain"),
        // The seeds' route is JSON only.
        ("/send_emoji", NDJSON),
        (
            "/v1/streams/main/emojis",
            "application/x-www-form-urlencoded",
        ),
    ] {
        let a = send(&app, post(path, ct, seed)).await;
        assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} {ct}");
        assert_eq!(a.field(), None);
    }
    let no_type = Request::post("/send_emoji").body(Body::from(seed)).unwrap();
    assert_eq!(
        send(&app, no_type).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
    let app = gateway(r#"emoji_allow_list = ["🔥", "👍🏽", "👨‍👩‍👧"]"#);
    let long_user = "u".repeat(129);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("/send_emoji", JSON, r#"{"emoji_type":"🔥"}"#.into(), "user_id"),
        ("/send_emoji", JSON, r#"{"user_id":"","emoji_type":"🔥"}"#.into(), "user_id"),
        ("/send_emoji", JSON, format!(r#"{{"user_id":"{long_user}","emoji_type":"🔥"}}"#), "user_id"),
        ("/send_emoji", JSON, r#"{"user_id":"a\tb","emoji_type":"🔥"}"#.into(), "user_id"),
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji":"🔥"}"#.into(), "emoji_type"),
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji_type":"🔥🔥"}"#.into(), "emoji_type"),
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji_type":"x"}"#.into(), "emoji_type"),
        // One emoji, but not on this gateway's allow-list.
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji_type":"😮"}"#.into(), "emoji_type"),
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji_type":"🔥","timestamp":"tuesday"}"#.into(), "timestamp"),
        ("/send_emoji", JSON, r#"{"user_id":"u","emoji_type":"🔥","timestamp":-5}"#.into(), "timestamp"),
        ("/v1/streams/Main/emojis", JSON, r#"{"user_id":"u","emoji":"🔥"}"#.into(), "stream"),
        ("/v1/streams/a.b/emojis", JSON, r#"{"user_id":"u","emoji":"🔥"}"#.into(), "stream"),
        ("/v1/streams/main/emojis", JSON, r#"{"user_id":"u","emoji":"🔥🔥"}"#.into(), "emoji"),
        ("/v1/streams/main/emojis", JSON, r#"[{"user_id":"u","emoji":"🔥"},{"user_id":"u","emoji":"👍🏽"},{"user_id":"u"}]"#.into(), "items[2].emoji"),
        ("/v1/streams/main/emojis", JSON, r#"[{"user_id":"u","emoji":"🔥"},7]"#.into(), "items[1]"),
        ("/v1/streams/main/emojis", NDJSON, "{\"user_id\":\"u\",\"emoji\":\"🔥\"}\n{\"user_id\":\"u\",\"emoji\":\"🔥\",\"timestamp\":true}\n".into(), "items[1].timestamp"),
        ("/v1/streams/main/emojis", NDJSON, "{\"user_id\":\"u\",\"emoji\":\"🔥\"}\n{\"user_id\":\" \",\"emoji\":\"🔥\"}\n".into(), "items[1].user_id"),
    ];
    for (path, ct, body, field) in cases {
        let a = send(&app, post(path, ct, body.clone())).await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {}",
            a.body
        );
        assert_eq!(
            a.field().as_deref(),
            Some(field),
            "{path} {body}: {}",
            a.body
        );
    }
}

#[tokio::test]
async fn an_ip_past_its_bucket_is_429_with_retry_after() {
    let app = gateway("ip_requests_per_s = 1\nip_burst_requests = 2");
    let from = |ip: &str| {
        let mut r = post("/send_emoji", JSON, "{");
        let addr = format!("{ip}:5000").parse().unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(emostream_gateway::ClientAddr(addr)));
        r
    };
    // The bucket is checked before the body is read: two malformed bodies spend it.
    assert_eq!(
        send(&app, from("10.0.0.1")).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&app, from("10.0.0.1")).await.status,
        StatusCode::BAD_REQUEST
    );
    let a = send(&app, from("10.0.0.1")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.field(), None);
    assert_eq!(
        a.error().error,
        "too many requests from this address, slow down"
    );
    // Another address has its own bucket.
    assert_eq!(
        send(&app, from("10.0.0.2")).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_408() {
    let app = gateway("request_timeout_ms = 300\ndelivery_timeout_ms = 100\nflush_ms = 10");
    // A client that sends headers and then nothing.
    let stalled = Body::from_stream(futures_util::stream::pending::<
        Result<axum::body::Bytes, std::io::Error>,
    >());
    let a = send(&app, post("/send_emoji", JSON, stalled)).await;
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(a.error().error, "request body not read within 300 ms");
}

#[tokio::test]
async fn taps_handed_to_the_producer_wait_for_its_verdict_not_the_deadline() {
    // A "broker" that accepts connections and never answers: the record is sent and nothing
    // comes back, so only the delivery timeout ends the wait (and nothing marks the broker
    // down before the request is submitted).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config_with_broker(
        &silent.local_addr().unwrap().to_string(),
        "request_timeout_ms = 100\ndelivery_timeout_ms = 1000\nflush_ms = 10",
    );
    let metrics = Arc::new(Metrics::default());
    let (_batcher, handle) = Batcher::start(&config, Arc::clone(&metrics)).expect("a producer");
    let app = app(AppState::new(&config, handle, metrics).expect("valid rules"));
    let started = std::time::Instant::now();
    let a = send(
        &app,
        post("/send_emoji", JSON, r#"{"user_id":1,"emoji_type":"🔥"}"#),
    )
    .await;
    // Ten times the body deadline has passed, and the answer is the broker's verdict: a 503 a
    // client may retry, never a 408 that a browser would resend on its own.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1000));
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(
        a.error(),
        ErrorBody {
            error: "broker did not acknowledge, retry shortly".into(),
            field: None
        }
    );
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_the_body() {
    let app = gateway("request_timeout_ms = 60000");
    for (path, limit) in [("/send_emoji", 4096), ("/v1/streams/main/emojis", 1048576)] {
        // The body never comes: only the header can have decided, and long before the deadline.
        let stalled = Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let mut request = post(path, JSON, stalled);
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, (limit + 1).into());
        let a = tokio::time::timeout(std::time::Duration::from_secs(30), send(&app, request))
            .await
            .expect("answered without reading the body");
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(
            a.error(),
            ErrorBody {
                error: format!("body larger than {limit} bytes"),
                field: None
            }
        );
    }
}

#[tokio::test]
async fn more_taps_of_one_user_than_the_burst_is_422_and_costs_nothing() {
    let app = gateway("user_burst_taps = 3\nuser_taps_per_s = 1\ndelivery_timeout_ms = 200");
    let batch = |users: &[&str]| {
        let items: Vec<String> = users
            .iter()
            .map(|u| format!(r#"{{"user_id":"{u}","emoji":"🔥"}}"#))
            .collect();
        format!("[{}]", items.join(","))
    };
    let a = send(
        &app,
        post(
            "/v1/streams/main/emojis",
            JSON,
            batch(&["a", "b", "a", "a", "a"]),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.error(),
        ErrorBody {
            error: "more taps of one user in one request than user_burst_taps (3)".into(),
            field: Some("items[4].user_id".into())
        }
    );
    // No token was taken, and a request refused after taking them (here by the producer, which
    // has no broker) gives them back: the same full burst is refused by the producer each time,
    // never by the rate limit, although the bucket refills one token a second.
    for _ in 0..3 {
        let a = send(
            &app,
            post("/v1/streams/main/emojis", JSON, batch(&["a", "a", "a"])),
        )
        .await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = gateway("");
    let a = send(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error().error, "no such route");
    let a = send(
        &app,
        Request::get("/send_emoji").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.error().error, "method not allowed on this route");
    let a = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test]
async fn metrics_count_requests_and_rejections() {
    let app = gateway("");
    send(&app, post("/send_emoji", JSON, "{")).await;
    send(&app, post("/send_emoji", "text/plain", "{")).await;
    send(&app, post("/v1/streams/X/emojis", JSON, "{}")).await;
    send(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
    let m = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(m.status, StatusCode::OK);
    for line in [
        r#"emostream_gateway_requests_total{route="/send_emoji",status="400"} 1"#,
        r#"emostream_gateway_requests_total{route="/send_emoji",status="415"} 1"#,
        r#"emostream_gateway_requests_total{route="/v1/streams/{stream}/emojis",status="422"} 1"#,
        r#"emostream_gateway_requests_total{route="unmatched",status="404"} 1"#,
        r#"emostream_gateway_rejections_total{reason="malformed"} 1"#,
        r#"emostream_gateway_rejections_total{reason="unsupported_media_type"} 1"#,
        r#"emostream_gateway_rejections_total{reason="invalid_field"} 1"#,
        r#"emostream_gateway_rejections_total{reason="rate_limited_user"} 0"#,
        "emostream_gateway_emojis_accepted_total 0",
        "# TYPE emostream_gateway_producer_queue_depth gauge",
        "# TYPE emostream_gateway_open_connections gauge",
        "emostream_gateway_in_flight_bytes 0",
        "emostream_gateway_in_flight_budget_bytes 134217728",
        "# TYPE emostream_gateway_broker_ack_seconds histogram",
        r#"emostream_gateway_broker_ack_seconds_bucket{le="+Inf"} 0"#,
    ] {
        assert!(
            m.body.lines().any(|l| l == line),
            "missing {line}:\n{}",
            m.body
        );
    }
}

/// The router's path patterns. axum has no API that lists them; its `Debug` output names each
/// one in quotes (and the catch-all it adds for the fallback, which is no route). Should a later
/// axum print them differently, the set comes back empty and the test below fails rather than
/// passing vacuously.
fn router_paths(app: &Router) -> BTreeSet<String> {
    format!("{app:?}")
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/') && !s.contains("__private__axum_fallback"))
        .map(String::from)
        .collect()
}

/// The methods a route could be registered for. HEAD and OPTIONS are left out: axum answers HEAD
/// on every GET route, and CORS preflight answers OPTIONS everywhere; neither is an operation.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[tokio::test]
async fn the_openapi_document_and_the_router_agree_both_ways() {
    let app = gateway("");
    let doc = send(
        &app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert_eq!(
        documented.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "GET /",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "POST /send_emoji",
            "POST /v1/streams/{stream}/emojis",
        ]
    );
    // Every method on every path the router knows: what answers other than 404/405 is a route.
    let paths = router_paths(&app);
    assert_eq!(paths.len(), 7, "the router's paths: {paths:?}");
    let mut answering = BTreeSet::new();
    for path in &paths {
        for method in METHODS {
            let request = Request::builder()
                .method(method)
                .uri(path.replace("{stream}", "main"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::empty())
                .unwrap();
            let status = send(&app, request).await.status;
            if status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED {
                answering.insert(format!("{method} {path}"));
            }
        }
    }
    assert_eq!(
        answering, documented,
        "router (left) against document (right)"
    );
}

#[tokio::test]
async fn only_the_viewer_pages_and_configured_origins_may_post_cross_origin() {
    let mut config = config(r#"cors_origins = ["https://emostream.example"]"#);
    config.broadcaster = Config::from_toml(&config_text_with_clusters(
        r#"[{ name = "c0", listen = "127.0.0.1:9010", subscribers = ["127.0.0.1:9011"] }]"#,
    ))
    .unwrap()
    .broadcaster;
    let app = gateway_for(config);
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/streams/main/emojis")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "content-type,idempotency-key",
            )
            .body(Body::empty())
            .unwrap()
    };
    for origin in ["http://127.0.0.1:9011", "https://emostream.example"] {
        let response = app.clone().oneshot(preflight(origin)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], origin);
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type,idempotency-key"
        );
    }
    // Any other page: no grant, so its visitors' browsers do not send the tap.
    let response = app
        .clone()
        .oneshot(preflight("http://evil.example"))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        None
    );
    // A refusal carries the headers too, with Retry-After readable by the page.
    let refused = Request::post("/v1/streams/NOPE/emojis")
        .header(header::ORIGIN, "http://127.0.0.1:9011")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app.clone().oneshot(refused).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://127.0.0.1:9011"
    );
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "retry-after"
    );
    assert_eq!(
        response.headers()[header::VARY],
        "origin, access-control-request-method, access-control-request-headers"
    );
    // Without an Origin (a phone, a seed client, a load balancer) no CORS work and no CORS
    // headers: only the answer's own.
    let plain = Request::post("/v1/streams/NOPE/emojis")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app.oneshot(plain).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let names: Vec<&str> = response.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type", "content-length"]);
}

#[tokio::test]
async fn a_malformed_stream_segment_is_the_json_refusal() {
    let app = gateway("");
    for path in [
        "/v1/streams/%FF/emojis",
        "/v1/streams/NOPE/emojis",
        "/v1/streams/a%2Fb/emojis",
    ] {
        let a = send(&app, post(path, JSON, r#"{"user_id":"u","emoji":"🔥"}"#)).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"error":"stream must match [a-z0-9_-]{1,64}","field":"stream"}"#
            ),
            "{path}"
        );
    }
}

/// `cors_origins` names origins as browsers send them: `"*"` (which tower-http's origin list
/// would panic on) and anything with a path, a trailing slash, no scheme or capitals (which
/// would never match a browser's `Origin`) are refused when the state is built, naming the
/// entry, instead of a panic at start or a page whose taps are silently refused.
#[tokio::test]
async fn a_cors_origin_that_is_not_an_origin_is_a_start_error_naming_it() {
    for bad in [
        "*",
        "https://emostream.example/",
        "https://emostream.example/viewer",
        "emostream.example",
        "https://Emostream.example",
        "https://emostream.example:",
        "https://emostream.example:99999",
        "https://emostream.example:443",
        "http://[::ABCD]:8080",
        "https://user@emostream.example",
        "https://",
        "null",
    ] {
        let config = config(&format!("cors_origins = [\"https://ok.example\", {bad:?}]"));
        let metrics = Arc::new(Metrics::default());
        let (_batcher, handle) = Batcher::start(&config, Arc::clone(&metrics)).unwrap();
        let Err(e) = AppState::new(&config, handle, metrics) else {
            panic!("{bad:?} was taken as an origin");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "gateway.cors_origins: {bad:?} is not an origin: write scheme://host[:port] in \
                 lower case, without a path or a trailing slash (\"*\" is not taken: list each \
                 page's origin)"
            )
        );
    }
    for good in [
        "https://emostream.example",
        "http://127.0.0.1:9011",
        "http://[::1]:8080",
        "https://xn--mj8h.example",
    ] {
        let config = config(&format!("cors_origins = [{good:?}]"));
        let metrics = Arc::new(Metrics::default());
        let (_batcher, handle) = Batcher::start(&config, Arc::clone(&metrics)).unwrap();
        assert!(AppState::new(&config, handle, metrics).is_ok(), "{good:?}");
    }
}

/// The packer task gone (a panic): `/readyz` says so at once, and a tap is refused with that
/// reason, not "ingest queue full" (a client would retry into the same refusal forever).
#[tokio::test]
async fn a_stopped_batcher_fails_readyz_and_refuses_taps_with_its_reason() {
    let config = config("");
    let metrics = Arc::new(Metrics::default());
    let (batcher, handle) = Batcher::start(&config, Arc::clone(&metrics)).expect("a producer");
    let app = app(AppState::new(&config, handle, metrics).expect("valid rules"));
    let packer = batcher.packer_for_test();
    packer.abort();
    emostream_testkit::wait_until(
        "the packer task to end",
        std::time::Duration::from_secs(10),
        || async { packer.is_finished() },
    )
    .await;
    let ready = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"the gateway's batcher stopped; the gateway is exiting to be restarted"}"#
        )
    );
    let a = send(
        &app,
        post("/send_emoji", JSON, r#"{"user_id":1,"emoji_type":"🔥"}"#),
    )
    .await;
    assert_eq!(
        (a.status, a.retry_after.as_deref(), a.body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("1"),
            r#"{"error":"the gateway's batcher stopped; the gateway is restarting, retry shortly"}"#
        )
    );
}

/// `7` + U+FE0F without the keycap mark U+20E3 is not an emoji (it shows as a plain digit), yet
/// the `emojis` crate maps it to the keycap 7️⃣: refused, as any other non-emoji.
#[tokio::test]
async fn a_digit_with_a_variation_selector_but_no_keycap_is_422() {
    let app = gateway("");
    for (path, body, field) in [
        (
            "/send_emoji",
            "{\"user_id\":\"u\",\"emoji_type\":\"7\u{FE0F}\"}",
            "emoji_type",
        ),
        (
            "/v1/streams/main/emojis",
            "[{\"user_id\":\"u\",\"emoji\":\"1\u{FE0F}\u{20E3}\"},{\"user_id\":\"u\",\"emoji\":\"#\u{FE0F}\"}]",
            "items[1].emoji",
        ),
    ] {
        let a = send(&app, post(path, JSON, body)).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            a.error(),
            ErrorBody {
                error: format!(
                    "{} must be exactly one emoji of Unicode's RGI list",
                    field.rsplit('.').next().unwrap()
                ),
                field: Some(field.into()),
            }
        );
    }
}
