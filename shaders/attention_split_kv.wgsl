// Split-KV ("flash-decoding") forward for real GPUs: a few queries (a
// decoding step, a short chunk) against many keys. attention.wgsl's forward
// gives each invocation whole query rows and walks every key alone, so a
// decoding step of a model with 8 kv heads runs on 8 invocations of one
// workgroup while the GPU's other SMs idle, and each row's keys go by one
// dependent load after another. Here the keys are cut into `p.parts` splits
// and every (batch, kv head, block of query rows, split) is a workgroup:
//
//   attention_forward_split    walks its split's keys in blocks of KB: the
//                              scores of its rows × KB keys (every invocation
//                              a key and every other row), the block's online
//                              softmax per row, then out += P · v (every
//                              invocation some (row, vec4 column) outputs);
//                              stores its unnormalised out, max and sum
//   attention_combine_splits   out = Σ_s e^{m_s − m} o_s / Σ_s e^{m_s − m} l_s,
//                              lse = m + ln Σ_s e^{m_s − m} l_s
//
// Same semantics as attention.wgsl (query i at position offset + i sees keys
// 0 ..= offset + i; out and lse as its forward writes them). Rows of a kv
// head: its G_ALL = hq / hkv query heads × tq positions, row r = position
// r / G_ALL, head r % G_ALL; a workgroup takes RB of them. A split that sees
// none of a row's keys keeps max LOWEST and sum 0, and weighs nothing.
//
// Uniform control flow for every barrier: the block loop's bounds depend
// only on Params and the workgroup id; rows past the kv head's rows and
// keys a row does not see compute along and are masked.
//
// Workgroup memory: RB × KB scores and 3 · RB floats, at most 8.4 KiB.
//
// Appended to attention_rows.wgsl and attention.wgsl (Params, bindings,
// q_at, kv_at, LOWEST). Prelude constants: D4, RB (rows a workgroup: a
// decoding step's few, up to 32, so that no invocation computes a row that
// is not there), KB (keys a block), WG (invocations, a multiple of KB with
// WG / KB dividing RB), and attention.wgsl's G = P = PK = 1.

const ROW_LANES: u32 = WG / KB;  // invocations sharing a key in the scores: rows lane, lane + ROW_LANES, …
const OUTS: u32 = (RB * D4 + WG - 1u) / WG;  // (row, vec4 column) outputs an invocation owns

@group(0) @binding(17) var<storage, read_write> part_o: array<vec4<f32>>;  // (parts, batch · hq · tq, D): unnormalised out
@group(0) @binding(18) var<storage, read_write> part_ml: array<f32>;       // (parts, batch · hq · tq, 2): max, sum
@group(0) @binding(19) var<storage, read> part_o_in: array<vec4<f32>>;
@group(0) @binding(20) var<storage, read> part_ml_in: array<f32>;

var<workgroup> scores: array<f32, RB * KB>;  // (RB, KB): scaled scores, then their exps
var<workgroup> row_max: array<f32, RB>;
var<workgroup> row_sum: array<f32, RB>;
var<workgroup> row_scale: array<f32, RB>;    // e^{old max − new max} of the block

// The first key of each split: whole blocks, the splits as even as blocks allow.
fn split_span() -> u32 {
    let keys = p.offset + p.tq;
    return ((keys + p.parts - 1u) / p.parts + KB - 1u) / KB * KB;
}

// Row `row` (of the kv head's hq / hkv · tq) of batch b, kv head kvh: its
// position and query head.
fn row_position(row: u32) -> u32 { return row / (p.hq / p.hkv); }
fn row_head(kvh: u32, row: u32) -> u32 { return kvh * (p.hq / p.hkv) + row % (p.hq / p.hkv); }

// The row's slot in the partial buffers: (batch, head, position) as lse.
fn part_row(b: u32, h: u32, i: u32) -> u32 { return (b * p.hq + h) * p.tq + i; }

@compute @workgroup_size(WG)
fn attention_forward_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let rows = (p.hq / p.hkv) * p.tq;
    let blocks = (rows + RB - 1u) / RB;
    let w = flat_group(wid, nwg);
    let split = w % p.parts;
    let row_block = (w / p.parts) % blocks;
    let bh = w / (p.parts * blocks);  // b · hkv + kvh
    let b = bh / p.hkv;
    let kvh = bh % p.hkv;
    let r0 = row_block * RB;
    let span = split_span();
    let j_begin = split * span;
    let j_end = min(j_begin + span, p.offset + p.tq);
    if (lid < RB) {
        row_max[lid] = LOWEST;
        row_sum[lid] = 0.0;
    }
    workgroupBarrier();
    var o: array<vec4<f32>, OUTS>;
    for (var j0 = j_begin; j0 < j_end; j0 += KB) {
        // Scores: invocation lid takes key j0 + lid % KB and rows lid / KB + ROW_LANES · n.
        let jk = lid % KB;
        let key = min(j0 + jk, p.tkv - 1u);
        var dots: array<f32, RB / ROW_LANES>;
        for (var c = 0u; c < D4; c++) {
            let kc = k[kv_at(b, key, kvh) + c];
            for (var n = 0u; n < RB / ROW_LANES; n++) {
                let row = r0 + lid / KB + n * ROW_LANES;
                if (row < rows) { dots[n] += dot(q[q_at(b, row_position(row), row_head(kvh, row)) + c], kc); }
            }
        }
        for (var n = 0u; n < RB / ROW_LANES; n++) {
            scores[(lid / KB + n * ROW_LANES) * KB + jk] = dots[n] * p.scale;
        }
        workgroupBarrier();
        // The block's online softmax, one invocation a row.
        if (lid < RB) {
            let row = r0 + lid;
            let last = min(p.offset + row_position(min(row, rows - 1u)) + 1u, j_end);  // keys j < last are seen
            var m = row_max[lid];
            for (var j = 0u; j < KB; j++) {
                if (j0 + j < last) { m = max(m, scores[lid * KB + j]); }
            }
            var sum = 0.0;
            for (var j = 0u; j < KB; j++) {
                var e = 0.0;
                if (j0 + j < last) { e = exp(scores[lid * KB + j] - m); }
                scores[lid * KB + j] = e;
                sum += e;
            }
            let scale = exp(row_max[lid] - m);
            row_scale[lid] = scale;
            row_sum[lid] = row_sum[lid] * scale + sum;
            row_max[lid] = m;
        }
        workgroupBarrier();
        // out += P · v: invocation lid owns outputs lid, lid + WG, … of (RB, D4).
        for (var n = 0u; n < OUTS; n++) {
            let x = lid + n * WG;
            let r = x / D4;
            let c = x % D4;
            if (r < RB && r0 + r < rows) {
                var acc = o[n] * row_scale[r];
                for (var j = 0u; j < KB; j++) {
                    let pj = scores[r * KB + j];
                    if (pj != 0.0) { acc += pj * v[kv_at(b, min(j0 + j, p.tkv - 1u), kvh) + c]; }
                }
                o[n] = acc;
            }
        }
        workgroupBarrier();
    }
    workgroupBarrier();  // a split with no keys ran no block: its maxima and sums from the start
    for (var n = 0u; n < OUTS; n++) {
        let x = lid + n * WG;
        let row = r0 + x / D4;
        if (x < RB * D4 && row < rows) {
            let slot = split * p.batch * p.hq * p.tq + part_row(b, row_head(kvh, row), row_position(row));
            part_o[slot * D4 + x % D4] = o[n];
            if (x % D4 == 0u) {
                part_ml[2u * slot] = row_max[x / D4];
                part_ml[2u * slot + 1u] = row_sum[x / D4];
            }
        }
    }
}

// One invocation a vec4 of out: the splits' partial sums, weighed by their maxima.
@compute @workgroup_size(WG)
fn attention_combine_splits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let x = flat_group(wid, nwg) * WG + lid;
    let rows = p.batch * p.hq * p.tq;
    if (x >= rows * D4) { return; }
    let slot = x / D4;  // (b, h, i)
    let c = x % D4;
    let i = slot % p.tq;
    let h = (slot / p.tq) % p.hq;
    let b = slot / (p.tq * p.hq);
    var m = LOWEST;
    for (var s = 0u; s < p.parts; s++) { m = max(m, part_ml_in[2u * (s * rows + slot)]); }
    var sum = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.parts; s++) {
        let at = s * rows + slot;
        let weight = exp(part_ml_in[2u * at] - m);
        sum += weight * part_ml_in[2u * at + 1u];
        acc += weight * part_o_in[at * D4 + c];
    }
    out[q_at(b, i, h) + c] = acc / sum;
    if (c == 0u) { lse[slot] = m + log(sum); }
}
