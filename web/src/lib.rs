//! The viewer page: pick a stream, tap emojis, watch each epoch's swarm and the last minute of
//! counts, with the connection's state always in view.
//!
//! # Layout
//! - `static/index.html`, `static/app.css`, `static/app.js`, `static/icon.svg`: the page, embedded
//!   into the binary with `include_str!`, so serving it needs no build step and no files on disk.
//! - [`routes`]: the router that serves them, plus `/config.json`, the page's settings ([`Page`]:
//!   the gateway's URL, where taps are POSTed, and the main publisher's, where it registers).
//!
//! The page talks to three services: it POSTs taps to the gateway's
//! `/v1/streams/{stream}/emojis` (cross-origin, so the gateway must answer CORS preflights),
//! watches `/v1/streams/{stream}/ws` on the host that served it — a subscriber — or on the one
//! named by the page's `?subscriber=ws://host:port` query parameter, and when that subscriber
//! sends it away (closes with 1001, 1008 or 1012, or refuses the connection) it POSTs to the main
//! publisher's `/register` (cross-origin too) for another subscriber and a fresh token.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_CSS: &str = include_str!("../static/app.css");
const APP_JS: &str = include_str!("../static/app.js");
const ICON_SVG: &str = include_str!("../static/icon.svg");

/// `no-cache` lets browsers keep a copy but revalidate it, so a redeployed binary's page is seen
/// on the next load rather than after some heuristic expiry.
const REVALIDATE: &str = "no-cache";

/// What `/config.json` tells the page: the services it talks to besides the subscriber that
/// served it, each as a browser reaches it (`http://host:port`; a bare `host:port` gets
/// `http://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The gateway, where the page POSTs taps.
    pub gateway: String,
    /// The main publisher, where the page registers again for a subscriber; `None`: the page
    /// knows none and only ever reconnects to the subscriber it watches.
    pub main: Option<String>,
}

/// The page at `/`, its assets under `/assets/`, and `/config.json`, which tells the page where
/// the gateway and the main publisher are. Generic over the state so it merges into any router.
pub fn routes<S: Clone + Send + Sync + 'static>(page: Page) -> Router<S> {
    let Page { gateway, main } = page;
    let config = serde_json::json!({
        "gateway": normalize_url(&gateway),
        "main": main.as_deref().map(normalize_url),
    })
    .to_string();
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
        .route(
            "/config.json",
            get(move || async move { asset("application/json", config) }),
        )
}

fn asset(content_type: &'static str, body: impl Into<String>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, REVALIDATE)],
        body.into(),
    )
}

/// `127.0.0.1:8080` → `http://127.0.0.1:8080`; a trailing `/` is dropped, because the page
/// appends absolute paths to it.
fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_the_page_and_every_asset_it_links() {
        let app = || {
            routes::<()>(Page {
                gateway: "http://127.0.0.1:8080".into(),
                main: None,
            })
        };
        let (status, content_type, html) = get(app(), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/html; charset=utf-8");
        for (path, kind) in [
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/icon.svg", "image/svg+xml"),
        ] {
            // The page refers to its assets relative to itself, so it also works behind a prefix.
            assert!(
                html.contains(&format!("\"{}\"", &path[1..])),
                "{path} linked"
            );
            let (status, content_type, body) = get(app(), path).await;
            assert_eq!((status, content_type.as_str()), (StatusCode::OK, kind));
            assert!(!body.is_empty());
        }
        assert_eq!(get(app(), "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn config_names_the_gateway_and_the_main_publisher_as_a_browser_reaches_them() {
        for (gateway, main, expected) in [
            (
                "http://127.0.0.1:8080",
                Some("127.0.0.1:9000"),
                r#"{"gateway":"http://127.0.0.1:8080","main":"http://127.0.0.1:9000"}"#,
            ),
            (
                "127.0.0.1:8080",
                Some("https://register.example.com/"),
                r#"{"gateway":"http://127.0.0.1:8080","main":"https://register.example.com"}"#,
            ),
            (
                "https://taps.example.com/",
                None,
                r#"{"gateway":"https://taps.example.com","main":null}"#,
            ),
        ] {
            let page = Page {
                gateway: gateway.into(),
                main: main.map(Into::into),
            };
            let (status, content_type, body) = get(routes::<()>(page), "/config.json").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(content_type, "application/json");
            assert_eq!(body, expected);
        }
    }
}
