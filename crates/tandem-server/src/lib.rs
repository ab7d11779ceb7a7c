//! tandem's HTTP server: the OpenAI API (`/v1/chat/completions`,
//! `/v1/completions`, streamed as server-sent events or not,
//! `/v1/models`), llama-server's `/tokenize`, `/detokenize` and `/health`,
//! and Prometheus `/metrics`, on axum.
//!
//! Requests are translated (`api.rs`: parameters, checks, 400s), rendered
//! with the model's chat template, tokenized and submitted to the engine
//! thread (`tandem_engine::engine`), which batches every running request
//! into each forward pass; each request's events come back on a channel
//! and become text (`generation.rs`: UTF-8 completion, stop strings held
//! back, usage, latency metrics). A full queue is 429 with `Retry-After`;
//! a client that disconnects cancels its request.
//!
//! Does not know: tensors, KV pages, sampling arithmetic (the engine's).

pub mod api;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod stop;

use std::future::Future;
use std::sync::Arc;

pub use error::ApiError;
pub use routes::{check_request, router, Endpoint};
pub use state::{AppState, Ready, ServerConfig};

/// Serves `state` on `listener` until `shutdown` resolves, then waits for
/// the requests in flight (streams included) to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining requests in flight");
}
