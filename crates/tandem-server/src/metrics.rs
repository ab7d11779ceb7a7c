//! Prometheus metrics at `/metrics`, named as vLLM names them with a
//! `tandem:` prefix (`vllm:time_to_first_token_seconds` is
//! `tandem:time_to_first_token_seconds`), so existing dashboards need
//! only the prefix changed.
//!
//! Latencies are observed by the request handlers; the engine's gauges
//! (running, waiting, KV use) and its counters (prefix cache, preemptions)
//! are read from [`EngineStats`] when scraped.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tandem_engine::engine::EngineStats;

type Labels = Vec<(String, String)>;

/// Latency buckets in seconds, fine at the low end (a CPU's decode step
/// is milliseconds) and reaching minutes (long prefills, queues).
const LATENCY_BUCKETS: [f64; 22] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

pub struct Metrics {
    registry: Registry,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub request_success: Family<Labels, Counter>,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    /// The engine counters as last exported (deltas go into the counters).
    last: Mutex<(u64, u64, u64)>,
    prefill_workers: Gauge,
    prefill_workers_busy: Gauge,
    remote_prefills: Counter,
    remote_failures: Counter,
    prefill_computed: Counter,
    /// The prefill counters as last exported.
    last_prefill: Mutex<(u64, u64, u64)>,
}

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            ttft: histogram(),
            itl: histogram(),
            e2e: histogram(),
            queue_time: histogram(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            request_success: Family::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            prefix_queries: Counter::default(),
            prefix_hits: Counter::default(),
            preemptions: Counter::default(),
            last: Mutex::new((0, 0, 0)),
            prefill_workers: Gauge::default(),
            prefill_workers_busy: Gauge::default(),
            remote_prefills: Counter::default(),
            remote_failures: Counter::default(),
            prefill_computed: Counter::default(),
            last_prefill: Mutex::new((0, 0, 0)),
            registry: Registry::default(),
        };
        let p = |n: &str| format!("tandem:{n}");
        registry.register(
            p("time_to_first_token_seconds"),
            "Histogram of time to first token in seconds.",
            m.ttft.clone(),
        );
        registry.register(
            p("inter_token_latency_seconds"),
            "Histogram of inter-token latency in seconds.",
            m.itl.clone(),
        );
        registry.register(
            p("e2e_request_latency_seconds"),
            "Histogram of end to end request latency in seconds.",
            m.e2e.clone(),
        );
        registry.register(
            p("request_queue_time_seconds"),
            "Histogram of time spent waiting in the queue in seconds.",
            m.queue_time.clone(),
        );
        registry.register(
            p("num_requests_running"),
            "Number of requests in model execution batches.",
            m.running.clone(),
        );
        registry.register(
            p("num_requests_waiting"),
            "Number of requests waiting to be processed.",
            m.waiting.clone(),
        );
        registry.register(
            p("kv_cache_usage_perc"),
            "KV-cache usage. 1 means 100 percent usage.",
            m.kv_usage.clone(),
        );
        registry.register(
            p("prefix_cache_queries"),
            "Prefix cache queries, in terms of number of queried tokens.",
            m.prefix_queries.clone(),
        );
        registry.register(
            p("prefix_cache_hits"),
            "Prefix cache hits, in terms of number of cached tokens.",
            m.prefix_hits.clone(),
        );
        registry.register(
            p("num_preemptions"),
            "Cumulative number of preemptions from the engine.",
            m.preemptions.clone(),
        );
        registry.register(
            p("prompt_tokens"),
            "Number of prefill tokens processed.",
            m.prompt_tokens.clone(),
        );
        registry.register(
            p("generation_tokens"),
            "Number of generation tokens processed.",
            m.generation_tokens.clone(),
        );
        registry.register(
            p("request_success"),
            "Count of successfully processed requests, by finish reason.",
            m.request_success.clone(),
        );
        // tandem's own: disaggregated prefill.
        registry.register(
            p("prefill_workers"),
            "Prefill workers connected (worker processes and threads).",
            m.prefill_workers.clone(),
        );
        registry.register(
            p("prefill_workers_busy"),
            "Prefill workers computing a job.",
            m.prefill_workers_busy.clone(),
        );
        registry.register(
            p("remote_prefills"),
            "Prefills completed by a prefill worker.",
            m.remote_prefills.clone(),
        );
        registry.register(
            p("remote_prefill_failures"),
            "Prefills taken back from a worker (failed, gone, misbehaved) and computed in-process.",
            m.remote_failures.clone(),
        );
        registry.register(
            p("prefill_tokens_computed"),
            "Prompt tokens computed (in-process or by workers; recomputation included).",
            m.prefill_computed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a request that ended with `reason` (`stop`, `length`, `abort`).
    pub fn finished(&self, reason: &str) {
        self.request_success
            .get_or_create(&vec![("finished_reason".to_string(), reason.to_string())])
            .inc();
    }

    /// The text exposition, with the engine's state as of now.
    pub fn render(&self, stats: Option<&EngineStats>) -> String {
        if let Some(s) = stats {
            self.running.set(s.running as i64);
            self.waiting.set(s.waiting as i64);
            self.kv_usage.set(s.kv_usage());
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let now = (
                s.scheduler.queried_tokens,
                s.scheduler.reused_tokens,
                s.scheduler.preempted,
            );
            self.prefix_queries.inc_by(now.0.saturating_sub(last.0));
            self.prefix_hits.inc_by(now.1.saturating_sub(last.1));
            self.preemptions.inc_by(now.2.saturating_sub(last.2));
            *last = now;
            drop(last);
            self.prefill_workers.set(s.prefill_workers as i64);
            self.prefill_workers_busy.set(s.prefill_workers_busy as i64);
            let mut last = self.last_prefill.lock().unwrap_or_else(|p| p.into_inner());
            let now = (
                s.scheduler.remote_prefills,
                s.scheduler.remote_failures,
                s.scheduler.prefilled_tokens,
            );
            self.remote_prefills.inc_by(now.0.saturating_sub(last.0));
            self.remote_failures.inc_by(now.1.saturating_sub(last.1));
            self.prefill_computed.inc_by(now.2.saturating_sub(last.2));
            *last = now;
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
