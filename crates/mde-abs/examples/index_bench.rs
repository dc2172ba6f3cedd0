//! Brute-force cosine top-k throughput of `ImageIndex` on random data.
//!
//! `cargo run --release -p mde-abs --example index_bench -- [N] [D] [QUERIES] [BATCH] [K]`
//! (defaults: COCO train2017 size 118287, width 768, 200 queries in batches of 50, k = 1000).
use mde_abs::ImageIndex;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n, d, n_queries, batch, k) = (
        get(0, 118_287),
        get(1, 768),
        get(2, 200),
        get(3, 50),
        get(4, 1000),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let t = Instant::now();
    let flat: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    let emb = candle_core::Tensor::from_vec(flat, (n, d), &candle_core::Device::Cpu)?;
    let index = ImageIndex::new((0..n as u64).collect(), &emb)?;
    drop(emb);
    println!(
        "index N={n} d={d}: built (random data + normalise) in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let queries: Vec<Vec<f32>> = (0..n_queries)
        .map(|_| (0..d).map(|_| rng.random::<f32>() - 0.5).collect())
        .collect();
    // warm-up (first matmul allocates)
    index.top_k_batch(&queries[..1], k)?;
    let t = Instant::now();
    let mut checksum = 0usize;
    for chunk in queries.chunks(batch) {
        for r in index.top_k_batch(chunk, k)? {
            checksum += r[0].0;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{n_queries} queries in batches of {batch}, top-{k}: {secs:.3}s = {:.1} queries/s ({:.1} ms/query) [checksum {checksum}]",
        n_queries as f64 / secs,
        1000.0 * secs / n_queries as f64
    );
    let t = Instant::now();
    for chunk in queries.chunks(batch) {
        std::hint::black_box(index.scores(chunk)?);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  of which cosine scores (matmul + copy out): {:.1} ms/query",
        1000.0 * secs / n_queries as f64
    );
    let t = Instant::now();
    for q in queries.iter().take(20) {
        index.top_k(q, k)?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "single queries (batch 1), top-{k}: {:.1} queries/s",
        20.0 / secs
    );
    Ok(())
}
