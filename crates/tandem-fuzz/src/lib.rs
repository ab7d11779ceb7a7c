//! # tandem-fuzz
//!
//! What each fuzz target of `fuzz/` does with its input, as plain
//! functions: the cargo-fuzz crate (nightly, sanitizers, not a workspace
//! member) calls them, and `tests/replay.rs` runs every input kept under
//! `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/` through them
//! with an ordinary `cargo test` on stable. A target passes an input when
//! it returns (errors are fine); a panic, abort, hang or allocation beyond
//! the fuzzer's limit is a finding.
//!
//! Each function calls the crates' public APIs only. Inputs that must be
//! files (a model directory, a KV page) are written under a scratch
//! directory of this process.

pub mod small_seeds;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by the names of `fuzz/fuzz_targets/*.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf_header", gguf_header),
    ("gguf_model", gguf_model),
    ("hf_config", hf_config),
    ("tokenizer_json", tokenizer_json),
    ("gguf_vocab", gguf_vocab),
    ("chat_template", chat_template),
    ("kv_page", kv_page),
    ("request_body", request_body),
];

/// The directory of this process's scratch files.
fn scratch_root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("tandem-fuzz-{}", std::process::id()))
    })
}

/// A scratch directory of one call, removed when dropped. Each call gets
/// its own: two threads of one process (the replay tests run in
/// parallel) writing one shared `model.gguf` while the other has it
/// mapped would truncate a live mapping under it (SIGBUS).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = scratch_root().join(n.to_string());
        let _ = std::fs::create_dir_all(&d);
        Scratch(d)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The process's directory goes with its last call (it stays while
        // another call of a parallel test is using it).
        let _ = std::fs::remove_dir(scratch_root());
    }
}

/// GGUF header, metadata and tensor table: parse, read every value and
/// every tensor's data.
pub fn gguf_header(data: &[u8]) {
    let Ok(file) = tandem_gguf::GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata().iter() {
        std::hint::black_box((key, value.type_name(), value.as_u64(), value.as_str()));
    }
    for t in file.tensors() {
        std::hint::black_box(file.tensor_data(t).len());
    }
}

/// A GGUF model file: metadata to configuration and tokenizer, tensor
/// table against the data for every weight type, then the load itself
/// (one thread, no NUMA).
pub fn gguf_model(data: &[u8]) {
    let scratch = Scratch::new();
    let path = scratch.join("model.gguf");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(files) = tandem_model::ModelFiles::open(&path) else {
        return;
    };
    let opts = tandem_model::LoadOptions {
        numa: tandem_model::NumaMode::Off,
        threads: Some(1),
        pin: false,
        ..Default::default()
    };
    let _ = tandem_model::Model::load_with(files, &opts);
}

/// An HF `config.json`, for every architecture the seeds carry.
pub fn hf_config(data: &[u8]) {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = tandem_model::ModelConfig::from_hf(&json);
    }
}

/// A `tokenizer.json` (alone in a model directory): load, then encode and
/// decode a short text.
pub fn tokenizer_json(data: &[u8]) {
    let scratch = Scratch::new();
    let dir = scratch.join("hf");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("tokenizer.json"), data).is_err() {
        return;
    }
    if let Ok(tok) = tandem_tokenizer::Tokenizer::from_hf_dir(&dir) {
        exercise(&tok);
    }
}

/// A GGUF vocabulary: the first byte picks the tokenizer model, the rest
/// is split at `\n` into token texts; scores, token types and merges are
/// derived from them, so every model's loader sees fuzzed vocabularies.
pub fn gguf_vocab(data: &[u8]) {
    const MODELS: [&str; 6] = ["llama", "gpt2", "bert", "t5", "rwkv", "none"];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let tokens: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = tokens.len();
    let vocab = tandem_tokenizer::GgufVocab {
        model: MODELS[pick as usize % MODELS.len()].to_owned(),
        pre: (pick & 0x40 != 0).then(|| ["llama-bpe", "qwen2", "default"][n % 3].to_owned()),
        scores: (pick & 0x08 != 0).then(|| (0..n).map(|i| -(i as f32)).collect()),
        token_types: (pick & 0x10 != 0).then(|| {
            tokens
                .iter()
                .map(|t| i32::from(t.bytes().next().unwrap_or(1) % 7))
                .collect()
        }),
        merges: (pick & 0x20 != 0).then(|| {
            tokens
                .windows(2)
                .map(|w| format!("{} {}", w[0], w[1]))
                .collect()
        }),
        bos_id: Some(0),
        eos_id: Some((n as u32).saturating_sub(1)),
        unk_id: (pick & 0x80 != 0).then_some(n as u32 / 2),
        add_bos: Some(pick & 1 != 0),
        add_space_prefix: Some(pick & 2 != 0),
        tokens,
        ..Default::default()
    };
    if let Ok(tok) = tandem_tokenizer::Tokenizer::from_gguf_vocab(&vocab) {
        exercise(&tok);
    }
}

fn exercise(tok: &tandem_tokenizer::Tokenizer) {
    for text in ["Hello world! 12345 <s> ", "\u{1F600} caf\u{e9}\n\n", ""] {
        if let Ok(ids) = tok.encode(text, true) {
            let _ = tok.decode(&ids);
        }
    }
    let n = tok.vocab_size().min(300) as u32;
    let _ = tok.decode(&(0..n).collect::<Vec<u32>>());
    let _ = tok.decode(&[u32::MAX, n]);
}

/// A chat template and a conversation: the input up to the first NUL is
/// the template, the rest is split at NULs into messages (roles cycle
/// through system, user, assistant, tool). Rendered once under the
/// renderer's budget, with the generation prompt when the input's length is odd.
pub fn chat_template(data: &[u8]) {
    use tandem_engine::chat::{ChatMessage, ChatTemplate};
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let roles = ["system", "user", "assistant", "tool"];
    let messages: Vec<ChatMessage> = parts
        .enumerate()
        .map(|(i, m)| ChatMessage::new(roles[i % roles.len()], m))
        .collect();
    let Ok(t) = ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into())) else {
        return;
    };
    // One render per input (a template that burns its fuel costs the whole
    // fuel each time); the input's length picks the generation prompt.
    let _ = t.render(&messages, data.len() % 2 == 1);
}

/// A KV disk-tier page file: the input is the file of the first page of
/// a fixed prompt; a new store over the directory looks the prompt up.
/// A file used must give back exactly its rows; any other is a miss.
pub fn kv_page(data: &[u8]) {
    use tandem_kv::{chain_hash, DiskTier, KvStore, ROOT_HASH};
    let scratch = Scratch::new();
    let dir = scratch.join("kv");
    let id = KV_PAGE_ID;
    let geom = kv_geometry();
    let Ok(disk) = DiskTier::open(&dir, id, 1 << 20) else {
        return;
    };
    let file = disk.dir().join(format!(
        "{:016x}.page",
        chain_hash(ROOT_HASH, KV_PAGE_TOKENS)
    ));
    if std::fs::write(&file, data).is_err() {
        return;
    }
    // Reopened so the file is indexed.
    drop(disk);
    let Ok(disk) = DiskTier::open(&dir, id, 1 << 20) else {
        return;
    };
    let Ok(store) = KvStore::new_tiered(geom, 2, &[None], Some(disk)) else {
        return;
    };
    let prompt: Vec<u32> = KV_PAGE_TOKENS.iter().copied().chain([9]).collect();
    let seq = store.sequence_with_prefix(&prompt);
    assert!(seq.is_empty() || seq.tokens() == KV_PAGE_TOKENS);
    drop(seq);
    let _ = std::fs::remove_file(&file);
}

/// A server request: the first byte picks the endpoint
/// ([`tandem_server::Endpoint::ALL`]), the rest is the body. Everything
/// the server does with a body before the engine runs it
/// ([`tandem_server::check_request`]: parsing, parameter checks, the
/// tiny Qwen2 fixture's chat template, tokenization, the context budget)
/// on a server that has loaded that model.
pub fn request_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Some(state) = request_body_state() else {
        return;
    };
    let all = tandem_server::Endpoint::ALL;
    let _ = tandem_server::check_request(state, all[pick as usize % all.len()], body);
}

/// The server `request_body` talks to: the tiny Qwen2 fixture (Q8_0)
/// loaded once, with an engine of a 256-token context.
pub fn request_body_state() -> Option<&'static tandem_server::AppState> {
    use std::sync::Arc;
    static STATE: OnceLock<Option<Arc<tandem_server::AppState>>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/models/tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf");
            let files = tandem_model::ModelFiles::open(&path).ok()?;
            let opts = tandem_model::LoadOptions {
                numa: tandem_model::NumaMode::Off,
                threads: Some(1),
                pin: false,
                ..Default::default()
            };
            let model = Arc::new(tandem_model::Model::load_with(files, &opts).ok()?);
            let store = model.new_kv_store(model.kv_options(), 1 << 22).ok()?;
            let engine = tandem_engine::engine::Engine::start(
                Arc::clone(&model),
                store,
                tandem_engine::engine::EngineConfig {
                    max_batch: 1,
                    ctx: 256,
                    ..Default::default()
                },
            );
            let template =
                tandem_engine::chat::ChatTemplate::of_tokenizer(&model.tokenizer).ok()?;
            let state = tandem_server::AppState::new(tandem_server::ServerConfig {
                model_name: "tiny".into(),
                ..Default::default()
            });
            state.set_ready(tandem_server::Ready {
                engine: Arc::new(engine),
                model,
                template,
            });
            Some(state)
        })
        .as_deref()
}

/// Seeds of `request_body`: one well-formed request per endpoint and a
/// few that use every parameter (the first byte picks the endpoint).
pub fn request_body_seeds() -> Vec<Vec<u8>> {
    let bodies: [(u8, &str); 6] = [
        (
            0,
            r#"{"prompt":"Once upon a time","max_tokens":8,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"seed":3,"stop":["\n","end"],"presence_penalty":0.5,"frequency_penalty":0.2,"logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (0, r#"{"prompt":[1,2,3,4],"max_tokens":4,"n":1}"#),
        (
            1,
            r#"{"model":"tiny","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":[{"type":"text","text":"What is 2+2?"}]}],"max_completion_tokens":16,"logprobs":true,"top_logprobs":3,"stop":"\n\n"}"#,
        ),
        (
            1,
            r#"{"messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],"chat_template_kwargs":{"enable_thinking":false}}"#,
        ),
        (
            2,
            r#"{"content":"Hello world","add_special":true,"with_pieces":true}"#,
        ),
        (3, r#"{"tokens":[1,2,3,100,200]}"#),
    ];
    bodies
        .iter()
        .map(|(e, b)| {
            let mut v = vec![*e];
            v.extend_from_slice(b.as_bytes());
            v
        })
        .collect()
}

/// The tokens of the page `kv_page` looks up.
pub const KV_PAGE_TOKENS: &[u32] = &[1, 2, 3, 4];

#[allow(clippy::single_range_in_vec_init)] // one node
fn kv_geometry() -> tandem_kv::KvGeometry {
    tandem_kv::KvGeometry {
        values: Default::default(),
        n_layers: 1,
        head_dim: 32,
        page_tokens: KV_PAGE_TOKENS.len(),
        format: tandem_kv::KvFormat::Q8_0,
        node_heads: vec![0..1],
        windows: Vec::new(),
    }
}

/// A valid file of the page `kv_page` looks up (its seed).
pub fn kv_page_seed() -> Vec<u8> {
    use tandem_kv::{DiskTier, KvStore};
    let scratch = Scratch::new();
    let dir = scratch.join("kv-seed");
    let _ = std::fs::remove_dir_all(&dir);
    let seed = (|| {
        let disk = DiskTier::open(&dir, KV_PAGE_ID, 1 << 20).ok()?;
        let store = KvStore::new_tiered(kv_geometry(), 2, &[None], Some(disk)).ok()?;
        let mut seq = store.new_sequence();
        seq.append_rows(KV_PAGE_TOKENS, |k, row| {
            for (i, b) in row.iter_mut().enumerate() {
                *b = (k.pos * 7 + k.kv * 3 + i) as u8;
            }
        })
        .ok()?;
        store.persist();
        let path = store.disk()?.dir().join(format!(
            "{:016x}.page",
            tandem_kv::chain_hash(tandem_kv::ROOT_HASH, KV_PAGE_TOKENS)
        ));
        std::fs::read(path).ok()
    })();
    let _ = std::fs::remove_dir_all(&dir);
    seed.unwrap_or_default()
}

const KV_PAGE_ID: tandem_kv::ModelIdentity = tandem_kv::ModelIdentity(0xF022);
