//! Attention over the positions cached before a chunk: the host pages
//! pulled block by block into online-softmax partials on the device.

use super::*;

impl<D: Device> Run<'_, D> {
    /// The blocks (page ranges, `block_pages` each) of the positions
    /// cached before `p0` that a chunk's queries see: with a window, the
    /// blocks wholly behind it are skipped.
    pub(super) fn cached_block_list(&self, l: &LayerWeights, p0: usize) -> Vec<Range<usize>> {
        let pt = self.geom.page_tokens;
        let bp = self.p.opts.block_pages.max(1);
        let pages = p0.div_ceil(pt);
        let mut blocks: Vec<Range<usize>> = Vec::new();
        let mut pi = 0;
        while pi < pages {
            let end = (pi + bp).min(pages);
            let last_pos = (end * pt).min(p0) - 1;
            if l.attn.window.is_none_or(|w| last_pos + w > p0) {
                blocks.push(pi..end);
            }
            pi = end;
        }
        blocks
    }

    /// Brings block `blk` (page indices) of layer `li` into device staging
    /// `bi` (`blk_raw[bi]`: `[plane][page][kv head][page token][row]`) and
    /// makes the compute stream wait for it; returns the plane stride
    /// (`v_base`). The caller records `blk_free[bi]` once the compute
    /// stream has decoded the staging.
    pub(super) fn upload_block(
        &self,
        li: usize,
        seq: &Sequence,
        blk: Range<usize>,
        bi: usize,
        st: &mut PrefillStats,
    ) -> Result<usize, GpuError> {
        let dev = self.dev();
        let (runs, v_base) = kv_io::block_runs(seq, li, blk)?;
        // The host staging `bi` is free once its previous upload is
        // done; the device staging once its previous block was decoded.
        self.blk_up.sync(dev, bi)?;
        let mut host = self.blk_host[bi].borrow_mut();
        let base = host.as_mut_ptr();
        let cap = host.len();
        for r in &runs {
            if r.dst + r.len > cap {
                return Err(GpuError::Protocol(
                    "cached K/V block over its staging".into(),
                ));
            }
            // SAFETY: pages below the sequence's length are read-only
            // (tandem-kv's protocol) and held by `seq`; the staging
            // range was checked and no queued copy reads it (synced).
            unsafe {
                if r.src.is_null() {
                    std::ptr::write_bytes(base.add(r.dst), 0, r.len);
                } else {
                    std::ptr::copy_nonoverlapping(r.src, base.add(r.dst), r.len);
                }
            };
        }
        let bytes = self.geom.planes() * v_base;
        self.blk_free.wait(dev, &self.s.copy, bi)?;
        // SAFETY: the staging is not written again before `blk_up[bi]`
        // is synced (above, for the block after next; or the chunk's end).
        unsafe { dev.h2d(&self.s.copy, ptr(&self.b.blk_raw[bi], 0), base, bytes)? };
        st.h2d_bytes += bytes;
        drop(host);
        self.blk_up.record(dev, bi, &self.s.copy)?;
        self.blk_up.wait(dev, &self.s.compute, bi)?;
        Ok(v_base)
    }

    /// Folds the positions cached before the chunk into the partials,
    /// block by block from the host pages (grouped-query attention).
    pub(super) fn cached_blocks(
        &self,
        li: usize,
        l: &LayerWeights,
        seq: &Sequence,
        p0: usize,
        n: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let c = &self.p.w.config;
        let (hd, kvh) = (c.head_dim, c.n_kv_heads);
        let group = c.n_heads / kvh.max(1);
        let pt = self.geom.page_tokens;
        let kvw = self.geom.format.weight_format();
        for (j, blk) in self.cached_block_list(l, p0).into_iter().enumerate() {
            let bi = j % 2;
            let v_base = self.upload_block(li, seq, blk.clone(), bi, st)?;
            let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
            let np = blk.len();
            let tok = np * pt;
            let k0 = blk.start * pt;
            let n_k = p0.min(blk.end * pt) - k0;
            let vals = tok * kvh * hd;
            let raw = &self.b.blk_raw[bi];
            let (kd, vd) = (a.blk_dec, a.blk_dec + vals * 4);
            let (kt, vt) = (a.blk_t, a.blk_t + vals * 4);
            dev.dequantize(s, kvw, ptr(raw, 0), ptr(b, kd), DType::F32, vals)?;
            dev.dequantize(s, kvw, ptr(raw, v_base), ptr(b, vd), DType::F32, vals)?;
            self.blk_free.record(dev, bi, s)?;
            // [page][head][token][dim] → [head][page][token][dim].
            dev.transpose(s, ptr(b, kd), ptr(b, kt), np, kvh, pt * hd * 4)?;
            dev.transpose(s, ptr(b, vd), ptr(b, vt), np, kvh, pt * hd * 4)?;
            dev.attend(
                s,
                &Attend {
                    q: ptr(b, a.qt),
                    k: ptr(b, kt),
                    v: ptr(b, vt),
                    states: ptr(b, a.states),
                    acc: ptr(b, a.acc),
                    kv_heads: kvh,
                    group,
                    head_dim: hd,
                    n_q: n,
                    n_k,
                    k_head_stride: tok * hd,
                    q_pos0: p0,
                    k_pos0: k0,
                    scale: l.attn.scale,
                    window: l.attn.window,
                    softcap: l.attn.softcap,
                },
            )?;
            st.flops += attn_flops(n, n_k, c.n_heads, hd);
        }
        Ok(())
    }
}
