//! A conversation saved to the KV disk tier, one of whose page files is
//! then damaged: the next run recomputes only that page's tokens (and the
//! prompt's tail), takes the saved pages after it over, and generates the
//! tokens a cold run generates (greedy).

mod tiny_model;

use tiny_model::tiny_model as model;

use tandem_engine::generate::{generate, GenerateOptions};
use tandem_engine::sampler::SamplingParams;
use tandem_kv::{chain_hash, DiskTier, ROOT_HASH};

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        prefill_batch: 512,
    }
}

#[test]
fn a_damaged_page_costs_only_its_own_tokens() {
    let m = model();
    let tok = &m.tokenizer;
    let dir = std::env::temp_dir().join(format!("tandem-engine-holes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tiered = || {
        let disk = DiskTier::open(&dir, m.identity(), 1 << 30).expect("tier");
        m.new_kv_store_tiered(m.kv_options(), 1 << 22, Some(disk))
            .expect("store")
    };
    let turn1 = tok
        .encode(
            "The history of the Python language begins in 1989, when Guido van Rossum \
             started a hobby project over the Christmas holidays at CWI in Amsterdam, \
             looking for something to keep him busy.",
            true,
        )
        .expect("encode");
    let (turn2, pt, saved) = {
        let store = tiered();
        let mut seq = store.new_sequence();
        let s1 = generate(&m, &mut seq, &turn1, &greedy(24), |_| {}).expect("turn 1");
        let more = tok.encode(" Later versions added", false).expect("encode");
        let pt = store.geometry().page_tokens;
        let saved = seq.len() / pt * pt;
        drop(seq);
        assert!(store.persist() >= 4);
        ([turn1.as_slice(), &s1.tokens, &more].concat(), pt, saved)
    };
    // Damage the second page's file.
    let h0 = chain_hash(ROOT_HASH, &turn2[..pt]);
    let h1 = chain_hash(h0, &turn2[pt..2 * pt]);
    let file = tiered()
        .disk()
        .expect("tier")
        .dir()
        .join(format!("{h1:016x}.page"));
    let mut bytes = std::fs::read(&file).expect("page file");
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    std::fs::write(&file, bytes).expect("write");

    let store = tiered();
    let mut warm = store.sequence_with_prefix(&turn2);
    assert_eq!(warm.len(), pt);
    assert_eq!(warm.resume_at(), Some(2 * pt));
    let s2 = generate(&m, &mut warm, &turn2, &greedy(16), |_| {}).expect("turn 2");
    assert_eq!(
        s2.prefilled_tokens(),
        pt + turn2.len() - saved,
        "only the damaged page and the tail are computed"
    );

    let cold_store = m.new_kv_store(m.kv_options(), 1 << 22).expect("store");
    let mut cold = cold_store.new_sequence();
    let c2 = generate(&m, &mut cold, &turn2, &greedy(16), |_| {}).expect("cold");
    assert_eq!(s2.tokens, c2.tokens, "restored-with-a-hole and cold differ");
    let _ = std::fs::remove_dir_all(&dir);
}
