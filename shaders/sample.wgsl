// Sampling on the GPU: one token a row of logits, drawn by transformers'
// rule (logits / temperature, then top-k, then top-p, then min-p, then a draw
// from the softmax of what is kept), so sampled decoding reads back a token,
// not V logits, and submits the next step before it reads this one's (as
// greedy decoding does with argmax_rows).
//
// The draw is the Gumbel-max race: token = argmax over the kept i of
// s_i − ln E_i, with s = logits / temperature and E_i a standard exponential
// from a hash of (seed, draw, i). That is a draw from softmax(s) over the
// kept set, with no prefix sums and no order to agree on. Ties keep the lower
// index. `model::llama::sample` is the same rule on the CPU.
//
//   sample_slices  workgroup (slice, row): the slice's SLICE values. Writes the
//                  slice's CANDIDATES most likely (key, index) pairs, unordered
//                  (fewer where it has fewer values; the rest key 0), and the
//                  slice's statistics (stats below).
//   repetition_penalty  invocation (index, row), before the others where the
//                  generation has a penalty θ ≠ 1 (transformers'
//                  RepetitionPenaltyLogitsProcessor): every token already in
//                  the row's sequence has its logit divided by θ where it is
//                  ≥ 0 and multiplied by θ where it is negative, in place. The
//                  sequence is a bitmask of token ids; the previous step's
//                  token (`last`, where `mark`) joins it here.
//   ban_ngrams     invocation (start, row), before the picks where the generation
//                  has a no_repeat_ngram_size n (transformers'
//                  NoRepeatNGramLogitsProcessor): every n-gram of the row's
//                  sequence whose first n − 1 tokens are the sequence's last
//                  n − 1 bans its last token (logit −∞), in place. The sequence
//                  is kept as token ids; the previous step's token (`last`,
//                  where `mark`) is appended by the launch.
//   ban_words      invocation (word, row), before the picks where the generation
//                  has bad_words_ids of more than one token (transformers'
//                  NoBadWordsLogitsProcessor): a word of L tokens whose first
//                  L − 1 are the row's last L − 1 bans its last token (a word
//                  of one token: always; a word longer than the sequence:
//                  never), in place. The sequence is read, and `last`
//                  appended, as ban_ngrams does.
//   sample_pick    workgroup row: merges the statistics, selects the row's
//                  CANDIDATES most likely of the slices' candidates, sorts them,
//                  and applies top-k, top-p, min-p and the draw. Where the kept
//                  set does not lie within the candidates (a top-k past them,
//                  or a nucleus or min-p set wider than them), it writes the
//                  flag UNDECIDED and sample_wide draws from the whole row.
//
// min-p keeps the tokens whose probability is at least min_p times the most
// likely's: exp(s − max) ≥ min_p, which the normalizing sum leaves alone (and
// so top-k and top-p before it too). It is monotone in s, so like the others
// its kept set is a most-likely prefix, and the kept set is the shortest.
//
// "Most likely" is the order of (score, then lower index): each value is the
// composite (order_key(s), ~index), unique per row, and the CANDIDATES largest
// are found by a radix select, eight 8-bit digits from the top, each a
// workgroup histogram (integer atomics) and a suffix scan.
//
// Prelude constants: WG (256, one invocation a histogram bin), CANDIDATES
// (at most WG). order_key.wgsl and workgroup_reduce.wgsl come before this file.

const SLICE: u32 = WG * 8u;  // values a sample_slices workgroup covers
const STATS: u32 = 8u;       // words of statistics a slice
const DECIDED: u32 = 0u;     // flags
const UNDECIDED: u32 = 1u;
const NO_TOKEN: u32 = 2u;

struct Params {
    n: u32,            // values a row (the vocabulary)
    rows: u32,
    slices: u32,       // ceil(n / SLICE)
    top_k: u32,        // 0 = off
    top_p: f32,        // 1 = off
    temperature: f32,  // > 0
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,         // row r draws with draw + r
    penalty: f32,      // repetition_penalty: θ > 0
    mark: u32,         // repetition_penalty, ban_ngrams: 1 = add last[row] to the row's tokens first
    min_p: f32,        // 0 = off
    ngram: u32,        // ban_ngrams: n ≥ 1
    len: u32,          // ban_ngrams, ban_words: tokens in each row's sequence (last[row] included where mark)
    cap: u32,          // ban_ngrams, ban_words: history's row stride
    words: u32,        // ban_words: how many
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;             // (rows, n)
@group(0) @binding(2) var<storage, read_write> cand: array<vec2<u32>>;   // (rows, slices, CANDIDATES): (key, index)
// (rows, slices, STATS): the slice's largest score key (0: no value), Σ exp(s −
// its largest) (f32 bits; 0 unless that is finite), the largest logit's key
// and index, the count of values (not NaN), the largest s − ln E's key and index.
@group(0) @binding(3) var<storage, read_write> stats: array<u32>;
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;       // (2 · rows): the tokens, then their flags
// repetition_penalty's: the logits it changes, the tokens seen so far and the previous step's.
@group(0) @binding(5) var<storage, read_write> penalized: array<f32>;    // (rows, n)
@group(0) @binding(6) var<storage, read_write> seen: array<atomic<u32>>; // (rows, ceil(n / 32)): bit i of a row: token i
@group(0) @binding(7) var<storage, read> last: array<u32>;               // (rows): each row's previous token
@group(0) @binding(8) var<storage, read_write> history: array<u32>;     // ban_ngrams: (rows, cap): each row's tokens so far
// ban_words: (words + 1) offsets of each word's first token past them, then the words' tokens, one after another.
@group(0) @binding(9) var<storage, read> word_table: array<u32>;

var<workgroup> hist: array<atomic<u32>, WG>;
var<workgroup> suffix: array<u32, WG>;
var<workgroup> picked: vec4<u32>;         // a digit's bin, the count above it and in it
var<workgroup> fill: atomic<u32>;
var<workgroup> slice_max: atomic<u32>;
var<workgroup> slice_count: atomic<u32>;
var<workgroup> shared_word: u32;          // a count every invocation needs (workgroupUniformLoad)
var<workgroup> merged: array<u32, STATS>;  // sample_pick: the row's statistics; [7] the candidates present
var<workgroup> top_key: array<u32, CANDIDATES>;
var<workgroup> top_index: array<u32, CANDIDATES>;
var<workgroup> sorted_key: array<u32, CANDIDATES>;
var<workgroup> sorted_index: array<u32, CANDIDATES>;

// The PCG hash (Jarzynski and Olano, 2020), `kernels::sample::pcg` on the CPU.
fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// The hash every value of row `row` mixes its index into.
fn draw_base(row: u32) -> u32 { return pcg(pcg(pcg(p.seed_lo) ^ p.seed_hi) ^ (p.draw + row)); }

// −ln U for U = (k + ½) / 2²³, k the hash's top 23 bits: a standard
// exponential. Near U = 1 (E small, the likeliest winners) a series in
// 1 − U, which is exact there, instead of log's absolute error.
fn exponential(bits: u32) -> f32 {
    let k = f32(bits >> 9u);
    let d = (8388607.5 - k) * (1.0 / 8388608.0);  // 1 − U
    if (d < 0.125) {
        return d * (1.0 + d * (0.5 + d * (0.33333334 + d * (0.25 + d * (0.2 + d * (0.16666667 + d * (0.14285715 + d * 0.125)))))));
    }
    return -log((k + 0.5) * (1.0 / 8388608.0));
}

// s − ln E for value i of a row with hash base `base`.
fn gumbel(s: f32, base: u32, i: u32) -> f32 { return s - log(exponential(pcg(base ^ i))); }

// Whether an order key is a finite value's (integers: no float rule applies).
fn finite_key(k: u32) -> bool { return k > 0x007fffffu && k < 0xff800000u; }

// Item e of the selection as the composite (key, ~index), key 0 when absent:
// in sample_slices (slices) value e of the slice, else candidate e of the row.
fn item(slices: bool, row: u32, slice: u32, e: u32) -> vec2<u32> {
    if (slices) {
        let i = slice * SLICE + e;
        if (e >= SLICE || i >= p.n) { return vec2<u32>(0u); }
        let v = logits[row * p.n + i];
        if (is_nan_bits(v)) { return vec2<u32>(0u); }
        return vec2<u32>(order_key(v / p.temperature), ~i);
    }
    if (e >= p.slices * CANDIDATES) { return vec2<u32>(0u); }
    let c = cand[row * p.slices * CANDIDATES + e];
    return vec2<u32>(c.x, ~c.y);
}

// Whether composite c agrees with `prefix` on the digits before digit d
// (digit 0 is the key's top byte, digit 7 the index's lowest).
fn agrees(c: vec2<u32>, prefix: vec2<u32>, d: u32) -> bool {
    if (d < 4u) {
        if (d == 0u) { return true; }
        let mask = ~0u << (32u - 8u * d);
        return (c.x & mask) == prefix.x;
    }
    if (c.x != prefix.x) { return false; }
    if (d == 4u) { return true; }
    let mask = ~0u << (32u - 8u * (d - 4u));
    return (c.y & mask) == prefix.y;
}

fn digit(c: vec2<u32>, d: u32) -> u32 {
    if (d < 4u) { return (c.x >> (24u - 8u * d)) & 0xffu; }
    return (c.y >> (24u - 8u * (d - 4u))) & 0xffu;
}

// The `need`-th largest composite of the `count` items (1 ≤ need ≤ the items
// present), so exactly `need` items are ≥ it. Called from uniform control
// flow by every invocation.
fn select_nth(slices: bool, row: u32, slice: u32, count: u32, need: u32, lid: u32) -> vec2<u32> {
    var prefix = vec2<u32>(0u);
    var remaining = need;
    for (var d = 0u; d < 8u; d++) {
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var e = lid; e < count; e += WG) {
            let c = item(slices, row, slice, e);
            if (c.x != 0u && agrees(c, prefix, d)) { atomicAdd(&hist[digit(c, d)], 1u); }
        }
        workgroupBarrier();
        let own = atomicLoad(&hist[lid]);
        suffix[lid] = own;
        workgroupBarrier();
        // suffix[b] = Σ hist[b'] over b' ≥ b (Hillis–Steele).
        for (var off = 1u; off < WG; off *= 2u) {
            var v = suffix[lid];
            if (lid + off < WG) { v += suffix[lid + off]; }
            workgroupBarrier();
            suffix[lid] = v;
            workgroupBarrier();
        }
        let above = suffix[lid] - own;
        if (above < remaining && suffix[lid] >= remaining) { picked = vec4<u32>(lid, above, own, 0u); }
        let pick = workgroupUniformLoad(&picked);
        if (d < 4u) {
            prefix.x |= pick.x << (24u - 8u * d);
        } else {
            prefix.y |= pick.x << (24u - 8u * (d - 4u));
        }
        remaining -= pick.y;
        // Every item of the bin is wanted: the prefix, lower digits 0, is the threshold.
        if (pick.z == remaining) { break; }
    }
    return prefix;
}

// Composite a ≥ composite b.
fn at_least(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x > b.x || (a.x == b.x && a.y >= b.y); }

@compute @workgroup_size(WG)
fn sample_slices(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let slice = wid.x;
    let row = wid.y;
    if (lid == 0u) {
        atomicStore(&fill, 0u);
        atomicStore(&slice_max, 0u);
        atomicStore(&slice_count, 0u);
    }
    workgroupBarrier();
    // The largest score, the count, and the largest logit.
    var raw_key = 0u;
    var raw_index = 0u;
    var count = 0u;
    var top = 0u;
    for (var e = lid; e < SLICE; e += WG) {
        let i = slice * SLICE + e;
        if (i < p.n) {
            let v = logits[row * p.n + i];
            if (!is_nan_bits(v)) {
                count += 1u;
                top = max(top, order_key(v / p.temperature));
                let kv = order_key(v);
                if (kv > raw_key) {  // this invocation's values rise in index
                    raw_key = kv;
                    raw_index = i;
                }
            }
        }
    }
    atomicMax(&slice_max, top);
    atomicAdd(&slice_count, count);
    let raw = workgroup_best(lid, raw_key, raw_index);
    let largest = atomicLoad(&slice_max);
    if (lid == 0u) { shared_word = atomicLoad(&slice_count); }
    let values = workgroupUniformLoad(&shared_word);
    let m = key_value(largest);
    // Σ exp(s − m) and the race over every value.
    let base = draw_base(row);
    var sum = 0.0;
    var g_key = 0u;
    var g_index = 0u;
    for (var e = lid; e < SLICE; e += WG) {
        let c = item(true, row, slice, e);
        if (c.x != 0u) {
            let s = key_value(c.x);
            let i = ~c.y;
            if (finite_key(largest)) { sum += exp(s - m); }
            let kg = order_key(gumbel(s, base, i));
            if (beats(g_key, g_index, kg, i)) {
                g_key = kg;
                g_index = i;
            }
        }
    }
    let total = workgroup_sum(lid, sum);
    let race = workgroup_best(lid, g_key, g_index);
    let at = (row * p.slices + slice) * STATS;
    if (lid == 0u) {
        stats[at] = largest;
        stats[at + 1u] = bitcast<u32>(total);
        stats[at + 2u] = raw.x;
        stats[at + 3u] = raw.y;
        stats[at + 4u] = values;
        stats[at + 5u] = race.x;
        stats[at + 6u] = race.y;
        stats[at + 7u] = 0u;
    }
    // The slice's candidates.
    let need = min(values, CANDIDATES);
    let out = (row * p.slices + slice) * CANDIDATES;
    if (need > 0u) {
        let threshold = select_nth(true, row, slice, SLICE, need, lid);
        for (var e = lid; e < SLICE; e += WG) {
            let c = item(true, row, slice, e);
            if (c.x != 0u && at_least(c, threshold)) { cand[out + atomicAdd(&fill, 1u)] = vec2<u32>(c.x, ~c.y); }
        }
    }
    for (var j = need + lid; j < CANDIDATES; j += WG) { cand[out + j] = vec2<u32>(0u); }
}

// The row's statistics from its slices', every invocation a share of the
// slices, into `merged`: largest score key, Σ exp(s − largest) (f32 bits),
// largest logit's key and index, values, race winner's key and index,
// candidates present. From uniform control flow.
fn merge_slices(row: u32, lid: u32) {
    if (lid == 0u) {
        atomicStore(&slice_max, 0u);
        atomicStore(&slice_count, 0u);
        atomicStore(&fill, 0u);
    }
    workgroupBarrier();
    var largest = 0u;
    var values = 0u;
    var present = 0u;
    var raw = vec2<u32>(0u);
    var race = vec2<u32>(0u);
    for (var s = lid; s < p.slices; s += WG) {
        let at = (row * p.slices + s) * STATS;
        largest = max(largest, stats[at]);
        values += stats[at + 4u];
        present += min(stats[at + 4u], CANDIDATES);
        if (beats(raw.x, raw.y, stats[at + 2u], stats[at + 3u])) { raw = vec2<u32>(stats[at + 2u], stats[at + 3u]); }
        if (beats(race.x, race.y, stats[at + 5u], stats[at + 6u])) { race = vec2<u32>(stats[at + 5u], stats[at + 6u]); }
    }
    atomicMax(&slice_max, largest);
    atomicAdd(&slice_count, values);
    atomicAdd(&fill, present);
    let raw_best = workgroup_best(lid, raw.x, raw.y);
    let race_best = workgroup_best(lid, race.x, race.y);
    let m_key = atomicLoad(&slice_max);
    let m = key_value(m_key);
    var sum = 0.0;
    for (var s = lid; s < p.slices; s += WG) {
        let at = (row * p.slices + s) * STATS;
        if (finite_key(m_key) && stats[at] != 0u) { sum += bitcast<f32>(stats[at + 1u]) * exp(key_value(stats[at]) - m); }
    }
    let total = workgroup_sum(lid, sum);
    if (lid == 0u) {
        merged[0] = m_key;
        merged[1] = bitcast<u32>(total);
        merged[2] = raw_best.x;
        merged[3] = raw_best.y;
        merged[4] = atomicLoad(&slice_count);
        merged[5] = race_best.x;
        merged[6] = race_best.y;
        merged[7] = atomicLoad(&fill);
    }
    workgroupBarrier();
}

var<workgroup> weights: array<f32, WG>;  // sample_pick: exp(s − largest) of the sorted candidates, then their prefix sums
var<workgroup> cut: atomic<u32>;         // sample_pick: where top-k, then top-p, then min-p cuts the sorted candidates
const NONE: u32 = 0xffffffffu;

// The kept set's end among the `need` sorted candidates and the race over
// them, every invocation one candidate, and thread 0's decision: (token, flag).
// From uniform control flow; the result is thread 0's.
fn decide(row: u32, need: u32, lid: u32) -> vec2<u32> {
    let m_key = merged[0];
    let m = key_value(m_key);
    let values = merged[4];
    var w = 0.0;
    if (lid < need && finite_key(m_key)) { w = exp(key_value(sorted_key[lid]) - m); }
    // top-k: the first candidate past the k-th below its score.
    let k = p.top_k;
    let k_on = k > 0u && k < values;
    if (lid == 0u) { atomicStore(&cut, need); }
    workgroupBarrier();
    if (k_on && k <= need && lid >= k && lid < need && sorted_key[lid] != sorted_key[k - 1u]) { atomicMin(&cut, lid); }
    workgroupBarrier();
    let kept_k = atomicLoad(&cut);
    let total_k = workgroup_sum(lid, select(0.0, w, lid < kept_k));
    var total = bitcast<f32>(merged[1]);  // top-k off: every value's
    if (k_on) { total = total_k; }
    // top-p: the first candidate whose prefix sum reaches top_p · total (Hillis–Steele).
    weights[lid] = select(0.0, w, lid < kept_k);
    workgroupBarrier();
    for (var off = 1u; off < WG; off *= 2u) {
        var v = weights[lid];
        if (lid >= off) { v += weights[lid - off]; }
        workgroupBarrier();
        weights[lid] = v;
        workgroupBarrier();
    }
    if (lid == 0u) { atomicStore(&cut, NONE); }
    workgroupBarrier();
    if (p.top_p < 1.0 && lid < kept_k && weights[lid] / total >= p.top_p) { atomicMin(&cut, lid); }
    workgroupBarrier();
    let reached = atomicLoad(&cut);
    var kept = kept_k;
    if (reached != NONE) { kept = reached + 1u; }
    // min-p: the first candidate less likely than min_p times the first (never
    // the first itself: its weight is 1). Without min-p, no barrier more.
    var below = NONE;
    if (p.min_p > 0.0) {
        workgroupBarrier();
        if (lid == 0u) { atomicStore(&cut, NONE); }
        workgroupBarrier();
        if (lid < need && w < p.min_p) { atomicMin(&cut, lid); }
        workgroupBarrier();
        below = atomicLoad(&cut);
    }
    let min_cut = below != NONE;  // min-p's set ends within the candidates
    kept = min(kept, below);
    // The race over the kept candidates.
    var kg = 0u;
    var i = 0u;
    if (lid < kept) {
        i = sorted_index[lid];
        kg = order_key(gumbel(key_value(sorted_key[lid]), draw_base(row), i));
    }
    let winner = workgroup_best(lid, kg, i);
    // Whether the kept set lies within the candidates.
    if (values == 0u) { return vec2<u32>(0u, NO_TOKEN); }
    if (!finite_key(m_key)) { return vec2<u32>(merged[3], DECIDED); }  // as the CPU: the largest logit
    // A cut past the candidates leaves the kept set to a shorter cut within
    // them, where there is one that does not depend on it.
    var complete = values <= CANDIDATES;
    if (k_on) {
        // Past the candidates, or ties at the k-th that may go on past them:
        // then top-p's total is unknown, but min-p's cut needs none.
        let past = k > need || (kept_k == need && !complete);
        if (past && !(min_cut && p.top_p >= 1.0)) { return vec2<u32>(sorted_index[0], UNDECIDED); }
        complete = true;
    }
    if (p.top_p < 1.0) {
        if (reached == NONE && !complete && !min_cut) { return vec2<u32>(sorted_index[0], UNDECIDED); }
        complete = true;
    }
    if (p.min_p > 0.0) {
        if (!min_cut && !complete) { return vec2<u32>(sorted_index[0], UNDECIDED); }
        complete = true;
    }
    // Nothing cut: the race over every value, which sample_slices ran.
    if (!complete) { return vec2<u32>(merged[6], DECIDED); }
    return vec2<u32>(winner.y, DECIDED);
}

@compute @workgroup_size(WG)
fn sample_pick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    merge_slices(row, lid);
    if (lid == 0u) {
        atomicStore(&fill, 0u);
        shared_word = merged[7];
    }
    let present = workgroupUniformLoad(&shared_word);
    let need = min(present, CANDIDATES);
    let count = p.slices * CANDIDATES;
    if (need > 0u) {
        let threshold = select_nth(false, row, 0u, count, need, lid);
        for (var e = lid; e < count; e += WG) {
            let c = item(false, row, 0u, e);
            if (c.x != 0u && at_least(c, threshold)) {
                let slot = atomicAdd(&fill, 1u);
                top_key[slot] = c.x;
                top_index[slot] = ~c.y;
            }
        }
    }
    workgroupBarrier();
    // Sort by rank: each candidate counts those more likely.
    if (lid < need) {
        let mine = vec2<u32>(top_key[lid], ~top_index[lid]);
        var rank = 0u;
        for (var j = 0u; j < need; j++) {
            if (j != lid && at_least(vec2<u32>(top_key[j], ~top_index[j]), mine)) { rank++; }
        }
        sorted_key[rank] = top_key[lid];
        sorted_index[rank] = top_index[lid];
    }
    workgroupBarrier();
    let pick = decide(row, need, lid);
    if (lid == 0u) {
        tokens[row] = pick.x;
        tokens[p.rows + row] = pick.y;
    }
}

// ---- sample_wide: the rows sample_pick left UNDECIDED ----------------------
//
// One workgroup a row, every pass over the whole row: the kept set is found
// by bisection on the order keys (32 halvings of the u32 range, each a pass
// and a workgroup sum), so no candidate list bounds it. top-k: the largest
// key with at least k values at or above it. top-p: the largest key whose
// values at or above it hold top_p of the kept mass; of the values tied at
// it, as many as the CPU's running sum takes, the lowest indices first.
// min-p: the smallest key whose exp(s − max) reaches min_p, found by
// bisection on the keys alone (no pass). Then the race over the kept. A
// decided row costs one launch that reads its flag.

// `v` from invocation 0 to all, as a value uniform control flow may use.
fn uniform_u32(lid: u32, v: u32) -> u32 {
    if (lid == 0u) { shared_word = v; }
    let r = workgroupUniformLoad(&shared_word);
    workgroupBarrier();  // read by all before the next write
    return r;
}

fn uniform_f32(lid: u32, v: f32) -> f32 { return bitcast<f32>(uniform_u32(lid, bitcast<u32>(v))); }

// Σ over the row's values with key ≥ at (key == at with `equal`; index ≤
// last): exp(s − m) with `weighted`, else 1.
fn row_sum(row: u32, lid: u32, at: u32, equal: bool, last: u32, weighted: bool, m: f32) -> f32 {
    var sum = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[row * p.n + i];
        if (!is_nan_bits(v)) {
            let k = order_key(v / p.temperature);
            let hit = select(k >= at, k == at, equal) && i <= last;
            if (hit) { sum += select(1.0, exp(key_value(k) - m), weighted); }
        }
    }
    return uniform_f32(lid, workgroup_sum(lid, sum));
}

// The largest key τ in [lo, hi] with row_sum(≥ τ) ≥ goal (row_sum(≥ lo) is).
fn bisect(row: u32, lid: u32, lo_in: u32, hi: u32, goal: f32, weighted: bool, m: f32) -> u32 {
    var lo = lo_in;
    var top = hi;
    for (var step = 0u; step < 32u; step++) {
        let mid = lo + (top - lo) / 2u + ((top - lo) & 1u);
        let ok = row_sum(row, lid, mid, false, NONE, weighted, m) >= goal;
        lo = select(lo, mid, ok);
        top = select(mid - 1u, top, ok || mid == lo);
    }
    return lo;
}

@compute @workgroup_size(WG)
fn sample_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (uniform_u32(lid, tokens[p.rows + row]) != UNDECIDED) { return; }
    if (lid == 0u) { atomicStore(&slice_max, 0u); }
    workgroupBarrier();
    var top = 0u;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[row * p.n + i];
        if (!is_nan_bits(v)) { top = max(top, order_key(v / p.temperature)); }
    }
    atomicMax(&slice_max, top);
    let values = u32(row_sum(row, lid, 1u, false, NONE, false, 0.0));  // every value's key is ≥ 1
    let m_key = uniform_u32(lid, atomicLoad(&slice_max));
    let m = key_value(m_key);
    // top-k: the k-th largest key; its ties are kept.
    var tau = 1u;
    if (p.top_k > 0u && p.top_k < values) { tau = bisect(row, lid, 1u, m_key, f32(p.top_k), false, m); }
    var last = NONE;  // the last index kept among the values tied at tau
    if (p.top_p < 1.0) {
        let goal = p.top_p * row_sum(row, lid, tau, false, NONE, true, m);
        tau = bisect(row, lid, tau, m_key, goal, true, m);
        let at = row_sum(row, lid, tau, true, NONE, true, m);
        let above = row_sum(row, lid, tau, false, NONE, true, m) - at;
        let ties = u32(row_sum(row, lid, tau, true, NONE, false, m));
        let w = exp(key_value(tau) - m);
        let need = uniform_u32(lid, clamp(u32(ceil((goal - above) / w)), 1u, ties));
        if (need < ties) {
            // The need-th lowest index among the ties.
            var lo = 0u;
            var hi = p.n - 1u;
            for (var step = 0u; step < 32u; step++) {
                let mid = lo + (hi - lo) / 2u;
                let ok = u32(row_sum(row, lid, tau, true, mid, false, m)) >= need;
                hi = select(hi, mid, ok);
                lo = select(mid + 1u, lo, ok || lo == hi);
            }
            last = lo;
        }
    }
    if (p.min_p > 0.0) {
        // The smallest finite key at or above tau that min-p keeps (the
        // largest, m's, always is); all of its ties are kept.
        var lo = max(tau, 0x00800000u);
        var hi = m_key;
        for (var step = 0u; step < 32u; step++) {
            let mid = lo + (hi - lo) / 2u;
            let keeps = exp(key_value(mid) - m) >= p.min_p;
            hi = select(hi, mid, keeps);
            lo = select(mid + 1u, lo, keeps || lo == hi);
        }
        if (hi > tau) {
            tau = hi;
            last = NONE;
        }
    }
    // The race over the kept values.
    let base = draw_base(row);
    var g_key = 0u;
    var g_index = 0u;
    for (var i = lid; i < p.n; i += WG) {
        let v = logits[row * p.n + i];
        if (!is_nan_bits(v)) {
            let k = order_key(v / p.temperature);
            if (k > tau || (k == tau && i <= last)) {
                let kg = order_key(gumbel(key_value(k), base, i));
                if (beats(g_key, g_index, kg, i)) {
                    g_key = kg;
                    g_index = i;
                }
            }
        }
    }
    let winner = workgroup_best(lid, g_key, g_index);
    if (lid == 0u) {
        tokens[row] = winner.y;
        tokens[p.rows + row] = DECIDED;
    }
}

@compute @workgroup_size(WG)
fn repetition_penalty(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let row = gid.y;
    if (i >= p.n) { return; }
    let word = row * ((p.n + 31u) / 32u) + i / 32u;
    let bit = 1u << (i % 32u);
    // The one invocation of the previous token sets its bit; the others read
    // only their own bits of the word.
    let fresh = p.mark != 0u && last[row] == i;
    if (fresh) { atomicOr(&seen[word], bit); }
    if (fresh || (atomicLoad(&seen[word]) & bit) != 0u) {
        let l = penalized[row * p.n + i];
        penalized[row * p.n + i] = select(l / p.penalty, l * p.penalty, l < 0.0);
    }
}

// Token i of row `row`'s sequence: the previous step's, not yet in history,
// where the launch appends it.
fn sequence_token(row: u32, i: u32) -> u32 {
    if (p.mark != 0u && i + 1u == p.len) { return last[row]; }
    return history[row * p.cap + i];
}

@compute @workgroup_size(WG)
fn ban_ngrams(@builtin(global_invocation_id) gid: vec3<u32>) {
    let start = gid.x;
    let row = gid.y;
    if (p.mark != 0u && start == 0u) { history[row * p.cap + p.len - 1u] = last[row]; }
    // The n-grams start at 0..=len − n; the last n − 1 tokens start at len − n + 1.
    if (p.ngram > p.len || start > p.len - p.ngram) { return; }
    let tail = p.len - p.ngram + 1u;
    for (var j = 0u; j + 1u < p.ngram; j++) {
        if (sequence_token(row, start + j) != sequence_token(row, tail + j)) { return; }
    }
    let banned = sequence_token(row, start + p.ngram - 1u);
    // Every invocation that bans a token writes the same −∞ (built from a
    // runtime value: Tint rejects a constant infinity).
    if (banned < p.n) { penalized[row * p.n + banned] = bitcast<f32>(0xff800000u | (banned & 0u)); }
}

@compute @workgroup_size(WG)
fn ban_words(@builtin(global_invocation_id) gid: vec3<u32>) {
    let word = gid.x;
    let row = gid.y;
    if (p.mark != 0u && word == 0u) { history[row * p.cap + p.len - 1u] = last[row]; }
    if (word >= p.words) { return; }
    let first = p.words + 1u + word_table[word];
    let length = word_table[word + 1u] - word_table[word];
    if (length == 0u || length > p.len) { return; }
    // The word's first L − 1 tokens against the sequence's last L − 1.
    let tail = p.len - (length - 1u);
    for (var j = 0u; j + 1u < length; j++) {
        if (sequence_token(row, tail + j) != word_table[first + j]) { return; }
    }
    let banned = word_table[first + length - 1u];
    if (banned < p.n) { penalized[row * p.n + banned] = bitcast<f32>(0xff800000u | (banned & 0u)); }
}
