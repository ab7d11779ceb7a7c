//! The scheduler's side of prefill workers (protocol in `prefill/mod.rs`):
//! handing a prefill off, taking its rows and logits back, and taking
//! the job back when the worker fails.
//!
//! A handed-off request sits in `handed`, out of the batch, with a
//! sequence that holds (reserved) the pages of all its remaining
//! positions. Everything a worker sends is checked here before it
//! touches the sequence; an error is a [`HandoffError`], never a panic,
//! and leaves the sequence as it was.

use tandem_kv::PageImage;

use super::{sample, Entry, Event, Scheduler};

/// A prefill for a worker: the request's tokens so far, of which the
/// decode side holds the first `skip` already. The worker returns the
/// rows of positions `skip..tokens.len()` and the last position's logits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefillJob {
    pub job: u64,
    pub tokens: Vec<u32>,
    pub skip: usize,
}

/// Why a worker's report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// No handed-off request has this job (it was cancelled or taken
    /// back): a late report, to be ignored.
    #[error("no prefill job {0}")]
    UnknownJob(u64),
    /// The report does not check out: the worker is not to be trusted
    /// with this job (it is taken back).
    #[error("prefill job {job}: {reason}")]
    Bad { job: u64, reason: String },
}

impl<'m> Scheduler<'m> {
    fn handed_index(&self, job: u64) -> Result<usize, HandoffError> {
        self.handed
            .iter()
            .position(|e| e.job == job)
            .ok_or(HandoffError::UnknownJob(job))
    }

    /// Admits waiting requests now (as a step would first), so their
    /// prefills can be handed off before a step starts computing them.
    pub fn admit_waiting(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        self.admit(&mut events);
        events
    }

    /// The oldest request in the batch that still has at least
    /// `min_tokens` (and more than one) prompt tokens to compute and has
    /// not failed a worker, handed off: its remaining pages are reserved
    /// and it leaves the batch. None when there is none, or the pool
    /// cannot reserve them (it is then prefilled here).
    pub fn take_prefill(&mut self, min_tokens: usize) -> Option<PrefillJob> {
        let i = self.active.iter_mut().position(|e| {
            let todo = e.todo();
            if e.local_only || todo <= 1 || todo < min_tokens {
                return false;
            }
            // All or nothing: a pool that cannot hold the rest now keeps
            // the request here, where it advances as pages free up.
            // Windowed layers take only the rows a query after the
            // prompt reads (the worker computes the rest).
            e.seq
                .as_mut()
                .is_some_and(|s| s.reserve_final(todo).is_ok())
        })?;
        let mut e = self.active.remove(i);
        e.chunk = 0;
        self.next_job += 1;
        e.job = self.next_job;
        e.handed_from = e.seq.as_ref().map_or(0, |s| s.len());
        let job = PrefillJob {
            job: e.job,
            tokens: e.tokens.clone(),
            skip: e.handed_from,
        };
        self.handed.push(e);
        Some(job)
    }

    /// The prefill job of request `id`, if a worker has it.
    pub fn job_of(&self, id: u64) -> Option<u64> {
        self.handed.iter().find(|e| e.id == id).map(|e| e.job)
    }

    /// Writes a worker's page image of `job` into its request's sequence
    /// (see `prefill/mod.rs`, step 4, for what is checked).
    pub fn accept_rows(&mut self, job: u64, image: &[u8]) -> Result<(), HandoffError> {
        let i = self.handed_index(job)?;
        let bad = |reason: String| HandoffError::Bad { job, reason };
        let g = self.store.geometry().clone();
        let img =
            PageImage::parse(image, &g, self.model.identity()).map_err(|e| bad(e.to_string()))?;
        if img.stream() != job {
            return Err(bad(format!("an image of stream {}", img.stream())));
        }
        let e = &mut self.handed[i];
        let start = img.start();
        let want = start
            .checked_add(img.tokens().len())
            .and_then(|end| e.tokens.get(start..end));
        if want != Some(img.tokens()) {
            return Err(bad(format!(
                "rows at {start}.. carry other tokens than the request's"
            )));
        }
        let seq = e.seq.as_mut().ok_or_else(|| bad("no sequence".into()))?;
        img.write_into(seq).map_err(|e| bad(e.to_string()))
    }

    /// Ends `job` with the worker's logits of the last position: the
    /// request samples its first token from them and rejoins the batch
    /// (or finishes). Its events are returned.
    pub fn finish_prefill(&mut self, job: u64, logits: &[f32]) -> Result<Vec<Event>, HandoffError> {
        let i = self.handed_index(job)?;
        let bad = |reason: String| HandoffError::Bad { job, reason };
        let vocab = self.model.config.vocab_size;
        let e = &self.handed[i];
        let have = e.seq.as_ref().map_or(0, |s| s.len());
        if have != e.tokens.len() {
            return Err(bad(format!(
                "done after {have} of {} positions",
                e.tokens.len()
            )));
        }
        if logits.len() != vocab {
            return Err(bad(format!(
                "{} logits for a vocabulary of {vocab}",
                logits.len()
            )));
        }
        if logits.iter().any(|l| !l.is_finite()) {
            return Err(bad("logits that are not finite".into()));
        }
        let mut e = self.handed.remove(i);
        e.job = 0;
        self.stats.prefilled_tokens += (e.tokens.len() - e.handed_from) as u64;
        self.stats.remote_prefills += 1;
        let mut events = Vec::new();
        let (token, lp) = match sample(&mut e, logits, &mut self.scratch) {
            Ok(t) => t,
            Err(err) => {
                events.push(Event::Failed {
                    id: e.id,
                    error: err.to_string(),
                });
                return Ok(events);
            }
        };
        self.accept(e, token, lp, &mut events);
        Ok(events)
    }

    /// Takes `job` back from its worker (failed, gone, or not to be
    /// trusted): the request rejoins the batch as a prefill, keeping the
    /// rows that checked out, and is computed here. False: no such job.
    pub fn return_prefill(&mut self, job: u64) -> bool {
        let Ok(i) = self.handed_index(job) else {
            return false;
        };
        let mut e: Entry = self.handed.remove(i);
        e.job = 0;
        e.local_only = true;
        let todo = e.todo();
        if let Some(seq) = e.seq.as_mut() {
            // Every row arrived but not the logits: the last position is
            // computed again, for them.
            let mut at = if todo == 0 {
                seq.len().saturating_sub(1)
            } else {
                seq.len()
            };
            // The rows that arrived are kept unless a windowed layer's
            // page a query at `at` reads was left to the worker as a hole
            // (`reserve_final`): then from where the hand-off began, or
            // from the start once the images' commits released the
            // windowed rows before it (a failure late in a long windowed
            // prompt costs the whole prompt; the hole saves its windowed
            // layers' pages in every hand-off that succeeds).
            if !seq.resumable_at(at) {
                at = e.handed_from.min(at);
            }
            seq.truncate(at);
            seq.release_reserved();
        }
        self.stats.remote_failures += 1;
        self.active.push(e);
        true
    }

    /// Requests with a prefill worker.
    pub fn handed_off(&self) -> usize {
        self.handed.len()
    }
}
