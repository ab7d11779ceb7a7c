//! The bundled default model: tandem-tiny, the project's own ~2M-parameter
//! Llama-architecture model trained by `tools/fixtures/make_models.py` on the
//! Python language reference shipped with CPython (PSF license). It is small
//! enough to live inside the binary, so `tandem run` works with no download.

pub const NAME: &str = "tandem-tiny (bundled)";
pub static GGUF: &[u8] =
    include_bytes!("../../../fixtures/models/tandem-tiny/gguf/tandem-tiny-Q8_0.gguf");
