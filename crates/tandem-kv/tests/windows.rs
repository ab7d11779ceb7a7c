//! Page groups for sliding-window layers: a windowed layer's pages behind
//! the window go back to the pool while whole-prefix layers keep theirs,
//! every row a query can still read stays intact, and the prefix cache,
//! truncation and forks stay correct with released pages in the tables.

use std::sync::Arc;

use tandem_kv::{
    encode_page_image, KvFormat, KvGeometry, KvStore, ModelIdentity, PageImage, Sequence, HOLE,
};

const PT: usize = 4;
const WINDOW: usize = 6;

/// Layers 0 and 2 see the whole prefix; 1 and 3 a window of 6.
fn geometry() -> KvGeometry {
    KvGeometry {
        values: Default::default(),
        n_layers: 4,
        head_dim: 4,
        page_tokens: PT,
        format: KvFormat::F32,
        node_heads: vec![0..1, 1..2],
        windows: vec![None, Some(WINDOW), None, Some(WINDOW)],
    }
}

fn store(pages: usize) -> Arc<KvStore> {
    KvStore::new(geometry(), pages, &[None, None]).expect("store")
}

fn marker(token: u32, pos: usize, layer: usize, kv: usize, head: usize) -> f32 {
    (token as usize * 7919 + pos * 131 + layer * 17 + kv * 5 + head) as f32
}

fn append(seq: &mut Sequence, tokens: &[u32]) {
    let from = seq.len();
    seq.append_rows(tokens, |k, row| {
        let head = k.node + k.head; // one head per node
        let v = marker(tokens[k.pos - from], k.pos, k.layer, k.kv, head);
        for c in row.chunks_exact_mut(4) {
            c.copy_from_slice(&v.to_le_bytes());
        }
    })
    .expect("append");
}

/// The row of (layer, kv, head) at `pos` if the sequence still holds it.
fn read(seq: &Sequence, layer: usize, kv: usize, head: usize, pos: usize) -> Option<f32> {
    let p = seq.row_ptr(head, layer, kv, 0, pos).ok()?;
    // SAFETY: `row_ptr` checked the row is in a held page; positions below
    // `len` are initialised and only read here.
    let b = unsafe { std::slice::from_raw_parts(p, 4) };
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Every row a query at `len` or later may read is there and right.
fn check_rows(seq: &Sequence, tokens: &[u32]) {
    let len = seq.len();
    for (pos, &token) in tokens.iter().enumerate().take(len) {
        for layer in 0..4 {
            let windowed = layer % 2 == 1;
            let readable = !windowed || pos + WINDOW > len;
            for kv in 0..2 {
                for head in 0..2 {
                    let got = read(seq, layer, kv, head, pos);
                    if readable {
                        assert_eq!(
                            got,
                            Some(marker(token, pos, layer, kv, head)),
                            "layer {layer} kv {kv} head {head} pos {pos} of {len}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn groups_have_equal_pages_and_their_own_tables() {
    let g = geometry();
    assert_eq!(g.slots(), 2);
    assert_eq!(g.n_groups(), 2);
    // A page holds two layers; a token occupies all four.
    assert_eq!(g.page_bytes(), 2 * 2 * 2 * PT * 16);
    assert_eq!(g.token_bytes(), 4 * 2 * 2 * 16);
    let s = store(64);
    assert_eq!(s.layer_home(0), (0, 0));
    assert_eq!(s.layer_home(2), (0, 1));
    assert_eq!(s.layer_home(1), (1, 0));
    assert_eq!(s.layer_home(3), (1, 1));
    // Without windows: one group holding every layer, as before.
    let plain = KvGeometry {
        windows: Vec::new(),
        ..geometry()
    };
    assert_eq!((plain.slots(), plain.n_groups()), (4, 1));
    assert!(KvGeometry {
        windows: vec![None, Some(0), None, None],
        ..geometry()
    }
    .validate()
    .is_err());
    assert!(KvGeometry {
        windows: vec![None],
        ..geometry()
    }
    .validate()
    .is_err());
}

#[test]
fn pages_behind_the_window_are_released_and_the_window_stays_intact() {
    let s = store(64);
    let tokens: Vec<u32> = (0..80).map(|i| 1000 + i).collect();
    let mut seq = s.new_sequence();
    for step in tokens.chunks(3) {
        append(&mut seq, step);
        check_rows(&seq, &tokens);
        let held = seq.held_pages();
        let full = seq.len().div_ceil(PT);
        // The whole-prefix group holds every page; the windowed one no
        // more than its window and slack.
        assert!(
            held <= full + WINDOW.div_ceil(PT) + 3,
            "{held} at {}",
            seq.len()
        );
        assert!(held > full);
    }
    let (win, _) = seq.layer_pages(1);
    assert!(win[0] == HOLE && win.last() != Some(&HOLE));
    assert!(seq.layer_pages(0).0.iter().all(|&p| p != HOLE));
    assert!(
        read(&seq, 1, 0, 0, 0).is_none(),
        "a released row is an error"
    );
    assert!(read(&seq, 0, 0, 0, 0).is_some());
    // The released pages went back: 20 + a few pages, not 40.
    assert!(s.counts().in_use <= 20 + WINDOW.div_ceil(PT) + 3);
    drop(seq);
    assert_eq!(s.counts().in_use, 0);
}

#[test]
fn a_prefix_hit_brings_the_window_back() {
    let s = store(64);
    let tokens: Vec<u32> = (0..41).map(|i| 7 + i * 3).collect();
    let mut a = s.new_sequence();
    append(&mut a, &tokens[..40]);
    drop(a);
    let b = s.sequence_with_prefix(&tokens);
    assert_eq!(b.len(), 40);
    check_rows(&b, &tokens);
    assert!(b.layer_pages(1).0[0] == HOLE);
    // Another continuation shares the whole-prefix pages only up to where
    // the windowed group still has its window.
    let mut other = tokens[..30].to_vec();
    other.extend([1, 2, 3]);
    let c = s.sequence_with_prefix(&other);
    assert_eq!(c.len(), 28);
    check_rows(&c, &other);
    drop((b, c));
    assert_eq!(s.counts().in_use, 0);
}

#[test]
fn truncating_into_released_rows_starts_over() {
    let s = store(64);
    let tokens: Vec<u32> = (0..40).collect();
    let mut a = s.new_sequence();
    append(&mut a, &tokens);
    // One page back is still there (the slack kept for a re-run token).
    let mut b = a.fork();
    b.truncate(39);
    assert_eq!(b.len(), 39);
    check_rows(&b, &tokens);
    // Far back, the windowed rows are gone: nothing is kept.
    a.truncate(10);
    assert_eq!(a.len(), 0);
    append(&mut a, &tokens[..12]);
    check_rows(&a, &tokens);
    drop((a, b));
    assert_eq!(s.counts().in_use, 0);
}

#[test]
fn a_sequence_that_keeps_window_rows_releases_nothing() {
    let s = store(64);
    let tokens: Vec<u32> = (0..40).collect();
    let mut a = s.new_sequence().keep_window_rows();
    append(&mut a, &tokens);
    assert_eq!(a.held_pages(), 20);
    assert!(read(&a, 1, 1, 1, 0).is_some());
}

#[test]
fn a_full_pool_is_an_error_that_changes_nothing() {
    let s = store(6);
    let mut a = s.new_sequence();
    append(&mut a, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let before = (a.len(), a.held_pages(), s.counts());
    assert!(a.reserve(8).is_err());
    assert_eq!((a.len(), a.held_pages(), s.counts()), before);
}

/// A source of page images: every row of `tokens`, windowed layers too.
fn worker(tokens: &[u32]) -> Sequence {
    let mut src = store(64).new_sequence().keep_window_rows();
    append(&mut src, tokens);
    src
}

/// Writes the worker's rows of positions `from..to` into `dst` in
/// page-sized images (the first and last may be partial).
fn send(src: &Sequence, dst: &mut Sequence, from: usize, to: usize) {
    const ID: ModelIdentity = ModelIdentity(7);
    let mut at = from;
    while at < to {
        let n = (PT - at % PT).min(to - at);
        let bytes = encode_page_image(src, ID, 1, at, n).expect("encode");
        let img = PageImage::parse(&bytes, dst.store().geometry(), ID).expect("parse");
        img.write_into(dst).expect("write");
        at += n;
    }
}

fn in_use(seq: &Sequence) -> usize {
    seq.store().counts().in_use
}

#[test]
fn a_handed_off_prefill_takes_only_the_window_of_windowed_layers() {
    let tokens: Vec<u32> = (0..44).map(|t| t * 3 + 1).collect();
    let src = worker(&tokens[..40]);
    let st = store(64);
    let mut dst = st.new_sequence();
    append(&mut dst, &tokens[..6]);
    assert_eq!(in_use(&dst), 4, "2 pages per group");
    dst.reserve_final(34).expect("reserve");
    // 40 positions are 10 pages: the whole-prefix group takes 8 more,
    // the windowed one only the pages a query at 40 or later reads (7, 8
    // and 9), not 8 (`reserve` would take 16).
    assert_eq!(in_use(&dst), 4 + 8 + 3);
    assert!(dst.is_hole(1, 8) && dst.is_hole(3, 27) && !dst.is_hole(0, 8));
    assert!(!dst.is_hole(1, 28) && !dst.is_hole(1, 5));
    send(&src, &mut dst, 6, 40);
    assert_eq!(dst.len(), 40);
    check_rows(&dst, &tokens);
    // Decoding goes on from there as after a local prefill.
    append(&mut dst, &tokens[40..]);
    check_rows(&dst, &tokens);
    let mut local = st.new_sequence();
    append(&mut local, &tokens);
    assert_eq!(dst.held_pages(), local.held_pages());
}

#[test]
fn a_hand_off_taken_back_goes_on_from_the_rows_it_can_use() {
    let tokens: Vec<u32> = (0..40).map(|t| t * 5 + 2).collect();
    let src = worker(&tokens);
    // (rows sent up to, where it goes on, pages held there: at 36 the
    // whole-prefix group's 9 and the windowed 7 and 8)
    for (sent, resumes_at, pages) in [(20, 0, 0), (36, 36, 9 + 2), (6, 6, 4)] {
        let st = store(64);
        let mut dst = st.new_sequence();
        append(&mut dst, &tokens[..6]);
        dst.reserve_final(34).expect("reserve");
        send(&src, &mut dst, 6, sent);
        // What the scheduler does with a job it takes back: a query at
        // 20 reads windowed rows 15..20, left as holes for the worker,
        // and the rows before 6 were released as the images came (so
        // from the start); one at 36 reads rows the worker sent; with
        // nothing sent, from where the hand-off began.
        let at = if dst.resumable_at(dst.len()) {
            dst.len()
        } else {
            6
        };
        dst.truncate(at);
        assert_eq!(dst.len(), resumes_at, "sent up to {sent}");
        let at = resumes_at;
        dst.release_reserved();
        assert_eq!(dst.len(), at);
        assert_eq!(in_use(&dst), pages, "sent {sent}");
        append(&mut dst, &tokens[at..]);
        check_rows(&dst, &tokens);
    }
}
