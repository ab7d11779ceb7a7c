//! Opening what users download: a `.gguf` file (or the first shard of a split
//! one), a Hugging Face directory (`config.json`, safetensors, tokenizer), or
//! a GGUF image compiled into the binary.
//!
//! The result, [`ModelFiles`], is format-free from here on: a config, a
//! tokenizer and tensors looked up by canonical (GGUF) names.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value as Json;
use tandem_gguf::{GgufFile, Metadata};
use tandem_tokenizer::{GgufVocab, Tokenizer};

use crate::config::ModelConfig;
use crate::tensor::Tensor;
use crate::ModelError;

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf { version: u32, files: usize },
    Safetensors { files: usize },
}

/// A model's files, opened and validated, independent of their format.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub format: SourceFormat,
    /// `general.name` or the directory name.
    pub name: Option<String>,
    tensors: HashMap<String, Tensor>,
    /// Tensor names in file order (for `inspect`).
    order: Vec<String>,
    hf_names: bool,
}

impl ModelFiles {
    /// Opens a `.gguf` file, the first shard of a split GGUF, or an HF directory.
    pub fn open(path: &Path) -> Result<ModelFiles, ModelError> {
        let meta = std::fs::metadata(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if meta.is_dir() {
            if path.join("config.json").is_file() {
                return open_hf(path);
            }
            return Err(ModelError::UnknownFormat(path.to_path_buf()));
        }
        let mut magic = [0u8; 4];
        let head = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
        if head.is_err() || &magic != b"GGUF" && &magic != b"FUGG" {
            return Err(ModelError::UnknownFormat(path.to_path_buf()));
        }
        from_gguf(
            Arc::new(GgufFile::open(path)?),
            path.file_stem().and_then(|s| s.to_str()),
        )
    }

    /// A GGUF image that lives in the binary (the bundled model).
    pub fn from_static_gguf(bytes: &'static [u8]) -> Result<ModelFiles, ModelError> {
        from_gguf(Arc::new(GgufFile::from_static(bytes)?), None)
    }

    /// A tensor by its canonical (GGUF) name.
    pub fn tensor(&self, canonical: &str) -> Option<&Tensor> {
        if self.hf_names {
            self.tensors
                .get(&self.config.arch.hf_name(canonical, None)?)
        } else {
            self.tensors.get(canonical)
        }
    }

    /// The `n` experts of a stacked expert tensor (canonical name, e.g.
    /// `blk.3.ffn_up_exps.weight`), each a `[rows, cols]` matrix view: a
    /// slice of GGUF's 3-D tensor, or an HF checkpoint's per-expert tensor.
    /// Refused unless the tensor holds exactly `n` experts of that shape.
    pub fn experts(
        &self,
        canonical: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Tensor>, ModelError> {
        if !self.hf_names {
            let t = self.require(canonical)?;
            return (0..n).map(|e| t.expert(e, n, rows, cols)).collect();
        }
        (0..n)
            .map(|e| {
                let name = self
                    .config
                    .arch
                    .hf_name(canonical, Some(e))
                    .ok_or_else(|| ModelError::MissingTensor(format!("{canonical}[{e}]")))?;
                let t = self
                    .tensors
                    .get(&name)
                    .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
                t.expect_matrix(rows, cols)?;
                Ok(t.clone())
            })
            .collect()
    }

    pub fn require(&self, canonical: &str) -> Result<&Tensor, ModelError> {
        self.tensor(canonical)
            .ok_or_else(|| ModelError::MissingTensor(canonical.to_string()))
    }

    /// All tensors in file order, under their names in the file.
    /// What identifies these weights for the KV disk tier: a hash of the
    /// configuration, every tensor's name, type and shape, and the first
    /// and last 4 KiB of its data (reading all of a 400B model's weights
    /// to name it would take minutes).
    pub fn identity(&self) -> tandem_kv::ModelIdentity {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(format!("{:?}", self.config).as_bytes());
        for t in self.tensors() {
            h.update(t.name().as_bytes());
            h.update(format!("{:?}{:?}", t.format(), t.dims()).as_bytes());
            let b = t.bytes();
            let n = b.len().min(4096);
            h.update(&b[..n]);
            h.update(&b[b.len() - n..]);
        }
        tandem_kv::ModelIdentity(h.digest128())
    }

    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.order.iter().filter_map(|n| self.tensors.get(n))
    }
}

fn meta_strings(meta: &Metadata, key: &str) -> Result<Option<Vec<String>>, ModelError> {
    match meta.get_array(key)? {
        None => Ok(None),
        Some(a) => a.as_strings().map(|s| Some(s.to_vec())).ok_or_else(|| {
            ModelError::invalid(
                key,
                format!("expected an array of strings, found {}", a.type_name()),
            )
        }),
    }
}

fn meta_id(meta: &Metadata, key: &str) -> Result<Option<u32>, ModelError> {
    Ok(meta.get_u32(key)?)
}

fn gguf_vocab(meta: &Metadata) -> Result<GgufVocab, ModelError> {
    let model = meta
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| ModelError::MissingHyperparameter("tokenizer.ggml.model".into()))?
        .to_string();
    let tokens = meta_strings(meta, "tokenizer.ggml.tokens")?
        .ok_or_else(|| ModelError::MissingHyperparameter("tokenizer.ggml.tokens".into()))?;
    let scores = match meta.get_array("tokenizer.ggml.scores")? {
        None => None,
        Some(a) => Some(
            a.as_f32s()
                .ok_or_else(|| {
                    ModelError::invalid("tokenizer.ggml.scores", "expected an array of f32")
                })?
                .to_vec(),
        ),
    };
    let token_types = match meta.get_array("tokenizer.ggml.token_type")? {
        None => None,
        Some(a) => Some(match a.as_i32s() {
            Some(v) => v.to_vec(),
            None => a
                .to_i64s()
                .ok_or_else(|| {
                    ModelError::invalid("tokenizer.ggml.token_type", "expected an integer array")
                })?
                .into_iter()
                .map(|x| i32::try_from(x).unwrap_or(0))
                .collect(),
        }),
    };
    Ok(GgufVocab {
        model,
        pre: meta.get_str("tokenizer.ggml.pre")?.map(str::to_owned),
        tokens,
        scores,
        token_types,
        merges: meta_strings(meta, "tokenizer.ggml.merges")?,
        bos_id: meta_id(meta, "tokenizer.ggml.bos_token_id")?,
        eos_id: meta_id(meta, "tokenizer.ggml.eos_token_id")?,
        eot_id: meta_id(meta, "tokenizer.ggml.eot_token_id")?,
        eom_id: meta_id(meta, "tokenizer.ggml.eom_token_id")?,
        unk_id: meta_id(meta, "tokenizer.ggml.unknown_token_id")?,
        add_bos: meta.get_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: meta.get_bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: meta.get_bool("tokenizer.ggml.add_space_prefix")?,
        chat_template: meta.get_str("tokenizer.chat_template")?.map(str::to_owned),
    })
}

/// Only the tokenizer of a model: a `.gguf` file (its tensors are not read,
/// so a vocabulary-only file such as llama.cpp's `models/ggml-vocab-*.gguf`
/// works) or a Hugging Face directory.
pub fn open_tokenizer(path: &Path) -> Result<Tokenizer, ModelError> {
    if path.is_dir() {
        return Ok(Tokenizer::from_hf_dir(path)?);
    }
    let file = GgufFile::open(path)?;
    Ok(Tokenizer::from_gguf_vocab(&gguf_vocab(file.metadata())?)?)
}

fn from_gguf(file: Arc<GgufFile>, fallback_name: Option<&str>) -> Result<ModelFiles, ModelError> {
    let meta = file.metadata();
    let config = ModelConfig::from_gguf(meta)?;
    let tokenizer = Tokenizer::from_gguf_vocab(&gguf_vocab(meta)?)?;
    let mut tensors = HashMap::with_capacity(file.tensors().len());
    let mut order = Vec::with_capacity(file.tensors().len());
    for i in 0..file.tensors().len() {
        let t = Tensor::from_gguf(&file, i)?;
        order.push(t.name().to_string());
        tensors.insert(t.name().to_string(), t);
    }
    let name = meta
        .get_str("general.name")?
        .map(str::to_owned)
        .or(fallback_name.map(str::to_owned));
    let format = SourceFormat::Gguf {
        version: file.version(),
        files: file.n_files(),
    };
    finish(config, tokenizer, format, name, tensors, order, false)
}

/// Vocabulary size and rope factors come from tensors in both formats.
fn finish(
    config: ModelConfig,
    tokenizer: Tokenizer,
    format: SourceFormat,
    name: Option<String>,
    tensors: HashMap<String, Tensor>,
    order: Vec<String>,
    hf_names: bool,
) -> Result<ModelFiles, ModelError> {
    let mut files = ModelFiles {
        config,
        tokenizer,
        format,
        name,
        tensors,
        order,
        hf_names,
    };
    let embd = files.require("token_embd.weight")?;
    let vocab = embd.rows();
    if embd.cols() != files.config.hidden {
        return Err(ModelError::bad_tensor(
            embd.name(),
            format!(
                "{} columns, hidden size is {}",
                embd.cols(),
                files.config.hidden
            ),
        ));
    }
    if files.tokenizer.vocab_size() > vocab {
        return Err(ModelError::bad_tensor(
            embd.name(),
            format!(
                "{vocab} rows for a tokenizer of {} tokens",
                files.tokenizer.vocab_size()
            ),
        ));
    }
    let factors = match files.tensor("rope_freqs.weight") {
        Some(t) => Some(t.to_f32_vec(files.config.rope.n_rot / 2)?),
        None => None,
    };
    files.config = files.config.clone().with_tensor_facts(vocab, factors)?;
    Ok(files)
}

fn read_json(path: &Path) -> Result<Json, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The safetensors files of a directory: the shards an index names, or `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| ModelError::Json {
                path: index.clone(),
                detail: "no weight_map object".into(),
            })?;
        let mut files = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Json {
                path: index.clone(),
                detail: format!("weight_map entry for {tensor} is not a string"),
            })?;
            // Shards must be plain names inside the directory.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(ModelError::Json {
                    path: index.clone(),
                    detail: format!("shard name {file:?} is not a file name"),
                });
            }
            files.insert(file.to_string());
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::UnknownFormat(dir.to_path_buf()))
}

fn map_file(path: &Path) -> Result<Arc<Mmap>, ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    // SAFETY: the file is opened read-only and mapped read-only. As with every
    // mmap-based loader (llama.cpp, safetensors), another process truncating
    // the file while it is mapped is outside what we can guard against.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(Arc::new(map))
}

fn open_hf(dir: &Path) -> Result<ModelFiles, ModelError> {
    let config = ModelConfig::from_hf(&read_json(&dir.join("config.json"))?)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let paths = safetensors_files(dir)?;
    let mut tensors = HashMap::new();
    let mut order = Vec::new();
    for path in &paths {
        let map = map_file(path)?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let data_start = 8 + header_len;
        let mut infos: Vec<_> = meta.tensors().into_iter().collect();
        infos.sort_by_key(|(_, info)| info.data_offsets.0);
        for (name, info) in infos {
            let (a, b) = info.data_offsets;
            let range = data_start + a..data_start + b;
            let t = Tensor::from_safetensors(&name, info.dtype, &info.shape, &map, range).map_err(
                |e| ModelError::Safetensors {
                    path: path.clone(),
                    detail: e.to_string(),
                },
            )?;
            if tensors.insert(name.clone(), t).is_some() {
                return Err(ModelError::Safetensors {
                    path: path.clone(),
                    detail: format!("tensor {name} appears in more than one shard"),
                });
            }
            order.push(name);
        }
    }
    if config.arch == crate::arch::Arch::GptOss {
        crate::arch::split_gpt_oss_experts(&mut tensors, &config)?;
    }
    let name = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    let format = SourceFormat::Safetensors { files: paths.len() };
    finish(config, tokenizer, format, name, tensors, order, true)
}
