//! One decoder layer of a chunk on the compute stream: attention by its
//! kind (grouped-query here: Q/K/V, bias, QK-norm, RoPE, the new K/V
//! encoded, sent to the host and decoded back, attention over the cached
//! blocks and the chunk; latent in `mla.rs`), O, and the dense
//! feed-forward block.

use super::*;

impl<D: Device> Run<'_, D> {
    /// Layer `li` of a chunk of `n` tokens at positions `p0..`: attention
    /// (by its kind) with O and the residual, then the feed-forward block.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer(
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
        let (h, eps) = (c.hidden, c.norm_eps);
        let slot = &self.b.slots[li % self.p.opts.slots];
        let ms = l.slot_matrices();
        let (offs, _) = pack(&ms);
        // The attention's matrices come first, O last of them.
        let na = l.attn_matrices().len();
        let s = &self.s.compute;
        let b = &self.b.act;
        let a = &self.b.a;
        let v = |i| self.vec_ptr(li, i);
        let missing = || GpuError::Protocol(format!("layer {li}: resident vector missing"));
        dev.rms_norm(
            s,
            ptr(b, a.x),
            v(LayerVectors::ATTN_NORM).ok_or_else(missing)?,
            ptr(b, a.xn),
            n,
            h,
            eps,
        )?;
        match &l.proj {
            AttnWeights::Gqa { .. } => self.gqa(li, l, seq, p0, n, &ms, &offs, st)?,
            AttnWeights::Mla { cfg, .. } => self.mla(li, l, cfg, seq, p0, n, &ms, &offs, st)?,
        }
        self.project(ms[na - 1], slot, offs[na - 1], a.attn, a.out, n, None, st)?;
        if let Some(bo) = v(LayerVectors::BO) {
            dev.add_bias(s, ptr(b, a.out), bo, n, h)?;
        }
        self.residual(a.out, v(LayerVectors::ATTN_POST_NORM), n)?;

        // Feed-forward.
        dev.rms_norm(
            s,
            ptr(b, a.x),
            v(LayerVectors::FFN_NORM).ok_or_else(missing)?,
            ptr(b, a.xn),
            n,
            h,
            eps,
        )?;
        let offs = &offs[na..];
        match &l.ffn {
            FfnWeights::Dense { glu, act } => {
                self.glu(glu, slot, &offs[..3], *act, None, a.xn, a.out, n, st)?;
            }
            FfnWeights::Moe {
                cfg,
                router,
                bias,
                experts,
                shared,
            } => {
                self.moe(
                    li,
                    cfg,
                    router,
                    bias.as_deref(),
                    experts,
                    shared.as_ref(),
                    slot,
                    offs,
                    n,
                    st,
                )?;
            }
        }
        self.residual(a.out, v(LayerVectors::FFN_POST_NORM), n)
    }

    /// Grouped-query attention of the normed input `xn` into `attn`
    /// (`[token][head][head_dim]`): Q/K/V, bias, QK-norm, RoPE, the new
    /// K/V encoded, sent to the host and decoded back, attention over the
    /// cached blocks and the chunk.
    #[allow(clippy::too_many_arguments)]
    fn gqa(
        &self,
        li: usize,
        l: &LayerWeights,
        seq: &Sequence,
        p0: usize,
        n: usize,
        ms: &[&HostMatrix],
        offs: &[usize],
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let c = &self.p.w.config;
        let (hd, nh, kvh) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / kvh.max(1);
        let (q_dim, kv_dim) = (nh * hd, kvh * hd);
        let eps = c.norm_eps;
        let slot = &self.b.slots[li % self.p.opts.slots];
        let s = &self.s.compute;
        let b = &self.b.act;
        let a = &self.b.a;
        let v = |i| self.vec_ptr(li, i);
        // Q/K/V.
        for (i, dst) in [(0, a.q), (1, a.k), (2, a.v)] {
            self.project(ms[i], slot, offs[i], a.xn, dst, n, None, st)?;
        }
        let biases = [
            (LayerVectors::BQ, a.q, q_dim),
            (LayerVectors::BK, a.k, kv_dim),
            (LayerVectors::BV, a.v, kv_dim),
        ];
        for (bias, dst, dim) in biases {
            if let Some(bp) = v(bias) {
                dev.add_bias(s, ptr(b, dst), bp, n, dim)?;
            }
        }
        // QK-norm per head, into buffers free at this point.
        let (mut q_at, mut k_at) = (a.q, a.k);
        let norms = [
            (LayerVectors::Q_NORM, &mut q_at, a.ohm, nh),
            (LayerVectors::K_NORM, &mut k_at, a.kdec, kvh),
        ];
        for (norm, at, tmp, heads) in norms {
            if let Some(np) = v(norm) {
                dev.rms_norm(s, ptr(b, *at), np, ptr(b, tmp), n * heads, hd, eps)?;
                *at = tmp;
            }
        }
        let ri = l.attn.rope.min(self.p.w.ropes.len().saturating_sub(1));
        let pairs = self.p.w.ropes.get(ri).map_or(0, |r| r.table_len());
        let layout = c.rope.layout;
        for (dst, heads) in [(q_at, nh), (k_at, kvh)] {
            dev.rope(
                s,
                &RopeArgs {
                    x: ptr(b, dst),
                    table: ptr(b, a.rope + ri * n * pairs * 8),
                    rows: n,
                    heads,
                    head_dim: hd,
                    pairs,
                    layout,
                },
            )?;
        }
        // Head-major: [kv head][token][group · head_dim].
        dev.transpose(s, ptr(b, q_at), ptr(b, a.qt), n, kvh, group * hd * 4)?;
        dev.transpose(s, ptr(b, k_at), ptr(b, a.kt), n, kvh, hd * 4)?;
        dev.transpose(s, ptr(b, a.v), ptr(b, a.vt), n, kvh, hd * 4)?;
        // New K/V: encoded as stored, to the host, decoded back.
        let fmt = self.geom.format;
        let rb = self.geom.row_bytes();
        let e = li % 2;
        self.kv_down.wait(dev, s, e)?;
        let enc = &self.b.kvenc[e];
        let v_off = kvh * n * rb;
        dev.encode_kv(s, fmt, ptr(b, a.kt), ptr(enc, 0), kvh * n, hd)?;
        dev.encode_kv(s, fmt, ptr(b, a.vt), ptr(enc, v_off), kvh * n, hd)?;
        self.kv_ready.record(dev, e, s)?;
        self.kv_ready.wait(dev, &self.s.back, e)?;
        let stage = self.stage[e].borrow_mut().as_mut_ptr();
        // SAFETY: the stage is neither read nor resized until `kv_down[e]`
        // is synchronised (`write_back`), and lives in `self`.
        unsafe { dev.d2h(&self.s.back, ptr(enc, 0), stage, 2 * v_off)? };
        self.kv_down.record(dev, e, &self.s.back)?;
        let kvw = fmt.weight_format();
        dev.dequantize(
            s,
            kvw,
            ptr(enc, 0),
            ptr(b, a.kdec),
            DType::F32,
            kvh * n * hd,
        )?;
        dev.dequantize(
            s,
            kvw,
            ptr(enc, v_off),
            ptr(b, a.vdec),
            DType::F32,
            kvh * n * hd,
        )?;

        // Attention over the cached blocks, then the chunk itself.
        dev.attn_init(s, ptr(b, a.states), ptr(b, a.acc), n * nh, hd)?;
        if p0 > 0 {
            self.cached_blocks(li, l, seq, p0, n, st)?;
        }
        dev.attend(
            s,
            &Attend {
                q: ptr(b, a.qt),
                k: ptr(b, a.kdec),
                v: ptr(b, a.vdec),
                states: ptr(b, a.states),
                acc: ptr(b, a.acc),
                kv_heads: kvh,
                group,
                head_dim: hd,
                n_q: n,
                n_k: n,
                k_head_stride: n * hd,
                q_pos0: p0,
                k_pos0: p0,
                scale: l.attn.scale,
                window: l.attn.window,
                softcap: l.attn.softcap,
            },
        )?;
        st.flops += attn_flops(n, n, nh, hd);
        dev.attn_finish(
            s,
            ptr(b, a.states),
            ptr(b, a.acc),
            v(LayerVectors::SINKS),
            ptr(b, a.ohm),
            kvh,
            n,
            group,
            hd,
        )?;
        dev.transpose(s, ptr(b, a.ohm), ptr(b, a.attn), kvh, n, group * hd * 4)
    }

    /// `out = down(act(gate(src)) · up(src))` for `n` rows, each
    /// projection followed by its bias (gate's, up's, down's) if given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn glu(
        &self,
        glu: &Glu,
        buf: &D::Buffer,
        offs: &[usize],
        act: tandem_model::spec::Activation,
        bias: Option<[Ptr<'_, D::Buffer>; 3]>,
        src: usize,
        out: usize,
        n: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let (dev, s, b, a) = (self.dev(), &self.s.compute, &self.b.act, &self.b.a);
        let [og, ou, od] = [offs[0], offs[1], offs[2]];
        let f = glu.gate.rows;
        self.project(&glu.gate, buf, og, src, a.gate, n, None, st)?;
        // `xh` still holds `src` in gate's type; up reuses it when equal.
        if self.ty(&glu.up) == self.ty(&glu.gate) {
            self.matmul(&glu.up, buf, ou, a.xh, self.ty(&glu.up), a.up, n, false, st)?;
        } else {
            self.project(&glu.up, buf, ou, src, a.up, n, None, st)?;
        }
        if let Some([bg, bu, _]) = bias {
            dev.add_bias(s, ptr(b, a.gate), bg, n, f)?;
            dev.add_bias(s, ptr(b, a.up), bu, n, f)?;
        }
        dev.glu(s, act, ptr(b, a.gate), ptr(b, a.up), n * f)?;
        self.project(&glu.down, buf, od, a.gate, out, n, None, st)?;
        if let Some([_, _, bd]) = bias {
            dev.add_bias(s, ptr(b, out), bd, n, glu.down.rows)?;
        }
        Ok(())
    }
}
