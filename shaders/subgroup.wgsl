// Helpers of the subgroup kernels (matmul_subgroup.wgsl, qmatmul_subgroup.wgsl),
// placed between their base file and them: 8-lane subgroups, as on lavapipe.

// The 8 lanes' copies of `v`, lane l's in slot l (the lane must be a constant).
fn spread8(v: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}
