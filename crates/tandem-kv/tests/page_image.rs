//! Page images: what one store encodes another (with another NUMA split)
//! writes back row for row; anything that does not check out — flipped
//! bytes, a truncated or padded image, another model or geometry, rows
//! that are not the sequence's next positions — is an error that leaves
//! the sequence and the pool as they were.

use std::sync::Arc;

use tandem_kv::{
    encode_page_image, KvError, KvFormat, KvGeometry, KvStore, ModelIdentity, PageImage, Sequence,
};

const ID: ModelIdentity = ModelIdentity(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);

fn geometry(node_heads: Vec<std::ops::Range<usize>>) -> KvGeometry {
    KvGeometry {
        values: Default::default(),
        n_layers: 2,
        head_dim: 4,
        page_tokens: 4,
        format: KvFormat::F32,
        node_heads,
        windows: Vec::new(),
    }
}

/// One node holding all three heads.
fn one_node(pages: usize) -> Arc<KvStore> {
    let heads = std::iter::once(0..3).collect::<Vec<_>>();
    KvStore::new(geometry(heads), pages, &[None]).expect("store")
}

fn store(node_heads: &[std::ops::Range<usize>], pages: usize) -> Arc<KvStore> {
    let nodes = vec![None; node_heads.len()];
    KvStore::new(geometry(node_heads.to_vec()), pages, &nodes).expect("store")
}

/// A value unique to (global head, layer, kv, pos, lane).
fn value(head: usize, layer: usize, kv: usize, pos: usize, lane: usize) -> f32 {
    (((pos * 7 + layer) * 2 + kv) * 5 + head) as f32 * 10.0 + lane as f32
}

/// A sequence of `tokens` whose rows hold `value`.
fn filled(st: &Arc<KvStore>, tokens: &[u32]) -> Sequence {
    let g = st.geometry().clone();
    let mut seq = st.new_sequence();
    seq.append_rows(tokens, |k, row| {
        let head = g.node_heads[k.node].start + k.head;
        for (lane, b) in row.chunks_exact_mut(4).enumerate() {
            b.copy_from_slice(&value(head, k.layer, k.kv, k.pos, lane).to_le_bytes());
        }
    })
    .expect("append");
    seq
}

fn check_rows(seq: &Sequence, upto: usize) {
    let g = seq.store().geometry().clone();
    for pos in 0..upto {
        for (node, heads) in g.node_heads.iter().enumerate() {
            for layer in 0..g.n_layers {
                for kv in 0..2 {
                    for (local, head) in heads.clone().enumerate() {
                        let p = seq.row_ptr(node, layer, kv, local, pos).expect("row");
                        // SAFETY: a cached row, read only.
                        let row = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                        for (lane, b) in row.chunks_exact(4).enumerate() {
                            let v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                            assert_eq!(v, value(head, layer, kv, pos, lane), "pos {pos}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn images_carry_rows_between_numa_splits_and_partial_pages() {
    let tokens: Vec<u32> = (100..110).collect();
    let src_store = store(&[0..1, 1..3], 8);
    let src = filled(&src_store, &tokens);
    let dst_store = one_node(8);
    let mut dst = dst_store.new_sequence();
    // Pages of 4: pieces 0..4, 4..6, 6..8 (a page in two pieces), 8..10.
    for (start, n) in [(0, 4), (4, 2), (6, 2), (8, 2)] {
        let bytes = encode_page_image(&src, ID, 7, start, n).expect("encode");
        let img = PageImage::parse(&bytes, dst_store.geometry(), ID).expect("parse");
        assert_eq!((img.stream(), img.start()), (7, start));
        assert_eq!(img.tokens(), &tokens[start..start + n]);
        img.write_into(&mut dst).expect("write");
    }
    assert_eq!(dst.len(), 10);
    assert_eq!(dst.tokens(), &tokens[..]);
    check_rows(&dst, 10);
    // The full pages entered the prefix index.
    drop(dst);
    let again = dst_store.sequence_with_prefix(&tokens);
    assert_eq!(again.len(), 8);
}

#[test]
fn encoding_refuses_rows_that_are_not_cached_or_cross_a_page() {
    let st = one_node(8);
    let seq = filled(&st, &[1, 2, 3, 4, 5, 6]);
    assert!(
        encode_page_image(&seq, ID, 0, 2, 4).is_err(),
        "crosses a page"
    );
    assert!(encode_page_image(&seq, ID, 0, 4, 3).is_err(), "not cached");
    assert!(encode_page_image(&seq, ID, 0, 0, 0).is_err(), "empty");
}

#[test]
fn a_damaged_or_foreign_image_is_refused_and_changes_nothing() {
    let tokens: Vec<u32> = (0..8).collect();
    let st = one_node(8);
    let src = filled(&st, &tokens);
    let good = encode_page_image(&src, ID, 1, 0, 4).expect("encode");
    let g = st.geometry().clone();
    let dst_store = one_node(4);
    let mut dst = dst_store.new_sequence();
    let before = dst_store.counts();

    // Every single flipped byte is caught (header fields or checksum).
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x40;
        assert!(PageImage::parse(&b, &g, ID).is_err(), "byte {i} flipped");
    }
    // Truncated, padded, empty.
    for b in [&good[..good.len() - 1], &[][..], &good[..10]] {
        assert!(PageImage::parse(b, &g, ID).is_err());
    }
    let mut long = good.clone();
    long.push(0);
    assert!(PageImage::parse(&long, &g, ID).is_err());
    // Another model, another KV type or page size.
    assert!(matches!(
        PageImage::parse(&good, &g, ModelIdentity(1)),
        Err(KvError::BadImage(m)) if m.contains("model")
    ));
    let mut f16 = g.clone();
    f16.format = KvFormat::F16;
    assert!(PageImage::parse(&good, &f16, ID).is_err());
    let mut pt = g.clone();
    pt.page_tokens = 8;
    assert!(PageImage::parse(&good, &pt, ID).is_err());

    // A good image, but not the sequence's next rows.
    let later = encode_page_image(&src, ID, 1, 4, 4).expect("encode");
    let img = PageImage::parse(&later, &g, ID).expect("parse");
    assert!(img.write_into(&mut dst).is_err());
    assert_eq!(dst.len(), 0);
    assert_eq!(dst_store.counts(), before);
    drop(dst);
    assert_eq!(dst_store.counts().in_use, 0);
}

#[test]
fn a_full_pool_is_an_error_not_a_write() {
    let tokens: Vec<u32> = (0..8).collect();
    let st = one_node(8);
    let src = filled(&st, &tokens);
    let dst_store = one_node(1);
    let mut dst = dst_store.new_sequence();
    for start in [0, 4] {
        let b = encode_page_image(&src, ID, 1, start, 4).expect("encode");
        let img = PageImage::parse(&b, dst_store.geometry(), ID).expect("parse");
        let r = img.write_into(&mut dst);
        if start == 0 {
            r.expect("first page fits");
        } else {
            assert!(matches!(r, Err(KvError::OutOfPages { .. })), "{r:?}");
        }
    }
    assert_eq!(dst.len(), 4);
}
