//! A sentence-embedding encoder (BERT family): tokenise with truncation at the model's limit,
//! pad to the longest input of the batch, run, mean-pool over real tokens, L2-normalise.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::ModelError;

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit length.
    pub vector: Vec<f32>,
    /// Tokens the model read (after truncation, special tokens included).
    pub tokens: usize,
}

pub struct Encoder {
    session: Session,
    tokenizer: Tokenizer,
    wants_token_types: bool,
}

impl Encoder {
    pub fn new(
        session: Session,
        mut tokenizer: Tokenizer,
        max_tokens: usize,
    ) -> Result<Encoder, ModelError> {
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let wants_token_types = session
            .inputs()
            .iter()
            .any(|input| input.name() == "token_type_ids");
        Ok(Encoder {
            session,
            tokenizer,
            wants_token_types,
        })
    }

    /// Unit-length embeddings of `texts`, in order.
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Embedding>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        let rows = encodings.len();
        let seq = encodings[0].get_ids().len();
        let flat = |pick: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
            encodings
                .iter()
                .flat_map(|e| pick(e).iter().map(|&v| v as i64))
                .collect()
        };
        let ids = flat(&|e| e.get_ids());
        let mask = flat(&|e| e.get_attention_mask());
        let dims = vec![rows as i64, seq as i64];
        let tensor = |data: Vec<i64>| -> Result<SessionInputValue<'static>, ModelError> {
            Ok(Tensor::from_array((dims.clone(), data))
                .map_err(|err| ModelError::Runtime(err.to_string()))?
                .into())
        };
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            ("input_ids".into(), tensor(ids)?),
            ("attention_mask".into(), tensor(mask.clone())?),
        ];
        if self.wants_token_types {
            inputs.push(("token_type_ids".into(), tensor(vec![0; rows * seq])?));
        }
        let outputs = self
            .session
            .run(inputs)
            .map_err(|err| ModelError::Runtime(err.to_string()))?;
        let hidden = outputs
            .get("last_hidden_state")
            .ok_or_else(|| ModelError::Runtime("no last_hidden_state output".into()))?;
        let (shape, values) = hidden
            .try_extract_tensor::<f32>()
            .map_err(|err| ModelError::Runtime(err.to_string()))?;
        let dim = shape[2] as usize;
        Ok((0..rows)
            .map(|r| {
                let row_mask = &mask[r * seq..(r + 1) * seq];
                Embedding {
                    vector: mean_pool(&values[r * seq * dim..(r + 1) * seq * dim], row_mask, dim),
                    tokens: row_mask.iter().filter(|&&m| m != 0).count(),
                }
            })
            .collect())
    }
}

/// Mean of the token vectors under the mask, scaled to unit length.
fn mean_pool(hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut pooled = vec![0.0f32; dim];
    let mut count = 0.0f32;
    for (token, &m) in hidden.chunks(dim).zip(mask) {
        if m != 0 {
            pooled.iter_mut().zip(token).for_each(|(p, v)| *p += v);
            count += 1.0;
        }
    }
    let count = count.max(1.0);
    pooled.iter_mut().for_each(|p| *p /= count);
    let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    pooled.iter_mut().for_each(|p| *p /= norm);
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        let hidden = [3.0, 0.0, 0.0, 4.0, 100.0, 100.0];
        let pooled = mean_pool(&hidden, &[1, 1, 0], 2);
        let expected = [1.5 / 2.5, 2.0 / 2.5];
        for (p, e) in pooled.iter().zip(expected) {
            assert!((p - e).abs() < 1e-6, "{pooled:?}");
        }
    }
}
