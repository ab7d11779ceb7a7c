//! Generation on a sequence started from the prefix cache: the second turn
//! of a conversation prefills only what the cache lacks and produces the
//! tokens a cold run of the whole conversation produces (greedy), and a
//! cache that is not a prefix of the prompt is refused.

mod tiny_model;

use tiny_model::tiny_model as model;

use tandem_engine::generate::{generate, GenerateOptions};
use tandem_engine::sampler::SamplingParams;
use tandem_engine::EngineError;

fn greedy(max_tokens: usize, prefill_batch: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        prefill_batch,
    }
}

#[test]
fn second_turn_from_the_prefix_cache_equals_a_cold_run() {
    let m = model();
    let tok = &m.tokenizer;
    let store = m.new_kv_store(m.kv_options(), 1 << 22).expect("store");
    let turn1 = tok
        .encode(
            "The history of the Python language begins in 1989, when",
            true,
        )
        .expect("encode");
    let mut seq = store.new_sequence();
    let s1 = generate(&m, &mut seq, &turn1, &greedy(20, 512), |_| {}).expect("turn 1");
    assert_eq!(s1.cached_tokens, 0);
    let more = tok.encode(" Later versions added", false).expect("encode");
    let turn2: Vec<u32> = [turn1.as_slice(), &s1.tokens, &more].concat();
    drop(seq);

    let mut warm = store.sequence_with_prefix(&turn2);
    let full_pages = (turn1.len() + s1.tokens.len() - 1) / 16 * 16;
    assert_eq!(
        warm.len(),
        full_pages,
        "every full page of turn 1 is reused"
    );
    let s2 = generate(&m, &mut warm, &turn2, &greedy(16, 7), |_| {}).expect("turn 2");
    assert_eq!(s2.cached_tokens, full_pages);
    assert_eq!(s2.prefilled_tokens(), turn2.len() - full_pages);

    store.clear_cache();
    let mut cold = store.new_sequence();
    let c2 = generate(&m, &mut cold, &turn2, &greedy(16, 512), |_| {}).expect("cold");
    assert_eq!(c2.cached_tokens, 0);
    assert_eq!(s2.tokens, c2.tokens, "warm and cold turn 2 differ");
}

#[test]
fn a_cache_that_is_not_a_prefix_is_refused() {
    let m = model();
    let mut cache = m.new_cache(64).expect("cache");
    let a = m.tokenizer.encode("one two three", true).expect("encode");
    generate(&m, &mut cache, &a, &greedy(1, 512), |_| {}).expect("first");
    let b = m
        .tokenizer
        .encode("four five six seven", true)
        .expect("encode");
    let err = generate(&m, &mut cache, &b, &greedy(1, 512), |_| {});
    assert!(
        matches!(err, Err(EngineError::CacheMismatch { .. })),
        "{err:?}"
    );
}
