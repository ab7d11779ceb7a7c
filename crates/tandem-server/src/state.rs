//! What the handlers share: the configuration, the metrics, and — once
//! the model has loaded — the engine, the model (tokenizer) and its chat
//! template. Until then every route but `/health` (503) answers 503.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tandem_engine::chat::ChatTemplate;
use tandem_engine::engine::Engine;
use tandem_model::Model;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// How the server behaves.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Required as `Authorization: Bearer KEY` (or `X-Api-Key`) on every
    /// route but `/health`.
    pub api_key: Option<String>,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// A request running longer ends with 504 (or an error event).
    pub request_timeout: Option<Duration>,
}

/// The loaded model and the engine thread serving it.
pub struct Ready {
    pub engine: Arc<Engine>,
    pub model: Arc<Model>,
    pub template: ChatTemplate,
}

pub struct AppState {
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    /// Unix time the server started (`created` of the model).
    pub created: u64,
    ready: OnceLock<Ready>,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            metrics: Arc::new(Metrics::new()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ready: OnceLock::new(),
        })
    }

    /// Marks the model loaded (once; later calls are ignored).
    pub fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(ready);
    }

    /// The engine, or 503 while loading.
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready
            .get()
            .ok_or_else(|| ApiError::unavailable("Loading model"))
    }
}
