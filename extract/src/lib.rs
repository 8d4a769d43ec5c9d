//! Text extraction: what kind a file is (from its content, not its name) and its text as
//! sections in document order, with page / heading attribution and a few metadata.
//!
//! Pure functions over the given bytes. Parsers of untrusted files are fenced: a panic becomes
//! [`ExtractError::Corrupt`], decompression is bounded so a small file cannot inflate into
//! gigabytes, and every parser writes its text under one [`Budget`] (bytes relative to the
//! file's size and absolute, and a deadline), so that no file — a JSON key repeated before
//! each of a hundred thousand values, a CSV header before each row — can take a node's memory
//! or time.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

#[cfg(any(test, feature = "samples"))]
pub mod samples;

use quick_xml::events::{BytesRef, BytesStart, Event};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Most bytes one XML part of a DOCX may decompress to: beyond it is a zip bomb, not a document.
const MAX_XML_BYTES: u64 = 64 << 20;
/// Most bytes one PDF stream may decompress to.
const MAX_PDF_STREAM_BYTES: usize = 64 << 20;
/// Most bytes all page contents of a PDF may decompress to together (pages may share a stream).
const MAX_PDF_CONTENT_BYTES: usize = 256 << 20;
/// CSV rows per section.
const CSV_ROWS_PER_SECTION: usize = 50;
/// Bytes of text the language is guessed from (more adds time, not accuracy).
const LANGUAGE_SAMPLE_BYTES: usize = 16 << 10;

/// The kinds of document that can be ingested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Pdf,
    Docx,
    Markdown,
    Html,
    Text,
    Json,
    Csv,
}

impl DocumentKind {
    /// Every kind, in the order of the variants.
    pub const ALL: [DocumentKind; 7] = [
        DocumentKind::Pdf,
        DocumentKind::Docx,
        DocumentKind::Markdown,
        DocumentKind::Html,
        DocumentKind::Text,
        DocumentKind::Json,
        DocumentKind::Csv,
    ];

    /// The kind's stored name: "pdf", "docx", "markdown", "html", "text", "json" or "csv".
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Pdf => "pdf",
            DocumentKind::Docx => "docx",
            DocumentKind::Markdown => "markdown",
            DocumentKind::Html => "html",
            DocumentKind::Text => "text",
            DocumentKind::Json => "json",
            DocumentKind::Csv => "csv",
        }
    }

    /// The kind named by [`DocumentKind::as_str`] (any case).
    pub fn parse(s: &str) -> Option<DocumentKind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s))
    }

    /// The MIME type of the kind.
    pub fn mime_type(self) -> &'static str {
        match self {
            DocumentKind::Pdf => "application/pdf",
            DocumentKind::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            DocumentKind::Markdown => "text/markdown",
            DocumentKind::Html => "text/html",
            DocumentKind::Text => "text/plain",
            DocumentKind::Json => "application/json",
            DocumentKind::Csv => "text/csv",
        }
    }
}

/// One stretch of a document's text: a PDF page, or the block under one heading.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub text: String,
    /// The PDF page (from 1).
    pub page: Option<u32>,
    /// The nearest heading above the text (for CSV the rows it holds, for JSON the top-level key).
    pub heading: Option<String>,
}

/// A document's text and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// In document order, none empty. PDF: one per page; DOCX, Markdown, HTML: one per
    /// heading-delimited block, starting with its heading; JSON: "path: value" lines, one
    /// section per top-level key; CSV: rows as "column: value; column: value" lines, in
    /// sections of 50 rows.
    pub sections: Vec<Section>,
    /// PDF page count.
    pub pages: Option<u32>,
    pub word_count: u64,
    /// ISO 639-1 code, when the guess is reliable.
    pub language: Option<String>,
    /// PDF/DOCX metadata title, HTML `<title>`, or the first top-level heading.
    pub title: Option<String>,
}

/// Why a file yields no text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtractError {
    #[error("unsupported file type: {0}")]
    Unsupported(String),
    #[error("the file is corrupt or unreadable: {0}")]
    Corrupt(String),
    #[error("the document contains no text")]
    Empty,
    /// The text would pass [`ExtractLimits`]: more than the file's size allows, or too slow.
    #[error("the document exceeds the extraction limits: {0}")]
    OverBudget(String),
}

/// What extracting one file may produce and take (`[knowledge] extract_*` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractLimits {
    /// Most bytes of text per byte of the file ...
    pub max_output_ratio: u64,
    /// ... but at least this many bytes of text for any file ...
    pub min_output_bytes: u64,
    /// ... and never more than this many.
    pub max_output_bytes: u64,
    /// Longest one extraction may run.
    pub timeout: Duration,
}

impl Default for ExtractLimits {
    /// The defaults of `config/sting.toml`.
    fn default() -> ExtractLimits {
        ExtractLimits {
            max_output_ratio: 16,
            min_output_bytes: 1 << 20,
            max_output_bytes: 64 << 20,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The text one extraction may still write and the time it may still take: every parser
/// checks it as its text grows ([`Budget::check`]), so it stops at the limit rather than after
/// the allocation that kills the process.
#[derive(Debug, Clone)]
pub struct Budget {
    max_bytes: u64,
    deadline: Instant,
    timeout: Duration,
}

impl Budget {
    /// The budget for a file of `input_len` bytes.
    pub fn new(limits: &ExtractLimits, input_len: usize) -> Budget {
        let relative = (input_len as u64)
            .saturating_mul(limits.max_output_ratio)
            .max(limits.min_output_bytes);
        Budget {
            max_bytes: relative.min(limits.max_output_bytes),
            deadline: Instant::now() + limits.timeout,
            timeout: limits.timeout,
        }
    }

    /// Refuses text of `written` bytes in all when it is over the budget, or any work past the
    /// deadline.
    pub fn check(&self, written: usize) -> Result<(), ExtractError> {
        if written as u64 > self.max_bytes {
            return Err(ExtractError::OverBudget(format!(
                "its text is larger than the {} KiB allowed for a file of its size",
                self.max_bytes >> 10
            )));
        }
        if Instant::now() >= self.deadline {
            return Err(ExtractError::OverBudget(format!(
                "extracting its text took longer than {} s",
                self.timeout.as_secs()
            )));
        }
        Ok(())
    }
}

/// Detects the kind from the content, not the name: PDF by its `%PDF-` header, DOCX as a ZIP
/// that holds `word/document.xml`, HTML by its markup at the start (`<!doctype html`, `<html`,
/// `<head`, `<body`, or any markup in a `.html`/`.htm` file), JSON (an object or array) by
/// parsing; everything else must be UTF-8 text without NUL bytes (else
/// [`ExtractError::Unsupported`]). Among such text, the name's extension picks Markdown
/// (`.md`, `.markdown`) or CSV (`.csv`, when it parses with a consistent column count of at
/// least two); otherwise it is plain text.
pub fn detect(bytes: &[u8], filename: &str) -> Result<DocumentKind, ExtractError> {
    if bytes.trim_ascii_start().starts_with(b"%PDF-") {
        return Ok(DocumentKind::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return if holds_word_document(bytes) {
            Ok(DocumentKind::Docx)
        } else {
            Err(ExtractError::Unsupported(
                "a ZIP archive that is not a Word document".into(),
            ))
        };
    }
    let text = utf8(bytes)?;
    let extension = Path::new(filename)
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if looks_like_html(text, &extension) {
        return Ok(DocumentKind::Html);
    }
    let trimmed = text.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    {
        return Ok(DocumentKind::Json);
    }
    Ok(match extension.as_str() {
        "md" | "markdown" => DocumentKind::Markdown,
        "csv" if is_consistent_csv(text) => DocumentKind::Csv,
        _ => DocumentKind::Text,
    })
}

/// Whether a ZIP holds a Word document; a damaged one still counts when its bytes name the
/// part, so that extraction reports it corrupt rather than unsupported.
fn holds_word_document(bytes: &[u8]) -> bool {
    const PART: &[u8] = b"word/document.xml";
    match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(archive) => archive.index_for_name("word/document.xml").is_some(),
        Err(_) => bytes.windows(PART.len()).any(|window| window == PART),
    }
}

/// The text of a file that must be UTF-8 (a byte-order mark is dropped).
fn utf8(bytes: &[u8]) -> Result<&str, ExtractError> {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
        _ => Err(ExtractError::Unsupported(binary_kind(bytes).into())),
    }
}

/// A name for binary content, for the error message.
fn binary_kind(bytes: &[u8]) -> &'static str {
    const KNOWN: [(&[u8], &str); 6] = [
        (b"\x89PNG", "PNG image"),
        (b"\xFF\xD8\xFF", "JPEG image"),
        (b"GIF8", "GIF image"),
        (b"\xD0\xCF\x11\xE0", "legacy Office document"),
        (b"\x1F\x8B", "gzip archive"),
        (b"{\\rtf", "RTF document"),
    ];
    KNOWN
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map_or("binary data", |(_, name)| name)
}

fn looks_like_html(text: &str, extension: &str) -> bool {
    let mut rest = text.trim_start();
    // Skip an XML declaration and comments before the first element.
    loop {
        let skipped = if rest.starts_with("<?") {
            rest.find("?>").map(|end| &rest[end + 2..])
        } else if rest.starts_with("<!--") {
            rest.find("-->").map(|end| &rest[end + 3..])
        } else {
            None
        };
        match skipped {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    let starts_with = |marker: &str| {
        rest.as_bytes()
            .get(..marker.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(marker.as_bytes()))
    };
    ["<!doctype html", "<html", "<head", "<body"]
        .into_iter()
        .any(starts_with)
        || (matches!(extension, "html" | "htm" | "xhtml") && rest.starts_with('<'))
}

fn is_consistent_csv(text: &str) -> bool {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    // Not flexible: a row of another length is an error.
    matches!(records.next(), Some(Ok(header)) if header.len() >= 2) && records.all(|r| r.is_ok())
}

/// Extracts the text of a document of the given kind. Never panics (a parser's panic is
/// reported as [`ExtractError::Corrupt`]) and refuses absurd inputs, such as a DOCX part that
/// decompresses beyond 64 MiB, PDF page contents beyond 256 MiB, or text beyond `limits`
/// ([`ExtractError::OverBudget`]).
pub fn extract(
    kind: DocumentKind,
    bytes: &[u8],
    limits: &ExtractLimits,
) -> Result<Extracted, ExtractError> {
    let budget = Budget::new(limits, bytes.len());
    let parsed =
        catch_unwind(AssertUnwindSafe(|| parse(kind, bytes, &budget))).map_err(|_| {
            ExtractError::Corrupt(format!("the {} parser failed on it", kind.as_str()))
        })??;
    let sections: Vec<Section> = parsed
        .sections
        .into_iter()
        .filter_map(|section| {
            let text = tidy(&section.text);
            (!text.is_empty()).then_some(Section { text, ..section })
        })
        .collect();
    if sections.is_empty() {
        return Err(ExtractError::Empty);
    }
    let word_count = sections
        .iter()
        .map(|section| section.text.split_whitespace().count() as u64)
        .sum();
    Ok(Extracted {
        language: language(&sections),
        sections,
        pages: parsed.pages,
        word_count,
        title: parsed
            .title
            .map(|title| collapse(&title))
            .filter(|t| !t.is_empty()),
    })
}

/// What a parser found, before sections are tidied.
struct Parsed {
    sections: Vec<Section>,
    pages: Option<u32>,
    title: Option<String>,
}

impl Parsed {
    fn untitled(sections: Vec<Section>) -> Parsed {
        Parsed {
            sections,
            pages: None,
            title: None,
        }
    }
}

fn parse(kind: DocumentKind, bytes: &[u8], budget: &Budget) -> Result<Parsed, ExtractError> {
    match kind {
        DocumentKind::Pdf => pdf(bytes, budget),
        DocumentKind::Docx => docx(bytes, budget),
        DocumentKind::Markdown => markdown(utf8(bytes)?, budget),
        DocumentKind::Html => html(utf8(bytes)?, budget),
        DocumentKind::Json => json(utf8(bytes)?, budget),
        DocumentKind::Csv => csv_rows(utf8(bytes)?, budget),
        DocumentKind::Text => {
            let text = utf8(bytes)?;
            budget.check(text.len())?;
            Ok(Parsed::untitled(vec![Section {
                text: text.to_owned(),
                page: None,
                heading: None,
            }]))
        }
    }
}

/// Trims line ends, drops leading/trailing blank lines, and keeps at most one blank line in a
/// row (paragraph breaks, which chunking splits at first).
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        blank = false;
        out.push_str(line);
    }
    out
}

/// Whitespace runs as single spaces.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn language(sections: &[Section]) -> Option<String> {
    let mut sample = String::new();
    for section in sections {
        if sample.len() >= LANGUAGE_SAMPLE_BYTES {
            break;
        }
        sample.push_str(&section.text);
        sample.push('\n');
    }
    let info = whatlang::detect(&sample)?;
    info.is_reliable()
        .then(|| iso_639_1(info.lang()).to_owned())
}

/// whatlang names languages by ISO 639-3; documents carry the 639-1 code.
fn iso_639_1(lang: whatlang::Lang) -> &'static str {
    use whatlang::Lang::*;
    match lang {
        Epo => "eo",
        Eng => "en",
        Rus => "ru",
        Cmn => "zh",
        Spa => "es",
        Por => "pt",
        Ita => "it",
        Ben => "bn",
        Fra => "fr",
        Deu => "de",
        Ukr => "uk",
        Kat => "ka",
        Ara => "ar",
        Hin => "hi",
        Jpn => "ja",
        Heb => "he",
        Yid => "yi",
        Pol => "pl",
        Amh => "am",
        Jav => "jv",
        Kor => "ko",
        Nob => "nb",
        Dan => "da",
        Swe => "sv",
        Fin => "fi",
        Tur => "tr",
        Nld => "nl",
        Hun => "hu",
        Ces => "cs",
        Ell => "el",
        Bul => "bg",
        Bel => "be",
        Mar => "mr",
        Kan => "kn",
        Ron => "ro",
        Slv => "sl",
        Hrv => "hr",
        Srp => "sr",
        Mkd => "mk",
        Lit => "lt",
        Lav => "lv",
        Est => "et",
        Tam => "ta",
        Vie => "vi",
        Urd => "ur",
        Tha => "th",
        Guj => "gu",
        Uzb => "uz",
        Pan => "pa",
        Aze => "az",
        Ind => "id",
        Tel => "te",
        Pes => "fa",
        Mal => "ml",
        Ori => "or",
        Mya => "my",
        Nep => "ne",
        Sin => "si",
        Khm => "km",
        Tuk => "tk",
        Aka => "ak",
        Zul => "zu",
        Sna => "sn",
        Afr => "af",
        Lat => "la",
        Slk => "sk",
        Cat => "ca",
        Tgl => "tl",
        Hye => "hy",
        Cym => "cy",
    }
}

/// Text built block by block, cut into a new section at each heading.
#[derive(Default)]
struct SectionWriter {
    done: Vec<Section>,
    /// Bytes of text in `done`.
    done_bytes: usize,
    text: String,
    heading: Option<String>,
}

impl SectionWriter {
    /// Refuses the text written so far when it is over `budget` (or time is up).
    fn check(&self, budget: &Budget) -> Result<(), ExtractError> {
        budget.check(self.done_bytes + self.text.len())
    }

    /// Ends the current section; the heading's text follows.
    fn start_heading(&mut self) {
        let text = std::mem::take(&mut self.text);
        if !text.trim().is_empty() {
            self.done_bytes += text.len();
            self.done.push(Section {
                text,
                page: None,
                heading: self.heading.clone(),
            });
        }
    }

    /// The heading's text (all text since [`SectionWriter::start_heading`]) becomes the
    /// section's heading; it stays the first line of the section's text.
    fn end_heading(&mut self) -> Option<String> {
        let heading = collapse(&self.text);
        self.block();
        if heading.is_empty() {
            return None;
        }
        self.heading = Some(heading.clone());
        Some(heading)
    }

    fn space(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with(char::is_whitespace) {
            self.text.push(' ');
        }
    }

    /// Ends the line, unless at the start of one.
    fn line(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    fn block(&mut self) {
        self.text.push_str("\n\n");
    }

    /// Text whose whitespace runs are insignificant (HTML outside `<pre>`).
    fn push_collapsed(&mut self, text: &str) {
        if text.starts_with(char::is_whitespace) {
            self.space();
        }
        for (i, word) in text.split_whitespace().enumerate() {
            if i > 0 {
                self.text.push(' ');
            }
            self.text.push_str(word);
        }
        if text.ends_with(char::is_whitespace) {
            self.space();
        }
    }

    fn finish(mut self) -> Vec<Section> {
        self.start_heading();
        self.done
    }
}

// ---- PDF ----

fn pdf(bytes: &[u8], budget: &Budget) -> Result<Parsed, ExtractError> {
    let options = lopdf::LoadOptions {
        max_decompressed_size: Some(MAX_PDF_STREAM_BYTES),
        ..Default::default()
    };
    let doc = lopdf::Document::load_mem_with_options(bytes, options).map_err(|err| match err {
        lopdf::Error::InvalidPassword | lopdf::Error::Decryption(_) => {
            ExtractError::Unsupported("a password-protected PDF".into())
        }
        err => ExtractError::Corrupt(err.to_string()),
    })?;
    let pages = doc.get_pages();
    let mut content_left = MAX_PDF_CONTENT_BYTES;
    let mut written = 0;
    let mut sections = Vec::with_capacity(pages.len());
    for (&number, &page_id) in &pages {
        // Pages may share one content stream: bound the total, not just each page.
        let content = doc
            .get_page_content_with_limit(page_id, content_left)
            .map_err(|_| {
                ExtractError::Corrupt(format!(
                    "its page contents decompress beyond {} MiB",
                    MAX_PDF_CONTENT_BYTES >> 20
                ))
            })?;
        content_left = content_left.saturating_sub(content.len());
        let text = match pdf_page_text(&doc, page_id, &content, budget, written) {
            Ok(text) => text,
            Err(PageError::OverBudget(err)) => return Err(err),
            Err(PageError::Unreadable(err)) => {
                tracing::debug!(page = number, %err, "unreadable PDF page");
                String::new()
            }
        };
        written += text.len();
        sections.push(Section {
            text,
            page: Some(number),
            heading: None,
        });
    }
    Ok(Parsed {
        sections,
        pages: Some(pages.len() as u32),
        title: pdf_title(&doc),
    })
}

fn pdf_title(doc: &lopdf::Document) -> Option<String> {
    let (_, info) = doc.dereference(doc.trailer.get(b"Info").ok()?).ok()?;
    let (_, title) = doc
        .dereference(info.as_dict().ok()?.get(b"Title").ok()?)
        .ok()?;
    lopdf::decode_text_string(title).ok()
}

/// Why a page yields no text: the page's own fault (the rest of the document is still read),
/// or the document's budget is spent.
enum PageError {
    Unreadable(lopdf::Error),
    OverBudget(ExtractError),
}

impl From<lopdf::Error> for PageError {
    fn from(err: lopdf::Error) -> PageError {
        PageError::Unreadable(err)
    }
}

/// The text a page's content stream shows, with line breaks where the text moves to a new
/// line and spaces where it moves along one (lopdf's own `extract_text` runs such pieces
/// together). `written`: bytes of text the pages before it took from `budget`.
fn pdf_page_text(
    doc: &lopdf::Document,
    page_id: lopdf::ObjectId,
    content: &[u8],
    budget: &Budget,
    written: usize,
) -> Result<String, PageError> {
    let encodings: BTreeMap<Vec<u8>, lopdf::Encoding> = doc
        .get_page_fonts(page_id)?
        .into_iter()
        .filter_map(|(name, font)| {
            let encoding = font.get_font_encoding_with_limit(doc, MAX_PDF_STREAM_BYTES);
            encoding.ok().map(|encoding| (name, encoding))
        })
        .collect();
    let mut text = String::new();
    let mut encoding = None;
    let mut line_y = None;
    for op in lopdf::content::Content::decode(content)?.operations {
        budget
            .check(written + text.len())
            .map_err(PageError::OverBudget)?;
        let operands = &op.operands;
        match op.operator.as_str() {
            "Tf" => {
                encoding = operands
                    .first()
                    .and_then(|name| name.as_name().ok())
                    .and_then(|name| encodings.get(name));
            }
            "Tj" | "TJ" => show_text(&mut text, encoding, operands),
            "'" => {
                new_line(&mut text);
                show_text(&mut text, encoding, operands);
            }
            "\"" => {
                new_line(&mut text);
                show_text(&mut text, encoding, operands.get(2..).unwrap_or_default());
            }
            "Td" | "TD" => match operands.get(1).and_then(|y| y.as_float().ok()) {
                Some(y) if y != 0.0 => new_line(&mut text),
                _ => space(&mut text),
            },
            "Tm" => {
                let y = operands.get(5).and_then(|y| y.as_float().ok());
                if y.is_some() && y == line_y {
                    space(&mut text);
                } else {
                    new_line(&mut text);
                }
                line_y = y;
            }
            "T*" | "ET" => new_line(&mut text),
            _ => {}
        }
    }
    Ok(text)
}

fn show_text(text: &mut String, encoding: Option<&lopdf::Encoding>, operands: &[lopdf::Object]) {
    let Some(encoding) = encoding else {
        return;
    };
    for operand in operands {
        match operand {
            lopdf::Object::String(bytes, _) => {
                // A string the font's encoding cannot map is skipped, not fatal to the page.
                let _ = encoding.write_to_string(bytes, text);
            }
            lopdf::Object::Array(items) => show_text(text, Some(encoding), items),
            // In a TJ array, a wide negative kern (thousandths of an em) is a word space.
            number => {
                if number.as_float().is_ok_and(|kern| kern < -100.0) {
                    space(text);
                }
            }
        }
    }
}

fn space(text: &mut String) {
    if !text.is_empty() && !text.ends_with(char::is_whitespace) {
        text.push(' ');
    }
}

fn new_line(text: &mut String) {
    text.truncate(text.trim_end_matches(' ').len());
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

// ---- DOCX ----

fn docx(bytes: &[u8], budget: &Budget) -> Result<Parsed, ExtractError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|err| ExtractError::Corrupt(format!("not a readable ZIP archive: {err}")))?;
    let document = read_part(&mut archive, "word/document.xml")?
        .ok_or_else(|| ExtractError::Corrupt("word/document.xml is missing".into()))?;
    let styles = match read_part(&mut archive, "word/styles.xml")? {
        Some(styles) => heading_styles(&styles)?,
        None => HashMap::new(),
    };
    let title = match read_part(&mut archive, "docProps/core.xml")? {
        Some(core) => core_title(&core)?,
        None => None,
    };
    let (sections, first_heading) = docx_body(&document, &styles, budget)?;
    Ok(Parsed {
        sections,
        pages: None,
        title: title.filter(|t| !t.trim().is_empty()).or(first_heading),
    })
}

/// A part of the package as text, refused beyond [`MAX_XML_BYTES`].
fn read_part(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<String>, ExtractError> {
    let corrupt = |err: &dyn std::fmt::Display| ExtractError::Corrupt(format!("{name}: {err}"));
    let mut part = match archive.by_name(name) {
        Ok(part) => part,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(err) => return Err(corrupt(&err)),
    };
    let too_large = || {
        corrupt(&format_args!(
            "decompresses beyond {} MiB",
            MAX_XML_BYTES >> 20
        ))
    };
    if part.size() > MAX_XML_BYTES {
        return Err(too_large());
    }
    // The declared size may lie: read at most one byte past the limit.
    let mut xml = Vec::new();
    part.by_ref()
        .take(MAX_XML_BYTES + 1)
        .read_to_end(&mut xml)
        .map_err(|err| corrupt(&err))?;
    if xml.len() as u64 > MAX_XML_BYTES {
        return Err(too_large());
    }
    String::from_utf8(xml)
        .map(Some)
        .map_err(|_| corrupt(&"not UTF-8"))
}

fn xml_error(part: &str) -> impl Fn(quick_xml::Error) -> ExtractError + '_ {
    move |err| ExtractError::Corrupt(format!("{part}: {err}"))
}

/// The value of an attribute, by local name (`w:val` → `val`).
fn attribute(element: &BytesStart, local_name: &str) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|attribute| attribute.key.local_name().as_ref() == local_name)
        .and_then(|attribute| {
            attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|value| value.into_owned())
        })
}

/// Appends an entity or character reference.
fn push_reference(out: &mut String, reference: &BytesRef) {
    if let Ok(Some(ch)) = reference.resolve_char_ref() {
        out.push(ch);
    } else if let Some(text) = quick_xml::escape::resolve_predefined_entity(reference) {
        out.push_str(text);
    }
}

/// Heading levels of paragraph styles by style id: 0 for Title, n for "heading n", or the
/// style's outline level + 1.
fn heading_styles(xml: &str) -> Result<HashMap<String, u8>, ExtractError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut levels = HashMap::new();
    let mut style: Option<(String, Option<u8>)> = None;
    loop {
        match reader.read_event().map_err(xml_error("word/styles.xml"))? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "style" => style = attribute(&e, "styleId").map(|id| (id, None)),
                "name" => {
                    if let (Some((_, level)), Some(name)) = (&mut style, attribute(&e, "val")) {
                        let name = name.to_ascii_lowercase();
                        if name == "title" {
                            *level = Some(0);
                        } else if let Some(n) = name.strip_prefix("heading ") {
                            *level = n.parse().ok().or(*level);
                        }
                    }
                }
                "outlineLvl" => {
                    if let Some((_, level @ None)) = &mut style {
                        *level = outline_level(&e);
                    }
                }
                _ => {}
            },
            Event::End(e) if e.local_name().as_ref() == "style" => {
                if let Some((id, Some(level))) = style.take() {
                    levels.insert(id, level);
                }
            }
            Event::Eof => return Ok(levels),
            _ => {}
        }
    }
}

/// A `w:outlineLvl` (0-based, 9 = body text) as a heading level.
fn outline_level(element: &BytesStart) -> Option<u8> {
    let level: u8 = attribute(element, "val")?.parse().ok()?;
    (level < 9).then_some(level + 1)
}

/// The heading level of a paragraph style: from styles.xml, else by the built-in ids.
fn style_level(styles: &HashMap<String, u8>, id: &str) -> Option<u8> {
    if let Some(level) = styles.get(id) {
        return Some(*level);
    }
    let id = id.to_ascii_lowercase();
    if id == "title" {
        return Some(0);
    }
    id.strip_prefix("heading")?.parse().ok()
}

fn core_title(xml: &str) -> Result<Option<String>, ExtractError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut title: Option<String> = None;
    loop {
        match reader
            .read_event()
            .map_err(xml_error("docProps/core.xml"))?
        {
            Event::Start(e) if e.local_name().as_ref() == "title" => title = Some(String::new()),
            Event::Text(text) => {
                if let Some(title) = &mut title {
                    title.push_str(&text.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(title) = &mut title {
                    push_reference(title, &reference);
                }
            }
            Event::End(e) if e.local_name().as_ref() == "title" => return Ok(title),
            Event::Eof => return Ok(None),
            _ => {}
        }
    }
}

/// A paragraph being read: its text and heading level.
struct Paragraph {
    text: String,
    level: Option<u8>,
}

/// The body's paragraphs as sections, and the first top-level heading (Title or Heading 1).
fn docx_body(
    xml: &str,
    styles: &HashMap<String, u8>,
    budget: &Budget,
) -> Result<(Vec<Section>, Option<String>), ExtractError> {
    let error = xml_error("word/document.xml");
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = SectionWriter::default();
    let mut first_heading = None;
    // Paragraphs nest (a text box inside a paragraph holds paragraphs).
    let mut open: Vec<Paragraph> = Vec::new();
    let mut in_text = false;
    loop {
        let event = reader.read_event().map_err(&error)?;
        let open_text: usize = open.iter().map(|paragraph| paragraph.text.len()).sum();
        budget.check(out.done_bytes + out.text.len() + open_text)?;
        match &event {
            Event::Start(e) | Event::Empty(e) => {
                let paragraph = open.last_mut();
                match (e.local_name().as_ref(), paragraph) {
                    ("p", _) if matches!(event, Event::Start(_)) => open.push(Paragraph {
                        text: String::new(),
                        level: None,
                    }),
                    // The fallback repeats its alternative's content for older readers.
                    ("Fallback", _) if matches!(event, Event::Start(_)) => {
                        reader.read_to_end(e.name()).map_err(&error)?;
                    }
                    ("t", _) => in_text = matches!(event, Event::Start(_)),
                    ("pStyle", Some(paragraph)) => {
                        if let Some(id) = attribute(e, "val") {
                            paragraph.level = style_level(styles, &id).or(paragraph.level);
                        }
                    }
                    ("outlineLvl", Some(paragraph)) => {
                        paragraph.level = outline_level(e).or(paragraph.level);
                    }
                    ("tab", Some(paragraph)) => paragraph.text.push('\t'),
                    ("br" | "cr", Some(paragraph)) => paragraph.text.push('\n'),
                    _ => {}
                }
            }
            Event::Text(text) if in_text => {
                if let Some(paragraph) = open.last_mut() {
                    paragraph.text.push_str(&text.xml10_content());
                }
            }
            Event::GeneralRef(reference) if in_text => {
                if let Some(paragraph) = open.last_mut() {
                    push_reference(&mut paragraph.text, reference);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => {
                    let Some(paragraph) = open.pop() else {
                        continue;
                    };
                    match paragraph.level {
                        Some(level) if !paragraph.text.trim().is_empty() => {
                            out.start_heading();
                            out.text.push_str(&paragraph.text);
                            let heading = out.end_heading();
                            if level <= 1 && first_heading.is_none() {
                                first_heading = heading;
                            }
                        }
                        _ => {
                            out.text.push_str(&paragraph.text);
                            out.block();
                        }
                    }
                }
                _ => {}
            },
            Event::Eof if open.is_empty() => return Ok((out.finish(), first_heading)),
            Event::Eof => {
                return Err(ExtractError::Corrupt(
                    "word/document.xml ends inside a paragraph".into(),
                ))
            }
            _ => {}
        }
    }
}

// ---- Markdown ----

fn markdown(text: &str, budget: &Budget) -> Result<Parsed, ExtractError> {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS;
    let mut out = SectionWriter::default();
    let mut title = None;
    for event in Parser::new_ext(text, options) {
        out.check(budget)?;
        match event {
            Event::Start(Tag::Heading { .. }) => out.start_heading(),
            Event::End(TagEnd::Heading(level)) => {
                let heading = out.end_heading();
                if level == HeadingLevel::H1 && title.is_none() {
                    title = heading;
                }
            }
            // Cells after the first of a row.
            Event::Start(Tag::TableCell) if !out.text.is_empty() && !out.text.ends_with('\n') => {
                out.text.push_str(" | ");
            }
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => out.text.push_str(&text),
            Event::FootnoteReference(label) => {
                out.text.push('[');
                out.text.push_str(&label);
                out.text.push(']');
            }
            Event::TaskListMarker(done) => out.text.push_str(if done { "[x] " } else { "[ ] " }),
            Event::SoftBreak => out.text.push(' '),
            Event::HardBreak => out.text.push('\n'),
            Event::End(
                TagEnd::Item
                | TagEnd::TableHead
                | TagEnd::TableRow
                | TagEnd::DefinitionListTitle
                | TagEnd::DefinitionListDefinition,
            ) => out.line(),
            Event::Rule
            | Event::End(
                TagEnd::Paragraph
                | TagEnd::CodeBlock
                | TagEnd::BlockQuote(_)
                | TagEnd::List(_)
                | TagEnd::Table
                | TagEnd::FootnoteDefinition
                | TagEnd::DefinitionList,
            ) => out.block(),
            // Raw HTML is markup, not text.
            _ => {}
        }
    }
    Ok(Parsed {
        sections: out.finish(),
        pages: None,
        title,
    })
}

// ---- HTML ----

fn html(text: &str, budget: &Budget) -> Result<Parsed, ExtractError> {
    use ego_tree::iter::Edge;
    use scraper::Node;
    let document = scraper::Html::parse_document(text);
    let mut out = SectionWriter::default();
    let mut title: Option<String> = None;
    let mut first_h1 = None;
    // The element whose subtree is being skipped, the open heading, `<pre>` nesting.
    let mut skipping = None;
    let mut heading = None;
    let mut pre = 0usize;
    for edge in document.tree.root().traverse() {
        out.check(budget)?;
        match edge {
            Edge::Open(node) if skipping.is_none() => match node.value() {
                Node::Text(text) if pre > 0 => out.text.push_str(text),
                Node::Text(text) => out.push_collapsed(text),
                Node::Element(element) => match element.name() {
                    "title" => {
                        if title.is_none() {
                            let text: String = node
                                .descendants()
                                .filter_map(|n| n.value().as_text())
                                .map(|t| &**t)
                                .collect();
                            title = Some(text);
                        }
                        skipping = Some(node.id());
                    }
                    "script" | "style" | "noscript" | "template" | "svg" | "math" | "canvas"
                    | "iframe" | "object" | "select" => skipping = Some(node.id()),
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                        out.start_heading();
                        heading = Some(node.id());
                    }
                    "pre" => {
                        pre += 1;
                        out.block();
                    }
                    "br" => out.text.push('\n'),
                    "td" | "th" => out.space(),
                    name if is_line_element(name) => out.line(),
                    name if is_block_element(name) => out.block(),
                    _ => {}
                },
                _ => {}
            },
            Edge::Close(node) => {
                if skipping.is_some() {
                    if skipping == Some(node.id()) {
                        skipping = None;
                    }
                    continue;
                }
                let Some(element) = node.value().as_element() else {
                    continue;
                };
                if heading == Some(node.id()) {
                    heading = None;
                    let text = out.end_heading();
                    if element.name() == "h1" && first_h1.is_none() {
                        first_h1 = text;
                    }
                    continue;
                }
                match element.name() {
                    "pre" => {
                        pre -= 1;
                        out.block();
                    }
                    name if is_line_element(name) => out.line(),
                    name if is_block_element(name) => out.block(),
                    _ => {}
                }
            }
            Edge::Open(_) => {}
        }
    }
    Ok(Parsed {
        sections: out.finish(),
        pages: None,
        title: title.filter(|t| !t.trim().is_empty()).or(first_h1),
    })
}

/// Elements that end a line of text.
fn is_line_element(name: &str) -> bool {
    matches!(name, "li" | "tr" | "dt" | "dd" | "caption" | "option")
}

/// Elements that stand as paragraphs.
fn is_block_element(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "section"
            | "article"
            | "header"
            | "footer"
            | "main"
            | "nav"
            | "aside"
            | "blockquote"
            | "ul"
            | "ol"
            | "dl"
            | "table"
            | "form"
            | "fieldset"
            | "figure"
            | "figcaption"
            | "address"
            | "hr"
            | "details"
            | "summary"
            | "body"
    )
}

// ---- JSON ----

fn json(text: &str, budget: &Budget) -> Result<Parsed, ExtractError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut lines = JsonLines {
        budget,
        over_budget: None,
        written: 0,
        sections: Vec::new(),
        text: String::new(),
        heading: None,
    };
    let walked = JsonWalk {
        lines: &mut lines,
        path: String::new(),
        top: true,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    if let Some(err) = lines.over_budget.take() {
        return Err(err);
    }
    walked.map_err(|err| ExtractError::Corrupt(format!("invalid JSON: {err}")))?;
    lines.cut();
    Ok(Parsed::untitled(lines.sections))
}

/// "path: value" lines, one section per top-level key. Written while parsing, so keys keep
/// their document order.
struct JsonLines<'b> {
    budget: &'b Budget,
    /// Why writing stopped, when the budget did it (the parser's error says only "custom").
    over_budget: Option<ExtractError>,
    /// Bytes of text in `sections`.
    written: usize,
    sections: Vec<Section>,
    text: String,
    heading: Option<String>,
}

impl JsonLines<'_> {
    fn cut(&mut self) {
        if !self.text.is_empty() {
            self.written += self.text.len();
            self.sections.push(Section {
                text: std::mem::take(&mut self.text),
                page: None,
                heading: self.heading.take(),
            });
        }
    }

    /// Writes one line, or stops the walk when it would pass the budget: the path repeats
    /// before every value, so a long key before a long array is where JSON amplifies.
    fn line<E: serde::de::Error>(&mut self, path: &str, value: &str) -> Result<(), E> {
        let line_len = path.len() + 2 + value.len() + 1;
        if let Err(err) = self.budget.check(self.written + self.text.len() + line_len) {
            self.over_budget = Some(err);
            return Err(E::custom("over the extraction budget"));
        }
        if !path.is_empty() {
            self.text.push_str(path);
            self.text.push_str(": ");
        }
        self.text.push_str(value);
        self.text.push('\n');
        Ok(())
    }
}

/// Visits one JSON value at `path`.
struct JsonWalk<'a, 'b> {
    lines: &'a mut JsonLines<'b>,
    path: String,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for JsonWalk<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonWalk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.lines
            .line(&self.path, if v { "true" } else { "false" })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.lines.line(&self.path, &v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.lines.line(&self.path, &v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.lines.line(&self.path, &v.to_string())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.lines.line(&self.path, v)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.lines.line(&self.path, "null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(JsonWalk {
                lines: &mut *self.lines,
                path: format!("{}[{index}]", self.path),
                top: false,
            })?
            .is_some()
        {
            index += 1;
        }
        if index == 0 {
            self.lines.line(&self.path, "[]")?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut empty = true;
        while let Some(key) = map.next_key::<String>()? {
            empty = false;
            if self.top {
                self.lines.cut();
                self.lines.heading = Some(key.clone());
            }
            let path = if self.path.is_empty() {
                key
            } else {
                format!("{}.{key}", self.path)
            };
            map.next_value_seed(JsonWalk {
                lines: &mut *self.lines,
                path,
                top: false,
            })?;
        }
        if empty {
            self.lines.line(&self.path, "{}")?;
        }
        Ok(())
    }
}

// ---- CSV ----

fn csv_rows(text: &str, budget: &Budget) -> Result<Parsed, ExtractError> {
    let corrupt = |err: csv::Error| ExtractError::Corrupt(format!("invalid CSV: {err}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(corrupt)?
        .iter()
        .map(collapse)
        .collect();
    let column = |i: usize| match columns.get(i) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("column {}", i + 1),
    };
    let mut sections = Vec::new();
    let mut text = String::new();
    let mut first_row = 1;
    let mut written = 0;
    for (i, record) in reader.records().enumerate() {
        // Each row repeats the header: a wide header over many short rows amplifies.
        budget.check(written + text.len())?;
        let record = record.map_err(corrupt)?;
        let fields: Vec<String> = record
            .iter()
            .enumerate()
            .map(|(i, value)| (i, collapse(value)))
            .filter(|(_, value)| !value.is_empty())
            .map(|(i, value)| format!("{}: {value}", column(i)))
            .collect();
        text.push_str(&fields.join("; "));
        text.push('\n');
        let row = i + 1;
        if row % CSV_ROWS_PER_SECTION == 0 {
            written += text.len();
            sections.push(rows_section(std::mem::take(&mut text), first_row, row));
            first_row = row + 1;
        }
    }
    if !text.trim().is_empty() {
        let last = first_row + text.lines().count() - 1;
        sections.push(rows_section(text, first_row, last));
    }
    Ok(Parsed::untitled(sections))
}

fn rows_section(text: String, first: usize, last: usize) -> Section {
    Section {
        text,
        page: None,
        heading: Some(format!("rows {first}–{last}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::samples;

    const ENGLISH: &str = "The committee reviewed the annual budget and decided to increase \
        funding for public libraries, schools and parks across the whole region this year.";

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn extract_with_defaults(kind: DocumentKind, bytes: &[u8]) -> Result<Extracted, ExtractError> {
        extract(kind, bytes, &ExtractLimits::default())
    }

    fn words(extracted: &Extracted) -> u64 {
        extracted
            .sections
            .iter()
            .map(|s| s.text.split_whitespace().count() as u64)
            .sum()
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for kind in DocumentKind::ALL {
            assert_eq!(DocumentKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DocumentKind::parse("PDF"), Some(DocumentKind::Pdf));
        assert_eq!(DocumentKind::parse("exe"), None);
        assert_eq!(DocumentKind::Markdown.mime_type(), "text/markdown");
        assert_eq!(
            DocumentKind::Docx.mime_type(),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        );
    }

    #[test]
    fn detection_reads_content_not_names() {
        use DocumentKind::*;
        let unsupported =
            |r: Result<DocumentKind, ExtractError>| matches!(r, Err(ExtractError::Unsupported(_)));
        assert_eq!(detect(&samples::pdf(&["hello"]), "scan.bin"), Ok(Pdf));
        let docx = samples::docx("T", &[(None, "hello")]);
        assert_eq!(detect(&docx, "report"), Ok(Docx));
        // A damaged DOCX is still a DOCX; extraction says it is corrupt.
        assert_eq!(detect(&docx[..docx.len() / 2], "report.docx"), Ok(Docx));
        assert!(unsupported(detect(
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            "photo.pdf"
        )));
        let other_zip = zip_of(&[("hello.txt", b"hello")]);
        assert!(unsupported(detect(&other_zip, "archive.docx")));
        assert!(unsupported(detect(
            &[0xff, 0xfe, 0x00, 0x41, 0x12],
            "data.txt"
        )));
        assert!(unsupported(detect(b"text\0with a NUL", "a.txt")));
        assert_eq!(detect(b"just some text", "renamed.pdf"), Ok(Text));
        assert_eq!(detect(b"<!DOCTYPE html><p>x</p>", "page.txt"), Ok(Html));
        assert_eq!(
            detect(b"\n<!-- c -->\n<HTML><body>x</body></HTML>", "a"),
            Ok(Html)
        );
        assert_eq!(detect(b"<p>fragment</p>", "page.html"), Ok(Html));
        assert_eq!(detect(b"<p>fragment</p>", "page.txt"), Ok(Text));
        assert_eq!(detect(br#" {"a": [1, 2]}"#, "data.txt"), Ok(Json));
        assert_eq!(detect(b"[1, 2", "data.json"), Ok(Text));
        assert_eq!(detect(b"# Title\n\nText", "notes.MD"), Ok(Markdown));
        assert_eq!(detect(b"# Title\n\nText", "notes.txt"), Ok(Text));
        assert_eq!(detect(b"a,b\n1,2\n3,4\n", "t.csv"), Ok(Csv));
        assert_eq!(detect(b"a,b\n1,2,3\n", "t.csv"), Ok(Text));
        assert_eq!(detect(b"one column\nrow\n", "t.csv"), Ok(Text));
        assert_eq!(detect(b"a,b\n1,2\n", "t.txt"), Ok(Text));
        assert_eq!(detect("\u{feff}Grüße".as_bytes(), "a"), Ok(Text));
    }

    #[test]
    fn pdf_pages_become_sections() {
        let pages = [
            "Alpha page talks about apples.",
            &format!("Beta page talks about bananas. {ENGLISH} {ENGLISH}"),
            "Gamma page (with parentheses) talks about cherries.\nA second line.",
        ];
        let bytes = samples::pdf(&pages);
        let extracted = extract_with_defaults(DocumentKind::Pdf, &bytes).unwrap();
        assert_eq!(extracted.pages, Some(3));
        assert_eq!(extracted.sections.len(), 3);
        for (i, section) in extracted.sections.iter().enumerate() {
            assert_eq!(section.page, Some(i as u32 + 1));
            assert_eq!(section.heading, None);
        }
        assert_eq!(extracted.sections[0].text, pages[0]);
        assert!(extracted.sections[1].text.contains("bananas"));
        assert!(!extracted.sections[1].text.contains("apples"));
        // Wrapped lines come back as lines, words intact.
        let collapsed = collapse(&extracted.sections[1].text);
        assert_eq!(collapsed, collapse(pages[1]));
        assert_eq!(
            extracted.sections[2].text,
            "Gamma page (with parentheses) talks about cherries.\nA second line."
        );
        assert_eq!(extracted.word_count, words(&extracted));
        assert_eq!(extracted.word_count, 5 + 5 + 2 * 23 + 10);
        assert_eq!(extracted.language.as_deref(), Some("en"));
        assert_eq!(extracted.title, None);
    }

    #[test]
    fn pdf_title_comes_from_its_info() {
        let mut doc = lopdf::Document::load_mem(&samples::pdf(&["Body text."])).unwrap();
        let info = doc.add_object(lopdf::dictionary! {
            "Title" => lopdf::text_string("Annual Report – 2024")
        });
        doc.trailer.set("Info", info);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        let extracted = extract_with_defaults(DocumentKind::Pdf, &bytes).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("Annual Report – 2024"));
    }

    #[test]
    fn broken_pdfs_are_corrupt_not_panics() {
        let garbage = b"%PDF-1.4\n\x00\x01garbage (( << /Type /Catalog >> endobj %%EOF trailer";
        assert!(matches!(
            extract_with_defaults(DocumentKind::Pdf, garbage),
            Err(ExtractError::Corrupt(_))
        ));
        let bytes = samples::pdf(&["Some text on a page.", "And another page."]);
        for cut in (0..bytes.len()).step_by(97) {
            // Either an error or (lopdf repairs some cuts) text; never a panic.
            let _ = extract_with_defaults(DocumentKind::Pdf, &bytes[..cut]);
        }
        // A PDF without text: nothing to ingest.
        let blank = samples::pdf(&[""]);
        assert_eq!(
            extract_with_defaults(DocumentKind::Pdf, &blank),
            Err(ExtractError::Empty)
        );
    }

    #[test]
    fn pages_sharing_a_huge_stream_are_refused() {
        use lopdf::{dictionary, Object, Stream};
        // One content stream of 48 MiB of spaces (tens of KiB compressed) on 8 pages.
        let mut doc = lopdf::Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let mut stream = Stream::new(dictionary! {}, vec![b' '; 48 << 20]);
        stream.compress().unwrap();
        let content_id = doc.add_object(stream);
        let kids: Vec<Object> = (0..8)
            .map(|_| {
                doc.add_object(dictionary! {
                    "Type" => "Page",
                    "Parent" => pages_id,
                    "Contents" => content_id
                })
                .into()
            })
            .collect();
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => 8 }),
        );
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        assert!(bytes.len() < 1 << 20);
        let err = extract_with_defaults(DocumentKind::Pdf, &bytes).unwrap_err();
        assert!(err.to_string().contains("256 MiB"), "{err}");
    }

    #[test]
    fn docx_headings_delimit_sections() {
        let bytes = samples::docx(
            "Quarterly Report",
            &[
                (None, "Preface line."),
                (Some("Introduction"), "First paragraph.\nSecond paragraph."),
                (Some("Results"), "Sales & costs <rose>."),
            ],
        );
        let extracted = extract_with_defaults(DocumentKind::Docx, &bytes).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("Quarterly Report"));
        assert_eq!(extracted.pages, None);
        let sections: Vec<(Option<&str>, &str)> = extracted
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.text.as_str()))
            .collect();
        assert_eq!(
            sections,
            [
                (None, "Preface line."),
                (
                    Some("Introduction"),
                    "Introduction\n\nFirst paragraph.\n\nSecond paragraph."
                ),
                (Some("Results"), "Results\n\nSales & costs <rose>."),
            ]
        );
        assert_eq!(extracted.word_count, 12);

        // Without a metadata title, the first top-level heading is the title.
        let untitled = samples::docx("", &[(Some("Overview"), ENGLISH)]);
        let extracted = extract_with_defaults(DocumentKind::Docx, &untitled).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("Overview"));
        assert_eq!(extracted.language.as_deref(), Some("en"));
    }

    #[test]
    fn docx_reading_handles_unstyled_headings_breaks_and_text_boxes() {
        let document = br#"<?xml version="1.0" encoding="UTF-8"?>
<w:document xmlns:w="w" xmlns:mc="mc"><w:body>
<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t>The Title</w:t></w:r></w:p>
<w:p><w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t xml:space="preserve">c &#233;</w:t></w:r></w:p>
<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>Sub</w:t></w:r></w:p>
<w:p><w:r><mc:AlternateContent><mc:Choice><w:txbxContent><w:p><w:r><w:t>boxed</w:t></w:r></w:p></w:txbxContent></mc:Choice>
<mc:Fallback><w:p><w:r><w:t>boxed again</w:t></w:r></w:p></mc:Fallback></mc:AlternateContent><w:t>outer</w:t></w:r></w:p>
<w:p><w:r><w:delText>deleted</w:delText><w:instrText>PAGE</w:instrText></w:r></w:p>
</w:body></w:document>"#;
        let bytes = zip_of(&[("word/document.xml", document)]);
        let extracted = extract_with_defaults(DocumentKind::Docx, &bytes).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("The Title"));
        let texts: Vec<&str> = extracted.sections.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["The Title\n\na\tb\nc é", "Sub\n\nboxed\n\nouter"]);
        assert_eq!(extracted.sections[1].heading.as_deref(), Some("Sub"));
    }

    #[test]
    fn broken_or_bombed_docx_is_corrupt() {
        let bytes = samples::docx("T", &[(Some("H"), "Body text here.")]);
        for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 10] {
            assert!(
                matches!(
                    extract_with_defaults(DocumentKind::Docx, &bytes[..cut]),
                    Err(ExtractError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            extract_with_defaults(
                DocumentKind::Docx,
                &zip_of(&[("word/document.xml", b"<w:document><w:p>")])
            ),
            Err(ExtractError::Corrupt(_))
        ));
        assert!(matches!(
            extract_with_defaults(DocumentKind::Docx, &zip_of(&[("other.xml", b"<a/>")])),
            Err(ExtractError::Corrupt(_))
        ));
        // 65 MiB of spaces deflate to a few tens of KiB.
        let mut xml = b"<w:document>".to_vec();
        xml.resize(65 << 20, b' ');
        let bomb = zip_of(&[("word/document.xml", &xml)]);
        assert!(bomb.len() < 1 << 20);
        let err = extract_with_defaults(DocumentKind::Docx, &bomb).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
    }

    #[test]
    fn html_headings_title_and_no_scripts() {
        let page = r#"<!DOCTYPE html><html><head><title> The  Page </title>
<style>body { color: red }</style><script>var hidden = "nope";</script></head>
<body><p>Intro   text &amp; more.</p>
<h1>Main <em>Heading</em></h1><p>Under main.</p><ul><li>one</li><li>two</li></ul>
<h2>Detail</h2><div>Deep<br>er</div><noscript>no</noscript><pre>  keep
  spacing</pre><table><tr><td>a</td><td>b</td></tr></table></body></html>"#;
        let extracted = extract_with_defaults(DocumentKind::Html, page.as_bytes()).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("The Page"));
        let sections: Vec<(Option<&str>, &str)> = extracted
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.text.as_str()))
            .collect();
        assert_eq!(
            sections,
            [
                (None, "Intro text & more."),
                (
                    Some("Main Heading"),
                    "Main Heading\n\nUnder main.\n\none\ntwo"
                ),
                (
                    Some("Detail"),
                    "Detail\n\nDeep\ner\n\n  keep\n  spacing\n\na b"
                ),
            ]
        );
        let all: String = extracted.sections.iter().map(|s| s.text.clone()).collect();
        assert!(!all.contains("hidden") && !all.contains("color") && !all.contains("no\n"));

        let untitled =
            extract_with_defaults(DocumentKind::Html, b"<h2>Minor</h2><h1>Major</h1><p>x</p>")
                .unwrap();
        assert_eq!(untitled.title.as_deref(), Some("Major"));
        assert_eq!(
            extract_with_defaults(DocumentKind::Html, b"<html><script>only()</script></html>"),
            Err(ExtractError::Empty)
        );
    }

    #[test]
    fn markdown_headings_delimit_sections() {
        let text = "Preamble with *emphasis* and a [link](http://x.example).\n\n\
            # Guide\n\nSome `code` here.\nSoft wrapped.\n\n\
            ## Install\n\n```sh\ncargo build\n```\n\n- [x] done\n- item\n\n\
            | a | b |\n|---|---|\n| 1 | 2 |\n\n<div>raw html</div>\n";
        let extracted = extract_with_defaults(DocumentKind::Markdown, text.as_bytes()).unwrap();
        assert_eq!(extracted.title.as_deref(), Some("Guide"));
        let sections: Vec<(Option<&str>, &str)> = extracted
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.text.as_str()))
            .collect();
        assert_eq!(
            sections,
            [
                (None, "Preamble with emphasis and a link."),
                (Some("Guide"), "Guide\n\nSome code here. Soft wrapped."),
                (
                    Some("Install"),
                    "Install\n\ncargo build\n\n[x] done\nitem\n\na | b\n1 | 2"
                ),
            ]
        );
    }

    #[test]
    fn json_becomes_path_value_lines_in_document_order() {
        let text = r#"{"name": "Ada", "age": 36, "tags": ["math", {"k": null}],
            "address": {"city": "London", "zip": ""}, "empty": {}, "none": [], "ok": true}"#;
        let extracted = extract_with_defaults(DocumentKind::Json, text.as_bytes()).unwrap();
        let sections: Vec<(Option<&str>, &str)> = extracted
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.text.as_str()))
            .collect();
        assert_eq!(
            sections,
            [
                (Some("name"), "name: Ada"),
                (Some("age"), "age: 36"),
                (Some("tags"), "tags[0]: math\ntags[1].k: null"),
                (Some("address"), "address.city: London\naddress.zip:"),
                (Some("empty"), "empty: {}"),
                (Some("none"), "none: []"),
                (Some("ok"), "ok: true"),
            ]
        );
        let array = extract_with_defaults(DocumentKind::Json, br#"[1.5, "two"]"#).unwrap();
        assert_eq!(array.sections[0].text, "[0]: 1.5\n[1]: two");
        assert!(matches!(
            extract_with_defaults(DocumentKind::Json, b"{\"a\": "),
            Err(ExtractError::Corrupt(_))
        ));
    }

    #[test]
    fn csv_rows_become_named_lines_in_sections() {
        let mut text = String::from("name,city,\n");
        for i in 1..=120 {
            text.push_str(&format!("person {i},\"Town, {i}\",x\n"));
        }
        text.push_str("last,,\n");
        let extracted = extract_with_defaults(DocumentKind::Csv, text.as_bytes()).unwrap();
        let headings: Vec<&str> = extracted
            .sections
            .iter()
            .map(|s| s.heading.as_deref().unwrap())
            .collect();
        assert_eq!(headings, ["rows 1–50", "rows 51–100", "rows 101–121"]);
        let first = extracted.sections[0].text.lines().next().unwrap();
        assert_eq!(first, "name: person 1; city: Town, 1; column 3: x");
        assert_eq!(
            extracted.sections[2].text.lines().last(),
            Some("name: last")
        );
    }

    #[test]
    fn text_is_tidied_and_empty_text_refused() {
        let extracted = extract_with_defaults(
            DocumentKind::Text,
            b"\xEF\xBB\xBF  Line one  \r\n\r\n\r\n\nLine two\n",
        )
        .unwrap();
        assert_eq!(extracted.sections[0].text, "  Line one\n\nLine two");
        assert_eq!(extracted.word_count, 4);
        assert_eq!(extracted.language, None, "too short to tell");
        assert_eq!(
            extract_with_defaults(DocumentKind::Text, b" \n\t "),
            Err(ExtractError::Empty)
        );
        assert!(matches!(
            extract_with_defaults(DocumentKind::Markdown, b"\xff\xfe"),
            Err(ExtractError::Unsupported(_))
        ));
    }

    #[test]
    fn amplifying_files_are_refused_within_their_budget() {
        for (name, bytes) in samples::amplifying() {
            let kind = detect(&bytes, name).unwrap();
            let started = Instant::now();
            let err = extract_with_defaults(kind, &bytes).unwrap_err();
            assert!(matches!(err, ExtractError::OverBudget(_)), "{name}: {err}");
            assert!(err.to_string().contains("KiB allowed"), "{name}: {err}");
            // Refused as the text grows, not after it was all written.
            assert!(started.elapsed() < Duration::from_secs(60), "{name}");
        }
    }

    #[test]
    fn the_budget_is_relative_to_the_file_and_capped() {
        let limits = ExtractLimits {
            max_output_ratio: 2,
            min_output_bytes: 100,
            max_output_bytes: 1_000,
            timeout: Duration::from_secs(60),
        };
        // A small file gets the floor, a larger one twice its size, a large one the cap.
        assert!(Budget::new(&limits, 10).check(100).is_ok());
        assert!(Budget::new(&limits, 10).check(101).is_err());
        assert!(Budget::new(&limits, 300).check(600).is_ok());
        assert!(Budget::new(&limits, 300).check(601).is_err());
        assert!(Budget::new(&limits, 10_000).check(1_000).is_ok());
        assert!(Budget::new(&limits, 10_000).check(1_001).is_err());
        // A JSON document whose paths make its text three times its size.
        let json = br#"{"a_rather_long_key": {"nested_key": [1, 2, 3, 4, 5, 6, 7, 8]}}"#;
        let tight = ExtractLimits {
            min_output_bytes: 0,
            ..limits
        };
        assert!(matches!(
            extract(DocumentKind::Json, json, &tight),
            Err(ExtractError::OverBudget(_))
        ));
        let roomy = ExtractLimits {
            max_output_ratio: 8,
            ..tight
        };
        assert!(extract(DocumentKind::Json, json, &roomy).is_ok());
    }

    #[test]
    fn every_kind_stops_at_its_deadline() {
        let no_time = ExtractLimits {
            timeout: Duration::ZERO,
            ..ExtractLimits::default()
        };
        let inputs: [(DocumentKind, Vec<u8>); 7] = [
            (DocumentKind::Pdf, samples::pdf(&[ENGLISH])),
            (DocumentKind::Docx, samples::docx("T", &[(None, ENGLISH)])),
            (
                DocumentKind::Markdown,
                format!("# T\n\n{ENGLISH}").into_bytes(),
            ),
            (DocumentKind::Html, format!("<p>{ENGLISH}</p>").into_bytes()),
            (DocumentKind::Text, ENGLISH.as_bytes().to_vec()),
            (DocumentKind::Json, br#"{"a": "b"}"#.to_vec()),
            (DocumentKind::Csv, b"a,b\n1,2\n".to_vec()),
        ];
        for (kind, bytes) in inputs {
            assert!(extract_with_defaults(kind, &bytes).is_ok(), "{kind:?}");
            let err = extract(kind, &bytes, &no_time).unwrap_err();
            assert!(err.to_string().contains("took longer"), "{kind:?}: {err}");
        }
    }

    #[test]
    fn no_kind_panics_on_arbitrary_bytes() {
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"%PDF-".to_vec(),
            b"PK\x03\x04".to_vec(),
            (0..=255u8).collect(),
            b"<h1><h2><h3></h1>".to_vec(),
            "[".repeat(10_000).into_bytes(),
            "> ".repeat(10_000).into_bytes(),
        ];
        inputs.push(
            samples::docx("x", &[(Some("h"), "t")])
                .into_iter()
                .rev()
                .collect(),
        );
        for input in &inputs {
            for kind in DocumentKind::ALL {
                let _ = extract_with_defaults(kind, input);
            }
        }
    }
}
