//! The HTTP surface: small handlers over one [`AppState`], and one middleware that puts a
//! deadline on every request and counts it. Each handler carries its OpenAPI operation
//! (`#[utoipa::path]`), and [`app`] registers handler and operation together, so `/openapi.json`
//! documents exactly the routes the router answers.

use crate::batcher::BatcherHandle;
use crate::batcher::Reservation;
use crate::error::Rejection;
use crate::listener::ClientAddr;
use crate::metrics::{Gauges, Metrics};
use crate::parse::{self, BodyFormat, Rules, Tap};
use crate::streams::{self, LiveStreams};
use crate::{GatewayError, StartError};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Extension, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use emostream_protocol::auth::UserTokens;
use emostream_protocol::client::{client_key, TrustedProxies};
use emostream_protocol::limits::{retry_after_s, RateLimiter};
use emostream_protocol::wire::{Accepted, EmojiIn, ErrorBody, SeedAccepted, SendEmoji};
use emostream_protocol::Config;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::{IntoResponses, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// The seed route carries one emoji; anything near this size is not one.
const SINGLE_BODY_LIMIT: usize = 4 * 1024;
/// A batch: about 10,000 emojis.
pub(crate) const BATCH_BODY_LIMIT: usize = 1024 * 1024;
/// The stream of the seeds' route, which has no stream in its path.
const DEFAULT_STREAM: &str = "main";

/// The document's frame; the paths come from the handlers registered in [`app`].
#[derive(OpenApi)]
#[openapi(info(
    title = "Emostream gateway",
    description = "Emoji taps in over HTTP. In the default durable mode a 2xx is sent only \
            after the Kafka broker acknowledged (acks=all) the record holding the request's taps: \
            a 2xx means the emoji will be counted. Every refusal is {\"error\", \"field\"}."
))]
struct ApiDoc;

// The handler parses the raw body itself (`parse::batch_body`, borrowing instead of allocating);
// this type only describes it.
/// One EmojiIn, or a non-empty array of them.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // never built: it exists for its schema
enum EmojiBatch {
    One(EmojiIn),
    Many(Vec<EmojiIn>),
}

/// The refusals of both ingest routes.
#[derive(IntoResponses)]
#[allow(dead_code)] // never built: it exists for its responses
enum Refused {
    /// Malformed JSON or NDJSON.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// `[auth]` is on and the request has no valid user token (missing, malformed, forged,
    /// expired, or for another audience); answered with `WWW-Authenticate: Bearer`.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// `[auth]` is on and a tap's `user_id` is not the token's `sub`.
    #[response(status = 403)]
    OtherUser(ErrorBody),
    /// The body was not read within `request_timeout_ms`, or arrived slower than
    /// `min_body_bytes_per_s` after `body_grace_ms`; nothing was handed to the producer.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The body is larger than the route allows (4 KiB single, 1 MiB batch); at once when its
    /// `Content-Length` says so. (Also taps that would encode to more than one Kafka record
    /// holds, which no body within the limits does.)
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Neither `application/json` nor `application/x-ndjson`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// A field is missing or invalid, or one user has more taps in the request than the per-user
    /// burst; `field` names it (`items[i].field` in a batch).
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// Past a per-user or per-IP rate limit (requests, taps, or new streams opened), or the
    /// client already holds its share of the in-flight budget (`max_in_flight_bytes_per_ip`).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    RateLimited(ErrorBody),
    /// The broker refused the record holding the taps for good (too large, invalid): a retry
    /// cannot pass; nothing was counted.
    #[response(status = 500)]
    PermanentFailure(ErrorBody),
    /// The in-flight budget is full, the broker is unreachable or did not acknowledge, or the
    /// stream is not live and `max_live_streams` are.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorBody),
}

/// Who sent a request: its client address (the per-client limits' key) and, with `[auth]` on,
/// the user its token names.
#[derive(Clone, Copy)]
struct Sender<'a> {
    ip: Option<IpAddr>,
    user: Option<&'a str>,
}

/// Everything a handler needs, behind one `Arc` so cloning it per request is one increment.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    batcher: BatcherHandle,
    metrics: Arc<Metrics>,
    rules: Rules,
    /// Keyed by a keyed 64-bit hash of the user id (`AppState::user_key`), not the id: no copy
    /// of an id (up to 512 bytes) per new user on the hot path or in the map, and two ids share
    /// a bucket only by a collision no client can aim for (the key is random per process).
    users: RateLimiter<u64>,
    user_hasher: std::hash::RandomState,
    ips: RateLimiter<IpAddr>,
    ip_taps: RateLimiter<IpAddr>,
    streams: LiveStreams,
    /// The platform's user tokens, when `[auth]` is on.
    user_tokens: Option<UserTokens>,
    trusted: Arc<TrustedProxies>,
    request_timeout: Duration,
    body_pace: BodyPace,
    connections: Arc<Semaphore>,
    /// Connections open now, counted by the connections themselves: a listener waiting to
    /// accept holds a permit of `connections` too.
    open_connections: Arc<AtomicUsize>,
    /// `GET /`: links to the viewer page on each subscriber of the configured topology.
    home: String,
    /// The origins a browser may post taps from.
    cors_origins: Vec<HeaderValue>,
}

impl AppState {
    /// Fails when the configuration's emoji allow-list names something that is not one emoji.
    pub fn new(
        config: &Config,
        batcher: BatcherHandle,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let g = &config.gateway;
        Ok(AppState(Arc::new(Inner {
            batcher,
            metrics,
            rules: Rules::new(&g.emoji_allow_list)?,
            users: RateLimiter::new(g.user_taps_per_s, g.user_burst_taps),
            user_hasher: std::hash::RandomState::new(),
            ips: RateLimiter::new(g.ip_requests_per_s, g.ip_burst_requests),
            ip_taps: RateLimiter::new(g.ip_taps_per_s, g.ip_burst_taps),
            streams: LiveStreams::new(
                g.max_live_streams,
                Duration::from_secs(g.stream_idle_s),
                g.ip_new_streams_per_s,
                g.ip_burst_new_streams,
            ),
            user_tokens: UserTokens::from_config(&config.auth).map_err(StartError::Auth)?,
            trusted: Arc::new(TrustedProxies::new(&g.trusted_proxies)?),
            request_timeout: Duration::from_millis(g.request_timeout_ms),
            body_pace: BodyPace {
                grace: Duration::from_millis(g.body_grace_ms),
                min_bytes_per_s: g.min_body_bytes_per_s,
            },
            connections: Arc::new(Semaphore::new(g.max_connections)),
            open_connections: Arc::default(),
            home: home_page(config),
            cors_origins: cors_origins(config)?,
        })))
    }

    /// The load balancers whose forwarding headers are believed, for the listener.
    pub fn trusted_proxies(&self) -> Arc<TrustedProxies> {
        Arc::clone(&self.0.trusted)
    }

    /// The connection cap's permits, for the listener.
    pub fn connections(&self) -> Arc<Semaphore> {
        Arc::clone(&self.0.connections)
    }

    /// The count of open connections, for the listeners to keep.
    pub fn open_connections(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.0.open_connections)
    }

    /// The user the request's token names, when `[auth]` is on (`None` when it is off).
    fn user(&self, headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
        let Some(tokens) = &self.0.user_tokens else {
            return Ok(None);
        };
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        tokens
            .user(authorization)
            .map(Some)
            .map_err(|refused| GatewayError::Unauthenticated(refused.to_string()))
    }

    /// The key of `user`'s bucket.
    fn user_key(&self, user: &str) -> u64 {
        use std::hash::BuildHasher;
        self.0.user_hasher.hash_one(user)
    }

    fn admit_ip(&self, ip: Option<IpAddr>) -> Result<(), GatewayError> {
        let Some(ip) = ip else { return Ok(()) };
        self.0
            .ips
            .take(&ip, 1, Instant::now())
            .map_err(|wait| GatewayError::RateLimited {
                field: None,
                retry_after_s: retry_after_s(wait),
            })
    }

    /// Reads a body of at most `limit` bytes once its `declared` length fits in the in-flight
    /// budget and in the client's share of it (503 or 429 at once otherwise, before a byte is
    /// read), so the bodies of many slow or large requests cannot grow memory past the budget,
    /// nor one client's take it. The reservation goes on with the request's taps
    /// ([`BatcherHandle::submit`]) and is returned when the broker answers.
    async fn read_body(
        &self,
        client: Option<IpAddr>,
        declared: usize,
        body: Body,
        limit: usize,
    ) -> Result<(Bytes, Reservation), GatewayError> {
        let reserved = self.0.batcher.reserve(client, declared)?;
        let body = read_body(
            body,
            declared,
            limit,
            self.0.request_timeout,
            self.0.body_pace,
        )
        .await?;
        Ok((body, reserved))
    }

    /// Charges each tap to its user's bucket, then hands the request to the batcher. A request
    /// with more taps of one user than the bucket holds is 422, not 429: no wait would let it
    /// pass. Tokens taken for a request refused later are given back.
    async fn ingest(
        &self,
        Sender { ip: client, user }: Sender<'_>,
        stream: &str,
        request_id: Option<&str>,
        taps: &[Tap<'_>],
        indexed: bool,
        reserved: Reservation,
    ) -> Result<Ingested, GatewayError> {
        let users = &self.0.users;
        let field = |i: usize| {
            if indexed {
                format!("items[{i}].user_id")
            } else {
                "user_id".into()
            }
        };
        // With auth on, every tap is the token's user's: the per-user limits below then key on
        // the verified id.
        if let Some(user) = user {
            if let Some(i) = taps.iter().position(|tap| &*tap.user_id != user) {
                return Err(GatewayError::OtherUser { field: field(i) });
            }
        }
        let burst = users.burst();
        if taps.len() > burst as usize {
            let mut per_user: HashMap<&str, u32> = HashMap::new();
            for (i, tap) in taps.iter().enumerate() {
                let n = per_user.entry(&tap.user_id).or_default();
                *n += 1;
                if *n > burst {
                    return Err(GatewayError::invalid(
                        field(i),
                        format!(
                            "more taps of one user in one request than user_burst_taps ({burst})"
                        ),
                    ));
                }
            }
        }
        let ip_taps = &self.0.ip_taps;
        let n = u32::try_from(taps.len()).unwrap_or(u32::MAX);
        if n > ip_taps.burst() {
            return Err(GatewayError::invalid(
                "items",
                format!(
                    "more taps in one request than ip_burst_taps ({})",
                    ip_taps.burst()
                ),
            ));
        }
        let now = Instant::now();
        // Before any token is taken: a tap for a stream that cannot open costs the client
        // nothing else.
        self.0
            .streams
            .admit(stream, client, now)
            .map_err(|refused| match refused {
                streams::Refused::Full { max } => GatewayError::StreamsFull { max },
                streams::Refused::TooManyNew { retry_after } => GatewayError::NewStreamsLimited {
                    retry_after_s: retry_after_s(retry_after),
                },
            })?;
        // One token per request bounds the requests of an address, one per tap its taps: one
        // request may carry tens of thousands.
        if let Some(ip) = client {
            ip_taps
                .take(&ip, n, now)
                .map_err(|wait| GatewayError::RateLimited {
                    field: None,
                    retry_after_s: retry_after_s(wait),
                })?;
        }
        let give_back = |taken: &[Tap<'_>]| {
            if let Some(ip) = client {
                ip_taps.give_back(&ip, n);
            }
            for tap in taken {
                users.give_back(&self.user_key(&tap.user_id), 1);
            }
        };
        for (i, tap) in taps.iter().enumerate() {
            if let Err(wait) = users.take(&self.user_key(&tap.user_id), 1, now) {
                give_back(&taps[..i]);
                return Err(GatewayError::RateLimited {
                    field: Some(field(i)),
                    retry_after_s: retry_after_s(wait),
                });
            }
        }
        let accepted = match self
            .0
            .batcher
            .submit(client, stream, request_id, taps, reserved)
            .await
        {
            Ok(accepted) => accepted,
            Err(e) => {
                give_back(taps);
                return Err(e);
            }
        };
        self.0.metrics.accepted(accepted.accepted);
        Ok(Ingested(accepted))
    }
}

/// The gateway's router, with `/openapi.json` serving the document generated from the same
/// registrations.
pub fn app(state: AppState) -> Router {
    // The viewer page is served by the subscribers and posts taps here, cross-origin. CORS is
    // the outermost layer so that even a 429 or 503 carries it (and Retry-After is readable).
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(state.0.cors_origins.clone()))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::HeaderName::from_static(IDEMPOTENCY_KEY),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    // The document names its own route, so it exists only once every route is registered; the
    // handler reads it from a cell filled right after (and only its route pays for the layer).
    let document = Document::default();
    let (schemas, paths, serve_document) = routes!(openapi);
    let serve_document = serve_document.layer(Extension(document.clone()));
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(home))
        .routes(routes!(send_emoji))
        .routes(routes!(stream_emojis))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes((schemas, paths, serve_document))
        .split_for_parts();
    let json = doc
        .to_json()
        .expect("an OpenAPI document always serializes");
    document
        .0
        .set(Bytes::from(json))
        .expect("the cell is new and filled once");
    router
        .fallback(|| async { GatewayError::NotFound })
        .method_not_allowed_fallback(|| async { GatewayError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(OnlyWithOrigin(cors))
        .with_state(state)
}

/// CORS for the requests that carry an `Origin` (every cross-origin request a browser makes),
/// and nothing for the rest: tower-http's layer builds a header map for every request and adds
/// `Vary` and `Access-Control-Expose-Headers` (110 bytes) to every answer, which phones, the
/// seed clients and load balancers never read.
#[derive(Clone)]
struct OnlyWithOrigin(CorsLayer);

impl<S: Clone> tower::Layer<S> for OnlyWithOrigin {
    type Service = CorsIfOrigin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsIfOrigin {
            plain: tower::util::Either::Left(inner.clone()),
            cors: tower::util::Either::Right(self.0.layer(inner)),
        }
    }
}

#[derive(Clone)]
struct CorsIfOrigin<S> {
    plain: tower::util::Either<S, tower_http::cors::Cors<S>>,
    cors: tower::util::Either<S, tower_http::cors::Cors<S>>,
}

impl<S> tower::Service<Request> for CorsIfOrigin<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = tower::util::future::EitherResponseFuture<
        S::Future,
        tower_http::cors::ResponseFuture<S::Future>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Either may take the next request.
        std::task::ready!(self.plain.poll_ready(cx))?;
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.headers().contains_key(header::ORIGIN) {
            self.cors.call(request)
        } else {
            self.plain.call(request)
        }
    }
}

/// The generated OpenAPI document, serialized once.
#[derive(Clone, Default)]
struct Document(Arc<std::sync::OnceLock<Bytes>>);

/// Links to the viewer page on each subscriber.
#[utoipa::path(get, path = "/", responses((status = 200, description = "HTML", content_type = "text/html", body = String)))]
async fn home(State(state): State<AppState>) -> Html<String> {
    Html(state.0.home.clone())
}

/// The viewer page of every subscriber (`http://host:port` of its advertised URL, as
/// [`home_page`] links it) and the
/// configured `cors_origins`: a page elsewhere cannot make its visitors' browsers post taps.
/// A configured entry must be an origin as a browser sends it ([`is_origin`]): `"*"` would
/// make tower-http's list panic, and one with a path or capitals would never match.
fn cors_origins(config: &Config) -> Result<Vec<HeaderValue>, StartError> {
    let subscribers = config
        .broadcaster
        .clusters
        .iter()
        .flat_map(|c| c.page_origins());
    let configured = config.gateway.cors_origins.iter().map(|origin| {
        if is_origin(origin) {
            Ok(origin.clone())
        } else {
            Err(StartError::CorsOrigin(origin.clone()))
        }
    });
    subscribers
        .map(Ok)
        .chain(configured)
        .map(|origin| {
            let origin = origin?;
            HeaderValue::from_str(&origin).map_err(|_| StartError::CorsOrigin(origin.clone()))
        })
        .collect()
}

/// An origin as a browser serializes it in `Origin` (RFC 6454 §6.1): `scheme://host[:port]`,
/// in lower case (browsers lower-case the scheme and host, and send an international name in
/// its `xn--` form), with no path, query, user, trailing slash or default port; an IPv6 host
/// in brackets.
/// tower-http compares `Origin` with each entry byte for byte.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, port))
                if ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && !ip.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (ip, port)
            }
            _ => return false,
        },
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let host_ok = !host.is_empty()
        && (authority.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
    // A browser leaves out its scheme's default port.
    let default_port = matches!((scheme, port), ("http", ":80") | ("https", ":443"));
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.parse::<u16>().is_ok());
    scheme_ok && host_ok && port_ok && !default_port
}

/// A small page linking to the viewer page of every subscriber named in the configuration.
fn home_page(config: &Config) -> String {
    let links: String = config
        .broadcaster
        .clusters
        .iter()
        .flat_map(|c| {
            c.page_origins()
                .into_iter()
                .map(move |page| (c.name.as_str(), page))
        })
        .map(|(cluster, page)| format!("<li><a href=\"{page}/\">{page}</a> ({cluster})</li>"))
        .collect();
    format!(
        "<!doctype html><meta charset=utf-8><title>Emostream gateway</title>\
         <h1>Emostream gateway</h1><p>Tap and watch on the viewer page of any subscriber:</p>\
         <ul>{links}</ul><p>API: <a href=\"{OPENAPI}\">{OPENAPI}</a> · <a href=\"{METRICS}\">{METRICS}</a></p>"
    )
}

/// The 202 of an ingest route.
struct Ingested(Accepted);

impl IntoResponse for Ingested {
    fn into_response(self) -> Response {
        (StatusCode::ACCEPTED, Json(self.0)).into_response()
    }
}

/// The key the client is counted under ([`client_key`]): the connection's peer, or behind a
/// trusted proxy the address it forwards ([`TrustedProxies::client`]); None when the server
/// does not know the peer (an in-process test request).
struct ClientIp(Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<ClientAddr>>()
                .map(|c| client_key(state.0.trusted.client(c.0 .0.ip(), &parts.headers))),
        ))
    }
}

/// The 200 of the seeds' route: their clients count any other status as a failure.
struct SeedIngested(SeedAccepted);

thread_local! {
    /// The last seed answer's body on this thread, with its epoch: one tap in one epoch always
    /// gets the same answer, so it is encoded once per epoch and thread, not per request.
    static SEED_ANSWER: std::cell::RefCell<Option<(u64, Bytes)>> = const { std::cell::RefCell::new(None) };
}

impl IntoResponse for SeedIngested {
    fn into_response(self) -> Response {
        let SeedIngested(answer) = self;
        let body = SEED_ANSWER.with_borrow_mut(|cached| match cached {
            Some((epoch, body)) if *epoch == answer.epoch && answer.accepted == 1 => body.clone(),
            _ => {
                let body =
                    Bytes::from(serde_json::to_vec(&answer).expect("an answer always serializes"));
                if answer.accepted == 1 {
                    *cached = Some((answer.epoch, body.clone()));
                }
                body
            }
        });
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

/// One tap in the seeds' shape, counted in stream `main`.
#[utoipa::path(
    post,
    path = "/send_emoji",
    params(("Idempotency-Key" = Option<String>, Header, description = "Optional, 1 to 128 visible ASCII characters (a quoted Structured Field string or bare): carried into every record of the request; send the same key when resending a request whose answer may have landed.")),
    request_body(content = SendEmoji, content_type = "application/json"),
    responses((status = 200, description = "Taken (durable mode: acknowledged by the broker).", body = SeedAccepted), Refused)
)]
async fn send_emoji(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request: Request,
) -> Result<SeedIngested, GatewayError> {
    state.admit_ip(ip)?;
    // The request whole rather than a `HeaderMap` extractor, which would clone every header.
    let (Parts { headers, .. }, body) = request.into_parts();
    let user = state.user(&headers)?;
    if BodyFormat::from_content_type(content_type(&headers))? != BodyFormat::Json {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let request_id = request_id(&headers)?.map(str::to_owned);
    let declared = declared_length(&headers, SINGLE_BODY_LIMIT)?;
    // The head is a slice of the connection's read buffer: let go before the body is awaited,
    // so a request waiting for its body holds one such buffer, not two (`CONNECTION_BYTES`).
    drop(headers);
    let (body, reserved) = state
        .read_body(ip, declared, body, SINGLE_BODY_LIMIT)
        .await?;
    let tap = parse::seed_body(&body, &state.0.rules)?;
    let Ingested(accepted) = state
        .ingest(
            Sender {
                ip,
                user: user.as_deref(),
            },
            DEFAULT_STREAM,
            request_id.as_deref(),
            std::slice::from_ref(&tap),
            false,
            reserved,
        )
        .await?;
    Ok(SeedIngested(accepted.into()))
}

/// One tap, a JSON array of taps, or NDJSON (one tap per line). A batch with one invalid item is
/// refused whole, naming `items[i].field`.
#[utoipa::path(
    post,
    path = "/v1/streams/{stream}/emojis",
    params(
        ("stream" = String, Path, description = "The stream id.", pattern = "^[a-z0-9_-]{1,64}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Optional, 1 to 128 visible ASCII characters (a quoted Structured Field string or bare): carried into every record of the request; send the same key when resending a request whose answer may have landed."),
    ),
    request_body(
        description = "JSON: one EmojiIn or an array of them. NDJSON: one EmojiIn object per line.",
        content((EmojiBatch = "application/json"), (String = "application/x-ndjson")),
    ),
    responses((status = 202, description = "Taken (durable mode: acknowledged by the broker).", body = Accepted), Refused)
)]
async fn stream_emojis(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    stream: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Ingested, GatewayError> {
    state.admit_ip(ip)?;
    let (Parts { headers, .. }, body) = request.into_parts();
    let user = state.user(&headers)?;
    // axum's own rejection (e.g. a segment that percent-decodes to invalid UTF-8) is plain
    // text: the same JSON refusal as any other bad stream id instead.
    let stream = match stream {
        Ok(Path(stream)) => stream,
        Err(_) => String::new(),
    };
    parse::stream_id(&stream)?;
    let format = BodyFormat::from_content_type(content_type(&headers))?;
    let request_id = request_id(&headers)?.map(str::to_owned);
    let declared = declared_length(&headers, BATCH_BODY_LIMIT)?;
    // The head is a slice of the connection's read buffer: let go before the body is awaited,
    // so a request waiting for its body holds one such buffer, not two (`CONNECTION_BYTES`).
    drop(headers);
    let (body, reserved) = state
        .read_body(ip, declared, body, BATCH_BODY_LIMIT)
        .await?;
    let taps = parse::batch_body(&body, format, &state.0.rules)?;
    let indexed = parse::is_list(&body, format);
    state
        .ingest(
            Sender {
                ip,
                user: user.as_deref(),
            },
            &stream,
            request_id.as_deref(),
            &taps,
            indexed,
            reserved,
        )
        .await
}

/// The longest `Idempotency-Key` taken: a UUID is 36 characters, so this leaves room for any
/// key scheme while keeping records small.
const MAX_REQUEST_ID: usize = 128;

/// The request's `Idempotency-Key` (IETF httpapi draft; a Structured Field string, so quoted,
/// though a bare value is taken too): 1 to 128 visible ASCII characters. It is carried into
/// every record of the request, so the copies a retry may add can be told apart in the log.
fn request_id(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(|v| {
        v.strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v)
    });
    match key {
        Some(k)
            if (1..=MAX_REQUEST_ID).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
        {
            Ok(Some(k))
        }
        _ => Err(GatewayError::Malformed {
            reason: format!(
                "Idempotency-Key must be 1 to {MAX_REQUEST_ID} visible ASCII characters \
                 (no quote or backslash), optionally in double quotes"
            ),
            field: Some(IDEMPOTENCY_KEY.into()),
        }),
    }
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The body's declared `Content-Length`, refused at once when over `limit`, before a byte of
/// it is read (the read would refuse it too, but only after `limit` bytes or the deadline).
/// Without one (a chunked body), `limit`: all it may grow to.
fn declared_length(headers: &HeaderMap, limit: usize) -> Result<usize, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(GatewayError::TooLarge { limit }),
        Some(n) => Ok(n as usize),
        None => Ok(limit),
    }
}

/// How fast a body must arrive: `min_bytes_per_s` after `grace`.
#[derive(Clone, Copy)]
struct BodyPace {
    grace: Duration,
    min_bytes_per_s: u64,
}

impl BodyPace {
    /// When a body of which `received` bytes have arrived falls behind the pace.
    fn due(&self, started: tokio::time::Instant, received: usize) -> tokio::time::Instant {
        let earned_ms = (received as u64).saturating_mul(1000) / self.min_bytes_per_s;
        started + self.grace + Duration::from_millis(earned_ms)
    }
}

/// The deadline covers reading the body only: once taps are handed to the producer they may
/// land, so the request waits for the broker's verdict (bounded by `delivery_timeout_ms`)
/// rather than answer 408, after which a browser resends the POST and the taps count twice.
/// Within it the body must keep `pace`, so a client that declares a large body and trickles
/// it (or sends nothing) gives its reservation back after the grace, not after the deadline.
/// Hand-written rather than tower-http's `RequestBodyLimitLayer`/`TimeoutLayer`: those answer
/// in plain text and know neither the pace nor the budget reserved before the read.
async fn read_body(
    mut body: Body,
    declared: usize,
    limit: usize,
    deadline: Duration,
    pace: BodyPace,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let started = tokio::time::Instant::now();
    let end = started + deadline;
    // Copied out of hyper's frames rather than kept: a frame is a slice of the connection's
    // read buffer, and holding it would hold that whole buffer past what the body's reservation
    // (its declared length, the capacity here) counts.
    let mut joined = bytes::BytesMut::with_capacity(declared);
    loop {
        let received = joined.len();
        let due = pace.due(started, received).min(end);
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) if due == end => {
                return Err(GatewayError::Timeout {
                    after_ms: deadline.as_millis() as u64,
                })
            }
            Err(_) => {
                return Err(GatewayError::TooSlow {
                    min_bytes_per_s: pace.min_bytes_per_s,
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(GatewayError::Malformed {
                    reason: format!("could not read the body: {e}"),
                    field: None,
                })
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no taps
        };
        if received + data.len() > limit {
            return Err(GatewayError::TooLarge { limit });
        }
        joined.extend_from_slice(&data);
    }
    Ok(joined.freeze())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// The broker answers and the events topic exists (the health probe's last verdict, at most
/// about a second old), the producer has not failed for good, and the batcher still runs.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "ready", content_type = "text/plain", body = String),
        (status = 503, description = "The broker or the topic does not answer, or the gateway is exiting to be restarted (its producer failed for good, or its batcher stopped).", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    // The probe's cached verdict (at most about a second old): a load balancer polling this
    // route costs the broker nothing.
    match state.0.batcher.not_ready() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: reason,
                field: None,
            }),
        )
            .into_response(),
    }
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let s = &state.0;
    let (in_flight_bytes, in_flight_budget) = s.batcher.in_flight();
    let gauges = Gauges {
        producer_queue_depth: s.batcher.producer_queue(),
        in_flight_bytes,
        in_flight_budget,
        in_flight_clients: s.batcher.budget_clients(),
        open_connections: s.open_connections.load(Ordering::Relaxed),
        broker_reachable: s.batcher.broker_reachable(),
        tracked_users: s.users.tracked(),
        tracked_ips: s.ips.tracked(),
        live_streams: s.streams.open(),
    };
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        s.metrics.render(&gauges),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3", body = Object)))]
async fn openapi(Extension(doc): Extension<Document>) -> Response {
    let json = doc
        .0
        .get()
        .expect("app() fills the document before serving")
        .clone();
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Every request: one count by matched route, status and, for a refusal, its reason.
async fn observe(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state.0.metrics.request(
        route,
        response.status().as_u16(),
        response.extensions().get::<Rejection>().map(|r| r.0),
    );
    response
}
