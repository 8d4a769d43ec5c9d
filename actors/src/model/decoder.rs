//! A decoder-only model with an explicit KV cache, run one step at a time over a batch of
//! sequences that join and leave between steps (continuous batching).
//!
//! The batch keeps each layer's cache as the ONNX Runtime values of the last step's `present`
//! outputs, which become the next step's `past_key_values` without a copy. Rows are
//! left-padded to a common width; `attention_mask` hides the padding. Only a change of
//! membership (a sequence joining or leaving) copies the cache, to re-pad it.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::ModelError;

/// Prompt tokens fed per forward pass (all rows together): bounds the logits buffer of a long
/// or wide prefill (rows x columns x vocabulary floats).
const PREFILL_TOKENS_PER_PASS: usize = 256;

/// Shape of the model's KV cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The sequences being decoded together and their KV cache.
pub struct Batch {
    /// `2 * layers` tensors (key, value per layer) of shape [rows, kv_heads, width, head_dim].
    past: Vec<DynValue>,
    /// Per row: which of the `width` cache positions hold real tokens (1) or padding (0).
    masks: Vec<Vec<i64>>,
    /// Per row: the position id of the next token (its count of real tokens).
    positions: Vec<i64>,
    width: usize,
    shape: CacheShape,
}

/// A decoder session.
pub struct Decoder {
    session: Session,
    shape: CacheShape,
    /// Some exports compute positions from the mask and take no `position_ids`.
    takes_position_ids: bool,
}

fn runtime_err(err: ort::Error) -> ModelError {
    ModelError::Runtime(err.to_string())
}

impl Decoder {
    pub fn new(session: Session, shape: CacheShape) -> Decoder {
        let takes_position_ids = session
            .inputs()
            .iter()
            .any(|input| input.name() == "position_ids");
        Decoder {
            session,
            shape,
            takes_position_ids,
        }
    }

    /// Runs prompts together (left-padded to the longest): the logits after each prompt's
    /// last token, and a batch holding their caches, one row per prompt in order.
    pub fn prefill(&mut self, prompts: &[Vec<u32>]) -> Result<(Vec<Vec<f32>>, Batch), ModelError> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::InvalidRequest("empty prompt".into()));
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let padded: Vec<(Vec<u32>, Vec<i64>)> = prompts
            .iter()
            .map(|prompt| {
                let pad = width - prompt.len();
                let mut tokens = vec![0; pad];
                tokens.extend_from_slice(prompt);
                let mut mask = vec![0; pad];
                mask.extend(std::iter::repeat_n(1, prompt.len()));
                (tokens, mask)
            })
            .collect();
        let mut batch = Batch::empty_rows(self.shape, prompts.len())?;
        let columns = (PREFILL_TOKENS_PER_PASS / prompts.len()).max(1);
        let mut logits = Vec::new();
        for start in (0..width).step_by(columns) {
            let end = (start + columns).min(width);
            let tokens: Vec<&[u32]> = padded.iter().map(|(t, _)| &t[start..end]).collect();
            let masks: Vec<&[i64]> = padded.iter().map(|(_, m)| &m[start..end]).collect();
            logits = self.run(&mut batch, &tokens, &masks)?;
        }
        Ok((logits, batch))
    }

    /// Feeds one token to every row of `batch`; returns each row's next-token logits.
    pub fn step(&mut self, batch: &mut Batch, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let rows: Vec<&[u32]> = tokens.chunks(1).collect();
        let real = [1_i64];
        let masks: Vec<&[i64]> = vec![&real[..]; tokens.len()];
        self.run(batch, &rows, &masks)
    }

    /// One forward pass: `rows[i]` (all the same length) extends row `i`; `masks[i]` says which
    /// of those tokens are real (1) or left padding (0). Returns each row's last logits.
    fn run(
        &mut self,
        batch: &mut Batch,
        rows: &[&[u32]],
        masks: &[&[i64]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let n_rows = rows.len();
        let seq = rows[0].len();
        debug_assert!(rows.iter().all(|r| r.len() == seq));
        debug_assert_eq!(n_rows, batch.len());
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&t| t as i64))
            .collect();
        // Real tokens take consecutive positions; padding gets 0 (it is masked anyway).
        let mut positions = Vec::with_capacity(n_rows * seq);
        for (next, row_mask) in batch.positions.iter_mut().zip(masks) {
            for &real in row_mask.iter() {
                positions.push(if real == 1 { *next } else { 0 });
                *next += real;
            }
        }
        let mut mask = Vec::with_capacity(n_rows * (batch.width + seq));
        for (row, new) in batch.masks.iter_mut().zip(masks) {
            row.extend_from_slice(new);
            mask.extend_from_slice(row);
        }
        let dims = |cols: usize| vec![n_rows as i64, cols as i64];
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array((dims(seq), ids))
                    .map_err(runtime_err)?
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array((dims(batch.width + seq), mask))
                    .map_err(runtime_err)?
                    .into(),
            ),
        ];
        if self.takes_position_ids {
            inputs.push((
                "position_ids".into(),
                Tensor::from_array((dims(seq), positions))
                    .map_err(runtime_err)?
                    .into(),
            ));
        }
        for (i, value) in std::mem::take(&mut batch.past).into_iter().enumerate() {
            inputs.push((past_name(i).into(), value.into()));
        }
        // From here on the batch's cache is consumed: a failed run leaves it unusable, and
        // the caller drops the batch.
        batch.width += seq;
        let mut outputs = self.session.run(inputs).map_err(runtime_err)?;
        let mut past = Vec::with_capacity(2 * self.shape.layers);
        for i in 0..2 * self.shape.layers {
            let value = outputs
                .remove(present_name(i))
                .ok_or_else(|| ModelError::Runtime(format!("no output {}", present_name(i))))?;
            past.push(value);
        }
        let logits = outputs
            .remove("logits")
            .ok_or_else(|| ModelError::Runtime("no logits output".into()))?;
        let (shape, data) = logits.try_extract_tensor::<f32>().map_err(runtime_err)?;
        let vocab = shape[2] as usize;
        let per_row = seq * vocab;
        let last: Vec<Vec<f32>> = (0..n_rows)
            .map(|r| data[r * per_row + (seq - 1) * vocab..(r + 1) * per_row].to_vec())
            .collect();
        batch.past = past;
        Ok(last)
    }
}

fn past_name(i: usize) -> String {
    let kind = if i.is_multiple_of(2) { "key" } else { "value" };
    format!("past_key_values.{}.{kind}", i / 2)
}

fn present_name(i: usize) -> String {
    let kind = if i.is_multiple_of(2) { "key" } else { "value" };
    format!("present.{}.{kind}", i / 2)
}

impl Batch {
    /// No rows.
    pub fn new(shape: CacheShape) -> Batch {
        Batch {
            past: Vec::new(),
            masks: Vec::new(),
            positions: Vec::new(),
            width: 0,
            shape,
        }
    }

    /// `rows` rows with an empty cache (the start of a prefill).
    fn empty_rows(shape: CacheShape, rows: usize) -> Result<Batch, ModelError> {
        let past = (0..2 * shape.layers)
            .map(|_| {
                let dims = vec![rows as i64, shape.kv_heads as i64, 0, shape.head_dim as i64];
                Tensor::from_array((dims, Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(runtime_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            past,
            masks: vec![Vec::new(); rows],
            positions: vec![0; rows],
            width: 0,
            shape,
        })
    }

    pub fn len(&self) -> usize {
        self.masks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Cache positions per row (real tokens plus padding).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Adds the rows of `other` after this batch's rows, left-padding both to a common width.
    pub fn append(&mut self, other: Batch) -> Result<(), ModelError> {
        if self.is_empty() {
            *self = other;
            return Ok(());
        }
        let width = self.width.max(other.width);
        let rows = self.len() + other.len();
        let (kv, dim) = (self.shape.kv_heads, self.shape.head_dim);
        let mut past = Vec::with_capacity(self.past.len());
        for (mine, theirs) in self.past.iter().zip(other.past.iter()) {
            let mut data = vec![0.0f32; rows * kv * width * dim];
            let mut row_offset = 0;
            for (source, source_width) in [(mine, self.width), (theirs, other.width)] {
                let (shape, values) = source.try_extract_tensor::<f32>().map_err(runtime_err)?;
                let source_rows = shape[0] as usize;
                copy_rows(
                    values,
                    source_rows,
                    source_width,
                    &mut data,
                    row_offset,
                    width,
                    kv,
                    dim,
                );
                row_offset += source_rows;
            }
            let dims = vec![rows as i64, kv as i64, width as i64, dim as i64];
            past.push(
                Tensor::from_array((dims, data))
                    .map_err(runtime_err)?
                    .into_dyn(),
            );
        }
        let pad = |mut mask: Vec<i64>, from: usize| {
            let mut padded = vec![0; width - from];
            padded.append(&mut mask);
            padded
        };
        let mut masks: Vec<Vec<i64>> = std::mem::take(&mut self.masks)
            .into_iter()
            .map(|m| pad(m, self.width))
            .collect();
        masks.extend(other.masks.into_iter().map(|m| pad(m, other.width)));
        self.masks = masks;
        self.positions.extend(other.positions);
        self.past = past;
        self.width = width;
        Ok(())
    }

    /// Removes row `index`, then trims leading columns that are padding in every row.
    pub fn remove(&mut self, index: usize) -> Result<(), ModelError> {
        self.masks.remove(index);
        self.positions.remove(index);
        if self.masks.is_empty() {
            *self = Batch::new(self.shape);
            return Ok(());
        }
        let trim = self
            .masks
            .iter()
            .map(|m| m.iter().take_while(|&&v| v == 0).count())
            .min()
            .unwrap_or(0);
        let rows = self.len();
        let width = self.width - trim;
        let (kv, dim) = (self.shape.kv_heads, self.shape.head_dim);
        let mut past = Vec::with_capacity(self.past.len());
        for value in &self.past {
            let (_, values) = value.try_extract_tensor::<f32>().map_err(runtime_err)?;
            let mut data = Vec::with_capacity(rows * kv * width * dim);
            let row_len = kv * self.width * dim;
            for row in (0..=rows).filter(|&r| r != index) {
                let row_values = &values[row * row_len..(row + 1) * row_len];
                for head in 0..kv {
                    let start = (head * self.width + trim) * dim;
                    data.extend_from_slice(&row_values[start..start + width * dim]);
                }
            }
            let dims = vec![rows as i64, kv as i64, width as i64, dim as i64];
            past.push(
                Tensor::from_array((dims, data))
                    .map_err(runtime_err)?
                    .into_dyn(),
            );
        }
        for mask in &mut self.masks {
            mask.drain(..trim);
        }
        self.past = past;
        self.width = width;
        Ok(())
    }
}

/// Copies `rows` rows of a [rows, kv, from_width, dim] cache into `dest` (a
/// [_, kv, to_width, dim] cache) starting at row `dest_row`, right-aligned (left-padded).
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    source: &[f32],
    rows: usize,
    from_width: usize,
    dest: &mut [f32],
    dest_row: usize,
    to_width: usize,
    kv: usize,
    dim: usize,
) {
    let pad = to_width - from_width;
    for row in 0..rows {
        for head in 0..kv {
            let src = ((row * kv + head) * from_width) * dim;
            let dst = (((dest_row + row) * kv + head) * to_width + pad) * dim;
            dest[dst..dst + from_width * dim].copy_from_slice(&source[src..src + from_width * dim]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_right_aligned_when_padded() {
        // Two rows, one head, widths 1 -> 3, dim 2.
        let source = [1.0, 2.0, 3.0, 4.0];
        let mut dest = vec![0.0; 2 * 3 * 2];
        copy_rows(&source, 2, 1, &mut dest, 0, 3, 1, 2);
        assert_eq!(dest, vec![0., 0., 0., 0., 1., 2., 0., 0., 0., 0., 3., 4.]);
    }
}
