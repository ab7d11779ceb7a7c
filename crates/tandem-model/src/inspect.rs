//! A summary of a model's files: what `tandem inspect` prints.

use std::collections::BTreeMap;

use crate::source::{ModelFiles, SourceFormat};

#[derive(Debug, Clone, serde::Serialize)]
pub struct TypeCount {
    pub type_name: String,
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub name: Option<String>,
    pub format: String,
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden: usize,
    /// Mixture of experts, if any: "128 experts, top 8, 768 wide, ...".
    pub experts: Option<String>,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub parameters: u64,
    pub weight_bytes: u64,
    /// f32 KV cache bytes per token of context, as tandem stores it today.
    pub kv_bytes_per_token: u64,
    pub types: Vec<TypeCount>,
}

impl Summary {
    pub fn of(files: &ModelFiles) -> Summary {
        let c = &files.config;
        let mut types: BTreeMap<&str, TypeCount> = BTreeMap::new();
        for t in files.tensors() {
            let e = types.entry(t.type_name()).or_insert_with(|| TypeCount {
                type_name: t.type_name().to_string(),
                tensors: 0,
                elements: 0,
                bytes: 0,
            });
            e.tensors += 1;
            e.elements += t.n_elements() as u64;
            e.bytes += t.n_bytes() as u64;
        }
        let types: Vec<TypeCount> = types.into_values().collect();
        Summary {
            name: files.name.clone(),
            format: match &files.format {
                SourceFormat::Gguf { version, files } => {
                    format!("GGUF v{version} ({files} file(s))")
                }
                SourceFormat::Safetensors { files } => format!("safetensors ({files} file(s))"),
            },
            architecture: c.arch.name().to_string(),
            n_layers: c.n_layers,
            hidden: c.hidden,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn_hidden: c.ffn_hidden,
            experts: c.moe.as_ref().map(|m| {
                let mut d = format!(
                    "{} experts, top {}, {} wide, {:?} gating",
                    m.n_experts, m.top_k, m.expert_ffn, m.gating
                );
                if m.shared_ffn > 0 {
                    d += &format!(", shared {} wide", m.shared_ffn);
                }
                if m.leading_dense > 0 {
                    d += &format!(", first {} layers dense", m.leading_dense);
                }
                if m.n_groups > 1 {
                    d += &format!(", {} groups ({} used)", m.n_groups, m.groups_used);
                }
                d
            }),
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            rope_theta: c.rope.theta,
            parameters: types.iter().map(|t| t.elements).sum(),
            weight_bytes: types.iter().map(|t| t.bytes).sum(),
            kv_bytes_per_token: (2 * c.n_layers * c.n_kv_heads * c.head_dim * 4) as u64,
            types,
        }
    }
}
