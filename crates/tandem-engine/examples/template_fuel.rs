//! The least fuel each bundled real chat template needs, for the budget's
//! rule (`tandem_engine::chat::FUEL_BASE`, `FUEL_PER_INPUT_BYTE`):
//!
//! ```text
//! cargo run --release -p tandem-engine --example template_fuel
//! ```
//!
//! For each template in `tests/data/templates` and three conversations (two
//! messages, the same with a tool definition, forty messages), a binary search
//! over `TemplateBudget::fuel` finds the least fuel that renders.
use tandem_engine::chat::{ChatMessage, ChatTemplate, TemplateBudget, TemplateKwargs};

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
"description": "Get the weather", "parameters": {"type": "object",
"properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/templates");
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let two = vec![
        ChatMessage::system("You are helpful."),
        ChatMessage::user("Hi there"),
    ];
    let forty: Vec<ChatMessage> = (0..40)
        .map(|i| match i % 2 {
            0 => ChatMessage::user("word ".repeat(20)),
            _ => ChatMessage::assistant("word ".repeat(20)),
        })
        .collect();
    let with_tools = TemplateKwargs::new().set_json("tools", TOOLS)?;
    println!(
        "{:30} {:>12} {:>8} {:>10}",
        "template", "conversation", "fuel", "msg bytes"
    );
    for path in paths {
        let source = std::fs::read_to_string(&path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for (what, messages, kwargs) in [
            ("2 messages", &two, &TemplateKwargs::new()),
            ("2 + tools", &two, &with_tools),
            ("40 messages", &forty, &TemplateKwargs::new()),
        ] {
            let renders = |fuel: u64| {
                let budget = TemplateBudget {
                    fuel,
                    ..TemplateBudget::default()
                };
                ChatTemplate::with_budget(&source, Some("<s>".into()), Some("</s>".into()), budget)
                    .is_ok_and(|t| t.render_with(messages, true, kwargs).is_ok())
            };
            let (mut lo, mut hi) = (1u64, TemplateBudget::default().fuel);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if renders(mid) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let bytes = serde_json::to_string(messages)?.len();
            println!("{name:30} {what:>12} {lo:>8} {bytes:>10}");
        }
    }
    Ok(())
}
