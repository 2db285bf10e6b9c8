//! Every pipeline the launchers can request compiles (`kernels::variants`):
//! our shaders go to the driver without naga's runtime checks
//! (`create_shader_module_trusted`), so a variant no other test happens to
//! launch must still be valid WGSL. Every variant goes through naga's
//! front end and validator (as wgpu's `create_shader_module` runs them) with
//! its workgroup checked against the device's limits, and a covering subset
//! (each constant's every value in at least one) is compiled by the driver:
//! all ~10,000 on lavapipe took 170 s, the subset about a tenth. Subgroup and
//! f16 variants are built where the adapter has those features. Every
//! entry point of every file in shaders/ and every `Kernel` must be among
//! the keys, so a new kernel cannot be left out.

mod common;

use std::collections::{BTreeMap, BTreeSet};
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

    // Every variant through wgpu's own front end and validator (naga, as
    // `create_shader_module` runs it), its entry point's workgroup within the
    // device's limits; then a covering subset on the driver.
    let start = Instant::now();
    let modules = validate_with_naga(gpu, &keys);
    let validated = start.elapsed().as_secs_f64();
    let chosen = covering_subset(&keys);
    let start = Instant::now();
    let failures = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A device per thousand pipelines: lavapipe keeps every pipeline's
    // compiled code as long as its device lives.
    for chunk in chosen.chunks(1000) {
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
    eprintln!(
        "{} pipelines ({modules} modules) validated by naga in {validated:.1} s; {} of them, every constant's every \
         value among them, compiled by the driver in {:.1} s: {per_kernel:?}",
        keys.len(),
        chosen.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} of {} pipelines failed:\n{}", failures.len(), chosen.len(), failures.join("\n"));
    gpu.check("compiling every pipeline").unwrap();
}

/// Parses and validates each distinct module of `keys` as wgpu does (its
/// WGSL front end and validator, every capability on: `pipeline_keys` lists
/// only what the device supports), and checks each key's entry point: there,
/// with a workgroup and workgroup memory within the device's limits (what a
/// browser's WebGPU enforces at pipeline creation). Returns the modules' count.
fn validate_with_naga(gpu: &webpeft::Gpu, keys: &[webpeft::gpu::PipelineKey]) -> usize {
    let mut by_module: BTreeMap<String, Vec<&webpeft::gpu::PipelineKey>> = BTreeMap::new();
    for key in keys {
        by_module.entry(key.wgsl()).or_default().push(key);
    }
    let limits = gpu.limits().clone();
    let modules: Vec<(&String, &Vec<&webpeft::gpu::PipelineKey>)> = by_module.iter().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for part in modules.chunks(modules.len().div_ceil(threads)) {
            let (failures, limits) = (&failures, &limits);
            s.spawn(move || {
                for (source, keys) in part {
                    if let Err(e) = check_module(source, keys, limits) {
                        failures.lock().unwrap().push(format!("{}: {e}", keys[0].label()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} modules failed naga's checks:\n{}", failures.len(), failures.join("\n"));
    by_module.len()
}

fn check_module(source: &str, keys: &[&webpeft::gpu::PipelineKey], limits: &wgpu::Limits) -> Result<(), String> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let mut options = naga::front::wgsl::Options::new();
    options.capabilities = Capabilities::all();
    let module =
        naga::front::wgsl::Frontend::new_with_options(options).parse(source).map_err(|e| e.emit_to_string(source))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).map_err(|e| e.to_string())?;
    for key in keys {
        let (index, entry) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == key.entry)
            .ok_or_else(|| format!("no entry point {}", key.entry))?;
        let [x, y, z] = entry.workgroup_size;
        let within = x <= limits.max_compute_workgroup_size_x
            && y <= limits.max_compute_workgroup_size_y
            && z <= limits.max_compute_workgroup_size_z
            && x * y * z <= limits.max_compute_invocations_per_workgroup;
        if !within {
            return Err(format!("{}: workgroup {x}×{y}×{z} is over the device's limits", key.entry));
        }
        let uses = info.get_entry_point(index);
        let shared: u32 = module
            .global_variables
            .iter()
            .filter(|(h, v)| v.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
            .map(|(_, v)| layouter[v.ty].size.next_multiple_of(16))
            .sum();
        if shared > limits.max_compute_workgroup_storage_size {
            let limit = limits.max_compute_workgroup_storage_size;
            return Err(format!("{}: {shared} B of workgroup memory, over the limit's {limit}", key.entry));
        }
    }
    Ok(())
}

/// Of each (kernel, entry, fused store) group of `keys`, the fewest (greedily)
/// whose constants take every value any key of the group gives them.
fn covering_subset(keys: &[webpeft::gpu::PipelineKey]) -> Vec<webpeft::gpu::PipelineKey> {
    let mut seen = std::collections::HashSet::new();
    let mut chosen = Vec::new();
    for key in keys {
        let group = (key.kernel.name(), key.entry, key.low_rank, key.output_op);
        let values: Vec<_> = key.consts.iter().map(|(n, c)| (group, *n, format!("{c:?}"))).collect();
        let new = seen.insert((group, "", String::new())) | values.iter().any(|v| !seen.contains(v));
        if new {
            seen.extend(values);
            chosen.push(key.clone());
        }
    }
    chosen
}

/// The check itself: a variant that does not compile (here a prelude
/// without the workgroup size the shader needs) is an error, not a panic.
#[test]
fn a_variant_that_does_not_compile_is_an_error() {
    let key = webpeft::gpu::PipelineKey::new(Kernel::Softmax, "softmax_forward");
    let err = block_on(gpu().compile_pipeline(&key)).expect_err("softmax without WG compiled");
    assert!(err.to_string().contains("softmax"), "{err}");
    gpu().check("after the failed compile").unwrap();
    // naga's checks refuse it too, and a workgroup over the device's memory or size limits.
    let limits = gpu().limits();
    let err = check_module(&key.wgsl(), &[&key], limits).unwrap_err();
    assert!(err.contains("WG"), "{err}");
    let words = limits.max_compute_workgroup_storage_size / 4 + 1;
    let source =
        format!("var<workgroup> big: array<f32, {words}>;\n@compute @workgroup_size(64) fn main() {{ big[0] = 1.0; }}");
    let main = webpeft::gpu::PipelineKey::new(Kernel::Softmax, "main");
    assert!(check_module(&source, &[&main], limits).unwrap_err().contains("workgroup memory"));
    let wide = limits.max_compute_invocations_per_workgroup * 2;
    let source = format!("@compute @workgroup_size({wide}) fn main() {{}}");
    assert!(check_module(&source, &[&main], limits).unwrap_err().contains("over the device's limits"));
}
