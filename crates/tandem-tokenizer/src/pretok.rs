//! llama.cpp's pre-tokenizer: how text is cut into words before BPE.
//!
//! llama.cpp does not run the regexes of `tokenizer.json` as written. It
//! matches a few of them (GPT-2, Llama 3, Qwen 2, Qwen 3.5, Kimi-K2, the
//! digit groupers, the newline splitter) with hand-written scanners, and
//! runs the others with C++ `std::regex` over a *collapsed* text in which
//! every non-ASCII codepoint is replaced by one byte naming its Unicode
//! category (`\p{L}` becomes "that byte or A-Za-z"). Both paths classify
//! codepoints with llama.cpp's own tables, not with the regex engine's
//! Unicode version. To tokenize token for token as llama.cpp does, this
//! module reproduces those rules: the scanners are ports of `unicode.cpp`,
//! and the regex path builds the same collapsed text and rewrites the
//! pattern the same way before handing it to Oniguruma (through the
//! `tokenizers` crate, which already links it).
//!
//! Words are measured in codepoints, as llama.cpp does; each step re-splits
//! every word of the previous step, and a match never crosses a word.

use tokenizers::utils::SysRegex;

use crate::unicode_flags::{RANGES, WHITESPACE};
use crate::TokenizerError;

/// llama.cpp's `unicode_cpt_flags`: one category bit plus whitespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    const NUMBER: u16 = 0x0002;
    const LETTER: u16 = 0x0004;
    const ACCENT_MARK: u16 = 0x0010;
    const PUNCTUATION: u16 = 0x0020;
    const SYMBOL: u16 = 0x0040;
    const CATEGORIES: u16 = 0x00FF;
    const WHITESPACE: u16 = 0x0100;

    pub(crate) fn of(c: char) -> Flags {
        let cp = c as u32;
        let i = RANGES.partition_point(|r| r.0 <= cp);
        let mut f = match i.checked_sub(1).and_then(|i| RANGES.get(i)) {
            Some(r) => r.1,
            None => 0,
        };
        if WHITESPACE.binary_search(&cp).is_ok() {
            f |= Flags::WHITESPACE;
        }
        Flags(f)
    }
    fn is_number(self) -> bool {
        self.0 & Flags::NUMBER != 0
    }
    fn is_letter(self) -> bool {
        self.0 & Flags::LETTER != 0
    }
    fn is_accent_mark(self) -> bool {
        self.0 & Flags::ACCENT_MARK != 0
    }
    fn is_whitespace(self) -> bool {
        self.0 & Flags::WHITESPACE != 0
    }
    /// `as_uint() != 0`: false only past the end of a word.
    fn any(self) -> bool {
        self.0 != 0
    }
    fn category(self) -> u16 {
        self.0 & Flags::CATEGORIES
    }
}

/// llama.cpp's `unicode_cpt_is_han`.
fn is_han(cp: u32) -> bool {
    matches!(cp,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0x2CEB0..=0x2EBEF | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

/// One word being scanned by a hand-written matcher: positions outside
/// `[ini, end)` read as "nothing", exactly as in `unicode.cpp`.
struct Word<'a> {
    cpts: &'a [char],
    flags: &'a [Flags],
    ini: usize,
    end: usize,
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

impl Word<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos] as u32
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            self.flags[pos]
        } else {
            Flags::default()
        }
    }
    /// Ends a word at `end`; returns its length.
    fn add(&mut self, end: usize) -> usize {
        let len = end.saturating_sub(self.prev_end);
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
    /// `'s|'t|'re|'ve|'m|'ll|'d`, case-insensitive or not; the end if matched.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.cpt(pos) != '\'' as u32 || pos + 1 >= self.end {
            return None;
        }
        let low = |c: u32| {
            if fold {
                lower(c)
            } else {
                c
            }
        };
        let next = low(self.cpt(pos + 1));
        if [b's', b't', b'm', b'd'].iter().any(|&b| next == b as u32) {
            return Some(pos + 2);
        }
        if pos + 2 < self.end {
            let nn = low(self.cpt(pos + 2));
            let pair = |a: u8, b: u8| next == a as u32 && nn == b as u32;
            if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                return Some(pos + 3);
            }
        }
        None
    }
    /// `\s*[\r\n]+|\s+(?!\S)|\s+` at `pos`, or a single codepoint.
    fn whitespace_or_one(&mut self, pos: usize, with_newlines: bool) -> usize {
        let mut n = 0;
        let mut last_nl = 0;
        while self.flags(pos + n).is_whitespace() {
            let c = self.cpt(pos + n);
            if c == '\r' as u32 || c == '\n' as u32 {
                last_nl = pos + n + 1;
            }
            n += 1;
        }
        if with_newlines && last_nl > 0 {
            self.add(last_nl);
            return last_nl;
        }
        if n > 1 && self.cpt(pos + n) != OUT_OF_RANGE {
            self.add(pos + n - 1);
            return pos + n - 1;
        }
        if n > 0 {
            self.add(pos + n);
            return pos + n;
        }
        self.add(pos + 1);
        pos + 1
    }
}

/// `unicode_tolower` for the only use the scanners make of it (comparing
/// with ASCII letters): no non-ASCII codepoint lowercases to one of them.
fn lower(c: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&c) {
        c + 32
    } else {
        c
    }
}

fn is_nl(c: u32) -> bool {
    c == '\r' as u32 || c == '\n' as u32
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn scan_gpt2(w: &mut Word) {
    let mut pos = w.ini;
    while pos < w.end {
        let cpt = w.cpt(pos);
        let flags = w.flags(pos);
        if let Some(e) = w.contraction(pos, false) {
            w.add(e);
            pos = e;
            continue;
        }
        let sp = cpt == ' ' as u32;
        let mut f2 = if sp { w.flags(pos + 1) } else { flags };
        if f2.is_letter() || f2.is_number() {
            let letter = f2.is_letter();
            pos += sp as usize;
            while if letter {
                f2.is_letter()
            } else {
                f2.is_number()
            } {
                pos += 1;
                f2 = w.flags(pos);
            }
            w.add(pos);
            continue;
        }
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.any() {
            pos += sp as usize;
            while !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.any() {
                pos += 1;
                f2 = w.flags(pos);
            }
            w.add(pos);
            continue;
        }
        pos = w.whitespace_or_one(pos, false);
    }
}

/// Llama 3 (`\p{N}{1,3}`), Qwen 2 (`\p{N}`) and Qwen 3.5 (letters take
/// combining marks): `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|
/// \p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
fn scan_llama3(w: &mut Word, max_digits: usize, marks: bool) {
    let word_char = |f: Flags| f.is_letter() || (marks && f.is_accent_mark());
    let mut pos = w.ini;
    while pos < w.end {
        let cpt = w.cpt(pos);
        let flags = w.flags(pos);
        if let Some(e) = w.contraction(pos, true) {
            w.add(e);
            pos = e;
            continue;
        }
        if !(is_nl(cpt) || flags.is_number()) && (word_char(flags) || word_char(w.flags(pos + 1))) {
            pos += 1;
            while word_char(w.flags(pos)) {
                pos += 1;
            }
            w.add(pos);
            continue;
        }
        if flags.is_number() {
            let mut ini = pos;
            while w.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= max_digits {
                    w.add(pos);
                    ini = pos;
                }
            }
            w.add(pos);
            continue;
        }
        let sp = cpt == ' ' as u32;
        let mut f2 = if sp { w.flags(pos + 1) } else { flags };
        let other = |f: Flags| !(f.is_whitespace() || word_char(f) || f.is_number());
        // llama.cpp tests `flags` (not `f2`) for "in range" here.
        if other(f2) && flags.any() {
            pos += sp as usize;
            while other(f2) && f2.any() {
                pos += 1;
                f2 = w.flags(pos);
            }
            while is_nl(w.cpt(pos)) {
                pos += 1;
            }
            w.add(pos);
            continue;
        }
        pos = w.whitespace_or_one(pos, true);
    }
}

/// Kimi-K2 (`tokenization_kimi.py`): `[\p{Han}]+|` then the GPT-4o letter
/// patterns without Han, `\p{N}{1,3}`, ` ?[^\s\p{L}\p{N}]+[\r\n]*`,
/// `\s*[\r\n]+|\s+(?!\S)|\s+`, as llama.cpp's scanner implements them.
fn scan_kimi_k2(w: &mut Word) {
    let mut pos = w.ini;
    while pos < w.end {
        let cpt = w.cpt(pos);
        let flags = w.flags(pos);
        if is_han(cpt) {
            while is_han(w.cpt(pos)) {
                pos += 1;
            }
            w.add(pos);
            continue;
        }
        let letter_at = |w: &Word, p: usize| w.flags(p).is_letter() && !is_han(w.cpt(p));
        let leading_ok = !(is_nl(cpt) || flags.is_letter() || flags.is_number());
        if (flags.is_letter() && !is_han(cpt)) || (leading_ok && letter_at(w, pos + 1)) {
            let mut has_leading = false;
            if leading_ok {
                has_leading = true;
                pos += 1;
            }
            let mut has_letters = false;
            while letter_at(w, pos) {
                has_letters = true;
                pos += 1;
            }
            if has_letters || (!has_leading && letter_at(w, pos)) {
                if !has_letters {
                    pos += 1;
                }
                while letter_at(w, pos) {
                    pos += 1;
                }
                if let Some(e) = w.contraction(pos, true) {
                    pos = e;
                }
                w.add(pos);
                continue;
            } else if has_leading {
                pos -= 1;
            }
        }
        if flags.is_number() {
            let mut ini = pos;
            while w.flags(pos).is_number() {
                pos += 1;
                if pos - ini >= 3 {
                    w.add(pos);
                    ini = pos;
                }
            }
            w.add(pos);
            continue;
        }
        let sp = cpt == ' ' as u32;
        let mut f2 = if sp { w.flags(pos + 1) } else { flags };
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.any() {
            pos += sp as usize;
            while !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && f2.any() {
                pos += 1;
                f2 = w.flags(pos);
            }
            while is_nl(w.cpt(pos)) {
                pos += 1;
            }
            w.add(pos);
            continue;
        }
        pos = w.whitespace_or_one(pos, true);
    }
}

/// Digit runs in groups of three from the right (AFMoE, Tiny Aya); other
/// text passes through as one word.
fn scan_digit_groups(w: &mut Word) {
    let mut pos = w.ini;
    while pos < w.end {
        if w.flags(pos).is_number() {
            let start = pos;
            while pos < w.end && w.flags(pos).is_number() {
                pos += 1;
            }
            let count = pos - start;
            let mut cur = start + count % 3;
            if cur > start {
                w.add(cur);
            }
            while cur < start + count {
                cur += 3;
                w.add(cur);
            }
            continue;
        }
        pos += 1;
    }
    if w.prev_end < w.end {
        w.add(w.end);
    }
}

/// `[^\n]+|[\n]+`
fn scan_newlines(w: &mut Word) {
    let mut pos = w.ini;
    while pos < w.end {
        let nl = w.cpts[pos] == '\n';
        let start = pos;
        while pos < w.end && (w.cpts[pos] == '\n') == nl {
            pos += 1;
        }
        w.out.push(pos - start);
    }
}

/// What a `\p{..}` becomes in a collapsed pattern: the category's marker
/// codepoint and its ASCII members (llama.cpp's `k_ucat_cpt`, `k_ucat_map`).
fn collapsed_class(name: &str) -> Option<&'static str> {
    Some(match name {
        "N" => r"\x{D1}0-9",
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => r"\x{D2}A-Za-z",
        "P" => {
            r"\x{D3}\x{21}-\x{23}\x{25}-\x{2A}\x{2C}-\x{2F}\x{3A}-\x{3B}\x{3F}-\x{40}\x{5B}-\x{5D}\x{5F}\x{7B}\x{7D}"
        }
        "M" => r"\x{D4}",
        "S" => r"\x{D5}\x{24}\x{2B}\x{3C}-\x{3E}\x{5E}\x{60}\x{7C}\x{7E}",
        _ => return None,
    })
}

/// The marker codepoint of a collapsed non-ASCII codepoint.
fn collapse(c: char, f: Flags) -> char {
    if (c as u32) < 128 {
        return c;
    }
    if f.is_whitespace() {
        return '\x0B';
    }
    match f.category() {
        Flags::NUMBER => '\u{D1}',
        Flags::LETTER => '\u{D2}',
        Flags::PUNCTUATION => '\u{D3}',
        Flags::ACCENT_MARK => '\u{D4}',
        Flags::SYMBOL => '\u{D5}',
        _ => '\u{D0}',
    }
}

/// C++ `std::regex` `\s` (the C locale's `isspace`).
const SPACE_CLASS: &str = r"\t\n\x{0B}\x{0C}\r\x{20}";

/// Rewrites an ECMAScript pattern of llama.cpp's for Oniguruma, collapsing
/// `\p{..}` as llama.cpp does when `collapsed`. `$` becomes `\z` (end of
/// the word, as in ECMAScript; Ruby syntax would match before a newline).
fn translate(expr: &str, collapsed: bool) -> Result<String, TokenizerError> {
    let bad =
        |why: &str| TokenizerError::Unsupported(format!("pre-tokenizer regex {expr:?}: {why}"));
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev_bs = i > 0 && chars[i - 1] == '\\';
        if c == '[' && !prev_bs {
            inside = true;
            out.push('[');
            i += 1;
            continue;
        }
        if c == ']' && inside && !prev_bs {
            inside = false;
            out.push(']');
            i += 1;
            continue;
        }
        if c == '$' && !inside && !prev_bs {
            out.push_str(r"\z");
            i += 1;
            continue;
        }
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&n) = chars.get(i + 1) else {
            return Err(bad("ends with a backslash"));
        };
        match n {
            's' => {
                if inside {
                    out.push_str(SPACE_CLASS);
                } else {
                    out.push('[');
                    out.push_str(SPACE_CLASS);
                    out.push(']');
                }
                i += 2;
            }
            'S' if !inside => {
                out.push_str("[^");
                out.push_str(SPACE_CLASS);
                out.push(']');
                i += 2;
            }
            'd' => {
                out.push_str(if inside { "0-9" } else { "[0-9]" });
                i += 2;
            }
            'p' if collapsed && chars.get(i + 2) == Some(&'{') => {
                let close = chars[i + 3..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| bad("unclosed \\p{"))?;
                let name: String = chars[i + 3..i + 3 + close].iter().collect();
                let class = collapsed_class(&name)
                    .ok_or_else(|| bad(&format!("unknown category \\p{{{name}}}")))?;
                if inside {
                    out.push_str(class);
                } else {
                    out.push('[');
                    out.push_str(class);
                    out.push(']');
                }
                i += 4 + close;
            }
            'S' | 'D' | 'w' | 'W' | 'b' | 'B' | 'p' | 'P' => {
                return Err(bad(&format!("\\{n} is not supported here")))
            }
            _ => {
                out.push('\\');
                out.push(n);
                i += 2;
            }
        }
    }
    Ok(out)
}

/// llama.cpp's list of categories that make a regex run on collapsed text.
fn uses_categories(expr: &str) -> bool {
    ["N", "L", "P", "M", "S", "Lu", "Ll", "Lt", "Lm", "Lo"]
        .iter()
        .any(|c| expr.contains(&format!("\\p{{{c}}}")))
}

enum Step {
    Gpt2,
    Llama3 { max_digits: usize, marks: bool },
    KimiK2,
    DigitGroups,
    Newlines,
    Regex { re: SysRegex, collapsed: bool },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Gpt2 => f.write_str("Gpt2"),
            Step::Llama3 { max_digits, marks } => write!(f, "Llama3({max_digits}, {marks})"),
            Step::KimiK2 => f.write_str("KimiK2"),
            Step::DigitGroups => f.write_str("DigitGroups"),
            Step::Newlines => f.write_str("Newlines"),
            Step::Regex { collapsed, .. } => write!(f, "Regex(collapsed: {collapsed})"),
        }
    }
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_I: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A sequence of split steps, as `unicode_regex_split` runs them.
#[derive(Debug)]
pub(crate) struct Splitter {
    steps: Vec<Step>,
}

impl Splitter {
    /// The steps for llama.cpp's regex list, with its hand-written scanners
    /// chosen by the same exact-text comparison (`unicode_regex_split_custom`).
    pub(crate) fn new(exprs: &[&str]) -> Result<Splitter, TokenizerError> {
        let mut steps = Vec::with_capacity(exprs.len());
        for &e in exprs {
            let step = match e {
                GPT2 => Step::Gpt2,
                LLAMA3_I | LLAMA3 => Step::Llama3 {
                    max_digits: 3,
                    marks: false,
                },
                QWEN2 => Step::Llama3 {
                    max_digits: 1,
                    marks: false,
                },
                QWEN35 => Step::Llama3 {
                    max_digits: 1,
                    marks: true,
                },
                r"\p{Han}+" => Step::KimiK2,
                r"\p{AFMoE_digits}" | r"\d{1,3}(?=(?:\d{3})*\b)" => Step::DigitGroups,
                r"[^\n]+|[\n]+" => Step::Newlines,
                _ => {
                    let collapsed = uses_categories(e);
                    if collapsed && !e.is_ascii() {
                        return Err(TokenizerError::Unsupported(format!(
                            "pre-tokenizer regex {e:?} mixes categories and non-ASCII text"
                        )));
                    }
                    let pattern = translate(e, collapsed)?;
                    let re = SysRegex::new(&pattern).map_err(|err| {
                        TokenizerError::invalid(format!("pre-tokenizer regex {e:?}"), err)
                    })?;
                    Step::Regex { re, collapsed }
                }
            };
            steps.push(step);
        }
        Ok(Splitter { steps })
    }

    /// The words of `text`, in order; their concatenation is `text`.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<Flags> = cpts.iter().map(|&c| Flags::of(c)).collect();
        let mut offsets = vec![cpts.len()];
        let mut collapsed_text: Option<Vec<char>> = None;
        let mut plain_text: Option<Vec<char>> = None;
        for step in &self.steps {
            let mut out = Vec::with_capacity(offsets.len() * 2);
            let mut start = 0;
            for &len in &offsets {
                let end = start + len;
                if let Step::Regex { re, collapsed } = step {
                    let view = if *collapsed {
                        collapsed_text.get_or_insert_with(|| {
                            cpts.iter()
                                .zip(&flags)
                                .map(|(&c, &f)| collapse(c, f))
                                .collect()
                        })
                    } else {
                        plain_text.get_or_insert_with(|| {
                            cpts.iter()
                                .zip(&flags)
                                .map(|(&c, &f)| {
                                    if c as u32 > 0x7F && f.is_whitespace() {
                                        '\x0B'
                                    } else {
                                        c
                                    }
                                })
                                .collect()
                        })
                    };
                    regex_split(re, &view[start..end], &mut out);
                } else {
                    let mut w = Word {
                        cpts: &cpts,
                        flags: &flags,
                        ini: start,
                        end,
                        prev_end: start,
                        out: &mut out,
                    };
                    match step {
                        Step::Gpt2 => scan_gpt2(&mut w),
                        Step::Llama3 { max_digits, marks } => {
                            scan_llama3(&mut w, *max_digits, *marks)
                        }
                        Step::KimiK2 => scan_kimi_k2(&mut w),
                        Step::DigitGroups => scan_digit_groups(&mut w),
                        Step::Newlines => scan_newlines(&mut w),
                        Step::Regex { .. } => {}
                    }
                }
                start = end;
            }
            offsets = out;
        }
        // Codepoint lengths back to byte slices of the original text.
        let mut words = Vec::with_capacity(offsets.len());
        let mut chars = text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()));
        let mut from = 0usize;
        let _ = chars.next();
        for len in offsets {
            if len == 0 {
                continue;
            }
            let to = chars.nth(len - 1).unwrap_or(text.len());
            words.push(&text[from..to]);
            from = to;
        }
        words
    }
}

/// `unicode_regex_split_stl`: matches and the gaps between them, in order.
fn regex_split(re: &SysRegex, word: &[char], out: &mut Vec<usize>) {
    let s: String = word.iter().collect();
    let mut prev_cp = 0usize;
    let mut prev_byte = 0usize;
    let count = |from: usize, to: usize| s.get(from..to).map_or(0, |t| t.chars().count());
    for (a, b) in re.find_iter(&s) {
        // An empty match adds no word but ends the text before it (SuperBPE's
        // digit grouping is nothing but empty matches).
        let start_cp = prev_cp + count(prev_byte, a);
        if start_cp > prev_cp {
            out.push(start_cp - prev_cp);
        }
        let len = count(a, b);
        if len > 0 {
            out.push(len);
        }
        prev_cp = start_cp + len;
        prev_byte = b;
    }
    if prev_cp < word.len() {
        out.push(word.len() - prev_cp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(exprs: &[&str], text: &str) -> Vec<String> {
        Splitter::new(exprs)
            .unwrap()
            .split(text)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn flags_follow_llama_cpp_tables() {
        assert!(Flags::of('a').is_letter());
        assert!(Flags::of('é').is_letter());
        assert!(Flags::of('7').is_number());
        assert!(Flags::of('\u{3000}').is_whitespace());
        assert!(Flags::of('\u{0301}').is_accent_mark());
        assert!(!Flags::of('\u{10FFFF}').is_letter());
    }

    #[test]
    fn gpt2_scanner() {
        assert_eq!(
            split(&[GPT2], "Hello world's  123 !!"),
            ["Hello", " world", "'s", " ", " 123", " !!"]
        );
    }

    #[test]
    fn llama3_scanner_groups_digits_by_three() {
        assert_eq!(
            split(&[LLAMA3], "12345 ab\n\n x"),
            ["123", "45", " ab", "\n\n", " x"]
        );
    }

    #[test]
    fn collapsed_regex_matches_categories() {
        // DeepSeek-V3's first step: runs of at most three digits, any script.
        assert_eq!(split(&[r"\p{N}{1,3}"], "a12345٣"), ["a", "123", "45٣"]);
    }

    #[test]
    fn words_cover_the_text() {
        let text = "¡Hola! 你好，世界 123456 \u{3000}x\r\n";
        for exprs in [
            &[GPT2][..],
            &[LLAMA3],
            &[QWEN35],
            &[r"\p{Han}+"],
            &[r"\s+$", r"\p{N}+"],
        ] {
            assert_eq!(split(exprs, text).concat(), text);
        }
    }
}
