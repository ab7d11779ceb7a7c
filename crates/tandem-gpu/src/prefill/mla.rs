//! Multi-head latent attention (DeepSeek-V2/V3/R1, Kimi-K2) of a chunk, in
//! decompressed form.
//!
//! The CPU decode absorbs `k_b` into the query and `v_b` into the output,
//! so it reads one latent row per cached token (`tandem_model`'s `mla.rs`).
//! A prefill chunk has many queries per cached row, and then decompressing
//! the rows into per-head keys and values once and running plain
//! multi-head attention costs `2·(qk_head + v_head)` FLOPs per query, key
//! and head instead of `2·(row + kv_lora_rank)` (320 against 1,088 for
//! DeepSeek-V3: 3.4x fewer), in GEMMs. The cache is the same either way:
//! the chunk's rows `[n(latent) | rope(k_pe)]` go to the host pages as the
//! CPU would store them, and both the chunk and the cached blocks are
//! decompressed from the stored (encoded, decoded back) rows.
//!
//! A decompressed head is [`width`] wide: `[rotated part | part without
//! RoPE]` for queries and keys (the device's RoPE rotates a head's leading
//! values, and a dot product does not depend on the order of its terms),
//! the value zero-padded to the same width so the device's attention,
//! which gives values the keys' width, runs unchanged.

use tandem_model::config::MlaConfig;

use super::*;

/// Width of a decompressed head (queries, keys and padded values).
pub(super) fn width(m: &MlaConfig) -> usize {
    m.qk_head().max(m.v_head)
}

impl<D: Device> Run<'_, D> {
    /// Latent attention of the normed input `xn` into `attn`
    /// (`[token][head][v_head]`). `ms`/`offs`: the layer's slot matrices
    /// `[q_a (if any), q_b, kv_a, k_b, v_b, o, ...]` and their offsets.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mla(
        &self,
        li: usize,
        l: &LayerWeights,
        m: &MlaConfig,
        seq: &Sequence,
        p0: usize,
        n: usize,
        ms: &[&HostMatrix],
        offs: &[usize],
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let c = &self.p.w.config;
        let nh = c.n_heads;
        let (lora, rope, nope) = (m.kv_lora_rank, m.qk_rope, m.qk_nope);
        let (qk, vh, row, w) = (m.qk_head(), m.v_head, m.row(), width(m));
        let eps = c.norm_eps;
        let slot = &self.b.slots[li % self.p.opts.slots];
        let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
        let v = |i| self.vec_ptr(li, i);
        let missing = || GpuError::Protocol(format!("layer {li}: resident vector missing"));
        let i0 = usize::from(m.q_lora_rank > 0);

        // 1. Queries `[token][head][nope | rope]`, through Q's low rank.
        if m.q_lora_rank > 0 {
            let r = m.q_lora_rank;
            self.project(ms[0], slot, offs[0], a.xn, a.mla_low, n, None, st)?;
            let norm = v(LayerVectors::Q_A_NORM).ok_or_else(missing)?;
            dev.rms_norm(s, ptr(b, a.mla_low), norm, ptr(b, a.mla_lown), n, r, eps)?;
            self.project(ms[i0], slot, offs[i0], a.mla_lown, a.q, n, None, st)?;
        } else {
            self.project(ms[0], slot, offs[0], a.xn, a.q, n, None, st)?;
        }
        // 2. The cached rows `[n(latent) | rope(k_pe)]`, built in `kt`.
        self.project(ms[i0 + 1], slot, offs[i0 + 1], a.xn, a.k, n, None, st)?;
        dev.copy_cols(s, ptr(b, a.k), row, ptr(b, a.mla_lat), lora, n, lora)?;
        let norm = v(LayerVectors::KV_A_NORM).ok_or_else(missing)?;
        dev.rms_norm(s, ptr(b, a.mla_lat), norm, ptr(b, a.mla_lat2), n, lora, eps)?;
        dev.copy_cols(s, ptr(b, a.mla_lat2), lora, ptr(b, a.kt), row, n, lora)?;
        dev.copy_cols(
            s,
            ptr(b, a.k + lora * 4),
            row,
            ptr(b, a.mla_kpe),
            rope,
            n,
            rope,
        )?;
        self.mla_rope(l, a.mla_kpe, n, 1, rope)?;
        dev.copy_cols(
            s,
            ptr(b, a.mla_kpe),
            rope,
            ptr(b, a.kt + lora * 4),
            row,
            n,
            rope,
        )?;
        // 3. Encoded as stored, to the host (one plane: the values are in
        // the keys), decoded back.
        let fmt = self.geom.format;
        let e = li % 2;
        self.kv_down.wait(dev, s, e)?;
        let enc = &self.b.kvenc[e];
        dev.encode_kv(s, fmt, ptr(b, a.kt), ptr(enc, 0), n, row)?;
        self.kv_ready.record(dev, e, s)?;
        self.kv_ready.wait(dev, &self.s.back, e)?;
        let stage = self.stage[e].borrow_mut().as_mut_ptr();
        let bytes = n * self.geom.row_bytes();
        // SAFETY: the stage is neither read nor resized until `kv_down[e]`
        // is synchronised (`write_back`), and lives in `self`.
        unsafe { dev.d2h(&self.s.back, ptr(enc, 0), stage, bytes)? };
        self.kv_down.record(dev, e, &self.s.back)?;
        let kvw = fmt.weight_format();
        dev.dequantize(s, kvw, ptr(enc, 0), ptr(b, a.kdec), DType::F32, n * row)?;
        // 4. Queries `[token][head][rope | nope]` (zeros past), rotated,
        // then head-major.
        if w > qk {
            dev.fill_f32(s, ptr(b, a.ohm), n * nh * w, 0.0)?;
        }
        dev.copy_cols(
            s,
            ptr(b, a.q + nope * 4),
            qk,
            ptr(b, a.ohm),
            w,
            n * nh,
            rope,
        )?;
        dev.copy_cols(
            s,
            ptr(b, a.q),
            qk,
            ptr(b, a.ohm + rope * 4),
            w,
            n * nh,
            nope,
        )?;
        self.mla_rope(l, a.ohm, n, nh, w)?;
        dev.transpose(s, ptr(b, a.ohm), ptr(b, a.qt), n, nh, w * 4)?;
        // 5. The chunk's keys and values, decompressed from its rows.
        self.decompress(li, m, ms, offs, a.kdec, n, a.mla_k, a.mla_v, st)?;
        // 6. Attention over the cached blocks, then the chunk.
        dev.attn_init(s, ptr(b, a.states), ptr(b, a.acc), n * nh, w)?;
        if p0 > 0 {
            self.mla_cached_blocks(li, l, m, seq, p0, n, ms, offs, st)?;
        }
        self.mla_attend(l, w, a.mla_k, a.mla_v, n, p0, n, p0, st)?;
        dev.attn_finish(
            s,
            ptr(b, a.states),
            ptr(b, a.acc),
            v(LayerVectors::SINKS),
            ptr(b, a.ohm),
            nh,
            n,
            1,
            w,
        )?;
        // 7. `[token][head][v_head]`: the padding dropped.
        dev.transpose(s, ptr(b, a.ohm), ptr(b, a.q), nh, n, w * 4)?;
        dev.copy_cols(s, ptr(b, a.q), w, ptr(b, a.attn), vh, n * nh, vh)
    }

    /// RoPE on `rows × heads` heads of `head_dim` at `at` (the layer's
    /// tables for the chunk's rows), rotating each head's leading values.
    fn mla_rope(
        &self,
        l: &LayerWeights,
        at: usize,
        rows: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), GpuError> {
        let (b, a) = (&self.b.act, &self.b.a);
        let ri = l.attn.rope.min(self.p.w.ropes.len().saturating_sub(1));
        let pairs = self.p.w.ropes.get(ri).map_or(0, |r| r.table_len());
        self.dev().rope(
            &self.s.compute,
            &RopeArgs {
                x: ptr(b, at),
                table: ptr(b, a.rope + ri * rows * pairs * 8),
                rows,
                heads,
                head_dim,
                pairs,
                layout: self.p.w.config.rope.layout,
            },
        )
    }

    /// Folds keys `k` and values `v` (`[head][n_k][width]`, positions from
    /// `k_pos0`) into the chunk's partials.
    #[allow(clippy::too_many_arguments)]
    fn mla_attend(
        &self,
        l: &LayerWeights,
        w: usize,
        k: usize,
        v: usize,
        n: usize,
        p0: usize,
        n_k: usize,
        k_pos0: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let (b, a) = (&self.b.act, &self.b.a);
        let nh = self.p.w.config.n_heads;
        self.dev().attend(
            &self.s.compute,
            &Attend {
                q: ptr(b, a.qt),
                k: ptr(b, k),
                v: ptr(b, v),
                states: ptr(b, a.states),
                acc: ptr(b, a.acc),
                kv_heads: nh,
                group: 1,
                head_dim: w,
                n_q: n,
                n_k,
                k_head_stride: n_k * w,
                q_pos0: p0,
                k_pos0,
                scale: l.attn.scale,
                window: l.attn.window,
                softcap: l.attn.softcap,
            },
        )?;
        st.flops += attn_flops(n, n_k, nh, w);
        Ok(())
    }

    /// The positions cached before the chunk: each block of latent rows
    /// pulled from the host pages, decoded, decompressed and folded in.
    #[allow(clippy::too_many_arguments)]
    fn mla_cached_blocks(
        &self,
        li: usize,
        l: &LayerWeights,
        m: &MlaConfig,
        seq: &Sequence,
        p0: usize,
        n: usize,
        ms: &[&HostMatrix],
        offs: &[usize],
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let pt = self.geom.page_tokens;
        let kvw = self.geom.format.weight_format();
        for (j, blk) in self.cached_block_list(l, p0).into_iter().enumerate() {
            let bi = j % 2;
            self.upload_block(li, seq, blk.clone(), bi, st)?;
            let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
            let k0 = blk.start * pt;
            let n_k = p0.min(blk.end * pt) - k0;
            // One head: the staging's pages are `[token][row]` in order.
            let raw = &self.b.blk_raw[bi];
            dev.dequantize(
                s,
                kvw,
                ptr(raw, 0),
                ptr(b, a.blk_dec),
                DType::F32,
                n_k * m.row(),
            )?;
            self.blk_free.record(dev, bi, s)?;
            self.decompress(li, m, ms, offs, a.blk_dec, n_k, a.mla_bk, a.mla_bv, st)?;
            self.mla_attend(l, width(m), a.mla_bk, a.mla_bv, n, p0, n_k, k0, st)?;
        }
        Ok(())
    }

    /// Keys and values of `tok` cached rows (f32 `[token][row]` at
    /// `rows`) into `k` and `v` (`[head][token][width]`): per head the
    /// rotated part copied, `latent · k_b_h` after it, `v_b_h · latent`
    /// in the values, zeros past.
    #[allow(clippy::too_many_arguments)]
    fn decompress(
        &self,
        li: usize,
        m: &MlaConfig,
        ms: &[&HostMatrix],
        offs: &[usize],
        rows: usize,
        tok: usize,
        k: usize,
        v: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
        let nh = self.p.w.config.n_heads;
        let (lora, rope, row, w) = (m.kv_lora_rank, m.qk_rope, m.row(), width(m));
        let i0 = usize::from(m.q_lora_rank > 0);
        let (kb, vb) = (i0 + 2, i0 + 3);
        dev.copy_cols(s, ptr(b, rows), row, ptr(b, a.mla_lat), lora, tok, lora)?;
        for (dst, used) in [(k, m.qk_head()), (v, m.v_head)] {
            if used < w {
                dev.fill_f32(s, ptr(b, dst), nh * tok * w, 0.0)?;
            }
        }
        for h in 0..nh {
            let at = k + h * tok * w * 4;
            dev.copy_cols(s, ptr(b, rows + lora * 4), row, ptr(b, at), w, tok, rope)?;
        }
        // k_b_h is stored `[latent][nope]`: the transpose of what the
        // product needs.
        self.per_head(li, m, ms[kb], offs[kb], lora, tok, k + rope * 4, true, st)?;
        self.per_head(li, m, ms[vb], offs[vb], m.v_head, tok, v, false, st)
    }

    /// For every head `h`: `y_h[t] = mat_h · lat[t]` over `tok` latents
    /// (`mla_lat`), where `mat_h` is the `per_head` stored rows of head
    /// `h` (stored transposed when `transposed`); `y_h` rows at
    /// `y + h·tok·width`, `width` apart. Heads are dequantized from the
    /// slot in groups that fit the scratch.
    #[allow(clippy::too_many_arguments)]
    fn per_head(
        &self,
        li: usize,
        m: &MlaConfig,
        mat: &HostMatrix,
        off: usize,
        per_head: usize,
        tok: usize,
        y: usize,
        transposed: bool,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let (s, b, a) = (&self.s.compute, &self.b.act, &self.b.a);
        let slot = &self.b.slots[li % self.p.opts.slots];
        let nh = self.p.w.config.n_heads;
        let w = width(m);
        let ty = self.ty(mat);
        let (cols, head_elems) = (mat.cols, per_head * mat.cols);
        // The product's shape: out rows × latent columns.
        let (out_rows, lat) = match transposed {
            true => (mat.cols, per_head),
            false => (per_head, mat.cols),
        };
        let row_bytes = mat
            .format
            .row_bytes(cols)
            .ok_or_else(|| GpuError::Shape(format!("{}: rows are not whole blocks", mat.name())))?;
        dev.convert(s, ptr(b, a.mla_lat), ptr(b, a.mla_xh), ty, tok * lat)?;
        let group = (self.p.deq_elems() / head_elems.max(1)).max(1);
        let mut h0 = 0;
        while h0 < nh {
            let g = group.min(nh - h0);
            dev.dequantize(
                s,
                mat.format,
                ptr(slot, off + h0 * per_head * row_bytes),
                ptr(&self.b.deq, 0),
                ty,
                g * head_elems,
            )?;
            for h in h0..h0 + g {
                dev.gemm(
                    s,
                    &Gemm {
                        w: ptr(&self.b.deq, (h - h0) * head_elems * ty.size()),
                        x: ptr(b, a.mla_xh),
                        y: ptr(b, y + h * tok * w * 4),
                        ty,
                        n: tok,
                        rows: out_rows,
                        cols: lat,
                        ldy: w,
                        accumulate: false,
                        w_transposed: transposed,
                    },
                )?;
            }
            h0 += g;
        }
        st.flops += 2.0 * tok as f64 * (nh * head_elems) as f64;
        Ok(())
    }
}
