//! Embedding lookup against the CPU reference, from a whole table and from a
//! table split by rows into chunks, f32 or 16-bit, with out-of-vocabulary ids.

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::embedding::{embedding, embedding_chunked, embedding_gather_chunk, embedding_weight};
use webpeft::kernels::qmatmul::QWeight;
use webpeft::kernels::reference::{assert_close, embedding as cpu};
use webpeft::quant::{to_bf16, to_f16, QuantFormat};
use webpeft::util::rng::Rng;
use webpeft::{DType, Error, Gpu, GpuOptions, Tensor};

// A gather copies values: exact.
const ABS: f32 = 0.0;
const REL: f32 = 0.0;

fn ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

#[test]
fn whole_table_matches_reference() {
    let gpu = gpu();
    let (vocab, dim, n) = (83, 20, 37);
    let table = randn(1, vocab * dim);
    let ids = ids(2, n, vocab);
    let tt = Tensor::from_slice(gpu, &[vocab, dim], &table).unwrap();
    let ti = Tensor::from_slice(gpu, &[n], &ids).unwrap();
    let mut rec = Recorder::new(gpu);
    let out = embedding(&mut rec, &tt, &ti).unwrap();
    rec.submit().unwrap();
    assert_eq!(out.shape(), [n, dim]);
    let got: Vec<f32> = block_on(out.to_vec(gpu)).unwrap();
    assert_close("embedding", &got, &cpu::embedding_forward(&ids, &table, vocab, dim), ABS, REL);
}

#[test]
fn chunked_table_and_out_of_vocabulary_ids() {
    let gpu = gpu();
    let (vocab, dim, n) = (83, 20, 37);
    let table = randn(3, vocab * dim);
    let mut ids = ids(4, n, vocab);
    // Every chunk's edges, and ids past the vocabulary, which must read nothing.
    ids[..8].copy_from_slice(&[0, 29, 30, 69, 70, 82, 83, u32::MAX]);
    ids[20] = 1000;
    let splits = [(0, 30), (30, 40), (70, 13)];
    let chunks: Vec<Tensor> = splits
        .iter()
        .map(|&(start, rows)| Tensor::from_slice(gpu, &[rows, dim], &table[start * dim..(start + rows) * dim]).unwrap())
        .collect();
    let ti = Tensor::from_slice(gpu, &[n], &ids).unwrap();
    let mut rec = Recorder::new(gpu);
    let out = embedding_chunked(&mut rec, &chunks.iter().collect::<Vec<_>>(), &ti).unwrap();
    rec.submit().unwrap();
    let got: Vec<f32> = block_on(out.to_vec(gpu)).unwrap();

    let mut want = vec![0.0; n * dim];
    for (t, &id) in ids.iter().enumerate() {
        if (id as usize) < vocab {
            let row = cpu::embedding_forward(&[id], &table, vocab, dim);
            want[t * dim..(t + 1) * dim].copy_from_slice(&row);
        }
    }
    assert_close("chunked embedding", &got, &want, ABS, REL);
}

/// A model's table as it stores it (`embedding_weight`): f32, f16 and bf16,
/// whole and cut into row chunks by a tiny binding limit, with ids at every
/// chunk's edges and past the vocabulary. 16-bit rows widen exactly, so the
/// gather equals the CPU reference on the rounded table bit for bit.
#[test]
fn tables_stored_in_16_bits_gather_exactly() {
    let small =
        block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(4096), ..Default::default() })).unwrap();
    let (vocab, dim, n) = (83, 20, 41);
    let table = randn(5, vocab * dim);
    let mut ids = ids(6, n, vocab);
    ids[..6].copy_from_slice(&[0, 25, 26, 82, 83, u32::MAX]);
    for gpu in [gpu(), &small] {
        for format in [QuantFormat::F32, QuantFormat::F16, QuantFormat::Bf16] {
            let w = QWeight::from_f32(gpu, &table, vocab, dim, format).unwrap();
            let rounded: Vec<f32> = match format {
                QuantFormat::F16 => to_f16(&table).unwrap().iter().map(|h| h.to_f32()).collect(),
                QuantFormat::Bf16 => to_bf16(&table).iter().map(|h| h.to_f32()).collect(),
                _ => table.clone(),
            };
            let ti = Tensor::from_slice(gpu, &[n], &ids).unwrap();
            let mut rec = Recorder::new(gpu);
            let out = embedding_weight(&mut rec, &w, &ti).unwrap();
            rec.submit().unwrap();
            let got: Vec<f32> = block_on(out.to_vec(gpu)).unwrap();
            let mut want = vec![0.0; n * dim];
            for (t, &id) in ids.iter().enumerate() {
                if (id as usize) < vocab {
                    want[t * dim..(t + 1) * dim].copy_from_slice(&cpu::embedding_forward(&[id], &rounded, vocab, dim));
                }
            }
            let chunks = w.chunks.len();
            assert_eq!(got, want, "{format} table in {chunks} chunk(s)");
        }
    }
    assert!(QWeight::from_f32(&small, &table, vocab, dim, QuantFormat::Bf16).unwrap().chunks.len() > 1);
    // A quantized table is refused by name: embeddings are not quantized.
    let gpu = gpu();
    let nf4 = QWeight::from_f32(gpu, &randn(7, 64 * 8), 64, 8, QuantFormat::Nf4).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = embedding_weight(&mut rec, &nf4, &Tensor::zeros(gpu, &[3], DType::U32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "embedding", .. }) && err.to_string().contains("nf4"), "{err}");
    assert!(rec.is_empty());
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let table = Tensor::zeros(gpu, &[10, 4], DType::F32).unwrap();
    let narrow = Tensor::zeros(gpu, &[10, 3], DType::F32).unwrap();
    let ids = Tensor::zeros(gpu, &[5], DType::U32).unwrap();
    let err = embedding(&mut rec, &table, &Tensor::zeros(gpu, &[5], DType::I32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "ids", expected: "u32", got: "i32", .. }), "{err}");
    let err = embedding(&mut rec, &Tensor::zeros(gpu, &[10, 4], DType::U32).unwrap(), &ids).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "table", .. }), "{err}");
    let err = embedding_chunked(&mut rec, &[&table, &narrow], &ids).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "embedding", .. }), "{err}");
    let err = embedding_chunked(&mut rec, &[], &ids).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "embedding", .. }), "{err}");
    let err = embedding(&mut rec, &Tensor::zeros(gpu, &[40], DType::F32).unwrap(), &ids).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let wrong_out = Tensor::zeros(gpu, &[5, 3], DType::F32).unwrap();
    let err = embedding_gather_chunk(&mut rec, &table, 0, &ids, &wrong_out).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(rec.is_empty());
}
