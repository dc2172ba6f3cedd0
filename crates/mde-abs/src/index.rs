//! Image embedding index: ids + an `[N, d]` matrix of L2-normalised embeddings, persisted as
//! safetensors, searched by brute-force cosine similarity (one batched matmul per query batch).
//!
//! Brute force is exact and, for COCO train2017 (N = 118k), fast enough: see docs/perf/abs.md.
use crate::error::{AbsError, Result};
use candle_core::{DType, Device, Tensor};
use mde_core::records::{BadCase, ImageRef};
use std::collections::HashMap;
use std::path::Path;

/// Error type image encoders return (any error will do).
pub type EncoderError = Box<dyn std::error::Error + Send + Sync>;

/// Turns images into embedding rows. Implemented elsewhere (the MiniGPT-4 vision tower, CLIP);
/// the implementation resolves each [`ImageRef`] (path, base64, COCO id) itself.
pub trait ImageEncoder {
    /// Embeds a batch; returns one row per image, all of the same width.
    fn embed(&self, images: &[ImageRef]) -> std::result::Result<Vec<Vec<f32>>, EncoderError>;
}

/// Gives the embedding of a bad case's image (the query of a similarity search).
pub trait ExampleImages {
    /// `Ok(None)` when this source has no embedding for the case's image.
    fn example_embedding(&self, case: &BadCase) -> Result<Option<Vec<f32>>>;
}

/// Looks up COCO-id images in an index (e.g. an index of the benchmark's val images, or the
/// candidate index itself when bad cases come from the same split).
impl ExampleImages for ImageIndex {
    fn example_embedding(&self, case: &BadCase) -> Result<Option<Vec<f32>>> {
        match &case.image {
            ImageRef::Coco { image_id } => self.embedding(*image_id),
            _ => Ok(None),
        }
    }
}

/// Embeds each example image on demand with an encoder.
pub struct EncodeExamples<'a, E: ImageEncoder + ?Sized>(pub &'a E);

impl<E: ImageEncoder + ?Sized> ExampleImages for EncodeExamples<'_, E> {
    fn example_embedding(&self, case: &BadCase) -> Result<Option<Vec<f32>>> {
        let rows = self
            .0
            .embed(std::slice::from_ref(&case.image))
            .map_err(|e| AbsError::Encoder(e.to_string()))?;
        Ok(rows.into_iter().next())
    }
}

/// Tries several sources in order.
pub struct FirstOf<'a>(pub Vec<&'a dyn ExampleImages>);

impl ExampleImages for FirstOf<'_> {
    fn example_embedding(&self, case: &BadCase) -> Result<Option<Vec<f32>>> {
        for s in &self.0 {
            if let Some(e) = s.example_embedding(case)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

/// Ids and L2-normalised embeddings (`[N, d]`, f32, CPU).
#[derive(Debug, Clone)]
pub struct ImageIndex {
    ids: Vec<u64>,
    embeddings: Tensor,
    position: HashMap<u64, usize>,
}

/// Tensor names in the safetensors file.
pub const IDS_TENSOR: &str = "ids";
pub const EMBEDDINGS_TENSOR: &str = "embeddings";

/// Rows are scored against this many queries per matmul: bounds the `[B, N]` score matrix.
const QUERY_BATCH: usize = 64;

fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    // Zero rows stay zero (cosine 0 with everything) instead of becoming NaN.
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}

impl ImageIndex {
    /// Builds an index from ids and an `[N, d]` embedding matrix (any float dtype; normalised
    /// and stored as f32). Ids must be unique; values must be finite.
    pub fn new(ids: Vec<u64>, embeddings: &Tensor) -> Result<Self> {
        Self::with_rows(ids, embeddings, false)
    }

    /// `keep_unit_rows`: rows that are already unit length (a saved index) are kept bit-exact
    /// instead of being normalised again (which can move them by an ulp).
    fn with_rows(ids: Vec<u64>, embeddings: &Tensor, keep_unit_rows: bool) -> Result<Self> {
        let (n, d) = embeddings.dims2().map_err(|_| {
            AbsError::Input(format!(
                "embeddings must be a [N, d] matrix, got shape {:?}",
                embeddings.dims()
            ))
        })?;
        if n != ids.len() {
            return Err(AbsError::Input(format!(
                "{} ids for {n} embedding rows",
                ids.len()
            )));
        }
        if d == 0 {
            return Err(AbsError::Input("embedding width is 0".into()));
        }
        let x = embeddings.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let finite = x.abs()?.max_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(row) = finite.iter().position(|v| !v.is_finite()) {
            return Err(AbsError::Input(format!(
                "embedding row {row} (id {}) is not finite",
                ids[row]
            )));
        }
        let mut position = HashMap::with_capacity(n);
        for (i, id) in ids.iter().enumerate() {
            if position.insert(*id, i).is_some() {
                return Err(AbsError::Input(format!(
                    "image id {id} appears twice in the index"
                )));
            }
        }
        let unit = keep_unit_rows && {
            let norms = x
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            norms.iter().all(|v| (v - 1.0).abs() < 1e-4)
        };
        let embeddings = if unit {
            x.contiguous()?
        } else {
            l2_normalise(&x)?.contiguous()?
        };
        Ok(Self {
            ids,
            embeddings,
            position,
        })
    }

    /// Builds an index from rows (e.g. collected from an [`ImageEncoder`]).
    pub fn from_rows(ids: Vec<u64>, rows: &[Vec<f32>]) -> Result<Self> {
        let d = rows.first().map_or(0, |r| r.len());
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(AbsError::Input(format!(
                "embedding row {i} has width {}, expected {d}",
                r.len()
            )));
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu)?;
        Self::new(ids, &t)
    }

    /// Embeds `images` with `encoder` in batches of `batch` and builds the index.
    /// `progress` is called with the number of images embedded so far.
    pub fn build(
        encoder: &dyn ImageEncoder,
        images: &[(u64, ImageRef)],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Self> {
        let mut rows = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let refs: Vec<ImageRef> = chunk.iter().map(|(_, r)| r.clone()).collect();
            let out = encoder
                .embed(&refs)
                .map_err(|e| AbsError::Encoder(e.to_string()))?;
            if out.len() != chunk.len() {
                return Err(AbsError::Encoder(format!(
                    "{} rows returned for {} images",
                    out.len(),
                    chunk.len()
                )));
            }
            rows.extend(out);
            progress(rows.len());
        }
        Self::from_rows(images.iter().map(|(id, _)| *id).collect(), &rows)
    }

    /// Saves as safetensors: `ids` (i64 `[N]`) and `embeddings` (f32 `[N, d]`, normalised).
    /// Written to a temp file then renamed, so a reader never sees a partial index.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ids: Vec<i64> = self
            .ids
            .iter()
            .map(|&id| {
                i64::try_from(id)
                    .map_err(|_| AbsError::Input(format!("image id {id} does not fit in i64")))
            })
            .collect::<Result<_>>()?;
        let n = ids.len();
        let mut map = HashMap::new();
        map.insert(
            IDS_TENSOR.to_string(),
            Tensor::from_vec(ids, n, &Device::Cpu)?,
        );
        map.insert(EMBEDDINGS_TENSOR.to_string(), self.embeddings.clone());
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| mde_core::CoreError::io(dir, e))?;
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Best effort: the leftovers of a killed writer must not fail the save.
        let _ = mde_core::io::clean_stale_temps(dir, &name);
        let tmp = dir.join(mde_core::io::temp_name(&name, std::process::id()));
        candle_core::safetensors::save(&map, &tmp)
            .map_err(|e| AbsError::invalid(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| mde_core::CoreError::io(path, e))?;
        Ok(())
    }

    /// Loads an index saved by [`ImageIndex::save`] (or any safetensors file with an integer
    /// `ids` vector and a float `embeddings` matrix).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| AbsError::invalid(path, e.to_string()))?;
        let get = |name: &str| {
            map.get(name).ok_or_else(|| {
                AbsError::invalid(path, format!("missing tensor {name:?} (expected {IDS_TENSOR:?} and {EMBEDDINGS_TENSOR:?})"))
            })
        };
        let ids_t = get(IDS_TENSOR)?;
        let ids: Vec<u64> = match ids_t.dtype() {
            DType::I64 => ids_t
                .flatten_all()?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|v| v as u64)
                .collect(),
            DType::U32 => ids_t
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(u64::from)
                .collect(),
            other => {
                return Err(AbsError::invalid(
                    path,
                    format!("tensor {IDS_TENSOR:?} has dtype {other:?}, expected i64"),
                ))
            }
        };
        Self::with_rows(ids, get(EMBEDDINGS_TENSOR)?, true)
            .map_err(|e| AbsError::invalid(path, e.to_string()))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.embeddings.dims()[1]
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The normalised `[N, d]` matrix.
    pub fn embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// Row of an image id.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.position.get(&id).copied()
    }

    /// Normalised embedding of an image id.
    pub fn embedding(&self, id: u64) -> Result<Option<Vec<f32>>> {
        match self.position(id) {
            Some(i) => Ok(Some(self.embeddings.get(i)?.to_vec1::<f32>()?)),
            None => Ok(None),
        }
    }

    /// Cosine similarity of every query with every row: `[B][N]`.
    pub fn scores(&self, queries: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let d = self.dim();
        if let Some((i, q)) = queries.iter().enumerate().find(|(_, q)| q.len() != d) {
            return Err(AbsError::Input(format!(
                "query {i} has width {}, the index has {d}",
                q.len()
            )));
        }
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let q = Tensor::from_vec(flat, (queries.len(), d), &Device::Cpu)?;
        let q = l2_normalise(&q)?;
        let s = q.matmul(&self.embeddings.t()?)?;
        Ok(s.to_vec2::<f32>()?)
    }

    /// The `k` most similar rows of each query, best first, as (row, cosine). Ties are broken
    /// by row order so results are deterministic.
    pub fn top_k_batch(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(QUERY_BATCH) {
            for row in self.scores(chunk)? {
                out.push(top_k_of(&row, k));
            }
        }
        Ok(out)
    }

    /// [`ImageIndex::top_k_batch`] for one query.
    pub fn top_k(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>> {
        Ok(self
            .top_k_batch(&[query.to_vec()], k)?
            .pop()
            .unwrap_or_default())
    }
}

/// Indices of the `k` largest values, best first; NaN ranks last; ties by index.
fn top_k_of(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let cmp = |a: &(usize, f32), b: &(usize, f32)| {
        let (x, y) = (
            if a.1.is_nan() { f32::NEG_INFINITY } else { a.1 },
            if b.1.is_nan() { f32::NEG_INFINITY } else { b.1 },
        );
        y.total_cmp(&x).then(a.0.cmp(&b.0))
    };
    let mut v: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    let k = k.min(v.len());
    if k == 0 {
        return vec![];
    }
    if k < v.len() {
        v.select_nth_unstable_by(k - 1, cmp);
        v.truncate(k);
    }
    v.sort_unstable_by(cmp);
    v
}
