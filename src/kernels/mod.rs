//! One Rust launcher per `shaders/*.wgsl` family. Launchers check shapes and
//! dtypes (a typed error, never a panic), pick the entry point and grid, and
//! record the dispatch. `reference/` holds the plain-Rust CPU versions the
//! tests (and the native fuzz and bench tools) compare against; nothing the
//! library runs imports it, and it is not compiled into the wasm package.

pub mod adalora;
pub mod adamw;
pub mod attention;
pub mod blocked;
pub mod classification;
pub mod cross_entropy;
pub mod dora;
pub mod elementwise;
pub mod embedding;
pub mod grpo;
pub mod low_rank;
pub mod matmul;
pub mod output_op;
pub mod preference;
pub mod qmatmul;
pub mod quant;
pub mod reduce;
#[cfg(not(target_arch = "wasm32"))]
pub mod reference;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod swiglu;
pub mod token_rows;
pub mod tune;
pub mod variants;

mod checks;

/// A grid for `n` workgroups, split over x and y when it is over the
/// 65535-per-dimension limit (shaders recombine it with `flat_group`).
pub fn grid_1d(n: usize) -> [u32; 3] {
    const MAX: usize = 65535;
    if n <= MAX {
        [n as u32, 1, 1]
    } else {
        [MAX as u32, n.div_ceil(MAX) as u32, 1]
    }
}
