//! The routes on the tiny fixture model, through the router (no socket):
//! health before and after loading, the API key, completions and chat
//! (whole and streamed, usage, stop strings, seeds), errors (bad JSON,
//! wrong types, n > 1, context length, full queue), tokenize round trip,
//! metrics.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tandem_engine::chat::ChatTemplate;
use tandem_engine::engine::{Engine, EngineConfig};
use tandem_model::{LoadOptions, Model, ModelFiles};
use tandem_server::{router, AppState, Ready, ServerConfig};
use tower::ServiceExt;

fn model() -> Arc<Model> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf");
    let files = ModelFiles::open(&path).expect("fixture");
    let opts = LoadOptions {
        threads: Some(2),
        pin: false,
        ..LoadOptions::default()
    };
    Arc::new(Model::load_with(files, &opts).expect("load"))
}

fn state(key: Option<&str>) -> Arc<AppState> {
    AppState::new(ServerConfig {
        api_key: key.map(str::to_string),
        model_name: "tiny".into(),
        request_timeout: None,
    })
}

fn ready(st: &AppState, m: &Arc<Model>, max_queue: usize) {
    let store = m.new_kv_store(m.kv_options(), 1 << 24).expect("store");
    let engine = Engine::start(
        Arc::clone(m),
        store,
        EngineConfig {
            max_batch: 8,
            ctx: 256,
            prefill_chunk: 64,
            max_queue,
            ..EngineConfig::default()
        },
    );
    st.set_ready(Ready {
        engine: Arc::new(engine),
        model: Arc::clone(m),
        template: ChatTemplate::of_tokenizer(&m.tokenizer).expect("template"),
    });
}

async fn call(
    st: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, String) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let req = b
        .header("content-type", "application/json")
        .body(match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        })
        .expect("request");
    let resp = router(Arc::clone(st)).oneshot(req).await.expect("call");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn raw(st: &Arc<AppState>, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = router(Arc::clone(st)).oneshot(req).await.expect("call");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_end_to_end() {
    let st = state(Some("sekret"));
    let k = Some("sekret");
    // Loading: 503 on health and on the API.
    assert_eq!(
        call(&st, "GET", "/health", None, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let m = model();
    ready(&st, &m, 16);
    assert_eq!(
        call(&st, "GET", "/health", None, None).await.0,
        StatusCode::OK
    );
    // The key guards the rest.
    assert_eq!(
        call(&st, "GET", "/v1/models", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, body) = call(&st, "GET", "/v1/models", None, k).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(parse(&body)["data"][0]["id"], "tiny");

    // Completion, greedy, twice: the same text; usage adds up.
    let req = json!({"prompt": "The Python language is", "max_tokens": 12, "temperature": 0});
    let (s, a) = call(&st, "POST", "/v1/completions", Some(req.clone()), k).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let a = parse(&a);
    let (_, b) = call(&st, "POST", "/v1/completions", Some(req), k).await;
    let b = parse(&b);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let u = &b["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Seeded sampling reproduces.
    let req = json!({"prompt": "Once", "max_tokens": 10, "temperature": 1.0, "seed": 7});
    let (_, x) = call(&st, "POST", "/v1/completions", Some(req.clone()), k).await;
    let (_, y) = call(&st, "POST", "/v1/completions", Some(req), k).await;
    assert_eq!(
        parse(&x)["choices"][0]["text"],
        parse(&y)["choices"][0]["text"]
    );

    // Chat, streamed, with usage: the chunks add up to the whole answer.
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]);
    let whole = json!({"messages": msgs, "max_tokens": 10, "temperature": 0});
    let (s, w) = call(&st, "POST", "/v1/chat/completions", Some(whole), k).await;
    assert_eq!(s, StatusCode::OK, "{w}");
    let w = parse(&w);
    let streamed = json!({"messages": msgs, "max_tokens": 10, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let (s, sse) = call(&st, "POST", "/v1/chat/completions", Some(streamed), k).await;
    assert_eq!(s, StatusCode::OK);
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let mut text = String::new();
    let mut usage = Value::Null;
    let mut finish = Value::Null;
    for e in &events[..events.len() - 1] {
        let v = parse(e);
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        } else {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(
        text,
        w["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(finish, w["choices"][0]["finish_reason"]);
    assert_eq!(usage["completion_tokens"], w["usage"]["completion_tokens"]);

    // A stop string cuts the text before it.
    let full = a["choices"][0]["text"].as_str().unwrap().to_string();
    if let Some(stop) = full.get(3..5).filter(|s| !s.trim().is_empty()) {
        let req = json!({"prompt": "The Python language is", "max_tokens": 12, "temperature": 0, "stop": [stop]});
        let (_, c) = call(&st, "POST", "/v1/completions", Some(req), k).await;
        let c = parse(&c);
        let cut = &full[..full.find(stop).unwrap()];
        assert_eq!(c["choices"][0]["text"], cut);
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
    }

    // Logprobs.
    let req = json!({"messages": msgs, "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let (_, l) = call(&st, "POST", "/v1/chat/completions", Some(req), k).await;
    let l = parse(&l);
    let content = l["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);

    // Errors.
    let (s, e) = raw(&st, "/v1/completions", "{not json").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    let st2 = state(None);
    ready(&st2, &m, 0);
    let (s, e) = raw(&st2, "/v1/completions", "{not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));
    let (s, e) = raw(
        &st2,
        "/v1/completions",
        r#"{"prompt": "x", "temperature": "hot"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = raw(&st2, "/v1/completions", r#"{"prompt": "x", "n": 2}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["param"], "n");
    let long = "word ".repeat(400);
    let (s, e) = raw(
        &st2,
        "/v1/completions",
        &json!({"prompt": long}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(
            "This model's maximum context length is 256 tokens. However, you requested"
        ),
        "{msg}"
    );
    // max_queue 0: every generation is refused with 429 + Retry-After.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .body(Body::from(r#"{"prompt": "x"}"#))
        .unwrap();
    let resp = router(Arc::clone(&st2)).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");

    // Tokenize / detokenize round trip.
    let (s, t) = raw(&st2, "/tokenize", r#"{"content": "Hello world"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, d) = raw(
        &st2,
        "/detokenize",
        &json!({"tokens": t["tokens"]}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["content"], "Hello world");
    let (s, _) = raw(&st2, "/detokenize", r#"{"tokens": [99999999]}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Metrics carry vLLM's names.
    let (s, text) = call(&st, "GET", "/metrics", None, k).await;
    assert_eq!(s, StatusCode::OK);
    for name in [
        "tandem:time_to_first_token_seconds_bucket",
        "tandem:inter_token_latency_seconds",
        "tandem:e2e_request_latency_seconds",
        "tandem:request_queue_time_seconds",
        "tandem:num_requests_running",
        "tandem:num_requests_waiting",
        "tandem:kv_cache_usage_perc",
        "tandem:prefix_cache_queries_total",
        "tandem:prefix_cache_hits_total",
        "tandem:num_preemptions_total",
        "tandem:prompt_tokens_total",
        "tandem:generation_tokens_total",
        "tandem:request_success_total{finished_reason=\"length\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}
