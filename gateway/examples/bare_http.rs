//! The HTTP stack's own ceiling, for `scripts/bench_ingest.sh`: the gateway's stack (tokio's
//! multi-threaded runtime, hyper's HTTP/1.1 server with a header-read timeout, an axum router)
//! answering `POST /send_emoji` with the seeds' 200 body after reading the request's body, and
//! doing nothing else: no parsing, no limits, no Kafka. What the gateway adds on top of it is
//! the gateway's own cost.
//!
//!     cargo run --release -p emostream-gateway --example bare_http -- --listen 127.0.0.1:9100

use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;
use tower::ServiceExt;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let router = Router::new().route(
        "/send_emoji",
        post(|_body: Bytes| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"status":"accepted","accepted":1,"epoch":0}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| router.clone().oneshot(request));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
