// A sequence classifier's loss (transformers' ForSequenceClassificationLoss) on the pooled logits of
// one micro-batch of B rows and L labels, forward and backward in one pass:
//
//   regression                  loss = mean over the B·L values of (z − y)²         dz = 2(z − y)/(B·L)
//   single_label_classification loss = mean over the rows whose label c ≠ −100 of   dz = (softmax(z) − onehot(c))/N
//                                      logsumexp(z) − z[c]                           (N such rows; 0 on the others)
//   multi_label_classification  loss = mean over the B·L values of                 dz = (σ(z) − y)/(B·L)
//                                      max(z, 0) − z·y + log(1 + e^−|z|)
//
// stats += [scale·loss, rows whose argmax (the first maximum) is their label, rows with a label],
// the last two for single_label only (0 elsewhere); dz is ∂(scale·loss)/∂z.
// One invocation does it all: B·L is a micro-batch's rows times its labels, a few hundred values.
// Prelude constant: WG, invocations per workgroup.

const REGRESSION: u32 = 0u;
const SINGLE_LABEL: u32 = 1u;
const MULTI_LABEL: u32 = 2u;
const IGNORE: f32 = -100.0;

struct Params {
    rows: u32,
    labels: u32,
    problem: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;        // (B, L)
@group(0) @binding(2) var<storage, read> targets: array<f32>;       // (B, L), single_label: (B) class indices
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;   // (3), added to
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>; // (B, L)

fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}

@compute @workgroup_size(WG)
fn classification_loss(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) { return; }
    let l = p.labels;
    var loss = 0.0;
    if (p.problem == SINGLE_LABEL) {
        var counted = 0.0;
        var correct = 0.0;
        for (var b = 0u; b < p.rows; b++) {
            if (targets[b] != IGNORE) { counted += 1.0; }
        }
        for (var b = 0u; b < p.rows; b++) {
            let base = b * l;
            let c = targets[b];
            var m = logits[base];
            var best = 0u;
            for (var j = 1u; j < l; j++) {
                if (logits[base + j] > m) { m = logits[base + j]; best = j; }
            }
            var sum = 0.0;
            for (var j = 0u; j < l; j++) { sum += exp(logits[base + j] - m); }
            if (c == IGNORE) {
                for (var j = 0u; j < l; j++) { dlogits[base + j] = 0.0; }
                continue;
            }
            let label = u32(c);
            loss += m + log(sum) - logits[base + label];
            correct += select(0.0, 1.0, best == label);
            for (var j = 0u; j < l; j++) {
                let onehot = select(0.0, 1.0, j == label);
                dlogits[base + j] = (exp(logits[base + j] - m) / sum - onehot) * p.scale / counted;
            }
        }
        stats[0] += loss / counted * p.scale;
        stats[1] += correct;
        stats[2] += counted;
        return;
    }
    let n = f32(p.rows * l);
    for (var i = 0u; i < p.rows * l; i++) {
        let z = logits[i];
        let y = targets[i];
        if (p.problem == REGRESSION) {
            loss += (z - y) * (z - y);
            dlogits[i] = 2.0 * (z - y) * p.scale / n;
        } else {
            loss += softplus(z) - z * y;
            dlogits[i] = (1.0 / (1.0 + exp(-z)) - y) * p.scale / n;
        }
    }
    stats[0] += loss / n * p.scale;
}
