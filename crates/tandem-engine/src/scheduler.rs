//! Several generations at once on one KV pool, surviving memory pressure.
//!
//! A [`Scheduler`] holds requests *waiting* (no pages) and *running* (a
//! sequence in the pool). Each [`Scheduler::step`]:
//!
//! 1. **Admits** waiting requests, oldest first, while the batch has room:
//!    a request's sequence starts from the prefix cache
//!    (`KvStore::sequence_with_prefix` — RAM, then the disk tier), the
//!    rest of its tokens is prefilled in chunks, and its next token is
//!    sampled. If the pool cannot hold the prefill, the request gives its
//!    pages back and waits; a request that cannot fit even alone fails.
//! 2. **Makes room** for one decode step: every running sequence whose
//!    next position starts a page needs a free page. While the pool has
//!    fewer than needed, the most recently admitted request is
//!    **preempted**: its sequence is dropped — its full pages stay in the
//!    prefix cache (and go to the disk tier if they are evicted) — and it
//!    goes back to the front of the queue with every token it has so far,
//!    to be readmitted (prefix hit + recompute of the rest) when there is
//!    room. Its sampler keeps its state, so a preempted greedy or seeded
//!    generation continues exactly as it would have.
//! 3. **Decodes** one token for every running request in one batch, and
//!    finishes those that hit EOS, their token limit or their context.
//!
//! Pages are returned when a sequence is dropped — finished, cancelled,
//! or preempted — so when the scheduler is idle no page is in use.
//!
//! Does not know: HTTP, streaming text, threads (the model's pool runs
//! each batch).

use std::collections::VecDeque;
use std::sync::Arc;

use tandem_model::{KvCache, KvStore, Logits, Model, ModelError, SeqInput};

use crate::generate::{prefill, StopReason};
use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;

/// One generation to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The caller's name for it, echoed in events.
    pub id: u64,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Request `id` generated `token`.
    Token { id: u64, token: u32 },
    /// Request `id` ended; its pages are released.
    Finished { id: u64, reason: StopReason },
    /// Request `id` gave its pages back and waits (its tokens are kept).
    Preempted { id: u64 },
    /// Request `id` cannot run: it does not fit in the pool even alone.
    Failed { id: u64, error: String },
}

struct Entry {
    id: u64,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    sampler: Sampler,
    /// The sampled token not yet in the cache (running entries only).
    pending: Option<u32>,
    seq: Option<KvCache>,
}

impl Entry {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Counters since the scheduler was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub admitted: u64,
    pub preempted: u64,
    /// Tokens that readmission took from the prefix cache.
    pub reused_tokens: u64,
    /// Tokens prefilled (prompts, and recomputation after preemption).
    pub prefilled_tokens: u64,
}

/// Runs requests in batches on one model and one KV pool.
pub struct Scheduler<'m> {
    model: &'m Model,
    store: Arc<KvStore>,
    waiting: VecDeque<Entry>,
    running: Vec<Entry>,
    max_batch: usize,
    prefill_chunk: usize,
    /// Most tokens one sequence may hold.
    ctx: usize,
    logits: Vec<f32>,
    stats: SchedulerStats,
}

impl<'m> Scheduler<'m> {
    /// A scheduler running at most `max_batch` requests at once, each
    /// holding at most `ctx` tokens, in `store`'s pool.
    pub fn new(model: &'m Model, store: Arc<KvStore>, max_batch: usize, ctx: usize) -> Self {
        Scheduler {
            model,
            store,
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_batch: max_batch.max(1),
            prefill_chunk: 512,
            ctx: ctx.max(1),
            logits: Vec::new(),
            stats: SchedulerStats::default(),
        }
    }

    /// Prompt tokens per forward pass when prefilling.
    pub fn with_prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n.max(1);
        self
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// Queues a request.
    pub fn submit(&mut self, r: Request) -> Result<(), EngineError> {
        if r.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if r.max_tokens == 0 {
            return Err(EngineError::InvalidArgument(
                "a request must allow at least one token".into(),
            ));
        }
        let prompt_len = r.prompt.len();
        self.waiting.push_back(Entry {
            id: r.id,
            tokens: r.prompt,
            prompt_len,
            max_tokens: r.max_tokens,
            sampler: Sampler::new(r.sampling)?,
            pending: None,
            seq: None,
        });
        Ok(())
    }

    /// Drops request `id` wherever it is (its pages are released); false
    /// if there is no such request.
    pub fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.running.iter().position(|e| e.id == id) {
            self.running.remove(i);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|e| e.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Requests (waiting, running).
    pub fn load(&self) -> (usize, usize) {
        (self.waiting.len(), self.running.len())
    }

    /// One round: admit, make room, decode (see the module docs).
    pub fn step(&mut self) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        self.admit(&mut events)?;
        self.make_room(&mut events);
        self.decode(&mut events)?;
        Ok(events)
    }

    fn admit(&mut self, events: &mut Vec<Event>) -> Result<(), EngineError> {
        while self.running.len() < self.max_batch {
            let Some(mut e) = self.waiting.pop_front() else {
                break;
            };
            let mut seq = self
                .store
                .sequence_with_prefix(&e.tokens)
                .with_limit(self.ctx);
            let cached = seq.len();
            self.stats.reused_tokens += cached as u64;
            let rest = &e.tokens[cached..];
            let logits = match prefill(self.model, &mut seq, rest, self.prefill_chunk) {
                Ok(logits) => logits,
                // The pool (or the context) cannot hold the prefill now.
                Err(EngineError::PromptTooLong { .. })
                | Err(EngineError::Model(ModelError::ContextFull { .. })) => {
                    drop(seq);
                    if self.running.is_empty() {
                        let error = format!(
                            "{} tokens do not fit in the KV pool ({} tokens) or the context ({})",
                            e.tokens.len(),
                            self.store.capacity_tokens(),
                            self.ctx
                        );
                        events.push(Event::Failed { id: e.id, error });
                        continue;
                    }
                    // Wait for running requests to finish.
                    self.waiting.push_front(e);
                    break;
                }
                Err(err) => return Err(err),
            };
            self.stats.admitted += 1;
            self.stats.prefilled_tokens += rest.len() as u64;
            e.seq = Some(seq);
            let token = e.sampler.sample(&logits, &e.tokens)?;
            self.accept(e, token, events);
        }
        Ok(())
    }

    /// Records a sampled token: the entry finishes or keeps running.
    fn accept(&mut self, mut e: Entry, token: u32, events: &mut Vec<Event>) {
        let reason = if self.model.tokenizer.is_eog(token) {
            Some(StopReason::Eos)
        } else {
            e.tokens.push(token);
            events.push(Event::Token { id: e.id, token });
            if e.generated() >= e.max_tokens {
                Some(StopReason::MaxTokens)
            } else if e.tokens.len() >= self.ctx {
                Some(StopReason::ContextFull)
            } else {
                None
            }
        };
        match reason {
            Some(reason) => events.push(Event::Finished { id: e.id, reason }),
            None => {
                e.pending = Some(token);
                self.running.push(e);
            }
        }
    }

    /// Preempts the newest running requests until every running sequence
    /// can take one more token.
    fn make_room(&mut self, events: &mut Vec<Event>) {
        let pt = self.store.geometry().page_tokens;
        loop {
            let needed = self
                .running
                .iter()
                .filter(|e| e.seq.as_ref().is_some_and(|s| s.len().is_multiple_of(pt)))
                .count();
            let c = self.store.counts();
            if needed <= c.free + c.cached || self.running.len() <= 1 {
                return;
            }
            if let Some(mut e) = self.running.pop() {
                // Pages back to the pool (full ones stay cached). The
                // pending token stays in `tokens`: readmission prefills it
                // with the rest and samples from its logits, which is the
                // sample this decode step would have made.
                e.seq = None;
                e.pending = None;
                self.stats.preempted += 1;
                events.push(Event::Preempted { id: e.id });
                self.waiting.push_front(e);
            }
        }
    }

    fn decode(&mut self, events: &mut Vec<Event>) -> Result<(), EngineError> {
        if self.running.is_empty() {
            return Ok(());
        }
        let tokens: Vec<u32> = self
            .running
            .iter()
            .map(|e| e.pending.unwrap_or(0))
            .collect();
        let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(self.running.len());
        for (e, t) in self.running.iter_mut().zip(&tokens) {
            let (Some(seq), Some(_)) = (e.seq.as_mut(), e.pending) else {
                return Err(EngineError::InvalidArgument(format!(
                    "scheduler: running request {} has no sequence or token",
                    e.id
                )));
            };
            seqs.push(SeqInput {
                tokens: std::slice::from_ref(t),
                cache: seq,
                want: Logits::Last,
            });
        }
        match self.model.forward_batch(&mut seqs, &mut self.logits) {
            Ok(()) => {}
            // Only a lone request can get here (`make_room` preempts the
            // others first): the pool cannot take its next token.
            Err(ModelError::ContextFull { .. }) => {
                drop(seqs);
                for e in self.running.drain(..) {
                    events.push(Event::Finished {
                        id: e.id,
                        reason: StopReason::ContextFull,
                    });
                }
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        drop(seqs);
        let vocab = self.model.config.vocab_size;
        let running = std::mem::take(&mut self.running);
        for (i, mut e) in running.into_iter().enumerate() {
            let logits = &self.logits[i * vocab..(i + 1) * vocab];
            let token = e.sampler.sample(logits, &e.tokens)?;
            e.pending = None;
            self.accept(e, token, events);
        }
        Ok(())
    }
}
