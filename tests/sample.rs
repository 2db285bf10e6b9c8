//! Sampling: the GPU's draw (`sample_rows`) and the CPU's (`sample`) against
//! the reference's full sort, on seeded random rows at odd sizes with ties,
//! NaN, ±∞ and ±0, under every kind of setting; the kept sets against
//! transformers' warpers; the draw's frequencies against the kept softmax;
//! transformers' repetition penalty and no_repeat_ngram_size on both; and bad
//! settings as typed errors.

mod common;
use common::{block_on, gpu};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::sample::{
    bad_words, no_repeat_ngram, repetition_penalty as penalty_reference, sample_row, Draw,
};
use webpeft::kernels::sample::{
    ban_repeated_ngrams, ban_words, repetition_penalty, sample_rows, seen_tokens, seen_words, Sampling, WordTable,
    CANDIDATES, DECIDED, NO_TOKEN,
};
use webpeft::model::llama::{argmax, ban_bad_words, ban_seen_ngrams, penalize_seen, sample, GenerationConfig};
use webpeft::util::rng::Rng;
use webpeft::{DType, Error, Tensor};

/// A random row of `v` logits: mostly spread values at `scale`, some ties,
/// and where `special`, some NaN, ±∞ and ±0.
fn row(gen: &mut Rng, v: usize, scale: f32, special: bool) -> Vec<f32> {
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.5, -1.5];
    (0..v)
        .map(|_| match gen.below(20) {
            0 if special => specials[gen.below(specials.len())],
            1..=3 => (gen.below(5) as f32 - 2.0) * 0.5, // ties
            _ => (gen.uniform() as f32 - 0.5) * scale,
        })
        .collect()
}

/// (token, flag) of each row, drawn on the GPU.
fn gpu_draw(rows: &[Vec<f32>], sampling: &Sampling) -> Vec<(u32, u32)> {
    let gpu = gpu();
    let v = rows[0].len();
    let t = Tensor::from_slice(gpu, &[rows.len(), v], &rows.concat()).unwrap();
    let mut rec = Recorder::new(gpu);
    let picked = sample_rows(&mut rec, &t, sampling).unwrap();
    rec.submit().unwrap();
    let words: Vec<u32> = block_on(picked.to_vec(gpu)).unwrap();
    (0..rows.len()).map(|r| (words[r], words[rows.len() + r])).collect()
}

/// Whether the GPU's decided `token` is the reference's, or differs only by
/// float rounding: the same token under top_p ± 1e-5 or min_p · (1 ± 1e-5),
/// or a kept token whose race value is within 1e-4 of the winner's.
fn agrees(token: u32, want: &Draw, logits: &[f32], sampling: &Sampling) -> bool {
    if want.token == Some(token) {
        return true;
    }
    let nudged = |dp: f32| {
        let (top_p, min_p) = ((sampling.top_p + dp).min(1.0), (sampling.min_p * (1.0 + dp)).min(1.0));
        [Sampling { top_p, ..*sampling }, Sampling { min_p, ..*sampling }].map(|s| sample_row(logits, &s).token)
    };
    if nudged(1e-5).contains(&Some(token)) || nudged(-1e-5).contains(&Some(token)) {
        return true;
    }
    let best = want.race.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    want.kept.iter().zip(&want.race).any(|(&i, &r)| i as u32 == token && r >= best - 1e-4)
}

#[test]
fn gpu_draws_match_the_reference() {
    let mut gen = Rng::new(2026);
    let sizes = [1, 5, 127, 128, 129, 300, 2047, 2049, 5003, 40_000];
    // (temperature, top-k, top-p, min-p): min-p alone, cutting before or
    // after the others, and small enough to keep more than the candidates.
    let settings = [
        (1.0, 0, 1.0, 0.0),
        (0.7, 0, 0.9, 0.0),
        (1.3, 50, 1.0, 0.0),
        (0.8, 20, 0.95, 0.0),
        (2.0, 0, 0.5, 0.0),
        (1.0, 255, 1.0, 0.0),
        (1.0, 1, 1.0, 0.0),
        (3.0, 0, 0.99, 0.0),
        (0.5, 100, 0.8, 0.0),
        (1.0, 300, 0.9, 0.0),
        (1.5, 1000, 1.0, 0.0),
        (1.0, 0, 1.0, 0.05),
        (0.7, 1000, 1.0, 0.1),
        (1.2, 0, 0.95, 0.02),
        (2.0, 0, 1.0, 1e-4),
        (1.0, 300, 0.9, 1e-3),
    ];
    let (mut rows_seen, mut rounding, mut wide) = (0, 0, 0);
    for (case, &v) in sizes.iter().enumerate() {
        for (s, &(temperature, top_k, top_p, min_p)) in settings.iter().enumerate() {
            let scale = [2.0, 8.0, 30.0][(case + s) % 3];
            let rows: Vec<Vec<f32>> = (0..3).map(|r| row(&mut gen, v, scale, r == 1)).collect();
            let sampling = Sampling { temperature, top_k, top_p, min_p, seed: 1000 + case as u64, draw: 7 * s as u32 };
            for (r, &(token, flag)) in gpu_draw(&rows, &sampling).iter().enumerate() {
                let own = Sampling { draw: sampling.draw + r as u32, ..sampling };
                let want = sample_row(&rows[r], &own);
                let what = format!("V {v}, row {r}, {own:?}: GPU ({token}, flag {flag}), reference {want:?}");
                rows_seen += 1;
                // Kept sets past the candidates are sample_wide's.
                let cut = top_k > 0 && top_k < want.values || top_p < 1.0 || min_p > 0.0;
                wide += usize::from(cut && want.kept.len() >= CANDIDATES);
                match flag {
                    NO_TOKEN => assert_eq!(want.token, None, "{what}"),
                    DECIDED => {
                        assert!(agrees(token, &want, &rows[r], &own), "{what}");
                        if want.token != Some(token) {
                            eprintln!("rounding: {what}");
                            rounding += 1;
                        }
                    }
                    _ => panic!("flag {flag}: {what}"),
                }
            }
        }
    }
    eprintln!("{rows_seen} rows, {wide} with a kept set past the candidates, {rounding} within rounding");
    assert!(wide > 0, "no row's kept set reached past the candidates");
    assert!(rounding * 100 <= rows_seen, "{rounding} of {rows_seen} rows differ by rounding");
}

/// Many rows of the same logits draw independently (row r takes draw number
/// r): their frequencies follow the softmax of the kept set. The last
/// cases keep more than the 256 candidates (sample_wide's bisections): a
/// flat row under top-k 280, two levels of logits under top-p 0.9, 600
/// equal logits under top-p 0.4975, which keeps the 299 lowest indices, as
/// the CPU's running sum does, and 300 of 400 tokens under min-p; and a
/// top-k whose ties go past the candidates, which min-p cuts within them.
#[test]
fn gpu_draws_follow_the_kept_softmax() {
    let small = vec![0.3f32, -1.0, 2.0, 1.1, 0.0, 2.0, -0.5, 0.9, -3.0, 1.6];
    let flat: Vec<f32> = common::randn(11, 300).iter().map(|x| x * 0.3).collect();
    // 200 tokens at 1 and 200 at 0: top-p 0.9 keeps the 200 and the 126 lowest-index of the rest.
    let two_levels: Vec<f32> = (0..400).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
    let equal = vec![0.5f32; 600];
    // 300 tokens at 1 and 100 at 0: min-p 0.5 keeps the 300 (e⁻¹ < 0.5).
    let three_to_one: Vec<f32> = (0..400).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let cases = [
        (&small, (1.0, 0, 1.0, 0.0), 4000),
        (&small, (0.7, 4, 1.0, 0.0), 4000),
        (&small, (1.5, 0, 0.8, 0.0), 4000),
        (&small, (1.0, 6, 0.7, 0.0), 4000),
        (&small, (1.0, 0, 1.0, 0.2), 4000),
        (&small, (0.5, 8, 0.95, 0.05), 4000),
        (&flat, (1.0, 280, 1.0, 0.0), 3000),
        (&two_levels, (1.0, 0, 0.9, 0.0), 4500),
        (&equal, (1.0, 0, 0.4975, 0.0), 4500),
        (&three_to_one, (1.0, 0, 1.0, 0.5), 4500),
        (&two_levels, (1.0, 250, 1.0, 0.5), 3000),
    ];
    for (logits, (temperature, top_k, top_p, min_p), n) in cases {
        let sampling = Sampling { temperature, top_k, top_p, min_p, seed: 5, draw: 0 };
        let draws = gpu_draw(&vec![logits.to_vec(); n], &sampling);
        let kept = sample_row(logits, &sampling).kept;
        let max = kept.iter().map(|&i| logits[i] / temperature).fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = kept.iter().map(|&i| ((logits[i] / temperature - max) as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut seen = vec![0usize; logits.len()];
        for &(token, flag) in &draws {
            assert_eq!(flag, DECIDED);
            seen[token as usize] += 1;
        }
        let what = format!(
            "V {}, T {temperature}, top-k {top_k}, top-p {top_p}, min-p {min_p}, {} kept",
            logits.len(),
            kept.len()
        );
        let mut chi2 = 0.0;
        for (i, &count) in seen.iter().enumerate() {
            match kept.iter().position(|&k| k == i) {
                Some(at) => {
                    let expect = n as f64 * w[at] / total;
                    chi2 += (count as f64 - expect).powi(2) / expect;
                }
                None => assert_eq!(count, 0, "{what}: token {i} is not kept: {seen:?}"),
            }
        }
        // The χ² statistic's mean plus five deviations (under the 0.1% tail
        // at these degrees of freedom).
        let df = kept.len() as f64 - 1.0;
        assert!(chi2 < df + 5.0 * (2.0 * df).sqrt() + 10.0, "{what}: χ² {chi2:.1}, {seen:?}");
        // A kept set cut a few tokens short shows at its end: every kept
        // token expected 15 times or more appears, and the last tenth of the
        // kept set (the least likely, the highest indices among ties) is
        // drawn as often as it should be.
        let expect = |at: usize| n as f64 * w[at] / total;
        for (at, &i) in kept.iter().enumerate() {
            assert!(expect(at) < 15.0 || seen[i] > 0, "{what}: kept token {i} never drawn");
        }
        let tail = kept.len() - (kept.len() / 10).max(1)..kept.len();
        let want: f64 = tail.clone().map(expect).sum();
        let got: usize = tail.map(|at| seen[kept[at]]).sum();
        assert!(
            (got as f64 - want).abs() < 5.0 * want.sqrt() + 5.0,
            "{what}: the last tenth drawn {got} times, not {want:.0}"
        );
    }
    let plain = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 5, draw: 0 };
    let kept = sample_row(&equal, &Sampling { top_p: 0.4975, ..plain }).kept;
    assert_eq!(kept, (0..299).collect::<Vec<_>>(), "ties are kept lowest index first");
    let kept = sample_row(&two_levels, &Sampling { top_p: 0.9, ..plain }).kept;
    assert_eq!(kept.len(), 326, "{kept:?}");
    assert_eq!(sample_row(&three_to_one, &Sampling { min_p: 0.5, ..plain }).kept.len(), 300);
    assert_eq!(sample_row(&two_levels, &Sampling { top_k: 250, min_p: 0.5, ..plain }).kept.len(), 200);
}

/// `sample` ranks candidates by integer keys and finds top-k's k-th score
/// without sorting them all: on random rows with ties, NaNs, ±∞ and ±0, at
/// odd sizes and every kind of setting, it picks the reference's token.
#[test]
fn cpu_draws_match_the_reference() {
    let mut gen = Rng::new(77);
    // −0 and 0 tie: rows of them only.
    let zeros = [vec![-0.0f32, 0.0, -0.0, 0.0, f32::NAN], vec![0.0, -0.0, -1.0, -0.0]];
    for case in 0..400 {
        let v = 1 + gen.below(300);
        let logits = zeros.get(case as usize).cloned().unwrap_or_else(|| row(&mut gen, v, 12.0, true));
        let v = logits.len();
        let top_k = [0, 1, 2, 7, 50, v, v + 3][gen.below(7)];
        let top_p = [1.0, 0.9, 0.5, 0.05][gen.below(4)];
        let min_p = [0.0, 0.0, 0.01, 0.2][gen.below(4)];
        let temperature = [1.0, 0.7, 1.9][gen.below(3)];
        let config = GenerationConfig { min_p, ..GenerationConfig::sampling(1, temperature, top_k, top_p, case) };
        for draw in 0..20 {
            let want = sample_row(&logits, &config.draw_settings(draw)).token;
            let got = sample(&logits, &config, draw).ok();
            let what = format!("V {v}, top_k {top_k}, top_p {top_p}, min_p {min_p}, T {temperature}");
            assert_eq!(got, want, "case {case} draw {draw}: {what}");
        }
    }
}

#[test]
fn cpu_sampler_keeps_what_the_settings_keep() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
    assert_eq!(argmax(&[]), None);
    let logits = [0.0f32, 2.0, 1.0, 2.0, -1.0];
    let draws = |config: &GenerationConfig, l: &[f32], n: u32| -> Vec<usize> {
        let mut seen = vec![0; l.len()];
        for draw in 0..n {
            seen[sample(l, config, draw).unwrap() as usize] += 1;
        }
        seen
    };
    // top_k = 2 keeps the two tied maxima (1 and 3), never anything else.
    let seen = draws(&GenerationConfig::sampling(1, 1.0, 2, 1.0, 1), &logits, 400);
    assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
    assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
    // top_p small keeps only the most likely (lowest index among ties first).
    assert_eq!(draws(&GenerationConfig::sampling(1, 1.0, 0, 0.01, 1), &logits, 50)[1], 50);
    // top_p = 0.9 on probs (0.5, 0.3, 0.15, 0.05): keeps the first three.
    let l: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|x| x.ln()).collect();
    let seen = draws(&GenerationConfig::sampling(1, 1.0, 0, 0.9, 1), &l, 2000);
    assert_eq!(seen[3], 0, "{seen:?}");
    assert!(seen[2] > 200, "{seen:?}");
    // Seeded: the same draws from the same seed, others from another.
    let config = GenerationConfig::sampling(1, 2.0, 0, 1.0, 5);
    let run = |c: &GenerationConfig| (0..30).map(|d| sample(&logits, c, d).unwrap()).collect::<Vec<_>>();
    assert_eq!(run(&config), run(&config));
    assert_ne!(run(&config), run(&GenerationConfig { seed: 6, ..config.clone() }));
}

/// A warpers fixture's rows of logits, and the whole file (its `cases`).
fn warper_rows(path: &str) -> (Vec<Vec<f32>>, serde_json::Value) {
    let fx: serde_json::Value = serde_json::from_slice(&std::fs::read(common::fixture(path)).unwrap()).unwrap();
    let rows = fx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (rows, fx)
}

/// typical_p, epsilon_cutoff and eta_cutoff (`make_fixtures.py truncation_sampling`: transformers'
/// warpers after temperature, top-k, top-p and min-p, on four seeded rows from peaked to flat): the CPU
/// keeps the same tokens, and every token it draws is one of them.
#[test]
fn typical_epsilon_and_eta_keep_what_transformers_keeps() {
    use webpeft::model::llama::sample::kept_tokens;
    let (rows, fx) = warper_rows("truncation_sampling/warpers.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for (c, case) in cases.iter().enumerate() {
        let num = |k: &str| case[k].as_f64().map(|x| x as f32);
        let config = GenerationConfig {
            min_p: num("min_p").unwrap_or(0.0),
            typical_p: num("typical_p").unwrap(),
            epsilon_cutoff: num("epsilon_cutoff").unwrap(),
            eta_cutoff: num("eta_cutoff").unwrap(),
            ..GenerationConfig::sampling(
                1,
                num("temperature").unwrap(),
                case["top_k"].as_u64().unwrap() as usize,
                num("top_p").unwrap(),
                60 + c as u64,
            )
        };
        assert!(config.cuts_by_entropy());
        for (r, logits) in rows.iter().enumerate() {
            let want: Vec<usize> =
                case["kept"][r].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
            let what = format!("case {c} {}, row {r}", case["processors"]);
            let mut kept = kept_tokens(logits, &config).unwrap();
            kept.sort_unstable();
            assert_eq!(kept, want, "{what}");
            for d in 0..16 {
                let token = sample(logits, &config, d).unwrap() as usize;
                assert!(want.contains(&token), "{what}: draw {d} is {token}");
            }
        }
    }
    // Out of range: typed errors naming the setting.
    let bad = |c: GenerationConfig| kept_tokens(&rows[0], &c).unwrap_err().to_string();
    let base = GenerationConfig::sampling(1, 1.0, 0, 1.0, 0);
    assert!(bad(GenerationConfig { typical_p: 0.0, ..base.clone() }).contains("typical_p"));
    assert!(bad(GenerationConfig { epsilon_cutoff: 1.0, ..base.clone() }).contains("epsilon_cutoff"));
    assert!(bad(GenerationConfig { eta_cutoff: -0.1, ..base }).contains("eta_cutoff"));
}

/// transformers' warpers keep these tokens (`make_fixtures.py generation`:
/// the LogitsProcessorList `generate` builds for temperature, top-k, top-p
/// and min-p, on seeded rows from peaked to flat): the reference keeps the
/// same set, and every token the GPU and the CPU draw from it is in it.
#[test]
fn kept_sets_are_transformers() {
    let (rows, fx) = warper_rows("generation/warpers.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let draws = 64;
    for (c, case) in cases.iter().enumerate() {
        let num = |k: &str| case[k].as_f64().map(|x| x as f32);
        let config = GenerationConfig {
            min_p: num("min_p").unwrap_or(0.0),
            ..GenerationConfig::sampling(
                1,
                num("temperature").unwrap(),
                case["top_k"].as_u64().unwrap() as usize,
                num("top_p").unwrap(),
                40 + c as u64,
            )
        };
        for (r, logits) in rows.iter().enumerate() {
            let want: Vec<usize> =
                case["kept"][r].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
            let what = format!("case {c} {}, row {r}", case["processors"]);
            let mut kept = sample_row(logits, &config.draw_settings(0)).kept;
            kept.sort_unstable();
            assert_eq!(kept, want, "{what}");
            let gpu_tokens = gpu_draw(&vec![logits.clone(); draws], &config.draw_settings(0));
            for (d, &(token, flag)) in gpu_tokens.iter().enumerate() {
                assert_eq!(flag, DECIDED, "{what}");
                assert!(want.contains(&(token as usize)), "{what}: the GPU's draw {d} is {token}");
                let cpu = sample(logits, &config, d as u32).unwrap();
                assert!(want.contains(&(cpu as usize)), "{what}: the CPU's draw {d} is {cpu}");
            }
        }
    }
}

#[test]
fn bad_settings_are_typed_errors() {
    let gpu = gpu();
    let logits = Tensor::from_slice(gpu, &[2, 3], &[0.0f32; 6]).unwrap();
    let ok = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0, draw: 0 };
    let bad = [
        (Sampling { temperature: 0.0, ..ok }, &logits, "temperature"),
        (Sampling { temperature: f32::NAN, ..ok }, &logits, "temperature"),
        (Sampling { top_p: 0.0, ..ok }, &logits, "top_p"),
        (Sampling { top_p: 1.5, ..ok }, &logits, "top_p"),
        (Sampling { min_p: -0.1, ..ok }, &logits, "min_p"),
        (Sampling { min_p: 1.5, ..ok }, &logits, "min_p"),
        (Sampling { min_p: f32::NAN, ..ok }, &logits, "min_p"),
    ];
    for (sampling, t, what) in bad {
        let mut rec = Recorder::new(gpu);
        let err = sample_rows(&mut rec, t, &sampling).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains(what), "{err}");
    }
    let flat = Tensor::from_slice(gpu, &[6], &[0.0f32; 6]).unwrap();
    let ids = Tensor::zeros(gpu, &[2, 3], DType::U32).unwrap();
    for t in [&flat, &ids] {
        let mut rec = Recorder::new(gpu);
        assert!(sample_rows(&mut rec, t, &ok).is_err(), "{:?} {:?}", t.shape(), t.dtype());
    }
    // An empty row has no token.
    let empty = Tensor::zeros(gpu, &[1, 0], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let picked = sample_rows(&mut rec, &empty, &ok).unwrap();
    rec.submit().unwrap();
    assert_eq!(block_on(picked.to_vec::<u32>(gpu)).unwrap(), [0, NO_TOKEN]);
}

/// Bit-exact equality of two rows (NaN equal to NaN, −0 apart from +0).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// transformers' repetition penalty on the GPU (`repetition_penalty`) and
/// on the CPU (`penalize_seen`) against the reference, bit for bit: rows of
/// odd sizes with NaN, ±∞ and ±0, token sets with repeats, each step's
/// previous token joining the set on the GPU (already in it or not).
#[test]
fn repetition_penalty_matches_the_reference() {
    let gpu = gpu();
    let mut gen = Rng::new(41);
    let mut cases = 0;
    for (v, rows) in [(1, 1), (31, 2), (32, 1), (33, 3), (1000, 2), (40_001, 1)] {
        for penalty in [1.3f32, 0.7, 2.5] {
            let logits: Vec<Vec<f32>> = (0..rows).map(|_| row(&mut gen, v, 8.0, true)).collect();
            let ids: Vec<Vec<u32>> =
                (0..rows).map(|_| (0..gen.below(2 * v.min(50) + 1)).map(|_| gen.below(v) as u32).collect()).collect();
            // Even rows: a random previous token; odd ones: one already in the set.
            let last: Vec<u32> = (0..rows)
                .map(|r| if r % 2 == 0 { gen.below(v) as u32 } else { ids[r].first().copied().unwrap_or(0) })
                .collect();
            let id_rows: Vec<&[u32]> = ids.iter().map(|r| r.as_slice()).collect();
            let seen = seen_tokens(&id_rows, v).unwrap();
            for with_last in [false, true] {
                let t = Tensor::from_slice(gpu, &[rows, v], &logits.concat()).unwrap();
                let s = Tensor::from_slice(gpu, &[rows, seen_words(v)], &seen).unwrap();
                let l = Tensor::from_slice(gpu, &[rows], &last).unwrap();
                let mut rec = Recorder::new(gpu);
                repetition_penalty(&mut rec, &t, &s, with_last.then_some(&l), penalty).unwrap();
                rec.submit().unwrap();
                let got: Vec<f32> = block_on(t.to_vec(gpu)).unwrap();
                let got_seen: Vec<u32> = block_on(s.to_vec(gpu)).unwrap();
                for r in 0..rows {
                    let mut all = ids[r].clone();
                    if with_last {
                        all.push(last[r]);
                    }
                    let want = penalty_reference(&logits[r], &all, penalty);
                    assert!(same_bits(&got[r * v..(r + 1) * v], &want), "V {v} row {r} θ {penalty} last {with_last}");
                    let mut cpu = logits[r].clone();
                    let words = seen_words(v);
                    penalize_seen(&mut cpu, &seen[r * words..(r + 1) * words], penalty);
                    let want_cpu = penalty_reference(&logits[r], &ids[r], penalty);
                    assert!(same_bits(&cpu, &want_cpu), "CPU: V {v} row {r} θ {penalty}");
                    let want_seen = seen_tokens(&[&all], v).unwrap();
                    assert_eq!(got_seen[r * words..(r + 1) * words], want_seen[..], "the set after the step, V {v}");
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 36);
}

/// Bad arguments of the penalty are typed errors, checked before a launch.
#[test]
fn repetition_penalty_refuses_bad_arguments() {
    let gpu = gpu();
    let t = Tensor::from_slice(gpu, &[2, 40], &[0.5f32; 80]).unwrap();
    let seen = Tensor::from_slice(gpu, &[2, 2], &[0u32; 4]).unwrap();
    let mut rec = Recorder::new(gpu);
    for penalty in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = repetition_penalty(&mut rec, &t, &seen, None, penalty).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { .. }) && e.to_string().contains("repetition_penalty"), "{e}");
    }
    let short = Tensor::from_slice(gpu, &[2, 1], &[0u32; 2]).unwrap();
    let e = repetition_penalty(&mut rec, &t, &short, None, 1.2).unwrap_err();
    assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains("seen"), "{e}");
    let floats = Tensor::from_slice(gpu, &[2], &[1.0f32; 2]).unwrap();
    let e = repetition_penalty(&mut rec, &t, &seen, Some(&floats), 1.2).unwrap_err();
    assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains("last"), "{e}");
    let e = seen_tokens(&[&[3, 40]], 40).unwrap_err();
    assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains("token 40"), "{e}");
    let flat = Tensor::from_slice(gpu, &[80], &[0.5f32; 80]).unwrap();
    assert!(matches!(repetition_penalty(&mut rec, &flat, &seen, None, 1.2), Err(Error::Shape { .. })));
    assert_eq!(rec.dispatches(), 0);
}

/// Seeded sequences and logits for a ban launch: `rows` sequences of `len`
/// tokens over `symbols` ids spread across V (so n-grams and words repeat),
/// a row of logits each, and on the GPU the logits, the history (each
/// sequence, less its last token where the launch appends it) and the last
/// tokens.
struct BanCase {
    v: usize,
    cap: usize,
    seqs: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
    t: Tensor,
    h: Tensor,
    l: Tensor,
}

impl BanCase {
    fn new(gen: &mut Rng, (v, rows, len, symbols): (usize, usize, usize, usize), with_last: bool) -> BanCase {
        let gpu = gpu();
        let cap = len + 5;
        let seqs: Vec<Vec<u32>> =
            (0..rows).map(|_| (0..len).map(|_| (gen.below(symbols) * (v / symbols)) as u32).collect()).collect();
        let logits: Vec<Vec<f32>> = (0..rows).map(|_| row(gen, v, 4.0, false)).collect();
        let held = if with_last { len - 1 } else { len };
        let history: Vec<u32> = seqs.iter().flat_map(|s| [&s[..held], &vec![7; cap - held][..]].concat()).collect();
        let last: Vec<u32> = seqs.iter().map(|s| s[len - 1]).collect();
        let t = Tensor::from_slice(gpu, &[rows, v], &logits.concat()).unwrap();
        let h = Tensor::from_slice(gpu, &[rows, cap], &history).unwrap();
        let l = Tensor::from_slice(gpu, &[rows], &last).unwrap();
        BanCase { v, cap, seqs, logits, t, h, l }
    }

    /// After the launch: each row's logits are `want(its logits, its
    /// sequence)` bit for bit, and the history holds the sequence; the count
    /// of banned tokens.
    fn check(&self, want: impl Fn(&[f32], &[u32]) -> Vec<f32>, what: &str) -> usize {
        let gpu = gpu();
        let (v, cap) = (self.v, self.cap);
        let got: Vec<f32> = block_on(self.t.to_vec(gpu)).unwrap();
        let got_history: Vec<u32> = block_on(self.h.to_vec(gpu)).unwrap();
        let mut banned = 0;
        for (r, seq) in self.seqs.iter().enumerate() {
            let want = want(&self.logits[r], seq);
            assert!(same_bits(&got[r * v..(r + 1) * v], &want), "{what}, row {r}");
            assert_eq!(
                got_history[r * cap..r * cap + seq.len()],
                seq[..],
                "{what}, row {r}: the history holds the sequence"
            );
            banned += want.iter().filter(|x| **x == f32::NEG_INFINITY).count();
        }
        banned
    }
}

/// transformers' no_repeat_ngram_size on the GPU (`ban_repeated_ngrams`)
/// against the reference, bit for bit: seeded sequences over a few token ids
/// (so n-grams repeat) at odd vocabularies, n from 1 to 4, sequences shorter
/// than n − 1 to longer than a workgroup, one row and three, with the
/// previous token appended by the launch or already in the history.
#[test]
fn ngram_bans_match_the_reference() {
    let gpu = gpu();
    let mut gen = Rng::new(4242);
    let mut banned = 0;
    for (case, &(v, rows, len, ngram, with_last)) in [
        (37, 1, 1, 1, false),
        (37, 1, 1, 2, true),
        (37, 3, 2, 4, false),
        (37, 3, 3, 4, true),
        (301, 1, 9, 1, true),
        (301, 3, 40, 2, true),
        (301, 3, 40, 3, false),
        (129, 2, 300, 2, true),
        (129, 2, 700, 4, true),
        (5, 1, 30, 3, true),
    ]
    .iter()
    .enumerate()
    {
        let symbols = [2, 3, 5, 8][case % 4].min(v);
        let c = BanCase::new(&mut gen, (v, rows, len, symbols), with_last);
        let mut rec = Recorder::new(gpu);
        ban_repeated_ngrams(&mut rec, &c.t, &c.h, with_last.then_some(&c.l), (len, ngram)).unwrap();
        rec.submit().unwrap();
        let what = format!("case {case}: V {v}, {rows} rows, len {len}, n {ngram}, last {with_last}");
        banned += c.check(|logits, seq| no_repeat_ngram(logits, seq, ngram), &what);
        for (r, seq) in c.seqs.iter().enumerate() {
            let mut cpu = c.logits[r].clone();
            ban_seen_ngrams(&mut cpu, seq, ngram);
            assert!(same_bits(&cpu, &no_repeat_ngram(&c.logits[r], seq, ngram)), "{what}, row {r}: the CPU's bans");
        }
    }
    assert!(banned > 20, "only {banned} tokens banned in all");
}

#[test]
fn ngram_bans_refuse_bad_arguments() {
    let gpu = gpu();
    let t = Tensor::from_slice(gpu, &[2, 40], &[0.5f32; 80]).unwrap();
    let h = Tensor::from_slice(gpu, &[2, 6], &[1u32; 12]).unwrap();
    let last = Tensor::from_slice(gpu, &[2], &[3u32; 2]).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = ban_repeated_ngrams(&mut rec, &t, &h, None, (4, 0)).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { .. }) && e.to_string().contains("n-gram"), "{e}");
    let floats = Tensor::from_slice(gpu, &[2, 6], &[1.0f32; 12]).unwrap();
    let one_row = Tensor::from_slice(gpu, &[1, 6], &[1u32; 6]).unwrap();
    for (history, last, len, what) in [
        (&h, None, 7, "history"),
        (&floats, None, 4, "history"),
        (&one_row, None, 4, "history"),
        (&h, Some(&last), 0, "history"),
        (&h, Some(&t), 4, "last"),
    ] {
        let e = ban_repeated_ngrams(&mut rec, &t, history, last, (len, 2)).unwrap_err();
        assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains(what), "{what}: {e}");
    }
    let flat = Tensor::from_slice(gpu, &[80], &[0.5f32; 80]).unwrap();
    assert!(matches!(ban_repeated_ngrams(&mut rec, &flat, &h, None, (4, 2)), Err(Error::Shape { .. })));
    assert_eq!(rec.dispatches(), 0);
}

/// The reference's bad-word bans are transformers' `NoBadWordsLogitsProcessor`'s
/// (`make_fixtures.py bad_words`: 60 seeded sequences and word lists, words
/// ending the sequence but for their last token, longer than it, and an eos
/// alone, which transformers drops), and so are the CPU's.
#[test]
fn bad_word_bans_are_transformers() {
    let path = common::fixture("bad_words/cases.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vocab = v["vocab_size"].as_u64().unwrap() as usize;
    let ids =
        |x: &serde_json::Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let mut banning = 0;
    for (i, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        let seq = ids(&case["ids"]);
        let eos = case["eos_token_id"].as_u64().map(|e| e as u32);
        // transformers drops a word that is just an eos; generation does too before either ban.
        let words: Vec<Vec<u32>> = case["bad_words_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .filter(|w| !(w.len() == 1 && eos == Some(w[0])))
            .collect();
        let want = ids(&case["banned"]);
        let zeros = vec![0.0f32; vocab];
        let banned =
            |row: &[f32]| (0..vocab as u32).filter(|&t| row[t as usize] == f32::NEG_INFINITY).collect::<Vec<_>>();
        assert_eq!(banned(&bad_words(&zeros, &seq, &words)), want, "case {i}: reference");
        let mut cpu = zeros.clone();
        ban_bad_words(&mut cpu, &seq, &words);
        assert_eq!(banned(&cpu), want, "case {i}: CPU");
        banning += !want.is_empty() as usize;
    }
    assert!(banning > 30, "{banning} cases ban something");
}

/// `ban_words` (transformers' `bad_words_ids` on the GPU) against the
/// reference, bit for bit: seeded sequences over a few token ids at odd
/// vocabularies, words of one to four tokens (some ending the sequence but
/// for their last token, some longer than the sequence), one row and three,
/// the previous token appended by the launch or already in the history,
/// more words than a workgroup.
#[test]
fn bad_word_bans_match_the_reference() {
    let gpu = gpu();
    let mut gen = Rng::new(977);
    let mut banned = 0;
    for (case, &(v, rows, len, count, with_last)) in [
        (37, 1, 1, 3, false),
        (37, 1, 2, 5, true),
        (37, 3, 5, 9, true),
        (301, 3, 12, 40, false),
        (129, 2, 60, 300, true),
        (5, 1, 9, 4, true),
    ]
    .iter()
    .enumerate()
    {
        let symbols = [2, 3, 5][case % 3].min(v);
        let c = BanCase::new(&mut gen, (v, rows, len, symbols), with_last);
        let words: Vec<Vec<u32>> = (0..count)
            .map(|_| {
                let length = 1 + gen.below(4);
                let s = &c.seqs[gen.below(rows)];
                match gen.below(2) == 0 && length <= s.len() {
                    true => [&s[s.len() + 1 - length..], &[gen.below(v) as u32]].concat(),
                    false => (0..length).map(|_| (gen.below(symbols) * (v / symbols)) as u32).collect(),
                }
            })
            .collect();
        let table = WordTable::new(gpu, &words).unwrap();
        let mut rec = Recorder::new(gpu);
        ban_words(&mut rec, &c.t, &table, &c.h, with_last.then_some(&c.l), len).unwrap();
        rec.submit().unwrap();
        let what = format!("case {case}: V {v}, {rows} rows, len {len}, {count} words, last {with_last}");
        banned += c.check(|logits, seq| bad_words(logits, seq, &words), &what);
    }
    assert!(banned > 20, "only {banned} tokens banned in all");
}

#[test]
fn bad_word_bans_refuse_bad_arguments() {
    let gpu = gpu();
    let e = WordTable::new(gpu, &[vec![1], vec![]]).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { .. }) && e.to_string().contains("word 1 is empty"), "{e}");
    let table = WordTable::new(gpu, &[vec![1, 2]]).unwrap();
    let t = Tensor::from_slice(gpu, &[2, 40], &[0.5f32; 80]).unwrap();
    let h = Tensor::from_slice(gpu, &[2, 6], &[1u32; 12]).unwrap();
    let floats = Tensor::from_slice(gpu, &[2, 6], &[1.0f32; 12]).unwrap();
    let mut rec = Recorder::new(gpu);
    for (history, last, len, what) in
        [(&h, None, 7, "history"), (&floats, None, 4, "history"), (&h, None, 0, "history"), (&h, Some(&t), 4, "last")]
    {
        let e = ban_words(&mut rec, &t, &table, history, last, len).unwrap_err();
        assert!(matches!(&e, Error::Shape { .. }) && e.to_string().contains(what), "{what}: {e}");
    }
    assert_eq!(rec.dispatches(), 0);
}
