//! Choosing the next token from logits: greedy, or temperature with top-k and top-p, from a
//! seeded generator so that a request with a seed is reproducible.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability adds up to this (1 = off).
    pub top_p: f32,
    /// Only the k most likely tokens (0 = off).
    pub top_k: usize,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are not part of the answer.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 50,
            seed: None,
            max_tokens: 512,
            stop: Vec::new(),
        }
    }
}

/// A sampler for one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng }
    }

    /// The next token id.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_temperature = 1.0 / self.params.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| (id as u32, logit * inv_temperature))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k.max(1));
        }
        let max = candidates[0].1;
        let mut probabilities: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probabilities.iter().sum();
        probabilities.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probabilities
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= self.params.top_p
                })
                .map_or(probabilities.len(), |i| i + 1);
            probabilities.truncate(keep);
        }
        let total: f32 = probabilities.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (i, p) in probabilities.iter().enumerate() {
            draw -= p;
            if draw <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[probabilities.len() - 1].0
    }
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(sampler.sample(&[0.1, 3.0, 2.0, 3.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..Default::default()
        };
        let draw = |params: &SamplingParams| {
            let mut sampler = Sampler::new(params.clone());
            (0..20).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(sampler.sample(&[0.0, 1.0, 0.5]), 1);
        }
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.01,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(sampler.sample(&[0.0, 4.0, 0.5, 3.9]), 1);
        }
    }
}
