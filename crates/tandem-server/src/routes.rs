//! The HTTP routes: `/health`, `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` (JSON or SSE), `/tokenize`, `/detokenize`,
//! `/metrics`; every route but `/health` behind the API key when one is
//! set.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_engine::chat::TemplateKwargs;
use tandem_engine::scheduler::Request;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{self, ChatRequest, CompletionRequest, Prompt, MAX_TOP_LOGPROBS};
use crate::error::ApiError;
use crate::generation::{Collected, Generation, GenerationSpec, Piece, TokenInfo};
use crate::state::{AppState, Ready};

/// The application's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(guarded)
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

async fn auth(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    req: HttpRequest,
    next: Next,
) -> Response {
    if let Some(key) = &st.config.api_key {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if bearer != Some(key.as_str()) && x_key != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.ready().is_ok() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::unavailable("Loading model").into_response()
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let ctx = st.ready().ok().map(|r| r.engine.ctx());
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.config.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "tandem",
            "max_model_len": ctx,
        }],
    }))
    .into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let stats = st.ready().ok().map(|r| r.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(stats.as_ref()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

async fn tokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    Ok(Json(tokenize_body(st.ready()?, &body)?).into_response())
}

/// `/tokenize`'s answer to `body`.
fn tokenize_body(r: &Ready, body: &[u8]) -> Result<Value, ApiError> {
    let req: TokenizeRequest = api::parse(body)?;
    let tok = &r.model.tokenizer;
    let ids = tok
        .encode(&req.content, req.add_special)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tokens: Vec<Value> = if req.with_pieces {
        ids.iter()
            .map(|&id| json!({"id": id, "piece": tok.decode(&[id]).unwrap_or_default()}))
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json!({ "tokens": tokens }))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    Ok(Json(detokenize_body(st.ready()?, &body)?).into_response())
}

/// `/detokenize`'s answer to `body`.
fn detokenize_body(r: &Ready, body: &[u8]) -> Result<Value, ApiError> {
    let req: DetokenizeRequest = api::parse(body)?;
    check_ids(r, &req.tokens)?;
    let content = r
        .model
        .tokenizer
        .decode(&req.tokens)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(json!({ "content": content }))
}

fn check_ids(r: &Ready, ids: &[u32]) -> Result<(), ApiError> {
    let vocab = r.model.config.vocab_size;
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::bad_request(format!(
            "token id {id} is outside the vocabulary (size {vocab})"
        )));
    }
    Ok(())
}

/// A request seed when the client gives none.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}{:06x}",
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Checks the prompt and the completion budget against the context;
/// returns the completion budget.
fn budget(
    ctx: usize,
    prompt: usize,
    asked: Option<u64>,
    default: Option<usize>,
) -> Result<usize, ApiError> {
    let asked = asked.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    if asked == Some(0) {
        return Err(ApiError::bad_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let completion = asked.or(default).unwrap_or(ctx.saturating_sub(prompt));
    if prompt >= ctx || prompt.saturating_add(completion) > ctx && asked.is_some() {
        return Err(ApiError::context_length(ctx, prompt, completion.max(1)));
    }
    Ok(completion.min(ctx - prompt).max(1))
}

/// The kind of endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// `top_logprobs` count when log-probabilities were asked for.
    logprobs: Option<usize>,
    include_usage: bool,
}

async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r = st.ready()?;
    let p = prepare_completion(&st, r, &body)?;
    run(&st, r, p).await
}

/// Everything `/v1/completions` decides from `body` before the engine
/// sees the request.
fn prepare_completion(st: &AppState, r: &Ready, body: &[u8]) -> Result<Prepared, ApiError> {
    let req: CompletionRequest = api::parse(body)?;
    if req.echo == Some(true) {
        return Err(ApiError::bad_param("echo", "echo is not supported"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::bad_param("best_of", "best_of must be 1"));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad_param("suffix", "suffix is not supported"));
    }
    let tok = &r.model.tokenizer;
    let encode = |s: &str| {
        tok.encode(s, true)
            .map_err(|e| ApiError::bad_param("prompt", e.to_string()))
    };
    let prompt = match &req.prompt {
        Prompt::Text(s) => encode(s)?,
        Prompt::Tokens(t) => t.clone(),
        Prompt::Texts(v) if v.len() == 1 => encode(&v[0])?,
        Prompt::TokenLists(v) if v.len() == 1 => v[0].clone(),
        _ => {
            return Err(ApiError::bad_param(
                "prompt",
                "one prompt per request (a batch of prompts is not supported)",
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    check_ids(r, &prompt)?;
    let logprobs = match req.logprobs {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be at most {MAX_TOP_LOGPROBS}"),
            ))
        }
        n => n.map(|n| n as usize),
    };
    let params = req.sampling.engine_params(random_seed())?;
    let max_tokens = budget(
        r.engine.ctx(),
        prompt.len(),
        req.sampling.max_tokens,
        Some(16),
    )?;
    let meta = Meta {
        kind: Kind::Completion,
        id: response_id("cmpl"),
        created: unix_now(),
        model: st.config.model_name.clone(),
        logprobs,
        include_usage: params.include_usage,
    };
    Ok(Prepared {
        prompt,
        max_tokens,
        params,
        logprobs,
        meta,
    })
}

async fn chat(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let r = st.ready()?;
    let p = prepare_chat(&st, r, &body)?;
    run(&st, r, p).await
}

/// Everything `/v1/chat/completions` decides from `body` before the
/// engine sees the request: parameters, the rendered template, the prompt.
fn prepare_chat(st: &AppState, r: &Ready, body: &[u8]) -> Result<Prepared, ApiError> {
    let req: ChatRequest = api::parse(body)?;
    let messages = api::template_messages(&req.messages)?;
    let mut kwargs = TemplateKwargs::new();
    if let Some(tools) = &req.tools {
        kwargs = kwargs.set("tools", tools);
    }
    for (k, v) in req.chat_template_kwargs.iter().flatten() {
        kwargs = kwargs.set(k.clone(), v);
    }
    let text = r
        .template
        .render_values(&messages, true, &kwargs)
        .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
    // Templates write BOS themselves.
    let prompt = r
        .model
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
    if prompt.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "the rendered prompt is empty",
        ));
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"),
            ))
        }
        (Some(true), n) => Some(n.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ))
        }
        _ => None,
    };
    let params = req.sampling.engine_params(random_seed())?;
    let asked = req.max_completion_tokens.or(req.sampling.max_tokens);
    let max_tokens = budget(r.engine.ctx(), prompt.len(), asked, None)?;
    let meta = Meta {
        kind: Kind::Chat,
        id: response_id("chatcmpl"),
        created: unix_now(),
        model: st.config.model_name.clone(),
        logprobs,
        include_usage: params.include_usage,
    };
    Ok(Prepared {
        prompt,
        max_tokens,
        params,
        logprobs,
        meta,
    })
}

/// A generation request, checked and tokenized.
struct Prepared {
    prompt: Vec<u32>,
    max_tokens: usize,
    params: api::EngineParams,
    logprobs: Option<usize>,
    meta: Meta,
}

/// The endpoints whose bodies [`check_request`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
    Tokenize,
    Detokenize,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Completions,
        Endpoint::ChatCompletions,
        Endpoint::Tokenize,
        Endpoint::Detokenize,
    ];
}

/// What the server does with a request body short of running the model:
/// parsing, parameter checks, the chat template, tokenization, the context
/// budget (and for `/tokenize` and `/detokenize` the whole answer). The
/// routes call the same functions; the `request_body` fuzz target calls
/// this, so every untrusted byte of a request passes through fuzzed code
/// before it reaches the engine.
pub fn check_request(st: &AppState, endpoint: Endpoint, body: &[u8]) -> Result<(), ApiError> {
    let r = st.ready()?;
    match endpoint {
        Endpoint::Completions => prepare_completion(st, r, body).map(drop),
        Endpoint::ChatCompletions => prepare_chat(st, r, body).map(drop),
        Endpoint::Tokenize => tokenize_body(r, body).map(drop),
        Endpoint::Detokenize => detokenize_body(r, body).map(drop),
    }
}

async fn run(st: &Arc<AppState>, r: &Ready, p: Prepared) -> Result<Response, ApiError> {
    let Prepared {
        prompt,
        max_tokens,
        params,
        logprobs,
        meta,
    } = p;
    let spec = GenerationSpec {
        request: Request {
            id: 0,
            prompt,
            max_tokens,
            sampling: params.sampling,
            penalties: params.penalties,
            logprobs,
            ignore_eos: params.ignore_eos,
        },
        stop: params.stop,
        timeout: st.config.request_timeout,
    };
    let gen = Generation::start(
        Arc::clone(&r.engine),
        Arc::clone(&r.model),
        Arc::clone(&st.metrics),
        spec,
    )?;
    if params.stream {
        return Ok(stream(gen, meta, Arc::clone(&r.model)));
    }
    let c = gen.collect().await?;
    Ok(Json(whole(&meta, &c, &r.model)).into_response())
}

/// Log-probabilities in the shape of the endpoint.
fn logprobs_json(
    meta: &Meta,
    tokens: &[TokenInfo],
    model: &tandem_model::Model,
    offset: usize,
) -> Value {
    let text = |id: u32| model.tokenizer.decode(&[id]).unwrap_or_default();
    match meta.kind {
        Kind::Chat => {
            let entry = |id: u32, lp: f32| {
                let t = text(id);
                json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
            };
            json!({"content": tokens.iter().map(|t| {
                let mut e = entry(t.token, t.logprobs.logprob);
                e["top_logprobs"] = t.logprobs.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            }).collect::<Vec<_>>()})
        }
        Kind::Completion => {
            let mut off = offset;
            let mut offsets = Vec::new();
            for t in tokens {
                offsets.push(off);
                off += text(t.token).len();
            }
            json!({
                "tokens": tokens.iter().map(|t| text(t.token)).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| t.logprobs.logprob).collect::<Vec<_>>(),
                "top_logprobs": tokens.iter().map(|t| {
                    let m: serde_json::Map<String, Value> = t.logprobs.top.iter()
                        .map(|&(id, lp)| (text(id), json!(lp))).collect();
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

/// A non-streamed response.
fn whole(meta: &Meta, c: &Collected, model: &tandem_model::Model) -> Value {
    let logprobs = match meta.logprobs {
        Some(_) => logprobs_json(meta, &c.tokens, model, 0),
        None => Value::Null,
    };
    let choice = match meta.kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": logprobs,
            "finish_reason": c.finish_reason,
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": c.text,
            "logprobs": logprobs,
            "finish_reason": c.finish_reason,
        }),
    };
    json!({
        "id": meta.id,
        "object": if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": c.usage.json(),
    })
}

/// One streamed chunk.
fn chunk(meta: &Meta, text: Option<&str>, finish: Option<&str>, logprobs: Value) -> Value {
    let choice = match meta.kind {
        Kind::Chat => {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        }
        Kind::Completion => json!({
            "index": 0,
            "text": text.unwrap_or(""),
            "logprobs": logprobs,
            "finish_reason": finish,
        }),
    };
    json!({
        "id": meta.id,
        "object": if meta.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    })
}

/// A streamed response: a task turns the generation into SSE events;
/// when the client goes away the task ends and drops the generation,
/// which cancels it in the engine.
fn stream(mut gen: Generation, meta: Meta, model: Arc<tandem_model::Model>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(SseEvent::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        let mut offset = 0;
        let lp = |tokens: &[TokenInfo], offset: usize| match meta.logprobs {
            Some(_) => logprobs_json(&meta, tokens, &model, offset),
            None => Value::Null,
        };
        if meta.kind == Kind::Chat {
            let mut first = chunk(&meta, None, None, Value::Null);
            first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            if !send(first).await {
                return;
            }
        }
        loop {
            let piece = tokio::select! {
                _ = tx.closed() => return,
                p = gen.next() => p,
            };
            let Some(piece) = piece else { break };
            match piece {
                Ok(Piece::Text { text, tokens }) => {
                    let v = chunk(&meta, Some(&text), None, lp(&tokens, offset));
                    offset += text.len();
                    if !send(v).await {
                        return;
                    }
                }
                Ok(Piece::Done {
                    finish_reason,
                    usage,
                }) => {
                    if let Some((text, tokens)) = gen.take_final_text() {
                        if !text.is_empty() || !tokens.is_empty() {
                            let v = chunk(&meta, Some(&text), None, lp(&tokens, offset));
                            if !send(v).await {
                                return;
                            }
                        }
                    }
                    if !send(chunk(&meta, None, Some(finish_reason), Value::Null)).await {
                        return;
                    }
                    if meta.include_usage {
                        let mut v = chunk(&meta, None, None, Value::Null);
                        v["choices"] = json!([]);
                        v["usage"] = usage.json();
                        if !send(v).await {
                            return;
                        }
                    }
                    break;
                }
                Err(e) => {
                    let _ = send(e.body()).await;
                    break;
                }
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    let mut resp = Sse::new(ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}
