//! A small but real byte-level BPE vocabulary (`tokenizer.ggml.model =
//! "gpt2"`) padded to the shape's vocabulary size.
//!
//! Layout: the 256 byte tokens (GPT-2's byte-to-unicode alphabet), the
//! tokens a short list of English merges produces, `[PAD{i}]` fillers of
//! type UNUSED (as llama.cpp's converter pads), then the architecture's
//! special tokens (type CONTROL) in the last ids. Both llama.cpp and tandem
//! load it: every merge joins two existing tokens into an existing token.

use super::shape::VocabStyle;
use crate::BenchError;

/// `tokenizer.ggml.token_type` values.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// Merges in byte-level spelling (`Ġ` is a space), in rank order.
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġ", "a"),
    ("i", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("Ġ", "w"),
    ("o", "r"),
    ("l", "l"),
    ("e", "n"),
    ("Ġ", "h"),
    ("a", "t"),
    ("Ġ", "c"),
    ("i", "s"),
    ("Ġ", "o"),
    ("e", "s"),
    ("Ġ", "b"),
    ("i", "t"),
    ("a", "n"),
    ("Ġ", "f"),
    ("Ġ", "p"),
    ("e", "d"),
    ("in", "g"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġw", "or"),
    ("Ġwor", "l"),
    ("Ġworl", "d"),
    ("Ġ", "l"),
    ("o", "u"),
    ("Ġ", "m"),
    ("Ġ", "d"),
    ("a", "r"),
    ("Ġ", "in"),
    ("Ġ", "is"),
    ("Ġa", "n"),
    ("Ġan", "d"),
];

/// The `tokenizer.*` metadata of a synthetic file.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub pre: &'static str,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub chat_template: &'static str,
}

const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
pub fn byte_char(b: u8) -> char {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable {
        char::from(b)
    } else {
        // The n-th non-printable byte maps to U+0100 + n.
        let n = (0..b)
            .filter(|&x| !((33..=126).contains(&x) || (161..=172).contains(&x) || x >= 174))
            .count() as u32;
        char::from_u32(256 + n).unwrap_or('?')
    }
}

/// Builds the vocabulary for `size` tokens.
pub fn build(style: VocabStyle, size: usize) -> Result<Vocab, BenchError> {
    let specials: &[&str] = match style {
        VocabStyle::Llama3 => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        VocabStyle::Qwen2 => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    };
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut merges = Vec::with_capacity(MERGES.len());
    for (l, r) in MERGES {
        let joined = format!("{l}{r}");
        if !tokens.iter().any(|t| t == l) || !tokens.iter().any(|t| t == r) {
            return Err(BenchError::Invalid(format!(
                "merge {l} {r}: a half is not a token"
            )));
        }
        if !tokens.contains(&joined) {
            tokens.push(joined);
        }
        merges.push(format!("{l} {r}"));
    }
    let n_normal = tokens.len();
    if size < n_normal + specials.len() {
        return Err(BenchError::Invalid(format!(
            "a vocabulary of {size} tokens cannot hold the {} base tokens",
            n_normal + specials.len()
        )));
    }
    let first_special = size - specials.len();
    let mut types = vec![NORMAL; n_normal];
    for i in n_normal..first_special {
        tokens.push(format!("[PAD{i}]"));
        types.push(UNUSED);
    }
    for s in specials {
        tokens.push((*s).to_string());
        types.push(CONTROL);
    }
    let id = |k: usize| (first_special + k) as u32;
    Ok(match style {
        VocabStyle::Llama3 => Vocab {
            pre: "llama-bpe",
            tokens,
            types,
            merges,
            bos: id(0),
            eos: id(1),
            eot: Some(id(4)),
            add_bos: true,
            chat_template: LLAMA3_TEMPLATE,
        },
        VocabStyle::Qwen2 => Vocab {
            pre: "qwen2",
            tokens,
            types,
            merges,
            bos: id(0),
            eos: id(2),
            eot: None,
            add_bos: false,
            chat_template: CHATML_TEMPLATE,
        },
    })
}
