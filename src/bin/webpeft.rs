//! The native command-line tool. `webpeft bench` prints kernel figures for the
//! adapter it runs on; model, training and file commands come with their issues.

use clap::{Parser, Subcommand};
use webpeft::bench::{kernel_figures, Figure};
use webpeft::kernels::matmul::Tiles;
use webpeft::Gpu;

#[derive(Parser)]
#[command(name = "webpeft", version, about = "LoRA and bottleneck-adapter fine-tuning on WebGPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        Command::Bench { repeats, no_naive, json, tiles, sweep } => {
            let tiles = tiles.as_deref().map(parse_tiles).transpose()?;
            let gpu = Gpu::new().await?;
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
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
    }
    Ok(())
}

fn print_header(gpu: &Gpu) {
    println!("adapter: {}", gpu.describe());
    println!("{:<28} {:<26} {:>10} {:>12}", "kernel", "shape", "GFLOP/s", "ms/call");
}

fn print_row(f: &Figure) {
    println!("{:<28} {:<26} {:>10.2} {:>12.3}", f.kernel, f.shape, f.gflops, f.ms_per_call);
}
