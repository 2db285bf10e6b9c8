//! Every pipeline the launchers can request compiles (`kernels::variants`):
//! our shaders go to the driver without naga's runtime checks
//! (`create_shader_module_trusted`), so a variant no other test happens to
//! launch must still be valid WGSL that naga and the driver accept. Subgroup
//! and f16 variants are built where the adapter has those features. Every
//! entry point of every file in shaders/ and every `Kernel` must be among
//! the keys, so a new kernel cannot be left out.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{block_on, gpu};
use webpeft::gpu::Kernel;
use webpeft::kernels::variants::pipeline_keys;

/// The `@compute` entry points of a WGSL source.
fn entry_points(source: &str) -> Vec<String> {
    source
        .split("@compute")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.split("fn ").nth(1)?;
            Some(name.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?.to_string())
        })
        .collect()
}

#[test]
fn every_pipeline_variant_compiles() {
    let gpu = gpu();
    let info = gpu.info();
    eprintln!(
        "subgroups {} (width {}..{}), shader-f16 {}, runtime checks {}",
        info.subgroups,
        info.subgroup_min_size,
        info.subgroup_max_size,
        info.shader_f16,
        gpu.shader_checks()
    );
    let keys = pipeline_keys(gpu);

    // Coverage: every kernel, and every entry point in shaders/.
    let kernels: BTreeSet<&str> = keys.iter().map(|k| k.kernel.name()).collect();
    for kernel in Kernel::ALL {
        let launched = kernels.contains(kernel.name());
        let needs = match kernel {
            Kernel::MatmulSubgroup | Kernel::QMatmulSubgroup | Kernel::AttentionSubgroup => {
                webpeft::kernels::matmul::subgroups_usable(gpu)
            }
            Kernel::MatmulGemvSubgroup | Kernel::QMatmulGemvSubgroup => info.subgroups,
            Kernel::QMatmulGemvF16Subgroup => info.shader_f16 && info.subgroups,
            k if k.needs_f16() => info.shader_f16,
            _ => true,
        };
        assert!(launched || !needs, "no pipeline of {} is listed in kernels::variants", kernel.name());
    }
    let entries: BTreeSet<&str> = keys.iter().map(|k| k.entry).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        for entry in entry_points(&source) {
            let subgroup = source.contains("subgroupBroadcast") || source.contains("subgroup_invocation_id");
            if subgroup && !webpeft::kernels::matmul::subgroups_usable(gpu) {
                continue;
            }
            // The GEMV's subgroup reduction takes any width.
            if path.ends_with("gemv_subgroup.wgsl") && !info.subgroups {
                continue;
            }
            if source.contains("<f16>") && !info.shader_f16 {
                continue;
            }
            assert!(entries.contains(entry.as_str()), "{}: entry {entry} is in no listed pipeline", path.display());
        }
    }

    // Compile each, collecting every failure, on every core (a CPU
    // rasterizer compiles one pipeline on one core).
    let start = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A device per thousand pipelines: lavapipe keeps every pipeline's
    // compiled code as long as its device lives, over 20 GiB for them all.
    for chunk in keys.chunks(1000) {
        let device = block_on(webpeft::Gpu::new()).unwrap();
        std::thread::scope(|s| {
            for part in chunk.chunks(chunk.len().div_ceil(threads)) {
                let (device, failures) = (&device, &failures);
                s.spawn(move || {
                    for key in part {
                        if let Err(e) = block_on(device.compile_pipeline(key)) {
                            failures.lock().unwrap().push(e.to_string());
                        }
                    }
                });
            }
        });
        device.check("compiling pipelines").unwrap();
    }
    let failures = failures.into_inner().unwrap();
    let mut per_kernel = std::collections::BTreeMap::new();
    for key in &keys {
        *per_kernel.entry(key.kernel.name()).or_insert(0) += 1;
    }
    eprintln!("{} pipelines compiled in {:.1} s: {per_kernel:?}", keys.len(), start.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of {} pipelines failed:\n{}", failures.len(), keys.len(), failures.join("\n"));
    gpu.check("compiling every pipeline").unwrap();
}

/// The check itself: a variant that does not compile (here a prelude
/// without the workgroup size the shader needs) is an error, not a panic.
#[test]
fn a_variant_that_does_not_compile_is_an_error() {
    let key = webpeft::gpu::PipelineKey::new(Kernel::Softmax, "softmax_forward");
    let err = block_on(gpu().compile_pipeline(&key)).expect_err("softmax without WG compiled");
    assert!(err.to_string().contains("softmax"), "{err}");
    gpu().check("after the failed compile").unwrap();
}
