//! MLA prefill in expanded form: the sequence's cached latent rows
//! decompressed into per-head keys and values, then plain multi-head
//! attention over them.
//!
//! Decode absorbs `k_b` and `v_b` (`crate::mla`): one query row per head
//! reads each cached row once, and decompressing every row would cost far
//! more than the attention. A prefill chunk of `n` rows over `p0` cached
//! positions (`ctx = p0 + n` keys) costs, per head, with `A =
//! 2·kv_lora_rank·(qk_nope + v_head)`:
//!
//! - absorbed: `n·A` (each query absorbed, each output un-absorbed) plus
//!   `n·ctx·2·(row + kv_lora_rank)` of attention;
//! - expanded: `ctx·A` (each cached row decompressed) plus
//!   `n·ctx·2·(qk_head + v_head)`.
//!
//! So expanded is cheaper when `p0·A < n·ctx·2·gain`, `gain = row +
//! kv_lora_rank − qk_head − v_head` ([`worth_expanding`]): always for a
//! prompt's first chunk, and over a cached prefix once the chunk is long
//! enough (DeepSeek-V3, row 576, latent 512, heads 192/128: 136 rows over
//! 512 cached, 165 over 4,096, 170 over 32,768). Its attention is 3.4x
//! cheaper.
//!
//! The steps, for one sequence of the batch:
//!
//! 1. its new cached rows (`ws.k`) are stored in its pages (as the
//!    generic attention's first phase does);
//! 2. the rows it holds, the new ones included, are read back decoded
//!    (what decode will read) into latents and rotated key parts, a
//!    window of `WINDOW` positions at a time (the scratch does not grow
//!    with the context);
//! 3. `k_b` transposed (`MlaWeights::k_b_t`, made at load) and `v_b`
//!    decompress the window's latents: two row-split matmuls;
//! 4. items (head, tile of query rows) fold the window block by block
//!    into per-(row, head) online-softmax partials kept across windows,
//!    with the kernels' `attend_block_limited`, keys `[qk_nope | qk_rope]`
//!    as the queries before absorption (`ws.mla.q`); after the last
//!    window the partials are finished into `ws.mla.o`, which the output
//!    projection reads as after `crate::mla::output`.

use tandem_kernels::attention::{attend_block_limited, finish, KvBlock, ScoreLimits};
use tandem_kernels::attention::{KvFormat, SoftmaxState};
use tandem_numa::{Pool, Worker};

use crate::config::MlaConfig;
use crate::kv_cache::KvCache;
use crate::mla::MlaWeights;
use crate::parallel::{row_split, RowTarget};
use crate::spec::AttnSpec;
use crate::workspace::{grow, SharedOut, Workspace};
use crate::ModelError;

/// How MLA layers prefill (`LoadOptions::mla_prefill`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MlaPrefill {
    /// Expanded where [`worth_expanding`] says it is cheaper.
    #[default]
    Auto,
    /// Always absorbed (no `k_b` transpose is kept).
    Absorbed,
    /// Expanded for every sequence with more than one new row (tests,
    /// measurements).
    Expanded,
}

impl std::str::FromStr for MlaPrefill {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(MlaPrefill::Auto),
            "absorbed" => Ok(MlaPrefill::Absorbed),
            "expanded" => Ok(MlaPrefill::Expanded),
            _ => Err(format!(
                "unknown MLA prefill {s:?} (auto, absorbed or expanded)"
            )),
        }
    }
}

impl MlaPrefill {
    /// `TANDEM_MLA_PREFILL` (`auto`, `absorbed`, `expanded`), else Auto
    /// (an unknown value is warned about and ignored).
    pub fn from_env() -> MlaPrefill {
        match std::env::var("TANDEM_MLA_PREFILL") {
            Ok(v) => v.parse().unwrap_or_else(|e: String| {
                tracing::warn!("TANDEM_MLA_PREFILL: {e}; using auto");
                MlaPrefill::Auto
            }),
            Err(_) => MlaPrefill::Auto,
        }
    }
}

/// Whether a chunk of `rows` new query rows over `p0` cached positions
/// is cheaper expanded (the module docs' cost model, per head); a single
/// row (decode) never is expanded.
pub fn worth_expanding(mode: MlaPrefill, m: &MlaConfig, p0: usize, rows: usize) -> bool {
    match mode {
        MlaPrefill::Absorbed => false,
        MlaPrefill::Expanded => rows > 1,
        MlaPrefill::Auto => {
            let gain = (m.row() + m.kv_lora_rank).saturating_sub(m.qk_head() + m.v_head);
            let per_row = (m.kv_lora_rank * (m.qk_nope + m.v_head)) as u128;
            let saved = (rows as u128) * ((p0 + rows) as u128) * gain as u128;
            rows > 1 && (p0 as u128) * per_row < saved
        }
    }
}

/// Cached positions per attention block of an item (small in unit tests,
/// so the tiny fixtures cross blocks and windows).
const BLOCK: usize = if cfg!(test) { 8 } else { 128 };
/// Cached positions decompressed at once (a multiple of `BLOCK`): bounds
/// the scratch (DeepSeek-V3: 134 MB of keys and values) whatever the
/// context.
const WINDOW: usize = if cfg!(test) { 16 } else { 1024 };
/// Query rows per item.
const TILE: usize = 64;

/// Per-worker floats [`attend`] needs for heads of `qk` (queries and
/// keys) and `vh` (values) values; a block's key and value rows are both
/// `max(qk, vh)` apart (the kernel's one row stride).
fn scratch_len(qk: usize, vh: usize) -> usize {
    let w = qk.max(vh);
    TILE * qk + 2 * BLOCK * w + TILE * BLOCK + TILE * vh
}

/// One sequence of the batch: its cache, cached positions before the
/// chunk, and its rows in the batch.
pub(crate) struct ExpandedSeq<'a> {
    pub cache: &'a KvCache,
    pub p0: usize,
    pub row0: usize,
    pub n_rows: usize,
}

/// Steps 1-4 of the module docs for sequence `s` of layer `layer`:
/// `ws.mla.o`'s rows of the sequence get each head's attention output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    pool: &Pool,
    w: &MlaWeights,
    spec: &AttnSpec,
    n_heads: usize,
    layer: usize,
    home: usize,
    s: &ExpandedSeq<'_>,
    ws: &mut Workspace,
) -> Result<(), ModelError> {
    let m = &w.cfg;
    let k_b_t = w.k_b_t.as_ref().ok_or_else(|| {
        ModelError::Kernel("expanded MLA prefill without k_b transposed (load option)".into())
    })?;
    let (lora, rope, nope, vh, row) = (m.kv_lora_rank, m.qk_rope, m.qk_nope, m.v_head, m.row());
    let qk = m.qk_head();
    let ctx = s.p0 + s.n_rows;
    let geom = s.cache.store().geometry().clone();
    let kv_err = |e: tandem_kv::KvError| ModelError::Kernel(e.to_string());
    let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
    let rb = geom.row_bytes();
    // 1. The new rows into the pages (reserved for them by the caller).
    for t in 0..s.n_rows {
        let src = &ws.k[(s.row0 + t) * row..(s.row0 + t + 1) * row];
        let dst = s
            .cache
            .row_ptr(home, layer, 0, 0, s.p0 + t)
            .map_err(kv_err)?;
        // SAFETY: `row_ptr` checked the position lies in a page the
        // sequence holds; the position was reserved for this chunk
        // (private to this sequence) and is written only here.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, rb) };
        tandem_kernels::attention::encode_row(geom.format, src, dst).map_err(kernel_err)?;
    }
    // 2-4, a window of cached positions at a time: the scratch is bounded
    // by `WINDOW`, not by the context; each (head, query row) keeps its
    // online-softmax partials across windows.
    let nq = s.n_rows * n_heads;
    let e = &mut ws.mla.expanded;
    grow(&mut e.lat, WINDOW * lora);
    grow(&mut e.kpe, WINDOW * rope);
    grow(&mut e.row, row);
    grow(&mut e.kn, WINDOW * n_heads * nope);
    grow(&mut e.v, WINDOW * n_heads * vh);
    grow(&mut e.states, 2 * nq);
    grow(&mut e.acc, nq * vh);
    for st in e.states[..2 * nq].chunks_exact_mut(2) {
        st[0] = f32::NEG_INFINITY;
        st[1] = 0.0;
    }
    e.acc[..nq * vh].fill(0.0);
    ws.mla
        .expanded_scratch
        .ensure(pool.n_threads(), scratch_len(qk, vh));
    // The first position any of the chunk's queries sees.
    let first = spec.window.map_or(0, |wnd| (s.p0 + 1).saturating_sub(wnd));
    let fmt = geom.format.weight_format();
    let mut w0 = first / BLOCK * BLOCK;
    while w0 < ctx {
        let wn = WINDOW.min(ctx - w0);
        // 2. The window's rows, decoded as decode reads them.
        let e = &mut ws.mla.expanded;
        for j in 0..wn {
            let p = s.cache.row_ptr(home, layer, 0, 0, w0 + j).map_err(kv_err)?;
            // SAFETY: a held page's row below the sequence's length plus
            // the rows just stored: initialised, not written during the pass.
            let bytes = unsafe { std::slice::from_raw_parts(p, rb) };
            tandem_kernels::dequantize_row(fmt, bytes, &mut e.row[..row]).map_err(kernel_err)?;
            e.lat[j * lora..(j + 1) * lora].copy_from_slice(&e.row[..lora]);
            e.kpe[j * rope..(j + 1) * rope].copy_from_slice(&e.row[lora..row]);
        }
        // 3. Keys without RoPE and values, every head.
        ws.acts.invalidate();
        for mat in [k_b_t, &w.v_b] {
            ws.acts.prepare(
                mat.format.activation_format(),
                &e.lat[..wn * lora],
                wn,
                lora,
            )?;
        }
        let targets = [
            RowTarget {
                m: k_b_t,
                out: SharedOut::new(&mut e.kn),
                stride: n_heads * nope,
            },
            RowTarget {
                m: &w.v_b,
                out: SharedOut::new(&mut e.v),
                stride: n_heads * vh,
            },
        ];
        row_split(pool, &targets, &ws.acts, wn, &ws.scratch)?;
        ws.acts.invalidate();
        // 4. The window folded into the partials: items of (head, tile).
        fold_window(pool, spec, n_heads, m, s, w0, wn, ws)?;
        w0 += wn;
    }
    // The outputs.
    grow(&mut ws.mla.o, (s.row0 + s.n_rows) * n_heads * vh);
    let e = &ws.mla.expanded;
    for r in 0..s.n_rows {
        for h in 0..n_heads {
            let i = r * n_heads + h;
            let st = SoftmaxState {
                max: e.states[2 * i],
                sum: e.states[2 * i + 1],
            };
            let at = (s.row0 + r) * n_heads * vh + h * vh;
            finish(
                &st,
                &e.acc[i * vh..(i + 1) * vh],
                &mut ws.mla.o[at..at + vh],
            )
            .map_err(kernel_err)?;
        }
    }
    Ok(())
}

/// Folds the decompressed window (positions `w0..w0 + wn`, in
/// `ws.mla.expanded`) into the chunk's partials, one item per (head, tile
/// of query rows) that sees any of it.
#[allow(clippy::too_many_arguments)]
fn fold_window(
    pool: &Pool,
    spec: &AttnSpec,
    n_heads: usize,
    m: &MlaConfig,
    s: &ExpandedSeq<'_>,
    w0: usize,
    wn: usize,
    ws: &mut Workspace,
) -> Result<(), ModelError> {
    let (rope, nope, vh, qk) = (m.qk_rope, m.qk_nope, m.v_head, m.qk_head());
    let kernel_err = |e: tandem_kernels::KernelError| ModelError::Kernel(e.to_string());
    let e = &mut ws.mla.expanded;
    let (kn, kpe, vals) = (&e.kn[..], &e.kpe[..], &e.v[..]);
    let states_out = SharedOut::new(&mut e.states);
    let acc_out = SharedOut::new(&mut e.acc);
    let q_all = &ws.mla.q[..];
    let scratch = &ws.mla.expanded_scratch;
    let tiles = s.n_rows.div_ceil(TILE);
    let isa = tandem_kernels::detected_isa();
    pool.try_run(|wk: Worker<'_>| -> Result<(), ModelError> {
        // SAFETY: worker `wk.index` is the only user of its scratch.
        let buf = unsafe { scratch.get(wk.index) };
        let (qb, rest) = buf.split_at_mut(TILE * qk);
        let wd = qk.max(vh);
        let (kb, rest) = rest.split_at_mut(BLOCK * wd);
        let (vb, rest) = rest.split_at_mut(BLOCK * wd);
        let (sc, acc) = rest.split_at_mut(TILE * BLOCK);
        let mut states = [SoftmaxState::EMPTY; TILE];
        let mut visible = [0usize; TILE];
        let mut starts = [0usize; TILE];
        loop {
            // Claims count per node: items are dealt round-robin over the
            // nodes, so each is folded once (folding twice would count its
            // keys twice).
            let item = wk.claim() * wk.n_nodes + wk.node;
            if item >= n_heads * tiles {
                return Ok(());
            }
            // Last tiles first: they see the most positions.
            let (h, tile) = (item % n_heads, tiles - 1 - item / n_heads);
            let r0 = tile * TILE;
            let nr = TILE.min(s.n_rows - r0);
            // The window's positions this tile's rows see.
            let seen = (s.p0 + r0 + nr).min(w0 + wn);
            let lo = spec
                .window
                .map_or(0, |wnd| (s.p0 + r0 + 1).saturating_sub(wnd))
                .max(w0);
            if lo >= seen {
                continue;
            }
            for r in 0..nr {
                let src = (s.row0 + r0 + r) * n_heads * qk + h * qk;
                qb[r * qk..(r + 1) * qk].copy_from_slice(&q_all[src..src + qk]);
                let i = (r0 + r) * n_heads + h;
                // SAFETY: this item owns head `h` of its tile's rows.
                let st = unsafe { states_out.slice(2 * i, 2) };
                states[r] = SoftmaxState {
                    max: st[0],
                    sum: st[1],
                };
                // SAFETY: as above.
                let a = unsafe { acc_out.slice(i * vh, vh) };
                acc[r * vh..(r + 1) * vh].copy_from_slice(a);
            }
            let mut b0 = w0 + (lo - w0) / BLOCK * BLOCK;
            while b0 < seen {
                let bn = BLOCK.min(seen - b0);
                for j in 0..bn {
                    let at_w = b0 - w0 + j; // row in the window
                    let kr = &mut kb[j * wd..j * wd + qk];
                    let at = at_w * n_heads * nope + h * nope;
                    kr[..nope].copy_from_slice(&kn[at..at + nope]);
                    kr[nope..].copy_from_slice(&kpe[at_w * rope..(at_w + 1) * rope]);
                    let at = at_w * n_heads * vh + h * vh;
                    vb[j * wd..j * wd + vh].copy_from_slice(&vals[at..at + vh]);
                }
                for r in 0..nr {
                    let qpos = s.p0 + r0 + r;
                    visible[r] = (qpos + 1).saturating_sub(b0).min(bn);
                    starts[r] = spec
                        .window
                        .map_or(0, |wnd| (qpos + 1).saturating_sub(wnd))
                        .saturating_sub(b0)
                        .min(bn);
                }
                let as_bytes = |v: &[f32]| {
                    // SAFETY: any f32 slice is a valid byte slice of four
                    // times its length.
                    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
                };
                let limits = ScoreLimits {
                    starts: spec.window.map(|_| &starts[..nr]),
                    softcap: spec.softcap,
                };
                // Keys and values both `wd` apart: the kernel's one stride.
                attend_block_limited(
                    isa,
                    &qb[..nr * qk],
                    qk,
                    spec.scale,
                    &KvBlock {
                        format: KvFormat::F32,
                        k: as_bytes(&kb[..bn * wd]),
                        v: as_bytes(&vb[..bn * wd]),
                        v_dim: vh,
                        stride: wd * 4,
                        n: bn,
                        ahead: KvBlock::NOTHING_AHEAD,
                    },
                    &visible[..nr],
                    limits,
                    &mut states[..nr],
                    &mut acc[..nr * vh],
                    sc,
                )
                .map_err(kernel_err)?;
                b0 += BLOCK;
            }
            for r in 0..nr {
                let i = (r0 + r) * n_heads + h;
                // SAFETY: this item owns head `h` of its tile's rows.
                let st = unsafe { states_out.slice(2 * i, 2) };
                st[0] = states[r].max;
                st[1] = states[r].sum;
                // SAFETY: as above.
                unsafe { acc_out.slice(i * vh, vh) }.copy_from_slice(&acc[r * vh..(r + 1) * vh]);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::{
        KvFormat, KvOptions, LoadOptions, Logits, MlaPrefill, Model, ModelFiles, NumaMode,
    };

    /// With this build's small blocks and windows, a 45-token context is
    /// decompressed in three windows of several blocks each, and partials
    /// carried across them: the logits are the absorbed ones.
    #[test]
    fn windows_and_blocks_give_the_absorbed_logits() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/models/tiny-deepseek3/gguf/tiny-deepseek3-F32.gguf");
        let load = |mode| {
            let opts = LoadOptions {
                numa: NumaMode::Off,
                threads: Some(2),
                mla_prefill: mode,
                kv: KvOptions {
                    format: KvFormat::F32,
                    page_tokens: 16,
                },
                ..LoadOptions::default()
            };
            Model::load_with(ModelFiles::open(&path).expect("fixture"), &opts).expect("model")
        };
        let (a, e) = (load(MlaPrefill::Absorbed), load(MlaPrefill::Expanded));
        let v = a.config.vocab_size as u32;
        let toks: Vec<u32> = (0..45u32).map(|i| (i * 7919 + 5) % v).collect();
        let mut out = Vec::new();
        for m in [&a, &e] {
            let mut c = m.new_cache(64).expect("cache");
            // A first chunk of 30, then 15 over it.
            let mut l = m
                .forward(&toks[..30], &mut c, Logits::All)
                .expect("chunk 1");
            l.extend(
                m.forward(&toks[30..], &mut c, Logits::All)
                    .expect("chunk 2"),
            );
            out.push(l);
        }
        let d = out[0]
            .iter()
            .zip(&out[1])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-4, "logits differ by {d}");
    }
}
