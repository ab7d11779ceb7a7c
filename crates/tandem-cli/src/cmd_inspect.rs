use std::path::PathBuf;

use clap::Args;
use tandem_model::inspect::Summary;

use crate::load::open_files;

#[derive(Args)]
pub struct InspectArgs {
    /// A .gguf file, the first shard of a split GGUF, or a Hugging Face directory.
    #[arg(
        long,
        short = 'm',
        value_name = "MODEL",
        required_unless_present = "path"
    )]
    model: Option<PathBuf>,
    /// The same, given without `--model`.
    #[arg(value_name = "PATH", conflicts_with = "model")]
    path: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", units[u])
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = args.model.as_deref().or(args.path.as_deref());
    let files = open_files(path)?;
    let s = Summary::of(&files);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "model          {}",
        s.name.as_deref().unwrap_or("(unnamed)")
    );
    println!("format         {}", s.format);
    println!("architecture   {}", s.architecture);
    println!("layers         {}", s.n_layers);
    println!("hidden         {}", s.hidden);
    println!(
        "heads          {} (kv {}, head dim {})",
        s.n_heads, s.n_kv_heads, s.head_dim
    );
    println!("ffn            {}", s.ffn_hidden);
    if let Some(e) = &s.experts {
        println!("experts        {e}");
    }
    println!("vocab          {}", s.vocab_size);
    println!("context        {}", s.context_length);
    println!("rope theta     {}", s.rope_theta);
    println!(
        "parameters     {} ({})",
        human_count(s.parameters),
        s.parameters
    );
    println!("weights        {}", human_bytes(s.weight_bytes));
    println!(
        "kv cache       {} per token, {} at the full context",
        human_bytes(s.kv_bytes_per_token),
        human_bytes(s.kv_bytes_per_token * s.context_length as u64)
    );
    println!("tensor types");
    for t in &s.types {
        println!(
            "  {:<6} {:>5} tensors {:>14} elements {:>12}",
            t.type_name,
            t.tensors,
            t.elements,
            human_bytes(t.bytes)
        );
    }
    Ok(())
}
