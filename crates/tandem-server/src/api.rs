//! The OpenAI request bodies this server reads, and their translation
//! into engine parameters. Unknown fields are ignored (as OpenAI and vLLM
//! do); a known field of the wrong type or out of range is a 400 naming
//! it. Defaults are OpenAI's (temperature 1, top_p 1, no top-k/min-p),
//! not llama.cpp's; `top_k`, `min_p`, `repetition_penalty` and
//! `ignore_eos` are vLLM's extensions.

use serde::Deserialize;
use serde_json::Value;
use tandem_engine::penalties::Penalties;
use tandem_engine::sampler::SamplingParams;

use crate::error::ApiError;

/// A string or a list of strings (`stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// A completion prompt: text, token ids, or a batch of one of either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields `/v1/completions` and `/v1/chat/completions` share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Alternatives per token (0..=20).
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
    pub best_of: Option<u64>,
    pub suffix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub tools: Option<Value>,
    /// Extra template variables (vLLM's extension).
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// Reads a JSON body; any syntax or type error is a 400 quoting serde.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The engine's view of the sampling fields, after checking them.
pub struct EngineParams {
    pub sampling: SamplingParams,
    pub penalties: Penalties,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Most alternatives per token that `logprobs`/`top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: u64 = 20;

impl Sampling {
    pub fn engine_params(&self, random_seed: u64) -> Result<EngineParams, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_param(
                    "n",
                    format!("n = {n} is not supported: this server returns one choice per request (n = 1)"),
                ));
            }
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::bad_param(
                "temperature",
                format!("temperature = {temperature}: must be in [0, 2]"),
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => {
                return Err(ApiError::bad_param(
                    "top_k",
                    format!("top_k = {k}: must be -1 (off) or positive"),
                ))
            }
        };
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            repeat_last_n: 64,
            seed: self.seed.map_or(random_seed, |s| s as u64),
        };
        sampling
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let penalties = Penalties {
            presence: self.presence_penalty.unwrap_or(0.0),
            frequency: self.frequency_penalty.unwrap_or(0.0),
        };
        penalties
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let stop: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(StringOrList::One(s)) => vec![s.clone()],
            Some(StringOrList::Many(v)) => v.clone(),
        };
        if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 1024) {
            return Err(ApiError::bad_param(
                "stop",
                "stop: at most 16 non-empty strings of at most 1024 bytes",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        Ok(EngineParams {
            sampling,
            penalties,
            stop,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_usage),
        })
    }
}

/// The text of a chat message's `content`: a string, a list of text
/// parts (joined), or null/absent (empty).
pub fn content_text(content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    (Some(kind), _) => {
                        return Err(ApiError::bad_param(
                            "messages",
                            format!("content parts of type `{kind}` are not supported (text only)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::bad_param(
                            "messages",
                            "a content part must be {\"type\": \"text\", \"text\": \"...\"}",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::bad_param(
            "messages",
            "content must be a string or a list of text parts",
        )),
    }
}

/// The messages as the template sees them: each object kept whole
/// (`tool_calls`, `tool_call_id`, `name`, ...), its `content` flattened to
/// a string, its role checked.
pub fn template_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(ApiError::bad_param(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        match obj.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant" | "tool" | "function") => {}
            Some(r) => {
                return Err(ApiError::bad_param(
                    "messages",
                    format!("messages[{i}].role `{r}` is not one of system, developer, user, assistant, tool"),
                ))
            }
            None => {
                return Err(ApiError::bad_param(
                    "messages",
                    format!("messages[{i}].role must be a string"),
                ))
            }
        }
        let mut obj = obj.clone();
        let text = content_text(obj.get("content")).map_err(|e| {
            ApiError::bad_param("messages", format!("messages[{i}]: {}", e.message))
        })?;
        obj.insert("content".into(), Value::String(text));
        out.push(Value::Object(obj));
    }
    Ok(out)
}
