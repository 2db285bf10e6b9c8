//! The native command-line tool. `webpeft bench` prints kernel figures for the
//! adapter it runs on; model, training and file commands come with their issues.

use std::io::Write;

use clap::{Parser, Subcommand};

/// `println!` that ends the program quietly when stdout is closed (`| head`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use webpeft::bench::{kernel_figures, Figure};
use webpeft::kernels::matmul::{SgTiles, Tiles};
use webpeft::model::checkpoint::Checkpoint;
use webpeft::model::config::Config;
use webpeft::model::llama::GenerationConfig;
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::Model;
use webpeft::quant::QuantFormat;
use webpeft::Gpu;

#[derive(Parser)]
#[command(name = "webpeft", version, about = "LoRA and bottleneck-adapter fine-tuning on WebGPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens as they come (greedy unless --temperature > 0).
    Generate {
        /// The model folder (config.json, safetensors, tokenizer.json).
        #[arg(long)]
        model: std::path::PathBuf,
        /// f32, q8 (Q8_0) or nf4 (a pre-quantized folder loads in its own format).
        #[arg(long, default_value = "f32")]
        quant: QuantFormat,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy; otherwise sample at this temperature.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep the k most likely tokens when sampling (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling threshold (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write a pre-quantized copy of a model folder (webpeft's layout: see README), ~4-7x smaller.
    Quantize {
        /// The Hugging Face model folder to read.
        #[arg(long)]
        model: std::path::PathBuf,
        /// q8 (Q8_0) or nf4.
        #[arg(long)]
        quant: QuantFormat,
        /// The folder to write (created; config and tokenizer files are copied).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Run the model on token ids and write the logits and the causal-LM loss (labels = ids).
    Logits {
        /// The model folder (config.json and safetensors).
        #[arg(long)]
        model: std::path::PathBuf,
        /// How the blocks' Linear weights are stored on the GPU: f32, q8 (Q8_0) or nf4.
        #[arg(long, default_value = "f32")]
        quant: QuantFormat,
        /// JSON token ids: `[[ids…], …]` or `{"input_ids": [[ids…], …]}` (rows of equal length).
        #[arg(long)]
        tokens: std::path::PathBuf,
        /// Output safetensors file: `logits` (B, T, V) f32 and `loss` (1) f32.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Describe a Hugging Face model folder: architecture, parameters, bytes per weight format.
    Info {
        /// The model folder (config.json and safetensors).
        #[arg(long)]
        model: std::path::PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print matmul GFLOP/s (f32, NF4, Q8_0; tiled and naive) on this machine's adapter.
    Bench {
        /// Repeats per figure; the median is printed.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Skip the naive yardstick kernels (they are slow).
        #[arg(long)]
        no_naive: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Outputs per invocation and workgroup shape for the f32 kernel, "TMxTN/WXxWY".
        #[arg(long)]
        tiles: Option<String>,
        /// Only time the f32 kernel at 1024³ and the projections, for each
        /// tile shape in this comma-separated list (tuning aid).
        #[arg(long)]
        sweep: Option<String>,
        /// Like --sweep for the subgroup kernels: a comma-separated list of
        /// "SRxTN" (rows per subgroup x columns per lane).
        #[arg(long)]
        sweep_sg: Option<String>,
    },
}

fn parse_tiles(s: &str) -> Result<Tiles, String> {
    let bad = || format!("--tiles wants TMxTN/WXxWY such as 8x8/8x8, got {s:?}");
    let (t, w) = s.split_once('/').ok_or_else(bad)?;
    let (tm, tn) = t.split_once('x').ok_or_else(bad)?;
    let (wx, wy) = w.split_once('x').ok_or_else(bad)?;
    let n = |v: &str| v.parse::<u32>().map_err(|_| bad());
    Ok(Tiles { tm: n(tm)?, tn: n(tn)?, wx: n(wx)?, wy: n(wy)? })
}

fn main() {
    if let Err(e) = pollster::block_on(run(Cli::parse())) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info { model, json } => info(&model, json).await?,
        Command::Generate { model, quant, prompt, max_new_tokens, temperature, top_k, top_p, seed } => {
            let sampling = GenerationConfig {
                max_new_tokens,
                temperature: if temperature > 0.0 { temperature } else { 1.0 },
                top_k,
                top_p,
                seed,
                eos_token_ids: Vec::new(),
                greedy: temperature <= 0.0,
            };
            generate(&model, quant, &prompt, sampling).await?
        }
        Command::Quantize { model, quant, out } => quantize(&model, quant, &out).await?,
        Command::Logits { model, quant, tokens, out } => logits(&model, quant, &tokens, &out).await?,
        Command::Bench { repeats, no_naive, json, tiles, sweep, sweep_sg } => {
            let tiles = tiles.as_deref().map(parse_tiles).transpose()?;
            let gpu = Gpu::new().await?;
            if let Some(list) = sweep_sg {
                for t in list.split(',') {
                    let bad = || format!("--sweep-sg wants SRxTN such as 64x16, got {t:?}");
                    let (sr, tn) = t.split_once('x').ok_or_else(bad)?;
                    let tiles = SgTiles { sr: sr.parse().map_err(|_| bad())?, tn: tn.parse().map_err(|_| bad())? };
                    if tiles.sr == 0 || tiles.sr % 32 != 0 || tiles.tn == 0 || tiles.tn % 4 != 0 {
                        return Err(
                            format!("--sweep-sg: rows must be a multiple of 32 and columns of 4, got {t:?}").into()
                        );
                    }
                    let figures = webpeft::bench::sweep_subgroup(&gpu, tiles, repeats.max(1)).await?;
                    figures.iter().for_each(print_row);
                }
                return Ok(());
            }
            if let Some(list) = sweep {
                for t in list.split(',') {
                    let figures = webpeft::bench::sweep_tiles(&gpu, parse_tiles(t)?, repeats.max(1)).await?;
                    figures.iter().for_each(print_row);
                }
                return Ok(());
            }
            if !json {
                print_header(&gpu);
            }
            let mut row = |f: &Figure| {
                if !json {
                    print_row(f);
                }
            };
            let figures = kernel_figures(&gpu, repeats.max(1), tiles, !no_naive, &mut row).await?;
            if json {
                let out = serde_json::json!({ "adapter": gpu.info(), "matmul": figures });
                out!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
    }
    Ok(())
}

fn print_header(gpu: &Gpu) {
    out!("adapter: {}", gpu.describe());
    out!("{:<28} {:<26} {:>10} {:>12}", "kernel", "shape", "GFLOP/s", "ms/call");
}

fn print_row(f: &Figure) {
    out!("{:<28} {:<26} {:>10.2} {:>12.3}", f.kernel, f.shape, f.gflops, f.ms_per_call);
}

/// Bytes of the model's weights with every Linear of the blocks stored in
/// `format` and everything else (embedding, norms, biases, lm_head) in f32.
fn weight_bytes(config: &Config, format: QuantFormat) -> u64 {
    config
        .tensor_names()
        .iter()
        .map(|t| {
            let quantized = t.name.starts_with("model.layers.") && t.name.ends_with("_proj.weight");
            let fmt = if quantized { format } else { QuantFormat::F32 };
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r, *c),
                s => (1, s.iter().product()),
            };
            fmt.bytes_for(rows, cols) as u64
        })
        .sum()
}

async fn info(dir: &std::path::Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let checkpoint = Checkpoint::open_for(&files, &config).await?;
    let formats = [QuantFormat::F32, QuantFormat::Q8_0, QuantFormat::Nf4];
    let bytes: Vec<(&str, u64)> = formats.iter().map(|f| (f.name(), weight_bytes(&config, *f))).collect();
    if json {
        let out = serde_json::json!({
            "model_type": config.model_type.name(),
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "parameters": config.parameter_count(),
            "tensors": checkpoint.names().count(),
            "weight_bytes": bytes.iter().map(|(n, b)| (n.to_string(), *b)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        out!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    out!("model:        {}", dir.display());
    out!(
        "architecture: {} ({} layers, hidden {}, intermediate {})",
        config.model_type.name(),
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size
    );
    out!(
        "attention:    {} heads, {} kv heads, head_dim {}",
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim
    );
    out!("vocabulary:   {} (tied embeddings: {})", config.vocab_size, config.tie_word_embeddings);
    out!("context:      {} positions, rope_theta {}", config.max_position_embeddings, config.rope_theta);
    out!("parameters:   {} in {} tensors", config.parameter_count(), checkpoint.names().count());
    for (name, b) in bytes {
        out!("weights {:<5} {:>8.2} MiB  (block Linears in {name}, the rest f32)", name, b as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}

/// Token ids from `[[ids…], …]` or `{"input_ids": [[ids…], …]}`.
fn read_token_file(path: &std::path::Path) -> Result<Vec<Vec<u32>>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let rows = match &value {
        serde_json::Value::Object(map) => {
            map.get("input_ids").ok_or_else(|| format!("{}: no `input_ids` field", path.display()))?
        }
        other => other,
    };
    let rows: Vec<Vec<u32>> = serde_json::from_value(rows.clone())
        .map_err(|e| format!("{}: expected a list of lists of token ids: {e}", path.display()))?;
    if rows.is_empty() || rows[0].is_empty() {
        return Err(format!("{}: no token ids", path.display()).into());
    }
    Ok(rows)
}

async fn logits(
    dir: &std::path::Path,
    quant: QuantFormat,
    tokens: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let ids = read_token_file(tokens)?;
    let gpu = Gpu::new().await?;
    let files = DirFiles::new(dir)?;
    let model = Model::load(&gpu, &files, quant).await?;
    let (logits, loss) = model.logits_and_loss(&gpu, &ids, None).await?;
    let (b, t, v) = (ids.len(), ids[0].len(), model.config.vocab_size);
    let logits_bytes: &[u8] = bytemuck::cast_slice(&logits);
    let loss_bytes = loss.to_le_bytes();
    let tensors = [
        ("logits", TensorView::new(Dtype::F32, vec![b, t, v], logits_bytes)?),
        ("loss", TensorView::new(Dtype::F32, vec![1], &loss_bytes)?),
    ];
    safetensors::serialize_to_file(tensors, None, out)?;
    out!("{}: logits ({b}, {t}, {v}), loss {loss}", out.display());
    Ok(())
}

/// Files of a model folder that travel unchanged with its weights.
const COMPANION_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

async fn quantize(
    dir: &std::path::Path,
    quant: QuantFormat,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    if out.exists() && std::fs::canonicalize(out)? == std::fs::canonicalize(dir)? {
        return Err("--out must be a different folder from --model".into());
    }
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let checkpoint = Checkpoint::open(&files).await?;
    let bytes = webpeft::model::quantized::quantize_checkpoint(&checkpoint, &config, quant).await?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let target = out.join("model.safetensors");
    std::fs::write(&target, &bytes).map_err(|e| format!("{}: {e}", target.display()))?;
    for name in COMPANION_FILES {
        let src = dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, out.join(name)).map_err(|e| format!("{}: {e}", src.display()))?;
        }
    }
    let before: u64 = checkpoint.shards().iter().map(|s| s.tensors().iter().map(|t| t.len).sum::<u64>()).sum();
    out!(
        "{}: {} ({:.2} MiB; the tensors were {:.2} MiB)",
        target.display(),
        quant.name(),
        bytes.len() as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
    Ok(())
}

async fn generate(
    dir: &std::path::Path,
    quant: QuantFormat,
    prompt: &str,
    mut config: GenerationConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new().await?;
    let files = DirFiles::new(dir)?;
    let tokenizer = Tokenizer::load(&files).await?;
    let model = Model::load(&gpu, &files, quant).await?;
    config.eos_token_ids = model.config.eos_token_ids.clone();
    config.eos_token_ids.extend(tokenizer.eos_ids());
    let ids = tokenizer.encode(prompt, true)?;
    let mut decoder = tokenizer.stream_decoder(true);
    let mut stdout = std::io::stdout();
    let mut failed = None;
    let start = std::time::Instant::now();
    let out = model
        .generate(&gpu, &ids, &config, |id| match decoder.step(id) {
            Ok(Some(piece)) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
                true
            }
            Ok(None) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out!("{}", decoder.flush()?);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s, prompt {} tokens)",
        out.len(),
        secs,
        out.len() as f64 / secs,
        ids.len()
    );
    Ok(())
}
