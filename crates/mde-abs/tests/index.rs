//! Image index: safetensors round trip, top-k against a naive loop, encoder-built indexes.
use candle_core::{Device, Tensor};
use mde_abs::index::EncoderError;
use mde_abs::{ExampleImages, ImageEncoder, ImageIndex};
use mde_core::records::{BadCase, ImageRef};
use rand::{Rng, SeedableRng};

fn random_rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect())
        .collect()
}

fn naive_top_k(rows: &[Vec<f32>], q: &[f32], k: usize) -> Vec<(usize, f32)> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut s: Vec<(usize, f32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                i,
                r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / (norm(r) * norm(q)),
            )
        })
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

#[test]
fn top_k_matches_naive_loop() {
    let (n, d) = (700, 24);
    let rows = random_rows(n, d, 1);
    let ids: Vec<u64> = (0..n as u64).map(|i| i * 7 + 3).collect();
    let index = ImageIndex::from_rows(ids.clone(), &rows).unwrap();
    assert_eq!((index.len(), index.dim()), (n, d));
    let queries = random_rows(150, d, 2); // > one internal batch of 64
    let got = index.top_k_batch(&queries, 25).unwrap();
    for (q, g) in queries.iter().zip(&got) {
        let want = naive_top_k(&rows, q, 25);
        let gi: Vec<usize> = g.iter().map(|x| x.0).collect();
        let wi: Vec<usize> = want.iter().map(|x| x.0).collect();
        assert_eq!(gi, wi);
        for (a, b) in g.iter().zip(&want) {
            assert!((a.1 - b.1).abs() < 1e-5);
        }
    }
    // A row is its own nearest neighbour; k larger than N returns all rows.
    let top = index.top_k(&rows[42], 3).unwrap();
    assert_eq!(top[0].0, 42);
    assert!((top[0].1 - 1.0).abs() < 1e-5);
    assert_eq!(index.top_k(&rows[0], n + 10).unwrap().len(), n);
    assert!(index.top_k(&[1.0; 3], 1).is_err());
    assert_eq!(index.position(ids[5]), Some(5));
}

#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/index.safetensors");
    let rows = random_rows(50, 16, 3);
    let ids: Vec<u64> = (0..50).map(|i| 500_000 + i * 13).collect();
    let index = ImageIndex::from_rows(ids.clone(), &rows).unwrap();
    index.save(&path).unwrap();
    let back = ImageIndex::load(&path).unwrap();
    assert_eq!(back.ids(), ids.as_slice());
    let a = index.embeddings().to_vec2::<f32>().unwrap();
    let b = back.embeddings().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
    // Stored rows are unit length.
    for r in &b {
        assert!((r.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // Missing tensors and duplicate ids are clear errors naming the file.
    let other = dir.path().join("other.safetensors");
    let t = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("embeddings".to_string(), t)]),
        &other,
    )
    .unwrap();
    let err = ImageIndex::load(&other).unwrap_err().to_string();
    assert!(
        err.contains("other.safetensors") && err.contains("\"ids\""),
        "{err}"
    );
    assert!(ImageIndex::from_rows(vec![1, 1], &[vec![1.0], vec![2.0]]).is_err());
    assert!(ImageIndex::from_rows(vec![1, 2], &[vec![1.0], vec![f32::NAN]]).is_err());
}

/// An encoder that embeds a COCO id as a fixed pseudo-random vector (stands in for a vision
/// tower; the index only needs rows).
struct HashEncoder;

impl ImageEncoder for HashEncoder {
    fn embed(&self, images: &[ImageRef]) -> Result<Vec<Vec<f32>>, EncoderError> {
        images
            .iter()
            .map(|r| match r {
                ImageRef::Coco { image_id } => Ok(random_rows(1, 8, *image_id).remove(0)),
                other => Err(format!("cannot embed {other:?}").into()),
            })
            .collect()
    }
}

#[test]
fn build_with_encoder_and_example_lookup() {
    let images: Vec<(u64, ImageRef)> = (1..=20)
        .map(|id| (id, ImageRef::Coco { image_id: id }))
        .collect();
    let mut seen = vec![];
    let index = ImageIndex::build(&HashEncoder, &images, 6, |n| seen.push(n)).unwrap();
    assert_eq!(seen, [6, 12, 18, 20]);
    let case = BadCase {
        id: "b".into(),
        image: ImageRef::Coco { image_id: 7 },
        ..Default::default()
    };
    let e = index.example_embedding(&case).unwrap().unwrap();
    assert_eq!(index.top_k(&e, 1).unwrap()[0].0, index.position(7).unwrap());
    let enc = mde_abs::EncodeExamples(&HashEncoder);
    let e2 = enc.example_embedding(&case).unwrap().unwrap();
    assert_eq!(
        index.top_k(&e2, 1).unwrap()[0].0,
        index.position(7).unwrap()
    );
    let path_case = BadCase {
        image: ImageRef::Path {
            path: "x.jpg".into(),
        },
        ..Default::default()
    };
    assert!(index.example_embedding(&path_case).unwrap().is_none());
    assert!(enc.example_embedding(&path_case).is_err());
    assert!(ImageIndex::build(
        &HashEncoder,
        &[(1, ImageRef::Path { path: "y".into() })],
        4,
        |_| {}
    )
    .is_err());
}
