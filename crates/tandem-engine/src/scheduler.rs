//! Continuous batching: many generations at once on one KV pool, each
//! step one forward pass that decodes every running request and folds in
//! a budget of prompt tokens (chunked prefill beside decode), surviving
//! memory pressure.
//!
//! A [`Scheduler`] holds requests *waiting* (no pages) and *active* (a
//! sequence in the pool, in admission order). An active request has
//! tokens the cache does not hold yet: its prompt (or what is left of it)
//! while it prefills, then exactly one — the token it sampled last — while
//! it decodes. Each [`Scheduler::step`]:
//!
//! 1. **Admits** waiting requests, oldest first, while the batch has room
//!    and the pool can hold their prompts beside what the active
//!    prefills still need: a request's sequence starts from the prefix
//!    cache (`KvStore::sequence_with_prefix` — RAM, then the disk tier),
//!    so requests that share a prefix (an agent's system prompt) compute
//!    it once: a request whose prefix another active request is still
//!    prefilling waits until those pages are committed, then finds them in
//!    the cache. A request longer than the context or the whole pool fails.
//! 2. **Plans decodes**: every decoding request gets its one token, and
//!    its page reserved. While the pool cannot give a page, the most
//!    recently admitted request is **preempted**: its sequence is dropped
//!    — its full pages stay in the prefix cache (and go to the disk tier
//!    if they are evicted) — and it goes back to the front of the queue
//!    with every token it has so far, to be readmitted (prefix hit +
//!    recompute of the rest) when there is room. Its sampler keeps its
//!    state, so a preempted greedy or seeded generation continues exactly
//!    as it would have.
//! 3. **Plans prefill**: prefilling requests, oldest first, take chunks of
//!    their remaining prompt until the step's prefill budget is spent or
//!    the pool has no page left for them. The budget is
//!    [`Scheduler::with_prefill_chunk`] tokens while nothing decodes; with
//!    [`Scheduler::with_prefill_pace`], while requests decode it is what
//!    stretches their step to that many times a decode-only step
//!    (`pacing.rs`). A long prompt thus advances a chunk per step while
//!    the running streams keep producing a token every step, at an
//!    interval that stays near their decode-only one.
//! 4. **Runs** all of it as one `forward_batch` (pages are reserved
//!    already, so it cannot run out of them), samples a token for every
//!    request whose pending tokens are all in the cache now, and finishes
//!    those that hit EOS, their token limit or their context.
//!
//! If nothing can run at all (every active request is a prefill the pool
//! cannot advance), the newest is preempted; a lone request that cannot
//! advance fails. Pages are returned when a sequence is dropped —
//! finished, cancelled, failed or preempted — so when the scheduler is
//! idle no page is in use.
//!
//! A prefill can also be handed to a worker with compute of its own
//! (another process, a GPU): the request leaves the batch with its
//! remaining pages reserved, its rows come back as checked page images,
//! and it rejoins the batch to decode (`handoff.rs`; the protocol is in
//! `prefill/mod.rs`).
//!
//! Does not know: HTTP, streaming text, threads (the model's pool runs
//! each batch; `engine.rs` runs the scheduler on its own thread).

mod handoff;
pub mod pacing;

pub use handoff::{HandoffError, PrefillJob};
pub use pacing::PrefillPacer;

use std::collections::VecDeque;
use std::sync::Arc;

use tandem_model::{KvCache, KvStore, Logits, Model, SeqInput};

use crate::generate::StopReason;
use crate::logprobs::{token_logprobs, TokenLogprobs};
use crate::penalties::Penalties;
use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;

/// One generation to run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The caller's name for it, echoed in events.
    pub id: u64,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// OpenAI's presence and frequency penalties (over generated tokens).
    pub penalties: Penalties,
    /// Report each sampled token's log-probability and this many of the
    /// most likely alternatives (None: no log-probabilities).
    pub logprobs: Option<usize>,
    /// Keep going past end-of-generation tokens (benchmarks, tests).
    pub ignore_eos: bool,
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Request `id` was admitted for the first time; `cached` of its
    /// prompt tokens came from the prefix cache.
    Started { id: u64, cached: usize },
    /// Request `id` generated `token`.
    Token {
        id: u64,
        token: u32,
        logprobs: Option<TokenLogprobs>,
    },
    /// Request `id` ended; its pages are released.
    Finished { id: u64, reason: StopReason },
    /// Request `id` gave its pages back and waits (its tokens are kept).
    Preempted { id: u64 },
    /// Request `id` cannot run: it does not fit in the pool even alone.
    Failed { id: u64, error: String },
}

struct Entry {
    id: u64,
    /// Prompt followed by the generated tokens (the last one, while
    /// decoding, not yet in the cache).
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    sampler: Sampler,
    penalties: Penalties,
    logprobs: Option<usize>,
    ignore_eos: bool,
    /// Active entries only.
    seq: Option<KvCache>,
    started: bool,
    /// Tokens planned for this step.
    chunk: usize,
    /// The prefill job of a handed-off entry (0: none).
    job: u64,
    /// A worker failed its prefill: compute it here.
    local_only: bool,
    /// Positions held when the prefill was handed off.
    handed_from: usize,
}

impl Entry {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    /// Tokens not yet in the cache.
    fn todo(&self) -> usize {
        self.tokens.len() - self.seq.as_ref().map_or(0, |s| s.len())
    }
}

/// Counters since the scheduler was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub admitted: u64,
    pub preempted: u64,
    /// Tokens looked up in the prefix cache at admission.
    pub queried_tokens: u64,
    /// Tokens admission took from the prefix cache.
    pub reused_tokens: u64,
    /// Tokens prefilled (prompts, and recomputation after preemption).
    pub prefilled_tokens: u64,
    /// Tokens decoded (one per running request per step).
    pub decoded_tokens: u64,
    pub steps: u64,
    /// Prefills a worker completed.
    pub remote_prefills: u64,
    /// Prefills taken back from a worker (failed, gone, misbehaved).
    pub remote_failures: u64,
}

/// Runs requests in batches on one model and one KV pool.
pub struct Scheduler<'m> {
    model: &'m Model,
    store: Arc<KvStore>,
    waiting: VecDeque<Entry>,
    active: Vec<Entry>,
    max_batch: usize,
    /// The prefill budget of each step (the chunk and the pace).
    pacer: PrefillPacer,
    /// Most tokens one sequence may hold.
    ctx: usize,
    logits: Vec<f32>,
    /// Penalised logits of one row (only when penalties are on).
    scratch: Vec<f32>,
    stats: SchedulerStats,
    /// Requests whose prefill a worker is computing (pages reserved).
    handed: Vec<Entry>,
    next_job: u64,
    /// Whether the last step ran a forward pass.
    ran: bool,
}

impl<'m> Scheduler<'m> {
    /// A scheduler running at most `max_batch` requests at once, each
    /// holding at most `ctx` tokens, in `store`'s pool.
    pub fn new(model: &'m Model, store: Arc<KvStore>, max_batch: usize, ctx: usize) -> Self {
        Scheduler {
            model,
            store,
            waiting: VecDeque::new(),
            active: Vec::new(),
            max_batch: max_batch.max(1),
            pacer: PrefillPacer::new(512, None),
            ctx: ctx.max(1),
            logits: Vec::new(),
            scratch: Vec::new(),
            stats: SchedulerStats::default(),
            handed: Vec::new(),
            next_job: 0,
            ran: false,
        }
    }

    /// Prompt tokens one step may prefill (beside its decodes); keeps the
    /// pace set by [`with_prefill_pace`](Self::with_prefill_pace).
    pub fn with_prefill_chunk(mut self, n: usize) -> Self {
        self.pacer = PrefillPacer::new(n, self.pacer.stretch());
        self
    }

    /// While requests decode, lets prefill stretch a step to about
    /// `stretch` times a decode-only step (`None`: the whole chunk every
    /// step, the default).
    pub fn with_prefill_pace(mut self, stretch: Option<f64>) -> Self {
        self.pacer = PrefillPacer::new(self.pacer.max_chunk(), stretch);
        self
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// Most tokens one sequence may hold.
    pub fn ctx(&self) -> usize {
        self.ctx
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
        r.penalties.validate()?;
        let prompt_len = r.prompt.len();
        self.waiting.push_back(Entry {
            id: r.id,
            tokens: r.prompt,
            prompt_len,
            max_tokens: r.max_tokens,
            sampler: Sampler::new(r.sampling)?,
            penalties: r.penalties,
            logprobs: r.logprobs,
            ignore_eos: r.ignore_eos,
            seq: None,
            started: false,
            chunk: 0,
            job: 0,
            local_only: false,
            handed_from: 0,
        });
        Ok(())
    }

    /// Drops request `id` wherever it is (its pages are released); false
    /// if there is no such request.
    pub fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.active.iter().position(|e| e.id == id) {
            self.active.remove(i);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|e| e.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.handed.iter().position(|e| e.id == id) {
            self.handed.remove(i);
            return true;
        }
        false
    }

    /// Drops every request (after an error that leaves their state
    /// unknown); returns their ids.
    pub fn abort_all(&mut self) -> Vec<u64> {
        let ids = self
            .active
            .iter()
            .chain(self.waiting.iter())
            .chain(self.handed.iter())
            .map(|e| e.id)
            .collect();
        self.active.clear();
        self.waiting.clear();
        self.handed.clear();
        ids
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty() && self.handed.is_empty()
    }

    /// Requests (waiting, active: in the batch or with a prefill worker).
    pub fn load(&self) -> (usize, usize) {
        (self.waiting.len(), self.active.len() + self.handed.len())
    }

    /// One round: admit, plan, run (see the module docs).
    pub fn step(&mut self) -> Result<Vec<Event>, EngineError> {
        let mut events = Vec::new();
        self.ran = false;
        self.admit(&mut events);
        loop {
            self.plan_decodes(&mut events);
            self.plan_prefill();
            if self.active.is_empty() || self.active.iter().any(|e| e.chunk > 0) {
                break;
            }
            // Nothing can advance: every active request is a prefill the
            // pool has no page for.
            if self.active.len() == 1 && self.handed.is_empty() {
                if let Some(e) = self.active.pop() {
                    events.push(self.too_large(&e));
                }
                break;
            }
            self.preempt_newest(&mut events);
        }
        self.run(&mut events)?;
        self.stats.steps += 1;
        Ok(events)
    }

    fn too_large(&self, e: &Entry) -> Event {
        let error = format!(
            "{} tokens do not fit in the KV pool ({} tokens) or the context ({})",
            e.tokens.len(),
            self.store.capacity_tokens(),
            self.ctx
        );
        Event::Failed { id: e.id, error }
    }

    /// Pages the pool could hand out now.
    fn available_pages(&self) -> usize {
        let c = self.store.counts();
        c.free + c.cached
    }

    /// Pages a sequence of `tokens` tokens holds at most (every page
    /// group; windowed groups only their window).
    fn pages_for(&self, tokens: usize) -> usize {
        self.store.pages_for(tokens)
    }

    fn admit(&mut self, events: &mut Vec<Event>) {
        // Pages the active prefills still need.
        let mut promised: usize = self
            .active
            .iter()
            .chain(self.handed.iter())
            .map(|e| {
                let held = e.seq.as_ref().map_or(0, |s| s.held_pages());
                self.pages_for(e.tokens.len() + 1).saturating_sub(held)
            })
            .sum();
        while self.active.len() + self.handed.len() < self.max_batch {
            let Some(mut e) = self.waiting.pop_front() else {
                break;
            };
            if e.tokens.len() > self.ctx || e.tokens.len() > self.store.capacity_tokens() {
                events.push(self.too_large(&e));
                continue;
            }
            let seq = self
                .store
                .sequence_with_prefix(&e.tokens)
                .with_limit(self.ctx);
            let need = self
                .pages_for(e.tokens.len() + 1)
                .saturating_sub(seq.held_pages());
            let defer = self.shares_a_pending_prefix(&e.tokens, seq.len());
            if defer || (!self.active.is_empty() && need + promised > self.available_pages()) {
                // Wait for room (the prefix pages go back to the cache).
                drop(seq);
                self.waiting.push_front(e);
                break;
            }
            promised += need;
            let cached = seq.len();
            self.stats.admitted += 1;
            self.stats.queried_tokens += e.tokens.len() as u64;
            self.stats.reused_tokens += cached as u64;
            if !e.started {
                e.started = true;
                events.push(Event::Started { id: e.id, cached });
            }
            e.seq = Some(seq);
            self.active.push(e);
        }
    }

    /// Whether an active request is still prefilling full pages that
    /// `tokens` starts with beyond the `cached` tokens the prefix cache
    /// gave: admitting now would compute them twice, admitting once they
    /// are committed finds them in the cache.
    fn shares_a_pending_prefix(&self, tokens: &[u32], cached: usize) -> bool {
        let pt = self.store.geometry().page_tokens;
        // The prefix cache never gives the last token (it needs logits).
        let usable = tokens.len().saturating_sub(1);
        self.active.iter().chain(self.handed.iter()).any(|a| {
            let done = a.seq.as_ref().map_or(0, |s| s.len());
            let common = tokens
                .iter()
                .zip(&a.tokens)
                .take(usable)
                .take_while(|(x, y)| x == y)
                .count();
            let shared = common / pt * pt;
            shared > cached && done < shared
        })
    }

    /// Sends the newest active request back to the queue.
    fn preempt_newest(&mut self, events: &mut Vec<Event>) {
        if let Some(mut e) = self.active.pop() {
            // Pages back to the pool (full ones stay cached). The sampled
            // token stays in `tokens`: readmission prefills it with the
            // rest and samples from its logits, which is the sample this
            // decode step would have made.
            e.seq = None;
            e.chunk = 0;
            self.stats.preempted += 1;
            events.push(Event::Preempted { id: e.id });
            self.waiting.push_front(e);
        }
    }

    /// Reserves one position for every decoding request, preempting the
    /// newest requests while the pool has no page for one.
    fn plan_decodes(&mut self, events: &mut Vec<Event>) {
        let mut i = 0;
        while i < self.active.len() {
            let e = &mut self.active[i];
            if e.todo() != 1 {
                e.chunk = 0;
                i += 1;
                continue;
            }
            let ok = e.seq.as_mut().is_some_and(|s| s.reserve(1).is_ok());
            if ok {
                e.chunk = 1;
                i += 1;
                continue;
            }
            if self.active.len() == 1 && self.handed.is_empty() {
                // Alone and still no page: its context is full.
                if let Some(e) = self.active.pop() {
                    events.push(Event::Finished {
                        id: e.id,
                        reason: StopReason::ContextFull,
                    });
                }
                return;
            }
            // Preempt the newest (possibly this one) and retry.
            self.preempt_newest(events);
        }
    }

    /// Gives prefilling requests, oldest first, chunks of their prompts
    /// within the step's budget and the pages the pool has.
    fn plan_prefill(&mut self) {
        let pt = self.store.geometry().page_tokens;
        let decoding = self.active.iter().filter(|e| e.todo() == 1).count();
        let mut budget = self.pacer.budget(decoding);
        for e in self.active.iter_mut() {
            let todo = e.todo();
            if todo == 1 || budget == 0 {
                if todo != 1 {
                    e.chunk = 0;
                }
                continue;
            }
            let Some(seq) = e.seq.as_mut() else {
                e.chunk = 0;
                continue;
            };
            let mut n = todo.min(budget);
            if seq.reserve(n).is_err() {
                // As much as the pages left hold (a shared partial last
                // page would need one more for its copy: then nothing).
                let room = seq.capacity();
                n = n.min(room.saturating_sub(seq.len()));
                while n > 0 && seq.reserve(n).is_err() {
                    n = n.saturating_sub(pt);
                }
            }
            e.chunk = n;
            budget -= n;
        }
    }

    fn run(&mut self, events: &mut Vec<Event>) -> Result<(), EngineError> {
        if !self.active.iter().any(|e| e.chunk > 0) {
            return Ok(());
        }
        self.ran = true;
        // What the pacer learns from: decodes (one token left, a one-token
        // chunk of a prompt included) and prompt tokens.
        let planned = self.active.iter().filter(|e| e.chunk > 0);
        let decoding = planned.clone().filter(|e| e.todo() == 1).count();
        let prefilled: usize = planned.filter(|e| e.todo() > 1).map(|e| e.chunk).sum();
        let mut seqs: Vec<SeqInput<'_>> = Vec::with_capacity(self.active.len());
        for e in self.active.iter_mut().filter(|e| e.chunk > 0) {
            let Entry {
                tokens, seq, chunk, ..
            } = e;
            let Some(seq) = seq.as_mut() else {
                return Err(EngineError::InvalidArgument(format!(
                    "scheduler: active request {} has no sequence",
                    e.id
                )));
            };
            let start = seq.len();
            let end = start + *chunk;
            let want = if end == tokens.len() {
                Logits::Last
            } else {
                Logits::None
            };
            seqs.push(SeqInput {
                tokens: &tokens[start..end],
                cache: seq,
                want,
            });
        }
        let t0 = std::time::Instant::now();
        self.model.forward_batch(&mut seqs, &mut self.logits)?;
        let secs = t0.elapsed().as_secs_f64();
        self.pacer.observe(decoding, prefilled, secs);
        tracing::trace!(decoding, prefilled, secs, "scheduler step");
        drop(seqs);
        let vocab = self.model.config.vocab_size;
        let active = std::mem::take(&mut self.active);
        let mut row = 0;
        for mut e in active {
            let chunk = std::mem::take(&mut e.chunk);
            if chunk == 0 || e.todo() > 0 {
                if chunk > 0 {
                    self.stats.prefilled_tokens += chunk as u64;
                }
                self.active.push(e);
                continue;
            }
            if chunk == 1 && e.generated() > 0 {
                self.stats.decoded_tokens += 1;
            } else {
                self.stats.prefilled_tokens += chunk as u64;
            }
            let Some(logits) = self.logits.get(row * vocab..(row + 1) * vocab) else {
                return Err(EngineError::InvalidArgument(
                    "scheduler: fewer logits than requests".into(),
                ));
            };
            row += 1;
            let (token, lp) = sample(&mut e, logits, &mut self.scratch)?;
            self.accept(e, token, lp, events);
        }
        Ok(())
    }

    /// Whether a step would do anything now: a request in the batch, or
    /// one waiting with room in the batch (requests with a prefill worker
    /// only wait for its reports).
    pub fn has_runnable(&self) -> bool {
        !self.active.is_empty()
            || (!self.waiting.is_empty() && self.active.len() + self.handed.len() < self.max_batch)
    }

    /// Whether the last [`step`](Self::step) ran a forward pass.
    pub fn ran(&self) -> bool {
        self.ran
    }

    /// Records a sampled token: the entry finishes or keeps running.
    fn accept(
        &mut self,
        mut e: Entry,
        token: u32,
        logprobs: Option<TokenLogprobs>,
        events: &mut Vec<Event>,
    ) {
        let reason = if !e.ignore_eos && self.model.tokenizer.is_eog(token) {
            Some(StopReason::Eos)
        } else {
            e.tokens.push(token);
            events.push(Event::Token {
                id: e.id,
                token,
                logprobs,
            });
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
            None => self.active.push(e),
        }
    }
}

/// Samples `e`'s next token from `logits` (its penalties on a copy in
/// `scratch`) with the log-probabilities of the raw distribution, as vLLM
/// reports them.
fn sample(
    e: &mut Entry,
    logits: &[f32],
    scratch: &mut Vec<f32>,
) -> Result<(u32, Option<TokenLogprobs>), EngineError> {
    let penalised = if e.penalties.is_active() {
        scratch.clear();
        scratch.extend_from_slice(logits);
        e.penalties.apply(scratch, &e.tokens[e.prompt_len..]);
        &scratch[..]
    } else {
        logits
    };
    let token = e.sampler.sample(penalised, &e.tokens)?;
    let lp = e.logprobs.map(|n| token_logprobs(logits, token, n));
    Ok((token, lp))
}
