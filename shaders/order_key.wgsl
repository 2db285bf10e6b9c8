// Floats compared as integers, so no float rule (a compiler may assume there
// are no NaNs or infinities) can change an argmax or a selection: the f32's
// bits mapped to an order-preserving u32, negatives reversed below the
// positives and −0 as +0. No non-NaN value maps to 0, which stands for no
// value. And the workgroup's best (key, index) pair. Placed before
// reduce.wgsl and sample.wgsl (`Kernel::source`), whose prelude defines WG.

fn order_key(v: f32) -> u32 {
    var bits = bitcast<u32>(v);
    if (bits == 0x80000000u) { bits = 0u; }
    if ((bits & 0x80000000u) != 0u) { return ~bits; }
    return bits | 0x80000000u;
}

// The value of an order key (−0 comes back as +0).
fn key_value(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
    return bitcast<f32>(~k);
}

fn is_nan_bits(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }

// Whether (key b, index b) beats (key a, index a): the larger key, then the
// lower index; key 0 is no value.
fn beats(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    if (kb == 0u) { return false; }
    if (ka == 0u) { return true; }
    return kb > ka || (kb == ka && ib < ia);
}

var<workgroup> best_key: array<u32, WG>;
var<workgroup> best_index: array<u32, WG>;

// The best of the workgroup's (key, index) pairs (by `beats`), from uniform
// control flow.
fn workgroup_best(lid: u32, key: u32, index: u32) -> vec2<u32> {
    best_key[lid] = key;
    best_index[lid] = index;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half && beats(best_key[lid], best_index[lid], best_key[lid + half], best_index[lid + half])) {
            best_key[lid] = best_key[lid + half];
            best_index[lid] = best_index[lid + half];
        }
        workgroupBarrier();
    }
    let best = vec2<u32>(best_key[0], best_index[0]);
    workgroupBarrier();
    return best;
}
