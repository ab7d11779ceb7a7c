//! The MoE block of a chunk: router logits to the host, routing and
//! grouping there (the CPU model's `route_token` and counting sort), only
//! the routed experts uploaded, through two expert slots.

use super::*;

impl<D: Device> Run<'_, D> {
    /// The MoE block: router on the device, routing on the host, the
    /// routed experts uploaded and run, the shared expert from the slot
    /// (`offs`: the slot offsets of the router and the shared expert's
    /// gate, up and down).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe(
        &self,
        li: usize,
        cfg: &tandem_model::MoeConfig,
        router: &HostMatrix,
        bias: Option<&[f32]>,
        experts: &[Glu],
        shared: Option<&Glu>,
        slot: &D::Buffer,
        offs: &[usize],
        n: usize,
        st: &mut PrefillStats,
    ) -> Result<(), GpuError> {
        let dev = self.dev();
        let h = self.p.w.config.hidden;
        let (ne, k) = (cfg.n_experts, cfg.top_k);
        let (a_router, a_idx, a_wts, a_xn, a_out, a_gx, a_y) = {
            let a = &self.b.a;
            (a.router, a.idx, a.wts, a.xn, a.out, a.gx, a.y)
        };
        // 1. Router logits (f32 operands: routing is a ranking, and must
        // pick the CPU path's experts), to the host.
        self.project(
            router,
            slot,
            offs[0],
            a_xn,
            a_router,
            n,
            Some(DType::F32),
            st,
        )?;
        if let Some(rb) = self.vec_ptr(li, LayerVectors::ROUTER_BIAS) {
            dev.add_bias(&self.s.compute, ptr(&self.b.act, a_router), rb, n, ne)?;
        }
        let logits = self.download(a_router, n * ne)?;
        st.d2h_bytes += n * ne * 4;
        // 2. Routes, grouped by expert (a counting sort, as the CPU path).
        let (slots, idx, wts) = route(cfg, bias, &logits, n, k);
        let mut idx_b = Vec::with_capacity(idx.len() * 4);
        idx.iter().for_each(|v| idx_b.extend(v.to_le_bytes()));
        self.put(a_idx, idx_b, st)?;
        self.put(a_wts, f32_bytes(&wts), st)?;
        dev.fill_f32(&self.s.compute, ptr(&self.b.act, a_out), n * h, 0.0)?;
        // 3. Each routed expert through the two expert slots.
        for (j, (e, rows)) in slots.iter().enumerate() {
            let glu = experts
                .get(*e)
                .ok_or_else(|| GpuError::Protocol(format!("layer {li}: expert {e} routed")))?;
            let ms = glu.matrices();
            let (eoffs, _) = pack(&ms);
            let es = j % 2;
            self.exp_free.wait(dev, &self.s.copy, es)?;
            let stage = self.exp_stage.get(es);
            self.upload_matrices(
                &ms,
                &eoffs,
                &self.b.experts[es],
                stage,
                &self.exp_up,
                es,
                st,
            )?;
            self.exp_up.record(dev, es, &self.s.copy)?;
            st.experts_uploaded += 1;
            let s = &self.s.compute;
            self.exp_up.wait(dev, s, es)?;
            let cnt = rows.len();
            let b = &self.b.act;
            let at = rows.start * 4;
            dev.gather_rows(s, ptr(b, a_xn), n, ptr(b, a_idx + at), ptr(b, a_gx), cnt, h)?;
            // This expert's biases: its rows of the resident vectors.
            let f = glu.gate.rows;
            let eb = |i: usize, width: usize| {
                self.vec_ptr(li, LayerVectors::EXPERT_GATE_BIAS + i)
                    .map(|p| p.offset(e * width * 4))
            };
            let bias = match (eb(0, f), eb(1, f), eb(2, h)) {
                (Some(g), Some(u), Some(d)) => Some([g, u, d]),
                _ => None,
            };
            let ebuf = &self.b.experts[es];
            self.glu(glu, ebuf, &eoffs, cfg.act, bias, a_gx, a_y, cnt, st)?;
            dev.scatter_add_rows(
                s,
                ptr(b, a_y),
                ptr(b, a_idx + at),
                ptr(b, a_wts + at),
                ptr(b, a_out),
                n,
                cnt,
                h,
            )?;
            self.exp_free.record(dev, es, s)?;
        }
        // 4. The shared expert over every token, weight 1, last (the CPU
        // path's slot order).
        if let Some(sh) = shared {
            self.glu(sh, slot, &offs[1..4], cfg.act, None, a_xn, a_y, n, st)?;
            let b = &self.b.act;
            dev.add(&self.s.compute, ptr(b, a_out), ptr(b, a_y), n * h)?;
        }
        Ok(())
    }
}

/// Routed experts with their entries' range; entries' tokens; weights.
pub type Routes = (Vec<(usize, Range<usize>)>, Vec<u32>, Vec<f32>);

/// Routes `n` tokens (router logits `n × n_experts`) and groups them by
/// expert: the routed experts in index order with their entries' range,
/// and the entries' token indices and weights. Same routing and order as
/// the CPU path (`tandem_model::route_token`, counting sort).
pub fn route(
    cfg: &tandem_model::MoeConfig,
    bias: Option<&[f32]>,
    logits: &[f32],
    n: usize,
    k: usize,
) -> Routes {
    let ne = cfg.n_experts;
    let mut probs = vec![0f32; ne];
    let mut choice = vec![0f32; ne];
    let mut routes = vec![(0u32, 0f32); n * k];
    for t in 0..n {
        tandem_model::route_token(
            cfg,
            &logits[t * ne..(t + 1) * ne],
            bias,
            &mut probs,
            &mut choice,
            &mut routes[t * k..(t + 1) * k],
        );
    }
    let mut starts = vec![0usize; ne + 1];
    for &(e, _) in &routes {
        if let Some(s) = starts.get_mut(e as usize + 1) {
            *s += 1;
        }
    }
    for e in 0..ne {
        starts[e + 1] += starts[e];
    }
    let mut cursor = starts[..ne].to_vec();
    let mut idx = vec![0u32; n * k];
    let mut wts = vec![0f32; n * k];
    for (i, &(e, w)) in routes.iter().enumerate() {
        if let Some(at) = cursor.get_mut(e as usize) {
            idx[*at] = (i / k) as u32;
            wts[*at] = w;
            *at += 1;
        }
    }
    let slots = (0..ne)
        .filter(|&e| starts[e + 1] > starts[e])
        .map(|e| (e, starts[e]..starts[e + 1]))
        .collect();
    (slots, idx, wts)
}
