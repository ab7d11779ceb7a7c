//! One request's generation as the handlers see it: submitted to the
//! engine thread, its events arriving on a tokio channel, turned into
//! text pieces (complete UTF-8, stop strings held back and cut) and a
//! final outcome with usage.
//!
//! Dropping a [`Generation`] before it ends cancels the request in the
//! engine (a client that disconnects frees its pages within one step);
//! the engine also cancels it by itself when the channel is closed.
//! Latency metrics are observed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_engine::engine::{Engine, SubmitError};
use tandem_engine::generate::StopReason;
use tandem_engine::logprobs::TokenLogprobs;
use tandem_engine::scheduler::{Event, Request};
use tandem_model::Model;
use tandem_tokenizer::IncrementalDecoder;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::stop::StopMatcher;

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// One generated token with its log-probabilities, for `logprobs`.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: u32,
    pub logprobs: TokenLogprobs,
}

/// What [`Generation::next`] yields.
#[derive(Debug)]
pub enum Piece {
    /// Text to show (possibly empty when only log-probabilities came).
    Text {
        text: String,
        tokens: Vec<TokenInfo>,
    },
    /// The end: `finish_reason` as OpenAI spells it.
    Done {
        finish_reason: &'static str,
        usage: Usage,
    },
}

/// A running request.
pub struct Generation {
    engine: Arc<Engine>,
    model: Arc<Model>,
    metrics: Arc<Metrics>,
    id: u64,
    rx: UnboundedReceiver<Event>,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    usage: Usage,
    /// Log-probabilities of tokens whose text is not released yet.
    pending: Vec<TokenInfo>,
    submitted: Instant,
    last_token: Option<Instant>,
    deadline: Option<Instant>,
    ended: bool,
    final_text: Option<FinalText>,
}

/// What to generate.
pub struct GenerationSpec {
    pub request: Request,
    pub stop: Vec<String>,
    pub timeout: Option<Duration>,
}

impl Generation {
    /// Submits the request; refuses it (429) when the queue is full.
    pub fn start(
        engine: Arc<Engine>,
        model: Arc<Model>,
        metrics: Arc<Metrics>,
        spec: GenerationSpec,
    ) -> Result<Generation, ApiError> {
        let (tx, rx) = unbounded_channel();
        let prompt_tokens = spec.request.prompt.len();
        let decoder = IncrementalDecoder::with_context(&spec.request.prompt);
        let id = engine
            .submit(spec.request, Box::new(move |ev| tx.send(ev).is_ok()))
            .map_err(|e| match e {
                SubmitError::QueueFull(n) => ApiError::queue_full(format!(
                    "the server is busy: {n} requests are waiting; retry later"
                )),
                SubmitError::Stopped => ApiError::unavailable("the server is shutting down"),
                SubmitError::Invalid(e) => ApiError::bad_request(e.to_string()),
            })?;
        let now = Instant::now();
        Ok(Generation {
            engine,
            model,
            metrics,
            id,
            rx,
            decoder,
            stop: StopMatcher::new(spec.stop),
            usage: Usage {
                prompt_tokens,
                ..Usage::default()
            },
            pending: Vec::new(),
            submitted: now,
            last_token: None,
            deadline: spec.timeout.map(|t| now + t),
            ended: false,
            final_text: None,
        })
    }

    /// The next piece; `None` after [`Piece::Done`]. An error ends the
    /// request (engine failure, timeout).
    pub async fn next(&mut self) -> Option<Result<Piece, ApiError>> {
        if self.ended {
            return None;
        }
        loop {
            let ev = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), self.rx.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        return Some(Err(self.fail(ApiError::timeout(format!(
                            "the request ran past its timeout ({:.0} s)",
                            (d - self.submitted).as_secs_f64()
                        )))))
                    }
                },
                None => self.rx.recv().await,
            };
            let Some(ev) = ev else {
                return Some(Err(
                    self.fail(ApiError::internal("the engine dropped the request"))
                ));
            };
            match ev {
                Event::Started { cached, .. } => {
                    self.usage.cached_tokens = cached;
                    self.metrics
                        .queue_time
                        .observe(self.submitted.elapsed().as_secs_f64());
                }
                Event::Preempted { .. } => {}
                Event::Token {
                    token, logprobs, ..
                } => {
                    let now = Instant::now();
                    match self.last_token {
                        None => self
                            .metrics
                            .ttft
                            .observe((now - self.submitted).as_secs_f64()),
                        Some(t) => self.metrics.itl.observe((now - t).as_secs_f64()),
                    }
                    self.last_token = Some(now);
                    self.usage.completion_tokens += 1;
                    if let Some(lp) = logprobs {
                        self.pending.push(TokenInfo {
                            token,
                            logprobs: lp,
                        });
                    }
                    let piece = match self.decoder.push(&self.model.tokenizer, token) {
                        Ok(p) => p.unwrap_or_default(),
                        Err(e) => return Some(Err(self.fail(ApiError::internal(e.to_string())))),
                    };
                    let released = self.stop.push(&piece);
                    if released.stopped {
                        // Cut at the stop string: the engine request ends now.
                        self.engine.cancel(self.id);
                        return Some(Ok(self.finish_with(released.text, "stop")));
                    }
                    if !released.text.is_empty() || !self.pending.is_empty() {
                        return Some(Ok(Piece::Text {
                            text: released.text,
                            tokens: std::mem::take(&mut self.pending),
                        }));
                    }
                }
                Event::Finished { reason, .. } => {
                    let finish = match reason {
                        StopReason::Eos => "stop",
                        StopReason::MaxTokens | StopReason::ContextFull => "length",
                    };
                    let rest = self.stop.flush();
                    return Some(Ok(self.finish_with(rest, finish)));
                }
                Event::Failed { error, .. } => {
                    return Some(Err(self.fail(ApiError::bad_request(error))));
                }
            }
        }
    }

    /// Ends the generation with the last text (if any) folded into the
    /// returned piece; the caller emits `Done` with [`Self::done`].
    fn finish_with(&mut self, text: String, finish_reason: &'static str) -> Piece {
        self.ended = true;
        self.metrics
            .e2e
            .observe(self.submitted.elapsed().as_secs_f64());
        self.metrics.finished(finish_reason);
        self.metrics
            .prompt_tokens
            .inc_by(self.usage.prompt_tokens as u64);
        self.metrics
            .generation_tokens
            .inc_by(self.usage.completion_tokens as u64);
        self.final_text = Some(FinalText {
            text,
            tokens: std::mem::take(&mut self.pending),
        });
        Piece::Done {
            finish_reason,
            usage: self.usage,
        }
    }

    /// Text released together with the end (held back until then).
    pub fn take_final_text(&mut self) -> Option<(String, Vec<TokenInfo>)> {
        self.final_text.take().map(|f| (f.text, f.tokens))
    }

    fn fail(&mut self, e: ApiError) -> ApiError {
        self.ended = true;
        self.engine.cancel(self.id);
        self.metrics.finished("abort");
        e
    }

    /// Runs to the end, collecting text and log-probabilities.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(p) = self.next().await {
            match p? {
                Piece::Text {
                    text: t,
                    tokens: lp,
                } => {
                    text.push_str(&t);
                    tokens.extend(lp);
                }
                Piece::Done {
                    finish_reason,
                    usage,
                } => {
                    if let Some((t, lp)) = self.take_final_text() {
                        text.push_str(&t);
                        tokens.extend(lp);
                    }
                    return Ok(Collected {
                        text,
                        tokens,
                        finish_reason,
                        usage,
                    });
                }
            }
        }
        Err(ApiError::internal(
            "the generation ended without an outcome",
        ))
    }
}

struct FinalText {
    text: String,
    tokens: Vec<TokenInfo>,
}

/// A whole (non-streamed) generation.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.ended {
            self.engine.cancel(self.id);
            self.metrics.finished("abort");
        }
    }
}
