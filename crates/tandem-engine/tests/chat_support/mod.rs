//! Shared driver for the generated chat-template tests.

use tandem_engine::chat::{ChatMessage, ChatTemplate, ChatTemplateError, TemplateKwargs};

/// One rendering case: inputs, and jinja2's output (`Ok`) or `raise_exception` message (`Err`).
pub struct Case {
    pub template: &'static str,
    pub bos: Option<&'static str>,
    pub eos: Option<&'static str>,
    pub messages: &'static [(&'static str, &'static str)],
    pub add_generation_prompt: bool,
    /// Extra template variables, each as JSON text.
    pub kwargs: &'static [(&'static str, &'static str)],
    pub expected: Result<&'static str, &'static str>,
}

pub fn load_template(file: &str) -> String {
    let path = format!("{}/tests/data/templates/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn check(case: Case) {
    let source = load_template(case.template);
    let template = ChatTemplate::new(
        &source,
        case.bos.map(str::to_owned),
        case.eos.map(str::to_owned),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.template));
    let messages: Vec<ChatMessage> = case
        .messages
        .iter()
        .map(|&(role, content)| ChatMessage::new(role, content))
        .collect();
    let mut kwargs = TemplateKwargs::new();
    for &(name, json) in case.kwargs {
        kwargs = kwargs.set_json(name, json).unwrap();
    }
    let got = template.render_with(&messages, case.add_generation_prompt, &kwargs);
    match (got, case.expected) {
        (Ok(got), Ok(want)) => {
            if got != want {
                let at = got
                    .char_indices()
                    .zip(want.chars())
                    .find(|((_, a), b)| a != b)
                    .map(|((i, _), _)| i)
                    .unwrap_or(got.len().min(want.len()));
                panic!(
                    "{}: output differs from jinja2 at byte {at}\n--- got ---\n{got}\n--- want ---\n{want}\n--- got (debug) ---\n{got:?}\n--- want (debug) ---\n{want:?}",
                    case.template
                );
            }
        }
        (Err(ChatTemplateError::Raised(got)), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("{}: got {got:?}, want {want:?}", case.template),
    }
}
