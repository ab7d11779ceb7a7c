//! `tandem tokenize`: llama.cpp's `llama-tokenize`, with the same flags,
//! defaults and output, so the two can be compared byte for byte. Only the
//! vocabulary is read, so a vocabulary-only GGUF works.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tandem_tokenizer::Tokenizer;

#[derive(Args)]
pub struct TokenizeArgs {
    /// A .gguf file (a vocabulary-only one will do) or a Hugging Face
    /// directory (default: the bundled tandem-tiny model).
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// Read the text from a file (verbatim; takes precedence over --prompt).
    #[arg(long, short = 'f', value_name = "FNAME")]
    file: Option<PathBuf>,
    /// Read the text from standard input (takes precedence over the others).
    #[arg(long)]
    stdin: bool,
    /// Only print the token ids, as a list like [1, 2, 3].
    #[arg(long)]
    ids: bool,
    /// Do not add a BOS token even if the model asks for one.
    #[arg(long)]
    no_bos: bool,
    /// Do not recognise special-token text (llama.cpp: parse_special = false).
    #[arg(long)]
    no_parse_special: bool,
    /// Print the number of tokens at the end.
    #[arg(long)]
    show_count: bool,
    /// Process escape sequences (\n, \r, \t, \', \", \\, \xHH) (the default).
    #[arg(long, short = 'e', overrides_with = "no_escape")]
    escape: bool,
    /// Take the text as it is.
    #[arg(long)]
    no_escape: bool,
}

/// llama.cpp's `string_process_escapes`, byte for byte.
fn process_escapes(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' && i + 1 < input.len() {
            i += 1;
            match input[i] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'\'' => out.push(b'\''),
                b'"' => out.push(b'"'),
                b'\\' => out.push(b'\\'),
                c => {
                    // \xHH: two bytes that C's strtol(.., 16) reads whole.
                    let hex = if c == b'x' && i + 2 < input.len() {
                        strtol16(&input[i + 1..i + 3])
                    } else {
                        None
                    };
                    match hex {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => {
                            out.push(b'\\');
                            out.push(c);
                        }
                    }
                }
            }
        } else {
            out.push(input[i]);
        }
        i += 1;
    }
    out
}

/// C's `strtol(s, &end, 16)` on two bytes, if it reads both of them: leading
/// white space and a sign are allowed, the value is taken modulo 256.
fn strtol16(s: &[u8]) -> Option<u8> {
    let mut j = 0;
    if s.first()
        .is_some_and(|c| c.is_ascii_whitespace() || *c == 0x0B)
    {
        j += 1;
    }
    let neg = match s.get(j) {
        Some(b'-') => {
            j += 1;
            true
        }
        Some(b'+') => {
            j += 1;
            false
        }
        _ => false,
    };
    let digits = s.get(j..)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let v = digits.iter().fold(0i32, |acc, &d| {
        acc * 16 + (d as char).to_digit(16).unwrap_or(0) as i32
    });
    Some((if neg { -v } else { v }) as u8)
}

fn open(model: Option<&PathBuf>) -> anyhow::Result<Tokenizer> {
    match model {
        Some(p) => tandem_model::source::open_tokenizer(p)
            .with_context(|| format!("cannot load the vocabulary of {}", p.display())),
        None => Ok(crate::load::open_files(None)?.tokenizer),
    }
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let escape = !args.no_escape || args.escape;
    let raw: Vec<u8> = if args.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        buf
    } else if let Some(f) = &args.file {
        std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
    } else if let Some(p) = &args.prompt {
        p.clone().into_bytes()
    } else {
        bail!("must specify one of: --stdin, --file or --prompt");
    };
    let bytes = if escape { process_escapes(&raw) } else { raw };
    let text = String::from_utf8(bytes).context("the text is not valid UTF-8")?;
    let tok = open(args.model.as_ref())?;

    let add_special = tok.adds_bos() && !args.no_bos;
    let ids = tok.encode_with(&text, add_special, !args.no_parse_special)?;

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.ids {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "[{}]", list.join(", "))?;
    } else {
        for &id in &ids {
            write!(out, "{id:6} -> '")?;
            out.write_all(&tok.token_piece(id)?)?;
            writeln!(out, "'")?;
        }
    }
    if args.show_count {
        writeln!(out, "Total number of tokens: {}", ids.len())?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::process_escapes;

    #[test]
    fn escapes_as_llama_cpp() {
        assert_eq!(process_escapes(br#"a\nb\tc\\d\'\""#), b"a\nb\tc\\d'\"");
        assert_eq!(process_escapes(br"\x41\x42z"), b"ABz");
        assert_eq!(process_escapes(br"\x41"), b"A");
        // Fewer than two bytes after the x: kept as written.
        assert_eq!(process_escapes(br"\x4"), br"\x4");
        assert_eq!(process_escapes(br"\q\xZZ1"), br"\q\xZZ1");
        assert_eq!(process_escapes(br"end\"), br"end\");
        assert_eq!(process_escapes(br"\x-1z"), b"\xFFz");
    }
}
