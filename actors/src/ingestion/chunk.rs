//! Token-aware chunking: sections cut into chunks the embedding model can take whole.
//!
//! A section that fits is one chunk. A longer one is cut into pieces, each the largest unit
//! that fits: paragraphs, else their lines, sentences, words, and only a word longer than the
//! limit is cut inside. Pieces are counted once each and packed greedily; each packed chunk is
//! then counted whole once (tokens of a join can differ a little from the sum of its parts) and
//! shrunk if it is over. So counting stays linear in the text, not quadratic.

use super::extract::Section;
use crate::model::tokens::TokenCounter;
use crate::model::ModelError;

/// How long chunks are and how much consecutive ones share.
#[derive(Debug, Clone, Copy)]
pub struct ChunkingConfig {
    /// Most tokens in a chunk (as the embedding model's tokenizer counts them).
    pub max_tokens: usize,
    /// About how many tokens of the previous chunk's end each chunk repeats; below `max_tokens`.
    pub overlap_tokens: usize,
}

/// A piece of a document, ready to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    pub text: String,
    /// The PDF page it comes from.
    pub page: Option<u32>,
    /// The heading of the section it comes from.
    pub section: Option<String>,
    pub token_count: usize,
}

/// Splits sections into chunks of at most `max_tokens` tokens as `counter` counts them; each
/// chunk after the first of a section repeats about `overlap_tokens` tokens of the previous
/// one's end. Chunks never span sections, so page and section attribution is exact. Splits
/// at paragraph, then line, sentence and word boundaries, and inside a word only when the word
/// alone exceeds the limit (a single character that does stays whole). Never drops text:
/// every non-whitespace character is in some chunk. Empty or whitespace sections yield nothing.
pub fn chunk(
    sections: &[Section],
    config: &ChunkingConfig,
    counter: &TokenCounter,
) -> Result<Vec<TextChunk>, ModelError> {
    if config.max_tokens == 0 || config.overlap_tokens >= config.max_tokens {
        return Err(ModelError::InvalidRequest(format!(
            "chunking needs 0 <= overlap_tokens < max_tokens (got {} and {})",
            config.overlap_tokens, config.max_tokens
        )));
    }
    let mut chunks = Vec::new();
    for section in sections {
        let splitter = Splitter {
            text: &section.text,
            counter,
            max: config.max_tokens,
            overlap: config.overlap_tokens,
            piece_max: config
                .max_tokens
                .saturating_sub(config.overlap_tokens + margin(config.max_tokens))
                .max(1),
        };
        for (text, token_count) in splitter.chunks()? {
            chunks.push(TextChunk {
                text,
                page: section.page,
                section: section.heading.clone(),
                token_count,
            });
        }
    }
    Ok(chunks)
}

/// A byte range of the section's text (trimmed of whitespace) and its token count alone.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    tokens: usize,
}

/// Units a text is cut into, coarsest first.
#[derive(Debug, Clone, Copy)]
enum Level {
    Paragraph,
    Line,
    Sentence,
    Word,
}

impl Level {
    fn finer(self) -> Option<Level> {
        match self {
            Level::Paragraph => Some(Level::Line),
            Level::Line => Some(Level::Sentence),
            Level::Sentence => Some(Level::Word),
            Level::Word => None,
        }
    }
}

struct Splitter<'a> {
    text: &'a str,
    counter: &'a TokenCounter,
    max: usize,
    overlap: usize,
    /// Largest piece wanted: one that fits in a chunk beside a full overlap.
    piece_max: usize,
}

impl Splitter<'_> {
    fn count(&self, start: usize, end: usize) -> Result<usize, ModelError> {
        self.counter.count(&self.text[start..end])
    }

    /// The section's chunks: text and exact token count.
    fn chunks(&self) -> Result<Vec<(String, usize)>, ModelError> {
        let Some((start, end)) = trimmed(self.text, 0, self.text.len()) else {
            return Ok(Vec::new());
        };
        let tokens = if end - start > self.max.saturating_mul(MAX_BYTES_PER_TOKEN) {
            None
        } else {
            let tokens = self.count(start, end)?;
            if tokens <= self.max {
                return Ok(vec![(self.text[start..end].to_owned(), tokens)]);
            }
            Some(tokens)
        };
        let mut pieces = Vec::new();
        self.cut(start, end, tokens, Some(Level::Paragraph), &mut pieces)?;
        self.pack(&pieces)
    }

    /// The most tokens a piece of a level may have.
    fn limit(&self, level: Level) -> usize {
        match level {
            // Coarse units only when small, so that chunks fill up; where they end stays a
            // preferred cut (see `best_end`).
            Level::Paragraph | Level::Line => (self.piece_max / 4).max(1),
            Level::Sentence => self.piece_max,
            Level::Word => self.max,
        }
    }

    /// Cuts a range with more tokens than a piece may hold (`tokens`, when counted) into
    /// pieces at `level` or finer; a single word is cut inside only when it exceeds the limit.
    fn cut(
        &self,
        start: usize,
        end: usize,
        tokens: Option<usize>,
        level: Option<Level>,
        out: &mut Vec<Piece>,
    ) -> Result<(), ModelError> {
        let Some(level) = level else {
            let tokens = match tokens {
                Some(tokens) => tokens,
                None => self.count(start, end)?,
            };
            if tokens <= self.max {
                out.push(Piece { start, end, tokens });
                return Ok(());
            }
            return self.cut_word(start, end, tokens, out);
        };
        let units = units(self.text, start, end, level);
        if units.len() <= 1 {
            // Nothing to cut at this level: the unit is the whole range.
            return self.cut(start, end, tokens, level.finer(), out);
        }
        let limit = self.limit(level);
        for (start, end) in units {
            // A unit far longer in bytes than the limit is over it: cut it without counting.
            let tokens = if end - start > limit.saturating_mul(MAX_BYTES_PER_TOKEN) {
                None
            } else {
                Some(self.count(start, end)?)
            };
            match tokens {
                Some(tokens) if tokens <= limit => out.push(Piece { start, end, tokens }),
                tokens => self.cut(start, end, tokens, level.finer(), out)?,
            }
        }
        Ok(())
    }

    /// Cuts a single over-long word into pieces within the limit, guessing each cut from the
    /// bytes per token seen so far and shrinking in proportion when a guess is over.
    fn cut_word(
        &self,
        start: usize,
        end: usize,
        tokens: usize,
        out: &mut Vec<Piece>,
    ) -> Result<(), ModelError> {
        let mut bytes_per_token = (end - start) as f64 / tokens.max(1) as f64;
        let mut from = start;
        while from < end {
            let one_char = next_char(self.text, from);
            // Aim a little under the limit so that most guesses fit at once.
            let guess = from + (self.max as f64 * bytes_per_token * 0.9) as usize;
            let mut to = floor_char(self.text, guess.min(end)).max(one_char);
            loop {
                let tokens = self.count(from, to)?;
                if tokens <= self.max || to == one_char {
                    out.push(Piece {
                        start: from,
                        end: to,
                        tokens,
                    });
                    bytes_per_token = (to - from) as f64 / tokens.max(1) as f64;
                    break;
                }
                let target = from + (to - from) * self.max / tokens;
                to = floor_char(self.text, target.min(to - 1)).max(one_char);
            }
            from = to;
        }
        Ok(())
    }

    /// Packs pieces into chunks, with overlap, each verified by one count of its text.
    fn pack(&self, pieces: &[Piece]) -> Result<Vec<(String, usize)>, ModelError> {
        let margin = margin(self.max);
        let mut chunks = Vec::new();
        let mut next = 0;
        // Where the chunk starts (inside earlier pieces when it overlaps), and those tokens.
        let mut start = pieces[0].start;
        let mut carried = 0;
        loop {
            let mut last = next;
            let mut estimate = carried + pieces[next].tokens;
            while let Some(piece) = pieces.get(last + 1) {
                let add = self.gap_tokens(pieces, last) + piece.tokens;
                if estimate + add + margin > self.max {
                    break;
                }
                estimate += add;
                last += 1;
            }
            if last + 1 < pieces.len() {
                last = self.best_end(pieces, next, last);
            }
            let tokens = loop {
                let tokens = self.count(start, pieces[last].end)?;
                if tokens <= self.max {
                    break tokens;
                }
                if last > next {
                    // Over: drop pieces from the end in proportion to the excess.
                    let mut estimate = self.estimate(pieces, carried, next, last);
                    let target = estimate * self.max / tokens;
                    while last > next && estimate > target {
                        estimate -= pieces[last].tokens + self.gap_tokens(pieces, last - 1);
                        last -= 1;
                    }
                } else if start < pieces[next].start {
                    // One new piece and the overlap are over: drop the overlap.
                    start = pieces[next].start;
                    carried = 0;
                } else {
                    // A single character over the limit: nothing smaller exists.
                    break tokens;
                }
            };
            chunks.push((self.text[start..pieces[last].end].to_owned(), tokens));
            next = last + 1;
            let Some(following) = pieces.get(next) else {
                break;
            };
            let budget = self
                .overlap
                .min(self.max.saturating_sub(following.tokens + margin));
            (start, carried) = self
                .overlap_start(pieces, start, last, budget)?
                .unwrap_or((following.start, 0));
        }
        Ok(chunks)
    }

    /// Estimated tokens of a chunk: the carried overlap and pieces `first..=last`.
    fn estimate(&self, pieces: &[Piece], carried: usize, first: usize, last: usize) -> usize {
        carried
            + pieces[first..=last].iter().map(|p| p.tokens).sum::<usize>()
            + (first..last)
                .map(|i| self.gap_tokens(pieces, i))
                .sum::<usize>()
    }

    /// Tokens the whitespace after piece `i` likely adds: a line break usually is one.
    fn gap_tokens(&self, pieces: &[Piece], i: usize) -> usize {
        let gap = &self.text[pieces[i].end..pieces[i + 1].start];
        usize::from(gap.contains('\n'))
    }

    /// Where a chunk of pieces `first..=last` should end: at the strongest boundary (paragraph,
    /// line, sentence end) that keeps at least half of it, else at `last`.
    fn best_end(&self, pieces: &[Piece], first: usize, last: usize) -> usize {
        let half = (pieces[last].end - pieces[first].start) / 2;
        let strength = |i: usize| {
            let gap = &self.text[pieces[i].end..pieces[i + 1].start];
            match gap.matches('\n').count() {
                0 if ends_sentence(&self.text[pieces[i].start..pieces[i].end]) => 1,
                0 => 0,
                1 => 2,
                _ => 3,
            }
        };
        (first..=last)
            .rev()
            .take_while(|&i| pieces[i].end - pieces[first].start >= half)
            .max_by_key(|&i| (strength(i), i))
            .unwrap_or(last)
    }

    /// The start of the next chunk's overlap: the longest tail of the chunk `start..pieces[last]`
    /// within `budget` tokens, whole pieces first and then words of the piece that does not
    /// fit whole. `None` when nothing fits. Never the whole chunk.
    fn overlap_start(
        &self,
        pieces: &[Piece],
        start: usize,
        last: usize,
        budget: usize,
    ) -> Result<Option<(usize, usize)>, ModelError> {
        let mut taken = 0;
        let mut from = None;
        for piece in pieces[..=last].iter().rev() {
            if piece.start > start && taken + piece.tokens <= budget {
                taken += piece.tokens;
                from = Some(piece.start);
                continue;
            }
            let words = units(self.text, piece.start.max(start), piece.end, Level::Word);
            for (word_start, word_end) in words.into_iter().rev() {
                if word_start <= start {
                    break;
                }
                let tokens = self.count(word_start, word_end)?;
                if taken + tokens > budget {
                    break;
                }
                taken += tokens;
                from = Some(word_start);
            }
            break;
        }
        Ok(from.map(|from| (from, taken)))
    }
}

/// More bytes per token than text has in practice (English has about 4.5): a range longer
/// than this many bytes per allowed token is taken to be over the limit without counting it.
/// Wrong only for whitespace-heavy text, which is then just cut finer than needed.
const MAX_BYTES_PER_TOKEN: usize = 8;

/// Headroom for the tokens a join adds over the sum of its parts.
fn margin(max_tokens: usize) -> usize {
    max_tokens / 32 + 1
}

/// The units of `text[start..end]` at a level, trimmed, none empty.
fn units(text: &str, start: usize, end: usize, level: Level) -> Vec<(usize, usize)> {
    let slice = &text[start..end];
    let mut cuts = Vec::new();
    match level {
        Level::Paragraph => {
            // Blank (whitespace-only) lines separate paragraphs.
            let mut at = start;
            for line in slice.split_inclusive('\n') {
                if line.trim().is_empty() {
                    cuts.push(at);
                }
                at += line.len();
            }
        }
        Level::Line => cuts.extend(slice.match_indices('\n').map(|(i, _)| start + i)),
        Level::Sentence => cuts.extend(sentence_ends(slice).map(|i| start + i)),
        Level::Word => {
            cuts.extend(
                slice
                    .char_indices()
                    .filter(|(_, c)| c.is_whitespace())
                    .map(|(i, _)| start + i),
            );
        }
    }
    let mut units = Vec::new();
    let mut from = start;
    for cut in cuts.into_iter().chain([end]) {
        if let Some(unit) = trimmed(text, from, cut) {
            units.push(unit);
        }
        from = cut;
    }
    units
}

/// Byte offsets just after each sentence end: terminal punctuation, any closing quotes or
/// brackets, then whitespace (CJK full stops need none).
fn sentence_ends(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some((_, c)) = chars.next() {
            let closes_without_space = matches!(c, '。' | '！' | '？');
            if !closes_without_space && !matches!(c, '.' | '!' | '?' | '…') {
                continue;
            }
            while let Some(&(_, next)) = chars.peek() {
                if !matches!(next, '"' | '\'' | '”' | '’' | ')' | ']' | '»' | '」' | '』') {
                    break;
                }
                chars.next();
            }
            let at = chars.peek().map_or(text.len(), |&(i, _)| i);
            if closes_without_space || chars.peek().is_none_or(|(_, next)| next.is_whitespace()) {
                return Some(at);
            }
        }
        None
    })
}

fn ends_sentence(text: &str) -> bool {
    text.trim_end_matches(['"', '\'', '”', '’', ')', ']', '»', '」', '』'])
        .ends_with(['.', '!', '?', '…', '。', '！', '？'])
}

/// `start..end` without surrounding whitespace; `None` when only whitespace.
fn trimmed(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let slice = &text[start..end];
    let body = slice.trim_start();
    let from = start + (slice.len() - body.len());
    let to = from + body.trim_end().len();
    (from < to).then_some((from, to))
}

fn floor_char(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn next_char(text: &str, index: usize) -> usize {
    index + text[index..].chars().next().map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt4() -> TokenCounter {
        TokenCounter::for_model("gpt-4", None).unwrap()
    }

    fn section(text: &str, page: Option<u32>, heading: Option<&str>) -> Section {
        Section {
            text: text.to_owned(),
            page,
            heading: heading.map(str::to_owned),
        }
    }

    /// Distinct sentences in paragraphs, some long, some with line breaks.
    fn long_text(seed: usize) -> String {
        let mut text = String::new();
        for p in 0..12 {
            for s in 0..(3 + (p * 7 + seed) % 9) {
                text.push_str(&format!(
                    "Sentence {seed}-{p}-{s} mentions item{} and the weather in town{}. ",
                    p * 31 + s,
                    s * 17 + seed
                ));
                if s % 4 == 3 {
                    text.push('\n');
                }
            }
            text.push_str("\n\n");
        }
        text
    }

    /// Locates each chunk in its section (chunks are slices of it, in order) and checks that
    /// they cover every non-whitespace character and that consecutive ones overlap.
    fn assert_covers(text: &str, chunks: &[&TextChunk], overlap: bool) {
        let mut covered = vec![false; text.len()];
        let mut previous: Option<(usize, usize)> = None;
        for chunk in chunks {
            let from = previous.map_or(0, |(start, _)| next_char(text, start));
            let start = from + text[from..].find(&chunk.text).expect("chunk is a slice");
            let end = start + chunk.text.len();
            if let Some((_, previous_end)) = previous {
                if overlap {
                    assert!(start < previous_end, "no overlap before {:?}", chunk.text);
                }
                assert!(end > previous_end, "no progress at {:?}", chunk.text);
            }
            covered[start..end].iter_mut().for_each(|c| *c = true);
            previous = Some((start, end));
        }
        for (i, c) in text.char_indices() {
            assert!(c.is_whitespace() || covered[i], "dropped {c:?} at {i}");
        }
    }

    #[test]
    fn chunks_respect_limits_overlap_and_attribution() {
        let counter = gpt4();
        let config = ChunkingConfig {
            max_tokens: 64,
            overlap_tokens: 16,
        };
        let sections = [
            section(&long_text(1), Some(1), None),
            section("   \n\n ", Some(2), None),
            section(&long_text(2), Some(3), Some("Results")),
            section("A short closing note.", Some(4), Some("End")),
        ];
        let chunks = chunk(&sections, &config, &counter).unwrap();
        for chunk in &chunks {
            assert!(chunk.token_count <= 64, "{chunk:?}");
            assert_eq!(chunk.token_count, counter.count(&chunk.text).unwrap());
            assert_eq!(chunk.text.trim(), chunk.text);
        }
        for section in &sections {
            let own: Vec<&TextChunk> = chunks.iter().filter(|c| c.page == section.page).collect();
            if section.text.trim().is_empty() {
                assert!(own.is_empty());
                continue;
            }
            assert!(own.iter().all(|c| c.section == section.heading));
            assert_covers(&section.text, &own, true);
        }
        let first: Vec<&TextChunk> = chunks.iter().filter(|c| c.page == Some(1)).collect();
        assert!(first.len() > 10, "{} chunks", first.len());
        // Well filled, and most end at a sentence.
        let average = first.iter().map(|c| c.token_count).sum::<usize>() / first.len();
        assert!(average > 40, "average {average}");
        let sentence_ends = first.iter().filter(|c| c.text.ends_with('.')).count();
        assert!(sentence_ends * 10 >= first.len() * 8, "{first:#?}");
        let last = chunks.last().unwrap();
        assert_eq!(last.text, "A short closing note.");
        assert_eq!(last.section.as_deref(), Some("End"));
    }

    #[test]
    fn overlap_is_about_the_asked_size() {
        let counter = gpt4();
        let text = long_text(3);
        let config = ChunkingConfig {
            max_tokens: 100,
            overlap_tokens: 30,
        };
        let chunks = chunk(&[section(&text, None, None)], &config, &counter).unwrap();
        for pair in chunks.windows(2) {
            let (a, b) = (&pair[0].text, &pair[1].text);
            // The longest suffix of `a` that starts `b` is the overlap.
            let shared = (0..a.len())
                .filter(|&i| a.is_char_boundary(i))
                .find(|&i| b.starts_with(&a[i..]))
                .map(|i| &a[i..])
                .unwrap_or_default();
            let tokens = counter.count(shared).unwrap();
            assert!(
                (15..=34).contains(&tokens),
                "{tokens} tokens shared: {a:?}\n{b:?}"
            );
        }
        let without = ChunkingConfig {
            max_tokens: 100,
            overlap_tokens: 0,
        };
        let plain = chunk(&[section(&text, None, None)], &without, &counter).unwrap();
        assert!(plain.len() <= chunks.len());
        let refs: Vec<&TextChunk> = plain.iter().collect();
        assert_covers(&text, &refs, false);
        let words: usize = plain
            .iter()
            .map(|c| c.text.split_whitespace().count())
            .sum();
        assert_eq!(
            words,
            text.split_whitespace().count(),
            "no overlap, no loss"
        );
    }

    #[test]
    fn a_huge_word_is_cut_inside_and_nothing_else_is() {
        let counter = gpt4();
        let word: String = (0..6000)
            .map(|i| char::from(b'a' + ((i * 7 + i / 13) % 26) as u8))
            .collect();
        let text = format!("Before the blob. {word} After the blob.");
        let config = ChunkingConfig {
            max_tokens: 50,
            overlap_tokens: 10,
        };
        let chunks = chunk(&[section(&text, Some(7), None)], &config, &counter).unwrap();
        assert!(chunks
            .iter()
            .all(|c| c.token_count <= 50 && c.page == Some(7)));
        let refs: Vec<&TextChunk> = chunks.iter().collect();
        assert_covers(&text, &refs, false);
        let inside: Vec<&str> = chunks
            .iter()
            .map(|c| c.text.as_str())
            .filter(|t| !t.contains(' '))
            .collect();
        assert!(inside.len() > 20);
        assert!(word.contains(&inside.concat()));
        // Pieces are cut near the limit, not in tiny steps.
        let average = chunks.iter().map(|c| c.token_count).sum::<usize>() / chunks.len();
        assert!(average >= 35, "average {average}");
    }

    #[test]
    fn small_and_empty_sections() {
        let counter = gpt4();
        let config = ChunkingConfig {
            max_tokens: 8,
            overlap_tokens: 2,
        };
        let chunks = chunk(
            &[
                section("  hello world  ", None, Some("Greeting")),
                section("\n\t", None, None),
            ],
            &config,
            &counter,
        )
        .unwrap();
        assert_eq!(
            chunks,
            [TextChunk {
                text: "hello world".into(),
                page: None,
                section: Some("Greeting".into()),
                token_count: 2,
            }]
        );
        assert!(chunk(&[], &config, &counter).unwrap().is_empty());
        for (max_tokens, overlap_tokens) in [(0, 0), (8, 8), (8, 9)] {
            let config = ChunkingConfig {
                max_tokens,
                overlap_tokens,
            };
            assert!(matches!(
                chunk(&[section("x", None, None)], &config, &counter),
                Err(ModelError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn cjk_and_emoji_text_without_spaces() {
        let counter = gpt4();
        let mut text: String = (0..40)
            .map(|i| format!("東京{i}は日本の首都です。大阪{i}は大きな都市です！"))
            .collect();
        // Emoji, varied so that no two chunks are alike.
        text.extend((0..200u32).filter_map(|i| char::from_u32(0x1F600 + (i * i * 7) % 80)));
        let config = ChunkingConfig {
            max_tokens: 40,
            overlap_tokens: 8,
        };
        let chunks = chunk(&[section(&text, None, None)], &config, &counter).unwrap();
        assert!(chunks.iter().all(|c| c.token_count <= 40));
        let refs: Vec<&TextChunk> = chunks.iter().collect();
        assert_covers(&text, &refs, false);
        assert!(
            chunks[0].text.ends_with(['。', '！']),
            "{:?}",
            chunks[0].text
        );
    }

    #[test]
    fn counts_with_a_model_tokenizer() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/fixture-embed/tokenizer.json"
        );
        let tokenizer = tokenizers::Tokenizer::from_file(path).unwrap();
        let counter = TokenCounter::Model(Box::new(tokenizer));
        let text = long_text(4);
        let config = ChunkingConfig {
            max_tokens: 32,
            overlap_tokens: 8,
        };
        let chunks = chunk(&[section(&text, Some(1), None)], &config, &counter).unwrap();
        assert!(chunks.len() > 5);
        for chunk in &chunks {
            assert!(chunk.token_count <= 32);
            assert_eq!(chunk.token_count, counter.count(&chunk.text).unwrap());
        }
        let refs: Vec<&TextChunk> = chunks.iter().collect();
        assert_covers(&text, &refs, true);
    }
}
