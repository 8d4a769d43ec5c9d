//! Sample documents written in code (feature `samples`), for tests here and end-to-end tests
//! of the binary: real files that [`crate::extract`] reads like any other.

use std::io::{Cursor, Write};

use lopdf::content::{Content, Operation};
use lopdf::{dictionary, Document, Object, ObjectId, Stream};

/// Characters per line of sample PDF text (lines are wrapped at spaces).
const PDF_LINE_CHARS: usize = 90;

/// A PDF with one page per entry, each showing its text in Helvetica (WinAnsi encoding, so
/// characters beyond Latin-1 are lost). Lines are wrapped at spaces to fit the page.
pub fn pdf(pages: &[&str]) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let encoding = lopdf::Encoding::SimpleEncoding(b"WinAnsiEncoding");
    let mut contents = Vec::new();
    for text in pages {
        let mut operations = vec![
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec!["F1".into(), 11.into()]),
            Operation::new("Td", vec![50.into(), 800.into()]),
        ];
        for (i, line) in wrap(text).into_iter().enumerate() {
            if i > 0 {
                operations.push(Operation::new("Td", vec![0.into(), (-14).into()]));
            }
            let bytes = Document::encode_text(&encoding, &line);
            operations.push(Operation::new("Tj", vec![Object::string_literal(bytes)]));
        }
        operations.push(Operation::new("ET", vec![]));
        let content = Content { operations }
            .encode()
            .expect("sample content encodes");
        let content_id = doc.add_object(Stream::new(dictionary! {}, content));
        contents.push(content_id);
    }
    finish_pdf(doc, pages_id, &contents)
}

/// Saves `doc` with one page per content stream in `contents` (under `pages_id`, all in
/// Helvetica as `F1`).
fn finish_pdf(mut doc: Document, pages_id: ObjectId, contents: &[ObjectId]) -> Vec<u8> {
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });
    let kids: Vec<Object> = contents
        .iter()
        .map(|&content_id| {
            doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "Contents" => content_id,
            })
            .into()
        })
        .collect();
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Count" => kids.len() as i64,
            "Kids" => kids,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
    });
    doc.trailer.set("Root", catalog_id);
    doc.compress();
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).expect("sample PDF writes");
    bytes
}

/// Small files whose text would be many times their size, with the names to upload them
/// under: the shapes that once took a node down. Extraction must refuse each within its budget.
pub fn amplifying() -> Vec<(&'static str, Vec<u8>)> {
    // JSON: one 200,000-character key before an array of 100,000 numbers (the path repeats
    // before every value: ~20 GB of text from ~800 KB).
    let numbers: Vec<String> = (0..100_000).map(|n| n.to_string()).collect();
    let json = format!("{{\"{}\": [{}]}}", "k".repeat(200_000), numbers.join(","));
    // CSV: 50 columns with 2,000-character names over 20,000 short rows (the header repeats
    // on every row: ~2 GB from ~2 MB).
    let header: Vec<String> = (0..50)
        .map(|i| format!("{i}{}", "h".repeat(2_000)))
        .collect();
    let mut csv = header.join(",");
    for _ in 0..20_000 {
        csv.push('\n');
        csv.push_str(&["1"; 50].join(","));
    }
    // DOCX: one paragraph of 48 MiB of repeated text, deflated to well under a megabyte.
    let docx = docx(
        "bomb",
        &[(None, &"all work and no play ".repeat(48 << 20 >> 5))],
    );
    vec![
        ("keys.json", json.into_bytes()),
        ("wide.csv", csv.into_bytes()),
        ("bomb.docx", docx),
        ("pages.pdf", pdf_sharing_one_page_stream(5_000)),
    ]
}

/// A PDF of `pages` pages that all show one content stream of 40 KB of text.
fn pdf_sharing_one_page_stream(pages: usize) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let mut operations = vec![
        Operation::new("BT", vec![]),
        Operation::new("Tf", vec!["F1".into(), 11.into()]),
    ];
    for _ in 0..500 {
        operations.push(Operation::new("Td", vec![0.into(), (-14).into()]));
        operations.push(Operation::new(
            "Tj",
            vec![Object::string_literal(
                "the same line on every page ".repeat(3),
            )],
        ));
    }
    operations.push(Operation::new("ET", vec![]));
    let content = Content { operations }
        .encode()
        .expect("sample content encodes");
    let content_id = doc.add_object(Stream::new(dictionary! {}, content));
    finish_pdf(doc, pages_id, &vec![content_id; pages])
}

/// The lines of `text`, long ones wrapped at spaces.
fn wrap(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > PDF_LINE_CHARS {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

/// A DOCX whose metadata title is `title` and whose body holds, per entry, a Heading 1
/// paragraph (when given) followed by the text, one paragraph per line.
pub fn docx(title: &str, paragraphs: &[(Option<&str>, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (heading, text) in paragraphs {
        if let Some(heading) = heading {
            body.push_str(&paragraph(Some("Heading1"), heading));
        }
        for line in text.lines() {
            body.push_str(&paragraph(None, line));
        }
    }
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="{W}"><w:body>{body}<w:sectPr/></w:body></w:document>"#
    );
    let core = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{}</dc:title></cp:coreProperties>"#,
        quick_xml::escape::escape(title)
    );
    let parts = [
        ("[Content_Types].xml", CONTENT_TYPES.to_owned()),
        ("_rels/.rels", PACKAGE_RELS.to_owned()),
        ("word/_rels/document.xml.rels", DOCUMENT_RELS.to_owned()),
        ("word/document.xml", document),
        ("word/styles.xml", STYLES.replace("{W}", W)),
        ("docProps/core.xml", core),
    ];
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, xml) in parts {
        zip.start_file(name, options).expect("sample zip entry");
        zip.write_all(xml.as_bytes()).expect("sample zip write");
    }
    zip.finish().expect("sample zip finishes").into_inner()
}

fn paragraph(style: Option<&str>, text: &str) -> String {
    let properties = style
        .map(|style| format!(r#"<w:pPr><w:pStyle w:val="{style}"/></w:pPr>"#))
        .unwrap_or_default();
    format!(
        r#"<w:p>{properties}<w:r><w:t xml:space="preserve">{}</w:t></w:r></w:p>"#,
        quick_xml::escape::escape(text)
    )
}

const W: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";

const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/><Override PartName="/word/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml"/><Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-package.core-properties+xml"/></Types>"#;

const PACKAGE_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" Target="docProps/core.xml"/></Relationships>"#;

const DOCUMENT_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/></Relationships>"#;

const STYLES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:styles xmlns:w="{W}"><w:style w:type="paragraph" w:default="1" w:styleId="Normal"><w:name w:val="Normal"/></w:style><w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/><w:basedOn w:val="Normal"/><w:next w:val="Normal"/><w:pPr><w:keepNext/><w:outlineLvl w:val="0"/></w:pPr><w:rPr><w:b/><w:sz w:val="32"/></w:rPr></w:style></w:styles>"#;
