//! The generation loop of a chat model: a dedicated thread owning the decoder. Between decode
//! steps it admits queued requests (prefill, then join the running batch) and retires finished
//! ones, so concurrent generations share each forward pass (continuous batching).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use super::decoder::{Batch, CacheShape, Decoder};
use super::sampling::{Sampler, SamplingParams};
use super::ModelError;

/// A queued generation: the prompt and where its events go.
pub struct GenerationJob {
    pub prompt: String,
    pub params: SamplingParams,
    pub events: UnboundedSender<GenerationEvent>,
    pub enqueued_at: Instant,
}

/// What a generation reports, in order: text pieces as produced, then one `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    Text(String),
    Done(GenerationSummary),
    Failed(ModelError),
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The caller went away.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct GenerationSummary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// From admission to the first token.
    pub time_to_first_token: Duration,
    /// From admission to the end.
    pub total_time: Duration,
}

/// Counters of a worker, shared with its actor.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub inferences: AtomicU64,
    pub tokens_generated: AtomicU64,
    /// Time spent in decode steps, in microseconds.
    pub decode_micros: AtomicU64,
    /// Tokens produced by decode steps (each sequence's first token comes from its prefill).
    pub decode_tokens: AtomicU64,
    /// Sum of whole-request times, in microseconds.
    pub response_micros: AtomicU64,
    /// Sequences in the running batch.
    pub active: AtomicU64,
}

/// Limits of the loop.
pub struct LoopConfig {
    pub max_batch: usize,
    pub context_length: usize,
    pub eos_ids: Vec<u32>,
}

/// One sequence in the batch.
struct Sequence {
    job: GenerationJob,
    sampler: Sampler,
    prompt_tokens: usize,
    generated: Vec<u32>,
    max_new: usize,
    detokenizer: Detokenizer,
    stops: StopMatcher,
    first_token_at: Option<Instant>,
}

/// Runs until the job channel closes and the batch is empty.
pub fn run_loop(
    mut decoder: Decoder,
    tokenizer: Tokenizer,
    shape: CacheShape,
    config: LoopConfig,
    jobs: Receiver<GenerationJob>,
    counters: Arc<WorkerCounters>,
) {
    let mut batch = Batch::new(shape);
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut next_tokens: Vec<u32> = Vec::new();
    let mut open = true;
    loop {
        // Admit: block when idle, otherwise take what is waiting, up to the batch size.
        let mut arrivals = Vec::new();
        while open && sequences.len() + arrivals.len() < config.max_batch {
            let next = if sequences.is_empty() && arrivals.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match next {
                Ok(job) => arrivals.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !arrivals.is_empty() {
            let admitted = admit(&mut decoder, &tokenizer, &config, arrivals, &counters);
            if let Some((new_sequences, tokens, rows)) = admitted {
                if let Err(err) = batch.append(rows) {
                    let mut new_sequences = new_sequences;
                    fail_all(&mut sequences, &err);
                    fail_all(&mut new_sequences, &err);
                    batch = Batch::new(shape);
                    next_tokens.clear();
                    continue;
                }
                sequences.extend(new_sequences);
                next_tokens.extend(tokens);
            }
        }
        if sequences.is_empty() {
            if open {
                continue;
            }
            return;
        }
        counters
            .active
            .store(sequences.len() as u64, Ordering::Relaxed);

        let started = Instant::now();
        let step = decoder.step(&mut batch, &next_tokens);
        counters
            .decode_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let logits = match step {
            Ok(logits) => {
                counters
                    .decode_tokens
                    .fetch_add(logits.len() as u64, Ordering::Relaxed);
                logits
            }
            Err(err) => {
                tracing::error!(error = %err, "decode step failed; failing its batch");
                fail_all(&mut sequences, &err);
                batch = Batch::new(shape);
                next_tokens.clear();
                continue;
            }
        };
        // Walk backwards so removals keep the remaining indices valid.
        for row in (0..sequences.len()).rev() {
            let token = sequences[row].sampler.sample(&logits[row]);
            let finished = advance(&mut sequences[row], token, &tokenizer, &config, &counters);
            if let Some(reason) = finished {
                let sequence = sequences.remove(row);
                next_tokens.remove(row);
                finish(sequence, reason, &counters);
                if let Err(err) = batch.remove(row) {
                    fail_all(&mut sequences, &err);
                    batch = Batch::new(shape);
                    next_tokens.clear();
                    break;
                }
            } else {
                next_tokens[row] = token;
            }
        }
        counters
            .active
            .store(sequences.len() as u64, Ordering::Relaxed);
    }
}

/// Tokenises and prefills newly arrived jobs together. Returns the sequences that go on, their
/// first sampled tokens and their cache rows (in the same order), or `None` when none goes on
/// (errors, immediate stops and cancellations are reported to their callers here).
fn admit(
    decoder: &mut Decoder,
    tokenizer: &Tokenizer,
    config: &LoopConfig,
    jobs: Vec<GenerationJob>,
    counters: &WorkerCounters,
) -> Option<(Vec<Sequence>, Vec<u32>, Batch)> {
    let mut ready = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.events.is_closed() {
            continue;
        }
        let prompt = match tokenizer.encode(job.prompt.as_str(), false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            Err(err) => {
                let error = ModelError::Tokenizer(err.to_string());
                let _ = job.events.send(GenerationEvent::Failed(error));
                continue;
            }
        };
        if prompt.is_empty() || prompt.len() >= config.context_length {
            let _ = job
                .events
                .send(GenerationEvent::Failed(ModelError::ContextOverflow {
                    tokens: prompt.len(),
                    limit: config.context_length,
                }));
            continue;
        }
        ready.push((job, prompt));
    }
    if ready.is_empty() {
        return None;
    }
    let prompts: Vec<Vec<u32>> = ready.iter().map(|(_, prompt)| prompt.clone()).collect();
    let (logits, mut rows) = match decoder.prefill(&prompts) {
        Ok(result) => result,
        Err(err) => {
            for (job, _) in ready {
                let _ = job.events.send(GenerationEvent::Failed(err.clone()));
            }
            return None;
        }
    };
    let mut sequences = Vec::with_capacity(ready.len());
    let mut tokens = Vec::with_capacity(ready.len());
    let mut ended = Vec::new();
    for (row, (job, prompt)) in ready.into_iter().enumerate() {
        let mut sequence = Sequence {
            sampler: Sampler::new(job.params.clone()),
            stops: StopMatcher::new(job.params.stop.clone()),
            prompt_tokens: prompt.len(),
            generated: Vec::new(),
            max_new: job
                .params
                .max_tokens
                .min(config.context_length - prompt.len()),
            detokenizer: Detokenizer::default(),
            first_token_at: None,
            job,
        };
        let token = sequence.sampler.sample(&logits[row]);
        match advance(&mut sequence, token, tokenizer, config, counters) {
            Some(reason) => {
                finish(sequence, reason, counters);
                ended.push(row);
            }
            None => {
                sequences.push(sequence);
                tokens.push(token);
            }
        }
    }
    for row in ended.into_iter().rev() {
        if let Err(err) = rows.remove(row) {
            fail_all(&mut sequences, &err);
            return None;
        }
    }
    (!sequences.is_empty()).then_some((sequences, tokens, rows))
}

/// Records a sampled token; returns why the sequence ends, if it does.
fn advance(
    sequence: &mut Sequence,
    token: u32,
    tokenizer: &Tokenizer,
    config: &LoopConfig,
    counters: &WorkerCounters,
) -> Option<FinishReason> {
    if sequence.job.events.is_closed() {
        return Some(FinishReason::Cancelled);
    }
    sequence.first_token_at.get_or_insert_with(Instant::now);
    if config.eos_ids.contains(&token) {
        flush(sequence, tokenizer);
        return Some(FinishReason::Stop);
    }
    sequence.generated.push(token);
    counters.tokens_generated.fetch_add(1, Ordering::Relaxed);
    let piece = sequence.detokenizer.push(tokenizer, &sequence.generated);
    let (ready, stopped) = sequence.stops.push(&piece);
    if !ready.is_empty() {
        let _ = sequence.job.events.send(GenerationEvent::Text(ready));
    }
    if stopped {
        return Some(FinishReason::Stop);
    }
    if sequence.generated.len() >= sequence.max_new {
        flush(sequence, tokenizer);
        return Some(FinishReason::Length);
    }
    None
}

/// Sends what is still held back: bytes of an unfinished character, and text kept for a
/// possible stop sequence that did not come.
fn flush(sequence: &mut Sequence, tokenizer: &Tokenizer) {
    let tail = sequence.detokenizer.finish(tokenizer, &sequence.generated);
    let (ready, _) = sequence.stops.push(&tail);
    if !ready.is_empty() {
        let _ = sequence.job.events.send(GenerationEvent::Text(ready));
    }
    let rest = sequence.stops.finish();
    if !rest.is_empty() {
        let _ = sequence.job.events.send(GenerationEvent::Text(rest));
    }
}

fn finish(sequence: Sequence, reason: FinishReason, counters: &WorkerCounters) {
    let now = Instant::now();
    let total_time = now - sequence.job.enqueued_at;
    counters.inferences.fetch_add(1, Ordering::Relaxed);
    counters
        .response_micros
        .fetch_add(total_time.as_micros() as u64, Ordering::Relaxed);
    let summary = GenerationSummary {
        prompt_tokens: sequence.prompt_tokens,
        completion_tokens: sequence.generated.len(),
        finish_reason: reason,
        time_to_first_token: sequence.first_token_at.unwrap_or(now) - sequence.job.enqueued_at,
        total_time,
    };
    let _ = sequence.job.events.send(GenerationEvent::Done(summary));
}

fn fail_all(sequences: &mut Vec<Sequence>, err: &ModelError) {
    for sequence in sequences.drain(..) {
        let _ = sequence
            .job
            .events
            .send(GenerationEvent::Failed(err.clone()));
    }
}

/// Turns a growing list of token ids into text pieces without re-decoding everything and
/// without cutting a multi-byte character (a partial one decodes to U+FFFD and waits).
#[derive(Default)]
struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    fn push(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> String {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let prefix = decode(&ids[self.prefix_offset..self.read_offset]);
        let text = decode(&ids[self.prefix_offset..]);
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') {
            let piece = text[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            piece
        } else {
            String::new()
        }
    }

    /// Whatever has not been sent, even an incomplete character (as U+FFFD).
    fn finish(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> String {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let prefix = decode(&ids[self.prefix_offset..self.read_offset]);
        let text = decode(&ids[self.prefix_offset..]);
        self.prefix_offset = ids.len();
        self.read_offset = ids.len();
        text.get(prefix.len()..).unwrap_or_default().to_owned()
    }
}

/// Finds stop sequences in streamed text, holding back any tail that could be the start of
/// one so that no part of a stop sequence is ever sent.
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns what can be sent now and whether a stop sequence was reached.
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min()
        {
            let ready = self.pending[..at].to_owned();
            self.pending.clear();
            return (ready, true);
        }
        let hold = self
            .stops
            .iter()
            .map(|stop| longest_suffix_prefix(&self.pending, stop))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let ready = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        (ready, false)
    }

    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop` (char-aligned).
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_are_cut_and_never_leak() {
        let mut matcher = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(matcher.push("Hello"), ("Hello".into(), false));
        assert_eq!(matcher.push(" there\nUs"), (" there".into(), false));
        assert_eq!(matcher.push("er: hi"), (String::new(), true));
    }

    #[test]
    fn held_text_is_released_when_the_stop_does_not_come() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("the EN"), ("the ".into(), false));
        assert_eq!(matcher.push("D"), (String::new(), true));
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("EN"), (String::new(), false));
        assert_eq!(matcher.push("ough"), ("ENough".into(), false));
        assert_eq!(matcher.push("E"), (String::new(), false));
        assert_eq!(matcher.finish(), "E");
    }

    #[test]
    fn no_stops_pass_everything() {
        let mut matcher = StopMatcher::new(vec![]);
        assert_eq!(matcher.push("abc"), ("abc".into(), false));
    }
}
