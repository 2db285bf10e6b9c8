// Helpers shared by every kernel; prepended after the constants prelude.

// A 1-D workgroup index over a 2-D grid: launches of more than 65535
// workgroups are split into rows of at most 65535 (see `kernels::grid_1d`).
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
