//! The store's contract, checked through its public API: rows written by a
//! sequence read back intact whatever other sequences do (copy-on-write,
//! no aliasing), the prefix cache returns exactly the pages of an equal
//! prefix, a full pool is an error that changes nothing, and every page
//! comes back when the sequences are gone.

use std::sync::Arc;

use proptest::prelude::*;
use tandem_kv::{KvError, KvFormat, KvGeometry, KvStore, PageCounts, Sequence};

fn geometry(page_tokens: usize) -> KvGeometry {
    KvGeometry {
        values: Default::default(),
        n_layers: 2,
        head_dim: 4,
        page_tokens,
        format: KvFormat::F32,
        // Two nodes: heads 0 on node 0, heads 1..3 on node 1.
        node_heads: vec![0..1, 1..3],
        windows: Vec::new(),
    }
}

fn store(pages: usize, page_tokens: usize) -> Arc<KvStore> {
    KvStore::new(geometry(page_tokens), pages, &[None, None]).expect("store")
}

/// The marker written into (pos, layer, kv, head) for `token`.
fn marker(token: u32, pos: usize, layer: usize, kv: usize, head: usize) -> u32 {
    token
        .wrapping_mul(2_654_435_761)
        .wrapping_add((pos * 1_000_003 + layer * 101 + kv * 11 + head) as u32)
}

/// Every (node, layer, kv, head) row of positions `from..from + tokens`.
fn each_row(
    seq: &Sequence,
    from: usize,
    n: usize,
    mut f: impl FnMut(*mut u8, usize, usize, usize, usize),
) {
    let g = seq.store().geometry().clone();
    for pos in from..from + n {
        for (node, heads) in g.node_heads.iter().enumerate() {
            for layer in 0..g.n_layers {
                for kv in 0..2 {
                    for (local, head) in heads.clone().enumerate() {
                        f(
                            seq.row_ptr(node, layer, kv, local, pos).expect("row"),
                            pos,
                            layer,
                            kv,
                            head,
                        );
                    }
                }
            }
        }
    }
}

/// Reserves, writes markers for, and commits `tokens`.
fn append(seq: &mut Sequence, tokens: &[u32]) -> Result<(), KvError> {
    seq.reserve(tokens.len())?;
    let from = seq.len();
    each_row(seq, from, tokens.len(), |p, pos, layer, kv, head| {
        let m = marker(tokens[pos - from], pos, layer, kv, head);
        // SAFETY: reserved positions of this sequence (private pages).
        unsafe { (p as *mut u32).write_unaligned(m) };
    });
    seq.commit(tokens)
}

/// Checks every cached row of `seq` holds its marker.
fn verify(seq: &Sequence) {
    let toks = seq.tokens().to_vec();
    each_row(seq, 0, seq.len(), |p, pos, layer, kv, head| {
        // SAFETY: positions below len are initialised and only read.
        let got = unsafe { (p as *const u32).read_unaligned() };
        assert_eq!(
            got,
            marker(toks[pos], pos, layer, kv, head),
            "row (pos {pos}, layer {layer}, kv {kv}, head {head}) of {seq:?}"
        );
    });
}

fn assert_conserved(s: &KvStore) {
    let c = s.counts();
    assert_eq!(c.free + c.in_use + c.cached, s.n_pages(), "{c:?}");
}

#[test]
fn geometry_layout() {
    let g = geometry(16);
    assert_eq!(g.row_bytes(), 16);
    assert_eq!(g.slab_bytes(), 256);
    assert_eq!(g.node_page_bytes(0), 2 * 2 * 256);
    assert_eq!(g.node_page_bytes(1), 2 * 2 * 2 * 256);
    assert_eq!(g.token_bytes(), 2 * 2 * 3 * 16);
    assert!(KvStore::new(
        KvGeometry {
            values: Default::default(),
            node_heads: vec![0..1, 2..3],
            windows: Vec::new(),
            ..geometry(16)
        },
        4,
        &[None, None]
    )
    .is_err());
    assert!(KvStore::new(geometry(16), 0, &[None, None]).is_err());
    assert!(KvStore::new(geometry(16), 4, &[None]).is_err());
}

#[test]
fn q8_0_rows_are_whole_blocks() {
    let q8 = |head_dim| KvGeometry {
        values: Default::default(),
        head_dim,
        format: KvFormat::Q8_0,
        ..geometry(16)
    };
    let g = q8(64);
    assert_eq!(g.validate(), Ok(()));
    assert_eq!(g.row_bytes(), 2 * 34);
    assert_eq!(g.slab_bytes(), 16 * 68);
    assert_eq!(g.token_bytes(), 2 * 2 * 3 * 68);
    assert!(KvStore::new(g, 4, &[None, None]).is_ok());
    for hd in [16, 48] {
        let err = KvStore::new(q8(hd), 4, &[None, None]).expect_err("partial blocks");
        assert_eq!(
            err,
            KvError::Geometry(format!(
                "q8_0 KV needs a head size that is a multiple of 32, this model's is {hd}"
            ))
        );
        assert!(KvStore::with_memory(q8(hd), 1 << 20, &[None, None]).is_err());
    }
    // A page whose size overflows is refused, not wrapped.
    let huge = KvGeometry {
        values: Default::default(),
        page_tokens: usize::MAX / 64,
        ..geometry(16)
    };
    assert_eq!(huge.validate(), Err(KvError::TooLarge));
}

#[test]
fn prefix_cache_reuses_whole_pages_of_an_equal_prefix() {
    let s = store(16, 4);
    let prompt: Vec<u32> = (100..114).collect(); // 3.5 pages
    {
        let mut a = s.new_sequence();
        append(&mut a, &prompt).expect("append");
        verify(&a);
    }
    // The 3 full pages are cached, the partial one is free.
    assert_eq!(
        s.counts(),
        PageCounts {
            free: 13,
            in_use: 0,
            cached: 3
        }
    );
    // Same first 12 tokens then different ones: 3 pages reused.
    let mut turn2 = prompt[..12].to_vec();
    turn2.extend([7, 8, 9]);
    let mut b = s.sequence_with_prefix(&turn2);
    assert_eq!(b.len(), 12);
    verify(&b); // the reused rows are the ones `a` wrote
    append(&mut b, &turn2[12..]).expect("append");
    verify(&b);
    // A prompt of exactly 3 pages reuses only 2: one token must be computed.
    let c = s.sequence_with_prefix(&prompt[..12]);
    assert_eq!(c.len(), 8);
    // A different first token: nothing.
    let mut other = prompt.clone();
    other[0] = 5;
    assert_eq!(s.sequence_with_prefix(&other).len(), 0);
    // Same tokens in page 2 but a different page 1: the chain stops at 1.
    let mut mid = prompt.clone();
    mid[5] = 0;
    assert_eq!(s.sequence_with_prefix(&mid).len(), 4);
    drop((b, c));
    assert_eq!(s.counts().in_use, 0);
    assert_conserved(&s);
}

#[test]
fn fork_copies_a_shared_partial_page_on_write() {
    let s = store(8, 4);
    let mut a = s.new_sequence();
    append(&mut a, &[1, 2, 3, 4, 5, 6]).expect("append");
    let mut b = a.fork();
    assert_eq!(b.pages(), a.pages());
    append(&mut b, &[70, 71]).expect("append b");
    append(&mut a, &[80]).expect("append a");
    // The full first page is still shared, the partial one was copied.
    assert_eq!(a.pages()[0], b.pages()[0]);
    assert_ne!(a.pages()[1], b.pages()[1]);
    verify(&a);
    verify(&b);
    // Truncating into a page that was indexed (full) copies it before
    // the rewrite, so the cached page keeps its rows.
    let full: Vec<u32> = (0..8).collect();
    let mut c = s.new_sequence();
    append(&mut c, &full).expect("c");
    c.truncate(6);
    append(&mut c, &[99, 98]).expect("rewrite");
    verify(&c);
    let d = s.sequence_with_prefix(&[full.clone(), vec![1]].concat());
    assert_eq!(d.len(), 8);
    verify(&d);
}

#[test]
fn a_full_pool_is_an_error_that_changes_nothing() {
    let s = store(3, 4);
    let mut a = s.new_sequence();
    append(&mut a, &[1; 10]).expect("fits");
    let before = (a.len(), a.pages().to_vec(), s.counts());
    match a.reserve(3) {
        Err(KvError::OutOfPages {
            needed: 1,
            available: 0,
            total: 3,
        }) => {}
        other => panic!("expected OutOfPages, got {other:?}"),
    }
    assert_eq!((a.len(), a.pages().to_vec(), s.counts()), before);
    // Two more fit in the partial last page.
    append(&mut a, &[2, 2]).expect("fits in the last page");
    verify(&a);
}

#[test]
fn eviction_takes_the_least_recently_released_cached_page() {
    let s = store(3, 2);
    for t in [10u32, 20, 30] {
        let mut q = s.new_sequence();
        append(&mut q, &[t, t]).expect("append");
    }
    assert_eq!(s.counts().cached, 3);
    // Touch 10's page again (hit, then release: now most recent).
    drop(s.sequence_with_prefix(&[10, 10, 0]));
    let mut q = s.new_sequence();
    append(&mut q, &[1, 1]).expect("evicts one");
    assert_eq!(
        s.sequence_with_prefix(&[20, 20, 0]).len(),
        0,
        "20 was oldest"
    );
    assert_eq!(s.sequence_with_prefix(&[10, 10, 0]).len(), 2);
    assert_eq!(s.sequence_with_prefix(&[30, 30, 0]).len(), 2);
    drop(q);
    s.clear_cache();
    assert_eq!(s.counts().free, 3);
}

#[derive(Clone, Debug)]
enum Op {
    New,
    Prefix(usize, usize),
    Append(usize, Vec<u32>),
    Truncate(usize, usize),
    Fork(usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::New),
        (0..8usize, 0..20usize).prop_map(|(i, n)| Op::Prefix(i, n)),
        (0..8usize, prop::collection::vec(0..3u32, 1..9)).prop_map(|(i, t)| Op::Append(i, t)),
        (0..8usize, 0..20usize).prop_map(|(i, n)| Op::Truncate(i, n)),
        (0..8usize).prop_map(Op::Fork),
        (0..8usize).prop_map(Op::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random interleavings of every operation: rows always read back what
    /// their sequence wrote, pages are conserved, and dropping every
    /// sequence leaves nothing in use.
    #[test]
    fn random_operations_keep_rows_and_pages(ops in prop::collection::vec(op(), 1..60)) {
        let s = store(12, 3);
        let mut seqs: Vec<Sequence> = Vec::new();
        for op in ops {
            match op {
                Op::New => seqs.push(s.new_sequence()),
                Op::Prefix(i, n) => {
                    if let Some(q) = seqs.get(i % seqs.len().max(1)) {
                        let mut toks = q.tokens().to_vec();
                        toks.truncate(n);
                        toks.push(1);
                        let p = s.sequence_with_prefix(&toks);
                        prop_assert!(p.len() < toks.len());
                        prop_assert_eq!(p.tokens(), &toks[..p.len()]);
                        seqs.push(p);
                    }
                }
                Op::Append(i, t) => {
                    let n = seqs.len();
                    if let Some(q) = seqs.get_mut(i % n.max(1)) {
                        let before = (q.len(), q.pages().to_vec());
                        if append(q, &t).is_err() {
                            prop_assert_eq!((q.len(), q.pages().to_vec()), before);
                        }
                    }
                }
                Op::Truncate(i, n) => {
                    let len = seqs.len();
                    if let Some(q) = seqs.get_mut(i % len.max(1)) {
                        q.truncate(n);
                    }
                }
                Op::Fork(i) => {
                    if let Some(q) = seqs.get(i % seqs.len().max(1)) {
                        let f = q.fork();
                        seqs.push(f);
                    }
                }
                Op::Drop(i) => {
                    if !seqs.is_empty() {
                        let n = seqs.len();
                        seqs.remove(i % n);
                    }
                }
            }
            for q in &seqs {
                verify(q);
            }
            assert_conserved(&s);
        }
        seqs.clear();
        prop_assert_eq!(s.counts().in_use, 0);
        assert_conserved(&s);
    }
}

/// A latent (MLA) cache: one head on one of two nodes, key slabs only.
/// A page costs exactly its key rows, writers are asked for keys only,
/// a value read is the key row, and the other node holds nothing.
#[test]
fn latent_cache_stores_keys_only() {
    let g = KvGeometry {
        values: tandem_kv::KvValues::InKeys,
        n_layers: 3,
        head_dim: 8,
        page_tokens: 4,
        format: KvFormat::F32,
        node_heads: vec![0..0, 0..1],
        windows: Vec::new(),
    };
    assert_eq!(g.planes(), 1);
    assert_eq!(g.node_page_bytes(0), 0);
    assert_eq!(g.token_bytes(), 3 * 8 * 4, "one row per layer per token");
    let store = KvStore::new(g, 4, &[None, None]).expect("store");
    let mut seq = store.new_sequence();
    let mut calls = Vec::new();
    seq.append_rows(&[1, 2, 3, 4, 5], |key, row| {
        calls.push((key.node, key.kv));
        row.copy_from_slice(&(key.layer * 100 + key.pos).to_le_bytes().repeat(4)[..32]);
    })
    .expect("append");
    assert_eq!(calls.len(), 5 * 3);
    assert!(calls.iter().all(|&(node, kv)| node == 1 && kv == 0));
    for layer in 0..3 {
        for pos in 0..5 {
            let k = seq.row_ptr(1, layer, 0, 0, pos).expect("key");
            assert_eq!(seq.row_ptr(1, layer, 1, 0, pos), Err(KvError::Geometry(format!(
                "row (node 1, layer {layer}, kv 1, head 0, position {pos}) outside the sequence's pages"
            ))));
            // SAFETY: position `pos` was written above; nothing writes it now.
            let first = unsafe { std::slice::from_raw_parts(k, 8) };
            assert_eq!(first, &(layer * 100 + pos).to_le_bytes()[..]);
        }
    }
}

/// Committing the pool's memory, before or while sequences use it,
/// changes no byte of it.
#[test]
fn committing_the_pool_changes_nothing_it_holds() {
    let s = store(8, 4);
    if let Err(e) = s.commit_memory() {
        eprintln!("skipped: this kernel cannot commit memory ({e})");
        return;
    }
    let mut a = s.new_sequence();
    append(&mut a, &[1, 2, 3, 4, 5, 6]).expect("append");
    verify(&a);
    s.commit_memory().expect("commit again");
    verify(&a);
    drop(a);
    assert_conserved(&s);
}
