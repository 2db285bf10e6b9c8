//! `webpeft bench`: matmul GFLOP/s of each kernel, training steps, generation
//! and host peak RSS, as a table or JSON; and the tuning sweeps.

use std::io::Write;
use std::path::PathBuf;

use webpeft::bench::generate::{generate_figure, host_peak_rss_bytes, GenerateFigure, SAMPLED};
use webpeft::bench::train::{train_figure_on, StepSetup, TrainFigure};
use webpeft::bench::{kernel_figures, Figure};
use webpeft::kernels::blocked::{is_real_gpu, Blocks};
use webpeft::kernels::low_rank;
use webpeft::kernels::matmul::{SgTiles, Tiles};
use webpeft::model::config::Config;
use webpeft::model::source::{DirFiles, ModelFiles};
use webpeft::model::Model;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::Gpu;

use crate::cli_gpu;

/// `webpeft bench`'s options.
#[derive(clap::Args)]
pub struct BenchArgs {
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
    /// Only time the blocked kernel of real GPUs for each block shape in
    /// this comma-separated list of "BMxBNxBK/TMxTN" (tuning aid).
    #[arg(long)]
    sweep_blocks: Option<String>,
    /// The matmul kernels: auto (by the adapter: CPU rasterizers get
    /// their own), cpu, or gpu (the real-GPU kernels anywhere).
    #[arg(long, default_value = "auto")]
    kernel_family: webpeft::KernelFamily,
    /// Use the fallback table's blocks: no autotuning, no tuning cache.
    #[arg(long)]
    no_autotune: bool,
    /// Only time training steps and generation (no kernels): LoRA r 16 on
    /// all seven projections and seq_bn, on f32 and NF4 bases.
    #[arg(long)]
    train: bool,
    /// Only time the matmul and attention kernels (no training or generation).
    #[arg(long, conflicts_with = "train")]
    kernels: bool,
    /// Only time attention forward and backward, each variant (flash with
    /// its dk and dv work split and unsplit), at the Llama-3.2-1B shape
    /// (1×512, 32/8 heads of 64), after the sizes of the flash dk/dv launch.
    #[arg(long, conflicts_with_all = ["train", "kernels"])]
    attention: bool,
    /// Only time drawing a token from a row of 128,256 logits (Zipf-shaped),
    /// on the GPU and on the CPU, each with its readback.
    #[arg(long, conflicts_with_all = ["train", "kernels", "attention"])]
    sampling: bool,
    /// The model folder to train and generate with; without it, two random
    /// models: a tiny one (the fixtures' shape) and a ~29M-parameter one.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Without --model, which random model to train: tiny, 29m, or both.
    #[arg(long, default_value = "both", value_parser = ["tiny", "29m", "both"], conflicts_with = "model")]
    random_model: String,
    /// The methods of the training figures, comma-separated (default: all
    /// of them): lora, dora, adalora, ia3, prompt_tuning, prefix_tuning,
    /// prefix_projection, p_tuning, seq_bn. The packing figures come with lora.
    #[arg(long, value_delimiter = ',', value_parser = METHODS)]
    methods: Vec<String>,
    /// Arithmetic of the NF4 base's Linears in the training and generation
    /// figures: f32, or f16 where the GPU has shader-f16 (then only the NF4
    /// base is timed: an f32 base computes in f32 either way).
    #[arg(long, default_value = "f32")]
    compute_dtype: ComputeDtype,
    /// Rows per training step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// LoRA's rank for the training figures (alpha is 2r).
    #[arg(long, default_value_t = 16)]
    r: usize,
    /// Train with gradient checkpointing.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// The packing figures: LoRA on rows of K examples each (--seq / K
    /// tokens apiece), and on the same examples one to a row.
    #[arg(long, default_value_t = 4, value_name = "K")]
    packing: usize,
    /// After each training figure, profile one more step with timestamp
    /// queries and print GPU time per kernel; after each generation
    /// figure, the same for one decoding step.
    #[arg(long)]
    profile: bool,
    /// Instead of everything else: plan, load and train one step of a
    /// Llama-3.2-1B-shaped model (random weights, NF4, LoRA r 16 on all
    /// linears, 1×512, gradient checkpointing), printing plan vs. measured.
    #[arg(long)]
    llama_1b: bool,
}

/// The methods a training figure can time, in the table's order.
const METHODS: [&str; 9] =
    ["lora", "dora", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "prefix_projection", "p_tuning", "seq_bn"];

fn parse_tiles(s: &str) -> Result<Tiles, String> {
    let bad = || format!("--tiles wants TMxTN/WXxWY such as 8x8/8x8, got {s:?}");
    let (t, w) = s.split_once('/').ok_or_else(bad)?;
    let (tm, tn) = t.split_once('x').ok_or_else(bad)?;
    let (wx, wy) = w.split_once('x').ok_or_else(bad)?;
    let n = |v: &str| v.parse::<u32>().map_err(|_| bad());
    Ok(Tiles { tm: n(tm)?, tn: n(tn)?, wx: n(wx)?, wy: n(wy)? })
}

fn print_header(gpu: &Gpu) {
    out!("adapter: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
    out!("{:<32} {:<44} {:>10} {:>12} {:>10}", "kernel", "shape", "GFLOP/s", "ms/call", "weight GB/s");
}

fn print_row(f: &Figure) {
    let gbps = f.weight_gbps.map(|g| format!("{g:>10.1}")).unwrap_or_default();
    out!("{:<32} {:<44} {:>10.2} {:>12.3} {gbps}", f.kernel, f.shape, f.gflops, f.ms_per_call);
}

fn parse_blocks(s: &str) -> Result<Blocks, String> {
    let bad =
        || format!("--sweep-blocks wants BMxBNxBK/TMxTN[/2] such as 128x128x8/8x8 (/2: double-buffered), got {s:?}");
    let parts: Vec<&str> = s.split('/').collect();
    let n = |v: &str| v.parse::<u32>().map_err(|_| bad());
    let dims = |p: &str| p.split('x').map(n).collect::<Result<Vec<u32>, _>>();
    let (b, t) = match parts.as_slice() {
        [b, t] | [b, t, _] => (dims(b)?, dims(t)?),
        _ => return Err(bad()),
    };
    let buffers = parts.get(2).map(|v| n(v)).transpose()?.unwrap_or(1);
    match (b.as_slice(), t.as_slice()) {
        ([bm, bn, bk], [tm, tn]) => Ok(Blocks { buffers, ..Blocks::new(*bm, *bn, *bk, *tm, *tn) }),
        _ => Err(bad()),
    }
}

/// What `bench` trains on, and how.
struct StepsBench {
    model: Option<PathBuf>,
    /// Without a model folder: "tiny", "29m" or "both".
    random_model: String,
    /// The training figures' methods, in [`METHODS`]' order.
    methods: Vec<&'static str>,
    compute: ComputeDtype,
    batch: usize,
    seq: usize,
    r: usize,
    checkpointing: bool,
    profile: bool,
    repeats: usize,
    /// Examples per packed row in the packing figures.
    packing: usize,
}

/// Training steps (tokens/s and peak GPU bytes) and generation (tokens/s),
/// on the given model folder or two random models.
async fn bench_train(
    gpu: &Gpu,
    b: &StepsBench,
    json: bool,
) -> Result<(Vec<TrainFigure>, Vec<GenerateFigure>), Box<dyn std::error::Error>> {
    use webpeft::bench::train::{llama_config, random_model_files};
    if !json {
        out!("adapter: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
        out!("| model | params | base | method | adapter params | batch×seq | ckpt | ms/step | tokens/s | peak GPU MiB | weights MiB |");
        out!("|---|---:|---|---|---:|---|---|---:|---:|---:|---:|");
    }
    let mut out = (Vec::new(), Vec::new());
    match &b.model {
        Some(dir) => {
            let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
            bench_model(gpu, &name, &DirFiles::new(dir)?, (b.batch, b.seq), b, json, &mut out).await?;
        }
        None => {
            if b.random_model != "29m" {
                let tiny = random_model_files(&llama_config(384, 64, 128, 2, 4, 2), 1)?;
                bench_model(gpu, "tiny (V 384, D 64, 2 layers)", &tiny, (4, 64), b, json, &mut out).await?;
            }
            if b.random_model != "tiny" {
                let m29 = random_model_files(&llama_config(8192, 512, 1376, 7, 8, 4), 1)?;
                bench_model(gpu, "29M (V 8192, D 512, 7 layers)", &m29, (b.batch, b.seq), b, json, &mut out).await?;
            }
        }
    }
    if !json && webpeft::kernels::blocked::is_real_gpu(gpu) {
        let (tuned, pending) = webpeft::kernels::tune::tuning_counts(gpu);
        out!("autotuner: {tuned} shape classes of the blocked GEMM tuned ({pending} pending); --no-autotune for the fallback table");
    }
    Ok(out)
}

/// One row of the training table.
fn print_train_row(f: &TrainFigure) {
    let mut method = if f.r > 0 { format!("{} r{}", f.method, f.r) } else { f.method.clone() };
    if f.examples_per_row > 1 {
        method += &format!(", packed {} examples/row", f.examples_per_row);
    }
    if !f.term_fused {
        method += ", term not fused";
    }
    out!(
        "| {} | {:.1}M | {} | {} | {} | {}×{} | {} | {:.0} | {:.0} | {:.1} | {:.1} |",
        f.model,
        f.parameters as f64 / 1e6,
        base_label(&f.quant, &f.compute_dtype),
        method,
        f.adapter_parameters,
        f.batch,
        f.seq,
        if f.checkpointing { "yes" } else { "no" },
        f.step_ms,
        f.tokens_per_s,
        f.peak_gpu_bytes as f64 / (1 << 20) as f64,
        f.weight_bytes as f64 / (1 << 20) as f64
    );
}

/// "nf4", or "nf4 (f16 compute)".
fn base_label(quant: &str, compute: &str) -> String {
    if compute == "f32" {
        quant.to_string()
    } else {
        format!("{quant} ({compute} compute)")
    }
}

/// The per-kernel table of one profiled step (`what`: "nf4 lora step").
fn print_kernel_times(what: &str, model: &str, kernels: &[webpeft::gpu::KernelTime]) {
    let total: f64 = kernels.iter().map(|k| k.total_ms).sum();
    out!("GPU time of one {what} on {model} ({total:.0} ms in kernels):");
    out!("| kernel | calls | ms | share |");
    out!("|---|---:|---:|---:|");
    for k in kernels {
        out!("| {} | {} | {:.1} | {:.1}% |", k.kernel, k.calls, k.total_ms, 100.0 * k.total_ms / total.max(1e-9));
    }
}

/// LoRA and seq_bn steps on f32 and NF4 bases, and generation, on one model.
async fn bench_model<F: ModelFiles>(
    gpu: &Gpu,
    name: &str,
    files: &F,
    (batch, seq): (usize, usize),
    b: &StepsBench,
    json: bool,
    (train, generate): &mut (Vec<TrainFigure>, Vec<GenerateFigure>),
) -> Result<(), Box<dyn std::error::Error>> {
    // f16 compute leaves an f32 base in f32: its rows would repeat an f32 run.
    let bases: &[QuantFormat] = match b.compute {
        ComputeDtype::F16 => &[QuantFormat::Nf4],
        ComputeDtype::F32 => &[QuantFormat::F32, QuantFormat::Nf4],
    };
    for &quant in bases {
        let mut model = Model::load(gpu, files, quant).await?;
        model.set_compute_dtype(gpu, b.compute)?;
        for &method in &b.methods {
            let setup = StepSetup {
                checkpointing: b.checkpointing,
                steps: b.repeats,
                profile: b.profile,
                r: b.r,
                ..StepSetup::new(quant, method, batch, seq.min(model.config.max_position_embeddings))
            };
            // On real GPUs' kernels a LoRA's term is fused into every frozen
            // product, both ways: the same step is also timed without.
            let fuses = is_real_gpu(gpu) && matches!(method, "lora" | "adalora");
            for fused in if fuses { &[true, false][..] } else { &[true][..] } {
                let f = with_fusion(gpu, *fused, train_figure_on(gpu, name, &model, &setup)).await?;
                if !json && !f.kernels.is_empty() {
                    let what = format!("{} {} step", base_label(&f.quant, &f.compute_dtype), f.method);
                    print_kernel_times(&what, &f.model, &f.kernels);
                }
                if !json {
                    print_train_row(&f);
                }
                train.push(f);
            }
        }
        // The same examples of seq / k tokens: k to a row, and one to a row.
        let seq = seq.min(model.config.max_position_embeddings);
        let k = b.packing.clamp(1, seq / 2);
        let packing = if b.methods.contains(&"lora") {
            [(batch * k, seq / k, 1), (batch, seq / k * k, k)].to_vec()
        } else {
            vec![]
        };
        for (rows, len, examples_per_row) in packing {
            let setup = StepSetup {
                checkpointing: b.checkpointing,
                steps: b.repeats,
                r: b.r,
                examples_per_row,
                ..StepSetup::new(quant, "lora", rows, len)
            };
            let f = train_figure_on(gpu, name, &model, &setup).await?;
            if !json {
                print_train_row(&f);
            }
            train.push(f);
        }
        for g in generate_figures(gpu, name, &model, b.r, b.profile).await? {
            if !json {
                print_generate(&g);
            }
            generate.push(g);
        }
    }
    Ok(())
}

/// Generation after a 16-token prompt, 32 new tokens: the base model, and
/// through a LoRA of rank `r` on all seven projections (its B is PEFT's
/// zeros: the cost of the adapter's path, not its effect), with its term
/// fused into the Linears' kernels (the default) and added by products of
/// its own, and through the same LoRA as DoRA (its weight norms kept across
/// the generation's forwards).
async fn generate_figures(
    gpu: &Gpu,
    name: &str,
    model: &Model,
    r: usize,
    profile: bool,
) -> Result<Vec<GenerateFigure>, Box<dyn std::error::Error>> {
    use webpeft::peft::adapter::Adapter;
    use webpeft::peft::{LoraConfig, TargetModules};
    let lora = Adapter::new_lora(gpu, LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear)?, &model.config, 1)?;
    let label = format!("LoRA r{r} all-linear");
    let unfused = format!("{label}, term not fused");
    let mut figures = vec![
        generate_figure(gpu, name, model, (16, 32), None, (false, profile)).await?,
        generate_figure(gpu, name, model, (16, 32), None, (true, false)).await?,
        generate_figure(gpu, name, model, (16, 32), Some((&label, &lora)), (false, profile)).await?,
    ];
    let plain = generate_figure(gpu, name, model, (16, 32), Some((&unfused, &lora)), (false, profile));
    figures.push(with_fusion(gpu, false, plain).await?);
    let config = LoraConfig { use_dora: true, ..LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear)? };
    let dora = Adapter::new_for_model(gpu, webpeft::peft::adapter::AdapterConfig::Lora(config), model, None, 1)?;
    let label = format!("DoRA r{r} all-linear");
    figures.push(generate_figure(gpu, name, model, (16, 32), Some((&label, &dora)), (false, profile)).await?);
    Ok(figures)
}

/// `run` awaited with LoRA's term fused or not (`low_rank::set_fused`); fusing
/// is on again afterwards, whatever `run` returned.
async fn with_fusion<T>(gpu: &Gpu, fused: bool, run: impl std::future::Future<Output = T>) -> T {
    low_rank::set_fused(gpu, fused);
    let out = run.await;
    low_rank::set_fused(gpu, true);
    out
}

fn print_generate(g: &GenerateFigure) {
    let mut with = g.adapter.as_ref().map(|a| format!(" with {a}")).unwrap_or_default();
    if g.sampled {
        with += &format!(", sampled (temperature {}, top-p {})", SAMPLED.0, SAMPLED.1);
    }
    if !g.kernels.is_empty() {
        let what = format!("{} decoding step{with}", base_label(&g.quant, &g.compute_dtype));
        print_kernel_times(&what, &g.model, &g.kernels);
    }
    out!(
        "generate {} {}{with}: prompt {} tokens, first token {:.0} ms, {:.1} tokens/s after it, {} launches and {:.2} ms on the CPU (recording and submitting) a token",
        g.model,
        base_label(&g.quant, &g.compute_dtype),
        g.prompt_tokens,
        g.first_token_ms,
        g.decode_tokens_per_s,
        g.launches_per_token,
        g.host_ms_per_token
    );
    // What a token costs beyond its kernels: the launches' gaps (and the
    // readback's), on a GPU the first thing launch merges would win back.
    if !g.kernels.is_empty() && g.decode_tokens_per_s > 0.0 {
        let (token_ms, kernel_ms) = (1e3 / g.decode_tokens_per_s, g.kernels.iter().map(|k| k.total_ms).sum::<f64>());
        let gap_us = 1e3 * (token_ms - kernel_ms) / g.launches_per_token.max(1) as f64;
        match gap_us >= 0.0 {
            true => out!("  a token: {token_ms:.2} ms, {kernel_ms:.2} ms of it in kernels; {gap_us:.1} µs a launch outside them"),
            false => out!(
                "  a token: {token_ms:.2} ms, less than its kernels' {kernel_ms:.2} ms under the profile (here the timestamps cost more than the gaps between launches)"
            ),
        }
    }
}

/// `webpeft bench --llama-1b`: the memory plan of one NF4 LoRA r 16 step of a
/// Llama-3.2-1B-shaped model at 1×512 with gradient checkpointing, and the
/// measured peak of really running it (random weights built in memory).
async fn bench_llama_1b(gpu: &Gpu, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use webpeft::bench::train::{llama_1b_config, llama_1b_plan_input, random_model_files};
    use webpeft::train::plan::{plan_memory, PlanInput};
    let config_json = llama_1b_config();
    let config = Config::from_json(config_json.as_bytes())?;
    let input = PlanInput { kernels: gpu.kernel_family(), ..llama_1b_plan_input() };
    let plan = plan_memory(&config, &input, gpu.max_binding_bytes());
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "plan: {:.2} GiB (weights {:.2}, activations {:.2})",
        gib(plan.total_bytes),
        gib(plan.weight_bytes),
        gib(plan.activation_bytes)
    );
    let start = std::time::Instant::now();
    let files = random_model_files(&config_json, 1)?;
    let model = Model::load(gpu, &files, QuantFormat::Nf4).await?;
    drop(files);
    eprintln!("built and loaded in {:.0} s", start.elapsed().as_secs_f64());
    // On a software GPU one step, the untimed warm-up skipped: each takes many
    // minutes there. On a real GPU a warm-up step first (it compiles the
    // pipelines and runs the autotuner), then the median of three.
    let real = webpeft::kernels::blocked::is_real_gpu(gpu);
    let (steps, warmup) = if real { (3, true) } else { (1, false) };
    let setup = StepSetup { checkpointing: true, steps, warmup, ..StepSetup::new(QuantFormat::Nf4, "lora", 1, 512) };
    let name = "Llama-3.2-1B shape (random)";
    let f = train_figure_on(gpu, name, &model, &setup).await?;
    // On a real GPU the same step with the LoRA's term not fused into the
    // frozen products (the default fuses it, both ways).
    let unfused = match real {
        true => Some(with_fusion(gpu, false, train_figure_on(gpu, name, &model, &setup)).await?),
        false => None,
    };
    // Decoding: the base and through a LoRA r16, each with its per-kernel profile.
    let generate = generate_figures(gpu, name, &model, 16, true).await?;
    let out = serde_json::json!({
        "adapter": gpu.info(), "plan": plan, "train": f, "train_term_not_fused": unfused, "generate": generate,
        "host_peak_rss_bytes": host_peak_rss_bytes(),
        "plan_over_measured": plan.total_bytes as f64 / f.peak_gpu_bytes as f64,
    });
    if json {
        out!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        out!(
            "Llama-3.2-1B shape, NF4, LoRA r16 all-linear, 1×512, checkpointing: planned {:.2} GiB, measured peak {:.2} GiB, step {:.1} s ({:.1} tokens/s)",
            gib(plan.total_bytes),
            gib(f.peak_gpu_bytes),
            f.step_ms / 1e3,
            f.tokens_per_s
        );
        if let Some(u) = &unfused {
            out!("the same step with the term not fused: {:.2} s ({:.1} tokens/s)", u.step_ms / 1e3, u.tokens_per_s);
        }
        generate.iter().for_each(print_generate);
    }
    Ok(())
}

/// `webpeft bench`.
pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let BenchArgs {
        repeats,
        no_naive,
        json,
        tiles,
        sweep,
        sweep_sg,
        sweep_blocks,
        kernel_family,
        no_autotune,
        train,
        kernels,
        attention,
        sampling,
        model,
        random_model,
        methods,
        compute_dtype,
        batch,
        seq,
        r,
        gradient_checkpointing,
        packing,
        profile,
        llama_1b,
    } = args;
    let tiles = tiles.as_deref().map(parse_tiles).transpose()?;
    let gpu = cli_gpu(kernel_family, !no_autotune).await?;
    if llama_1b {
        return bench_llama_1b(&gpu, json).await;
    }
    if batch == 0 || seq < 2 {
        return Err(format!("bench: --batch must be at least 1 and --seq at least 2 (got {batch} and {seq})").into());
    }
    let steps = StepsBench {
        model,
        random_model,
        methods: METHODS.into_iter().filter(|m| methods.is_empty() || methods.iter().any(|x| x == m)).collect(),
        compute: compute_dtype,
        batch,
        seq,
        r,
        checkpointing: gradient_checkpointing,
        profile,
        repeats: repeats.max(1),
        packing,
    };
    if train {
        let (train, generate) = bench_train(&gpu, &steps, json).await?;
        if json {
            let out = serde_json::json!({
                "adapter": gpu.info(), "train": train, "generate": generate,
                "host_peak_rss_bytes": host_peak_rss_bytes(),
            });
            out!("{}", serde_json::to_string_pretty(&out)?);
        }
        return Ok(());
    }
    // The focused figures: a table, or with --json the kernels' JSON shape ("matmul": the figures).
    let focused_json = |figures: Vec<Figure>| -> Result<(), Box<dyn std::error::Error>> {
        let out = serde_json::json!({ "adapter": gpu.info(), "matmul": figures });
        out!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    };
    let mut row = |f: &Figure| {
        if !json {
            print_row(f);
        }
    };
    if attention {
        if !json {
            webpeft::bench::attention::dkv_launch_sizes().iter().for_each(|line| out!("{line}"));
            print_header(&gpu);
        }
        let figures = webpeft::bench::attention::attention_figures(&gpu, repeats.max(1), &mut row).await?;
        return if json { focused_json(figures) } else { Ok(()) };
    }
    if sampling {
        if !json {
            print_header(&gpu);
        }
        let figures = webpeft::bench::sample::sample_figures(&gpu, repeats.max(1), &mut row).await?;
        return if json { focused_json(figures) } else { Ok(()) };
    }
    if let Some(list) = sweep_blocks {
        let blocks = list.split(',').map(parse_blocks).collect::<Result<Vec<_>, _>>()?;
        print_header(&gpu);
        webpeft::bench::gpu::sweep_blocks(&gpu, &blocks, repeats.max(1), &mut |f| print_row(f)).await?;
        return Ok(());
    }
    if let Some(list) = sweep_sg {
        for t in list.split(',') {
            let bad = || format!("--sweep-sg wants SRxTN such as 64x16, got {t:?}");
            let (sr, tn) = t.split_once('x').ok_or_else(bad)?;
            let tiles = SgTiles { sr: sr.parse().map_err(|_| bad())?, tn: tn.parse().map_err(|_| bad())? };
            if tiles.sr == 0 || tiles.sr % 32 != 0 || tiles.tn == 0 || tiles.tn % 4 != 0 {
                return Err(format!("--sweep-sg: rows must be a multiple of 32 and columns of 4, got {t:?}").into());
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
    let mut figures = kernel_figures(&gpu, repeats.max(1), tiles, !no_naive, &mut row).await?;
    // The big shapes and the bandwidth-bound ones, where a GPU can run them.
    let copy_gbps = if is_real_gpu(&gpu) {
        let copy = webpeft::bench::gpu::copy_gbps(&gpu, repeats.max(1)).await?;
        if !json {
            out!("device copy: {copy:.0} GB/s (read + write); weight GB/s below is read only, then its share of the copy rate");
        }
        // Rows through a weight also say how much of the copy bandwidth they reach (the GEMV's bound).
        let mut gpu_row = |f: &Figure| {
            if !json {
                print_row(f);
                if let (Some(g), 1) = (f.weight_gbps, f.m) {
                    out!("{:>100} {:>9.1}% of copy", "", 100.0 * g / copy);
                }
            }
        };
        figures.extend(webpeft::bench::gpu::gpu_figures(&gpu, repeats.max(1), &mut gpu_row).await?);
        Some(copy)
    } else {
        None
    };
    let (train, generate) = if kernels { (Vec::new(), Vec::new()) } else { bench_train(&gpu, &steps, json).await? };
    if json {
        let out = serde_json::json!({
            "adapter": gpu.info(), "copy_gbps": copy_gbps, "matmul": figures, "train": train, "generate": generate,
            "host_peak_rss_bytes": host_peak_rss_bytes(),
        });
        out!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(rss) = host_peak_rss_bytes() {
        out!("host peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    Ok(())
}
