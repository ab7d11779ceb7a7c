/// Errors of generation and evaluation, wrapping the layers below.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] tandem_model::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] tandem_tokenizer::TokenizerError),
    #[error(transparent)]
    Sampling(#[from] crate::sampler::SamplingError),
    #[error(transparent)]
    Template(#[from] crate::chat::ChatTemplateError),
    #[error(
        "the prompt is {prompt} tokens, longer than the context of {ctx} tokens (raise --ctx-size)"
    )]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
    #[error("the text tokenizes to {tokens} tokens; perplexity with a context of {ctx} needs at least {needed}")]
    TextTooShort {
        tokens: usize,
        ctx: usize,
        needed: usize,
    },
    /// The cache handed to `generate` does not hold a proper prefix of the
    /// prompt (a caller's bug, reported instead of wrong output).
    #[error("the KV cache holds {cached} tokens that are not a proper prefix of the {prompt}-token prompt")]
    CacheMismatch { cached: usize, prompt: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
