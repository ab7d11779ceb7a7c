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
//! enough (DeepSeek-V3, row 576, latent 512, heads 192/128: 256 rows over
//! 4,096 cached, 57 over 512). Its attention is 3.4x cheaper.
//!
//! The steps, for one sequence of the batch:
//!
//! 1. its new cached rows (`ws.k`) are stored in its pages (as the
//!    generic attention's first phase does);
//! 2. every row it holds, the new ones included, is read back decoded
//!    (what decode will read) into latents and rotated key parts;
//! 3. `k_b` transposed (`MlaWeights::k_b_t`, made at load) and `v_b`
//!    decompress the latents: two row-split matmuls;
//! 4. items (head, tile of query rows) attend block by block with the
//!    kernels' `attend_block_limited`, keys `[qk_nope | qk_rope]` as the
//!    queries before absorption (`ws.mla.q`), into `ws.mla.o`, which the
//!    output projection reads as after `crate::mla::output`.

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

/// Cached positions per attention block of an item.
const BLOCK: usize = 128;
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
    // 2. Every row, decoded as decode reads it.
    let e = &mut ws.mla.expanded;
    grow(&mut e.lat, ctx * lora);
    grow(&mut e.kpe, ctx * rope);
    grow(&mut e.row, row);
    let fmt = match geom.format {
        KvFormat::F32 => tandem_kernels::WeightFormat::F32,
        KvFormat::F16 => tandem_kernels::WeightFormat::F16,
        KvFormat::BF16 => tandem_kernels::WeightFormat::BF16,
        KvFormat::Q8_0 => tandem_kernels::WeightFormat::Q8_0,
    };
    for pos in 0..ctx {
        let p = s.cache.row_ptr(home, layer, 0, 0, pos).map_err(kv_err)?;
        // SAFETY: a held page's row below the sequence's length plus the
        // rows just stored: initialised, and not written during the pass.
        let bytes = unsafe { std::slice::from_raw_parts(p, rb) };
        tandem_kernels::dequantize_row(fmt, bytes, &mut e.row[..row]).map_err(kernel_err)?;
        e.lat[pos * lora..(pos + 1) * lora].copy_from_slice(&e.row[..lora]);
        e.kpe[pos * rope..(pos + 1) * rope].copy_from_slice(&e.row[lora..row]);
    }
    // 3. Keys without RoPE and values, every head.
    grow(&mut e.kn, ctx * n_heads * nope);
    grow(&mut e.v, ctx * n_heads * vh);
    ws.acts.invalidate();
    for mat in [k_b_t, &w.v_b] {
        ws.acts.prepare(
            mat.format.activation_format(),
            &e.lat[..ctx * lora],
            ctx,
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
    row_split(pool, &targets, &ws.acts, ctx, &ws.scratch)?;
    ws.acts.invalidate();
    // 4. Attention, items of (head, query tile).
    grow(&mut ws.mla.o, (s.row0 + s.n_rows) * n_heads * vh);
    ws.mla
        .expanded_scratch
        .ensure(pool.n_threads(), scratch_len(qk, vh));
    let e = &ws.mla.expanded;
    let (kn, kpe, vals) = (&e.kn[..], &e.kpe[..], &e.v[..]);
    let q_all = &ws.mla.q[..];
    let out = SharedOut::new(&mut ws.mla.o);
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
            let item = wk.claim();
            if item >= n_heads * tiles {
                return Ok(());
            }
            // Last tiles first: they see the most positions.
            let (h, tile) = (item % n_heads, tiles - 1 - item / n_heads);
            let r0 = tile * TILE;
            let nr = TILE.min(s.n_rows - r0);
            for r in 0..nr {
                let src = (s.row0 + r0 + r) * n_heads * qk + h * qk;
                qb[r * qk..(r + 1) * qk].copy_from_slice(&q_all[src..src + qk]);
            }
            states[..nr].fill(SoftmaxState::EMPTY);
            acc[..nr * vh].fill(0.0);
            let seen = s.p0 + r0 + nr; // positions the tile's last row sees
            let first = spec
                .window
                .map_or(0, |wnd| (s.p0 + r0 + 1).saturating_sub(wnd));
            let mut b0 = first / BLOCK * BLOCK;
            while b0 < seen {
                let bn = BLOCK.min(seen - b0);
                for j in 0..bn {
                    let pos = b0 + j;
                    let kr = &mut kb[j * wd..j * wd + qk];
                    let at = pos * n_heads * nope + h * nope;
                    kr[..nope].copy_from_slice(&kn[at..at + nope]);
                    kr[nope..].copy_from_slice(&kpe[pos * rope..(pos + 1) * rope]);
                    let at = pos * n_heads * vh + h * vh;
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
                let t = s.row0 + r0 + r;
                // SAFETY: this item owns head `h` of its tile's rows.
                let o = unsafe { out.slice(t * n_heads * vh + h * vh, vh) };
                finish(&states[r], &acc[r * vh..(r + 1) * vh], o).map_err(kernel_err)?;
            }
        }
    })
}
