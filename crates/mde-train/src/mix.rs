//! Seeded dataset mixing: each step picks one dataset with probability proportional to its
//! sample ratio (MiniGPT-4's `sample_ratio`, about `sqrt(size)`), and a batch is drawn from
//! that dataset only (homogeneous batches). Within a dataset, samples are visited in a seeded
//! shuffled order, reshuffled at each pass.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A dataset in the mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixEntry {
    pub name: String,
    pub size: usize,
    /// Sampling weight; `None` = `sqrt(size)`.
    pub ratio: Option<f64>,
}

/// One batch: the dataset index and the sample indices inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixedBatch {
    pub dataset: usize,
    pub indices: Vec<usize>,
}

/// Position of a [`DatasetMixer`] inside its per-dataset shuffled orders (for resuming).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixerState {
    pub orders: Vec<Vec<usize>>,
    pub cursors: Vec<usize>,
}

/// Seeded homogeneous-batch sampler over several datasets.
#[derive(Debug, Clone)]
pub struct DatasetMixer {
    entries: Vec<MixEntry>,
    weights: Vec<f64>,
    orders: Vec<Vec<usize>>,
    cursors: Vec<usize>,
}

impl DatasetMixer {
    /// Builds the mixer; datasets of size 0 or weight 0 are never picked.
    pub fn new(entries: Vec<MixEntry>) -> Result<Self> {
        let weights: Vec<f64> = entries
            .iter()
            .map(|e| {
                if e.size == 0 {
                    0.0
                } else {
                    e.ratio.unwrap_or((e.size as f64).sqrt())
                }
            })
            .collect();
        if let Some(e) = entries
            .iter()
            .zip(&weights)
            .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
        {
            return Err(TrainError::Invalid(format!(
                "dataset {}: sample ratio must be finite and >= 0",
                e.0.name
            )));
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err(TrainError::Invalid(
                "no dataset with a positive size and ratio to sample from".into(),
            ));
        }
        let orders = entries.iter().map(|_| Vec::new()).collect();
        let cursors = entries.iter().map(|_| 0).collect();
        Ok(Self {
            entries,
            weights,
            orders,
            cursors,
        })
    }

    /// Normalised sampling probabilities.
    pub fn probabilities(&self) -> Vec<f64> {
        let s: f64 = self.weights.iter().sum();
        self.weights.iter().map(|w| w / s).collect()
    }

    /// The datasets.
    pub fn entries(&self) -> &[MixEntry] {
        &self.entries
    }

    /// The data-order state (current shuffled orders and cursors).
    pub fn state(&self) -> MixerState {
        MixerState {
            orders: self.orders.clone(),
            cursors: self.cursors.clone(),
        }
    }

    /// Restores a state captured by [`DatasetMixer::state`] on a mixer over the same datasets.
    pub fn restore(&mut self, st: MixerState) -> Result<()> {
        let n = self.entries.len();
        if st.orders.len() != n || st.cursors.len() != n {
            return Err(TrainError::Invalid(format!(
                "data-order state has {} datasets, the mix has {n}",
                st.orders.len()
            )));
        }
        for (i, (o, e)) in st.orders.iter().zip(&self.entries).enumerate() {
            if !o.is_empty() && (o.len() != e.size || st.cursors[i] > o.len()) {
                return Err(TrainError::Invalid(format!(
                    "data-order state of dataset {} does not match its size {}",
                    e.name, e.size
                )));
            }
        }
        self.orders = st.orders;
        self.cursors = st.cursors;
        Ok(())
    }

    /// Draws the next batch of `batch_size` samples of one dataset.
    pub fn next_batch(&mut self, batch_size: usize, rng: &mut ChaCha8Rng) -> MixedBatch {
        let total: f64 = self.weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut dataset = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        for (i, w) in self.weights.iter().enumerate() {
            if *w > 0.0 && u < *w {
                dataset = i;
                break;
            }
            u -= w;
        }
        let size = self.entries[dataset].size;
        let mut indices = Vec::with_capacity(batch_size);
        while indices.len() < batch_size {
            if self.cursors[dataset] >= self.orders[dataset].len() {
                let mut order: Vec<usize> = (0..size).collect();
                order.shuffle(rng);
                self.orders[dataset] = order;
                self.cursors[dataset] = 0;
            }
            indices.push(self.orders[dataset][self.cursors[dataset]]);
            self.cursors[dataset] += 1;
        }
        MixedBatch { dataset, indices }
    }
}
