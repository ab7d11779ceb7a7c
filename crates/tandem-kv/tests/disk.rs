//! The disk tier: pages evicted from the pool come back from files on a
//! prefix hit with every byte intact; a persisted cache survives a restart
//! (a new store over the same directory), also under another NUMA split;
//! files that are missing, truncated, corrupted, another model's, another
//! KV type's or named for another page are misses, deleted, never used,
//! and cost only their own page (a hole the caller recomputes); the tier
//! stays within its size.

#![allow(clippy::single_range_in_vec_init)] // one-node geometries

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_kv::{DiskTier, KvFormat, KvGeometry, KvStore, ModelIdentity, Sequence};

const PT: usize = 4;
const ID: ModelIdentity = ModelIdentity(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);

fn geometry(format: KvFormat, node_heads: Vec<std::ops::Range<usize>>) -> KvGeometry {
    KvGeometry {
        values: Default::default(),
        n_layers: 2,
        head_dim: 8,
        page_tokens: PT,
        format,
        node_heads,
        windows: Vec::new(),
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-kv-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiered(dir: &Path, pages: usize, g: KvGeometry, id: ModelIdentity, max: u64) -> Arc<KvStore> {
    let nodes = vec![None; g.node_heads.len()];
    let disk = DiskTier::open(dir, id, max).expect("open tier");
    KvStore::new_tiered(g, pages, &nodes, Some(disk)).expect("store")
}

/// Byte `i` of the row of (token, pos, layer, kv, global head).
fn byte(token: u32, pos: usize, layer: usize, kv: usize, head: usize, i: usize) -> u8 {
    (token as usize * 31 + pos * 7 + layer * 5 + kv * 3 + head * 11 + i * 13) as u8
}

fn global_head(seq: &Sequence, node: usize, local: usize) -> usize {
    seq.store().geometry().node_heads[node].start + local
}

fn append(seq: &mut Sequence, tokens: &[u32]) {
    let from = seq.len();
    let heads: Vec<usize> = seq
        .store()
        .geometry()
        .node_heads
        .iter()
        .map(|r| r.start)
        .collect();
    seq.append_rows(tokens, |k, row| {
        let t = tokens[k.pos - from];
        let h = heads[k.node] + k.head;
        for (i, b) in row.iter_mut().enumerate() {
            *b = byte(t, k.pos, k.layer, k.kv, h, i);
        }
    })
    .expect("append");
}

/// Every row below `len` holds its bytes.
fn verify(seq: &Sequence) {
    let g = seq.store().geometry().clone();
    for pos in 0..seq.len() {
        for (node, heads) in g.node_heads.iter().enumerate() {
            for layer in 0..g.n_layers {
                for kv in 0..2 {
                    for local in 0..heads.len() {
                        let p = seq.row_ptr(node, layer, kv, local, pos).expect("row");
                        // SAFETY: positions below len are initialised.
                        let row = unsafe { std::slice::from_raw_parts(p, g.row_bytes()) };
                        let h = global_head(seq, node, local);
                        for (i, &b) in row.iter().enumerate() {
                            assert_eq!(
                                b,
                                byte(seq.tokens()[pos], pos, layer, kv, h, i),
                                "pos {pos}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn toks(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i * 7 + seed).collect()
}

const BIG: u64 = 1 << 30;

#[test]
fn evicted_pages_come_back_from_disk_intact() {
    let dir = tmpdir("evict");
    let store = tiered(&dir, 4, geometry(KvFormat::F16, vec![0..1, 1..3]), ID, BIG);
    let a = toks(3 * PT, 1);
    let mut s = store.new_sequence();
    append(&mut s, &a);
    drop(s); // 3 cached pages
    let mut other = store.new_sequence();
    append(&mut other, &toks(4 * PT, 100)); // evicts them all
    let disk = store.disk().expect("tier");
    assert_eq!(disk.stats().written, 3);
    drop(other);
    store.clear_cache(); // nothing of `a` in RAM

    let query: Vec<u32> = [a.clone(), vec![9]].concat();
    let s = store.sequence_with_prefix(&query);
    assert_eq!(s.len(), 3 * PT);
    assert_eq!(disk.stats().read, 3);
    verify(&s);
    // Now indexed in RAM again: a second lookup reads nothing.
    let t = store.sequence_with_prefix(&query);
    assert_eq!(t.len(), 3 * PT);
    assert_eq!(disk.stats().read, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_persisted_conversation_survives_a_restart_and_another_numa_split() {
    let dir = tmpdir("restart");
    let a = toks(5 * PT + 2, 3);
    {
        let store = tiered(&dir, 8, geometry(KvFormat::BF16, vec![0..3]), ID, BIG);
        let mut s = store.new_sequence();
        append(&mut s, &a);
        assert_eq!(store.persist(), 5, "five full pages");
        assert_eq!(store.persist(), 0, "already on disk");
    }
    // A new process, two nodes instead of one.
    let store = tiered(&dir, 8, geometry(KvFormat::BF16, vec![0..2, 2..3]), ID, BIG);
    let s = store.sequence_with_prefix(&a);
    assert_eq!(s.len(), 5 * PT);
    verify(&s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes 3 pages of `a` to disk in `dir` and returns the page files.
fn three_files(dir: &Path, a: &[u32]) -> Vec<PathBuf> {
    let store = tiered(dir, 8, geometry(KvFormat::F16, vec![0..2]), ID, BIG);
    let mut s = store.new_sequence();
    append(&mut s, a);
    store.persist();
    let sub = store.disk().expect("tier").dir().to_path_buf();
    let mut files: Vec<PathBuf> = std::fs::read_dir(sub)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    files
}

#[test]
fn bad_files_are_misses_never_used() {
    let a = toks(3 * PT, 5);
    let query: Vec<u32> = [a.clone(), vec![1]].concat();
    type Damage = fn(&Path, &[PathBuf]);
    let cases: [(&str, Damage); 5] = [
        ("missing", |_, f| std::fs::remove_file(&f[0]).expect("rm")),
        ("truncated", |_, f| {
            let len = std::fs::metadata(&f[0]).expect("meta").len();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f[0])
                .expect("open");
            file.set_len(len - 10).expect("truncate");
        }),
        ("corrupted", |_, f| {
            let mut bytes = std::fs::read(&f[0]).expect("read");
            let n = bytes.len();
            bytes[n / 2] ^= 0x40;
            std::fs::write(&f[0], bytes).expect("write");
        }),
        ("renamed", |_, f| {
            // A valid page under another page's name.
            std::fs::copy(&f[1], &f[0]).expect("copy");
        }),
        ("garbage", |_, f| {
            std::fs::write(&f[0], b"not a page").expect("write")
        }),
    ];
    for (name, damage) in cases {
        let dir = tmpdir(name);
        let files = three_files(&dir, &a);
        // Which file holds the first page: the lookup's first miss.
        let first = {
            let store = tiered(&dir, 8, geometry(KvFormat::F16, vec![0..2]), ID, BIG);
            let s = store.sequence_with_prefix(&query);
            assert_eq!(s.len(), 3 * PT, "{name}: intact files restore");
            drop(s);
            let mut order: Vec<PathBuf> = files.clone();
            // Put the first page's file first (its name is its chain hash).
            let h = tandem_kv::chain_hash(tandem_kv::ROOT_HASH, &a[..PT]);
            order.sort_by_key(|p| !p.to_string_lossy().contains(&format!("{h:016x}")));
            order
        };
        damage(&dir, &first);
        let store = tiered(&dir, 8, geometry(KvFormat::F16, vec![0..2]), ID, BIG);
        let mut s = store.sequence_with_prefix(&query);
        assert_eq!(s.len(), 0, "{name}: a bad first page is a hole");
        assert_eq!(
            s.resume_at(),
            Some(PT),
            "{name}: the pages after it are held"
        );
        let stats = store.disk().expect("tier").stats();
        assert_eq!(stats.read, 2, "{name}: only the bad page is lost");
        if name != "missing" {
            assert_eq!(stats.rejected, 1, "{name}");
            assert!(!first[0].exists(), "{name}: the bad file is deleted");
        }
        // Computing the hole's tokens takes the later pages over.
        append(&mut s, &a[..PT]);
        assert_eq!(s.len(), 3 * PT, "{name}");
        assert_eq!(s.resume_at(), None);
        assert_eq!(s.tokens(), &a[..]);
        verify(&s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn another_model_or_kv_type_never_reads_the_pages() {
    let dir = tmpdir("identity");
    let a = toks(3 * PT, 9);
    three_files(&dir, &a);
    let query: Vec<u32> = [a.clone(), vec![1]].concat();
    // Another KV type under the same identity: same names, other header.
    let store = tiered(&dir, 8, geometry(KvFormat::BF16, vec![0..2]), ID, BIG);
    let s = store.sequence_with_prefix(&query);
    assert_eq!((s.len(), s.resume_at()), (0, None));
    // Every page is probed (a bad page is only a hole) and rejected.
    assert_eq!(store.disk().expect("tier").stats().rejected, 3);
    drop(s);
    drop(store);
    // Another model: its own directory, so nothing is even found; a page
    // copied there by hand is rejected by its header.
    let other = ModelIdentity(7);
    let store = tiered(&dir, 8, geometry(KvFormat::F16, vec![0..2]), other, BIG);
    assert_eq!(store.sequence_with_prefix(&query).len(), 0);
    let theirs = store.disk().expect("tier").dir().to_path_buf();
    drop(store);
    let files = three_files(&dir, &a); // afresh: the probe deleted them
    for f in &files {
        std::fs::copy(f, theirs.join(f.file_name().expect("name"))).expect("copy");
    }
    let store = tiered(&dir, 8, geometry(KvFormat::F16, vec![0..2]), other, BIG);
    let s = store.sequence_with_prefix(&query);
    assert_eq!((s.len(), s.resume_at()), (0, None));
    let stats = store.disk().expect("tier").stats();
    assert_eq!((stats.read, stats.rejected), (0, 3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tier_keeps_within_its_size_dropping_the_oldest() {
    let dir = tmpdir("size");
    let g = geometry(KvFormat::F32, vec![0..2]);
    let file = DiskTier::file_bytes(&g);
    let store = tiered(&dir, 16, g, ID, 2 * file);
    let mut s = store.new_sequence();
    append(&mut s, &toks(4 * PT, 11));
    store.persist();
    let stats = store.disk().expect("tier").stats();
    assert_eq!((stats.files, stats.bytes), (2, 2 * file));
    assert_eq!(stats.dropped, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_middle_page_costs_only_its_own_tokens() {
    let dir = tmpdir("middle");
    let g = || geometry(KvFormat::F16, vec![0..1, 1..2]);
    let a = toks(6 * PT + 1, 13);
    {
        let store = tiered(&dir, 16, g(), ID, BIG);
        let mut s = store.new_sequence();
        append(&mut s, &a);
        assert_eq!(store.persist(), 6);
    }
    // Page 2's file is corrupted.
    let h0 = tandem_kv::chain_hash(tandem_kv::ROOT_HASH, &a[..PT]);
    let h1 = tandem_kv::chain_hash(h0, &a[PT..2 * PT]);
    let h2 = tandem_kv::chain_hash(h1, &a[2 * PT..3 * PT]);
    let sub = dir.join(format!("{:032x}", ID.0));
    let f2 = sub.join(format!("{h2:016x}.page"));
    let mut bytes = std::fs::read(&f2).expect("read");
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    std::fs::write(&f2, bytes).expect("write");

    let store = tiered(&dir, 16, g(), ID, BIG);
    let mut s = store.sequence_with_prefix(&a);
    assert_eq!(s.len(), 2 * PT);
    assert_eq!(s.resume_at(), Some(3 * PT));
    let stats = store.disk().expect("tier").stats();
    assert_eq!((stats.read, stats.rejected), (5, 1));
    // The hole in two steps (a partial page in between), then the rest.
    append(&mut s, &a[2 * PT..2 * PT + 1]);
    assert_eq!(s.len(), 2 * PT + 1);
    append(&mut s, &a[2 * PT + 1..3 * PT]);
    assert_eq!(s.len(), 6 * PT, "the pages after the hole are taken over");
    append(&mut s, &a[6 * PT..]);
    verify(&s);
    // The recomputed page is indexed again: a second lookup has no hole.
    drop(s);
    let t = store.sequence_with_prefix(&a);
    assert_eq!((t.len(), t.resume_at()), (6 * PT, None));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_step_past_the_hole_recomputes_the_pages_ahead() {
    let dir = tmpdir("past");
    let g = || geometry(KvFormat::F32, vec![0..2]);
    let a = toks(4 * PT + 1, 17);
    {
        let store = tiered(&dir, 16, g(), ID, BIG);
        let mut s = store.new_sequence();
        append(&mut s, &a);
        store.persist();
    }
    let h0 = tandem_kv::chain_hash(tandem_kv::ROOT_HASH, &a[..PT]);
    let sub = dir.join(format!("{:032x}", ID.0));
    std::fs::remove_file(sub.join(format!("{h0:016x}.page"))).expect("rm");
    let store = tiered(&dir, 16, g(), ID, BIG);
    let mut s = store.sequence_with_prefix(&a);
    assert_eq!((s.len(), s.resume_at()), (0, Some(PT)));
    let before = store.counts();
    // One step over the hole and into the held pages: they are released
    // and written afresh.
    append(&mut s, &a[..2 * PT]);
    assert_eq!((s.len(), s.resume_at()), (2 * PT, None));
    append(&mut s, &a[2 * PT..]);
    verify(&s);
    drop(s);
    assert_eq!(store.counts().in_use, 0);
    assert!(before.in_use >= 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pages_to_persist_come_in_prefix_order() {
    // Whatever order the index holds them in, a page comes after its
    // parent, so a save killed halfway leaves whole prefixes.
    let mut t = tandem_kv::PageTable::new(64, PT);
    let mut hashes = Vec::new();
    for conv in 0..3u32 {
        let a = toks(20 * PT, 100 * conv);
        let mut parent = tandem_kv::ROOT_HASH;
        for chunk in a.chunks_exact(PT) {
            let (page, _) = t.alloc().expect("page");
            let h = tandem_kv::chain_hash(parent, chunk);
            assert!(t.register(page, h, parent, chunk));
            hashes.push((h, parent));
            parent = h;
        }
    }
    let order = t.retain_indexed();
    assert_eq!(order.len(), 60);
    let pos = |h: u64| order.iter().position(|e| e.hash == h);
    for (h, parent) in hashes {
        if let Some(p) = pos(parent) {
            assert!(p < pos(h).expect("indexed"), "a page before its parent");
        }
    }
}
