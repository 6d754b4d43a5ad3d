//! The DeleteObjects request document: parsed with the meaning XML gives it,
//! and written back out by the gateway.
//!
//! The gateway authorizes every key of a DeleteObjects request, so it must
//! read the keys exactly as the backend will. It therefore parses with full
//! XML semantics — line endings normalized, text joined across comments,
//! CDATA sections and processing instructions, entities and character
//! references decoded — and refuses what it cannot give one meaning
//! (a DOCTYPE, which could define entities; unknown elements; stray text; a
//! declared encoding other than UTF-8). What goes to the backend is then not
//! the client's bytes but [`DeleteRequest::to_xml`] of what was authorized,
//! so whatever a backend's parser would make of the client's document, it
//! deletes exactly the keys that were checked.

use quick_xml::events::{BytesStart, Event};

use crate::error::{S3Error, S3ErrorCode};
use crate::request::check_key_segments;
use crate::xml::escape;

/// The most objects one DeleteObjects request may name (S3's limit).
pub const MAX_OBJECTS: usize = 1000;

/// A parsed DeleteObjects document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    pub objects: Vec<ObjectToDelete>,
    pub quiet: bool,
}

impl DeleteRequest {
    /// The key-segment guard ([`check_key_segments`]) over every key.
    pub fn check_key_segments(&self) -> Result<(), S3Error> {
        self.objects
            .iter()
            .try_for_each(|o| check_key_segments(&o.key))
    }
}

/// One `<Object>`. The optional fields are carried through verbatim so that a
/// conditional delete stays conditional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectToDelete {
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub last_modified_time: Option<String>,
    pub size: Option<String>,
}

fn malformed() -> S3Error {
    S3Error::new(
        S3ErrorCode::MalformedXML,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    )
}

/// Where the parser is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the root element.
    Prolog,
    /// Inside `<Delete>`, between its children.
    Delete,
    /// Inside `<Object>`, between its children.
    Object,
    /// Inside a text-only element of `<Object>` or `<Delete>`.
    Field(Field),
    /// After `</Delete>`.
    Epilog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Key,
    VersionId,
    ETag,
    LastModifiedTime,
    Size,
    Quiet,
}

impl Field {
    fn of_object(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"Key" => Self::Key,
            b"VersionId" => Self::VersionId,
            b"ETag" => Self::ETag,
            b"LastModifiedTime" => Self::LastModifiedTime,
            b"Size" => Self::Size,
            _ => return None,
        })
    }
}

/// Parses a DeleteObjects document. Keys are taken as written; the
/// key-segment guard ([`DeleteRequest::check_key_segments`]) is the data
/// plane's to apply, per backend, as for a key in a request path.
pub fn parse(doc: &[u8]) -> Result<DeleteRequest, S3Error> {
    let doc = std::str::from_utf8(doc.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(doc))
        .map_err(|_| malformed())?;
    // XML end-of-line handling happens before parsing: "\r\n" and a lone
    // "\r" are "\n" everywhere, including CDATA sections. (A character
    // reference &#13; is not a line ending and survives.)
    let normalized;
    let doc = if doc.contains('\r') {
        normalized = doc.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        doc
    };

    let mut reader = quick_xml::Reader::from_str(doc);
    let config = reader.config_mut();
    config.trim_text(false);
    config.expand_empty_elements = true;
    config.check_end_names = true;
    config.check_comments = true;

    let mut at = At::Prolog;
    let mut objects: Vec<ObjectToDelete> = Vec::new();
    let mut quiet: Option<bool> = None;
    let mut object = ObjectToDelete::default();
    let mut seen_in_object: Vec<Field> = Vec::new();
    let mut text = String::new();
    let mut first_event = true;

    loop {
        let event = reader.read_event().map_err(|_| malformed())?;
        let was_first = std::mem::replace(&mut first_event, false);
        match event {
            Event::Decl(decl) => {
                if !was_first {
                    return Err(malformed());
                }
                if let Some(enc) = decl.encoding() {
                    let enc = enc.map_err(|_| malformed())?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(malformed());
                    }
                }
            }
            // Entities a DOCTYPE could declare would change what the text
            // means to one parser and not another.
            Event::DocType(_) => return Err(malformed()),
            Event::Comment(_) | Event::PI(_) => {}
            Event::Start(start) => {
                at = open(at, &start, &mut seen_in_object)?;
                text.clear();
            }
            Event::End(_) => {
                at = match at {
                    At::Field(field) => {
                        let value = std::mem::take(&mut text);
                        match field {
                            Field::Quiet => {
                                quiet = Some(match value.trim() {
                                    "true" => true,
                                    "false" => false,
                                    _ => return Err(malformed()),
                                });
                                At::Delete
                            }
                            Field::Key => {
                                object.key = value;
                                At::Object
                            }
                            Field::VersionId => {
                                object.version_id = Some(value);
                                At::Object
                            }
                            Field::ETag => {
                                object.etag = Some(value);
                                At::Object
                            }
                            Field::LastModifiedTime => {
                                object.last_modified_time = Some(value);
                                At::Object
                            }
                            Field::Size => {
                                object.size = Some(value);
                                At::Object
                            }
                        }
                    }
                    At::Object => {
                        if !seen_in_object.contains(&Field::Key) || object.key.is_empty() {
                            return Err(malformed());
                        }
                        if objects.len() == MAX_OBJECTS {
                            return Err(malformed());
                        }
                        objects.push(std::mem::take(&mut object));
                        seen_in_object.clear();
                        At::Delete
                    }
                    At::Delete => At::Epilog,
                    At::Prolog | At::Epilog => return Err(malformed()),
                };
            }
            Event::Text(t) => {
                // "]]>" may not appear in character data.
                if t.windows(3).any(|w| w == b"]]>") {
                    return Err(malformed());
                }
                let value = t.unescape().map_err(|_| malformed())?;
                if matches!(at, At::Field(_)) {
                    text.push_str(&value);
                } else if !value.chars().all(|c| matches!(c, ' ' | '\t' | '\n')) {
                    return Err(malformed());
                }
            }
            Event::CData(t) => {
                if !matches!(at, At::Field(_)) {
                    return Err(malformed());
                }
                let raw = t.into_inner();
                text.push_str(std::str::from_utf8(&raw).map_err(|_| malformed())?);
            }
            Event::Empty(_) => return Err(malformed()),
            Event::Eof => break,
        }
    }
    if at != At::Epilog || objects.is_empty() {
        return Err(malformed());
    }
    Ok(DeleteRequest {
        objects,
        quiet: quiet.unwrap_or(false),
    })
}

/// Enters an element: only the DeleteObjects schema's elements, each where it
/// belongs, fields at most once per object.
fn open(at: At, start: &BytesStart<'_>, seen: &mut Vec<Field>) -> Result<At, S3Error> {
    let name = start.local_name();
    let name = name.as_ref();
    Ok(match at {
        At::Prolog if name == b"Delete" => At::Delete,
        At::Delete if name == b"Object" => At::Object,
        At::Delete if name == b"Quiet" => At::Field(Field::Quiet),
        At::Object => {
            let field = Field::of_object(name).ok_or_else(malformed)?;
            if seen.contains(&field) {
                return Err(malformed());
            }
            seen.push(field);
            At::Field(field)
        }
        _ => return Err(malformed()),
    })
}

impl DeleteRequest {
    /// The document the gateway sends: UTF-8, S3's namespace, every value
    /// escaped so that any conforming parser reads back exactly these keys.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(
            128 + self.objects.iter().map(|o| o.key.len() + 40).sum::<usize>(),
        );
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str(r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#);
        for o in &self.objects {
            out.push_str("<Object>");
            field(&mut out, "Key", Some(&o.key));
            field(&mut out, "VersionId", o.version_id.as_deref());
            field(&mut out, "ETag", o.etag.as_deref());
            field(
                &mut out,
                "LastModifiedTime",
                o.last_modified_time.as_deref(),
            );
            field(&mut out, "Size", o.size.as_deref());
            out.push_str("</Object>");
        }
        if self.quiet {
            out.push_str("<Quiet>true</Quiet>");
        }
        out.push_str("</Delete>");
        out
    }
}

fn field(out: &mut String, name: &str, value: Option<&str>) {
    let Some(value) = value else { return };
    out.push('<');
    out.push_str(name);
    out.push('>');
    // A carriage return written as-is would be read back as a line feed.
    for (i, part) in value.split('\r').enumerate() {
        if i > 0 {
            out.push_str("&#13;");
        }
        escape(out, part);
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(doc: &str) -> Result<Vec<String>, S3ErrorCode> {
        parse(doc.as_bytes())
            .map(|d| d.objects.into_iter().map(|o| o.key).collect())
            .map_err(|e| e.code)
    }

    fn one(doc_key: &str) -> Result<Vec<String>, S3ErrorCode> {
        keys(&format!(
            "<Delete><Object><Key>{doc_key}</Key></Object></Delete>"
        ))
    }

    #[test]
    fn text_is_joined_and_decoded_as_xml_says() {
        assert_eq!(one("ke<!---->ep/x").unwrap(), ["keep/x"]);
        assert_eq!(one("ke<![CDATA[ep]]>/x").unwrap(), ["keep/x"]);
        assert_eq!(one("ke<?pi data?>ep/x").unwrap(), ["keep/x"]);
        assert_eq!(one("&#x6B;eep/x").unwrap(), ["keep/x"]);
        assert_eq!(
            one("&#107;eep&amp;x&lt;&gt;&quot;&apos;").unwrap(),
            ["keep&x<>\"'"]
        );
        assert_eq!(one("<![CDATA[a&amp;<b>]]>").unwrap(), ["a&amp;<b>"]);
        assert_eq!(one("a\r\nb\rc&#13;").unwrap(), ["a\nb\nc\r"]);
        assert_eq!(one(" spaced ").unwrap(), [" spaced "]);
    }

    #[test]
    fn what_has_no_single_meaning_is_refused() {
        use S3ErrorCode::*;
        let doctype = "<!DOCTYPE Delete [<!ENTITY k \"keep\">]><Delete><Object><Key>&k;/x</Key></Object></Delete>";
        assert_eq!(keys(doctype), Err(MalformedXML));
        assert_eq!(one("&unknown;"), Err(MalformedXML));
        assert_eq!(one("a<b/>c"), Err(MalformedXML));
        assert_eq!(one(""), Err(MalformedXML));
        // A dot segment is a key like any other to the parser; the guard
        // is the data plane's, per backend.
        assert_eq!(one("reports/../secret/x").unwrap(), ["reports/../secret/x"]);
        let doc = parse(
            b"<Delete><Object><Key>ok</Key></Object><Object><Key>./x</Key></Object></Delete>",
        )
        .unwrap();
        assert_eq!(doc.check_key_segments().unwrap_err().code, InvalidArgument);
        assert_eq!(keys("<Delete></Delete>"), Err(MalformedXML));
        assert_eq!(
            keys("<Delete><Object><Key>a</Key></Object>text</Delete>"),
            Err(MalformedXML)
        );
        assert_eq!(
            keys("<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>"),
            Err(MalformedXML)
        );
        assert_eq!(
            keys("<Delete><Object><Key>a</Key><Other/></Object></Delete>"),
            Err(MalformedXML)
        );
        assert_eq!(
            keys("<Delete><Object><Key>a</Key></Object></Delete><Delete/>"),
            Err(MalformedXML)
        );
        assert_eq!(
            keys("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Delete><Object><Key>a</Key></Object></Delete>"),
            Err(MalformedXML)
        );
        assert_eq!(
            keys("<Delete><Object><Key>a</Key></Object><Quiet>maybe</Quiet></Delete>"),
            Err(MalformedXML)
        );
        let many: String = (0..=MAX_OBJECTS)
            .map(|i| format!("<Object><Key>k{i}</Key></Object>"))
            .collect();
        assert_eq!(keys(&format!("<Delete>{many}</Delete>")), Err(MalformedXML));
    }

    #[test]
    fn round_trips_through_the_written_document() {
        let doc = "<?xml version=\"1.0\"?>\n<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n  <Object><Key>a&amp;b\r</Key><VersionId>v1</VersionId><ETag>\"e\"</ETag></Object>\n  <Object><Key>c/d</Key></Object>\n  <Quiet>true</Quiet>\n</Delete>";
        let parsed = parse(doc.as_bytes()).unwrap();
        assert_eq!(parsed.objects[0].key, "a&b\n");
        assert_eq!(parsed.objects[0].version_id.as_deref(), Some("v1"));
        assert_eq!(parsed.objects[0].etag.as_deref(), Some("\"e\""));
        assert!(parsed.quiet);
        assert_eq!(parse(parsed.to_xml().as_bytes()).unwrap(), parsed);
        let with_cr = DeleteRequest {
            objects: vec![ObjectToDelete {
                key: "x\ry".into(),
                ..Default::default()
            }],
            quiet: false,
        };
        assert_eq!(parse(with_cr.to_xml().as_bytes()).unwrap(), with_cr);
    }

    // === Differential property test against roxmltree, a conforming parser ===

    use proptest::prelude::*;

    /// How one character of a key is written in the document.
    #[derive(Debug, Clone)]
    enum Piece {
        Raw(char),
        Entity(char),
        DecRef(char),
        HexRef(char),
        CData(String),
        Comment,
        Pi,
    }

    fn piece() -> impl Strategy<Value = Piece> {
        let ch = prop_oneof![
            proptest::char::range('a', 'z'),
            Just('/'),
            Just(' '),
            Just('&'),
            Just('<'),
            Just('>'),
            Just('"'),
            Just('\''),
            Just(']'),
            Just('é'),
            Just('\t'),
            Just('\n'),
            Just('\r'),
            Just('😀'),
        ];
        prop_oneof![
            ch.clone().prop_map(Piece::Raw),
            ch.clone().prop_map(Piece::Entity),
            ch.clone().prop_map(Piece::DecRef),
            ch.prop_map(Piece::HexRef),
            "[a-z<>&\\]\n]{0,6}".prop_map(Piece::CData),
            Just(Piece::Comment),
            Just(Piece::Pi),
        ]
    }

    fn write_piece(out: &mut String, p: &Piece) {
        match p {
            Piece::Raw('&') => out.push_str("&amp;"),
            Piece::Raw('<') => out.push_str("&lt;"),
            // A Windows line ending. (A lone "\r" before a reference is read
            // as "\r" by roxmltree, where XML's end-of-line rule makes it
            // "\n"; the unit test above pins the rule.)
            Piece::Raw('\r') => out.push_str("\r\n"),
            Piece::Raw(c) => out.push(*c),
            Piece::Entity(c) => match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&apos;"),
                c => write_piece(out, &Piece::Raw(*c)),
            },
            Piece::DecRef(c) => out.push_str(&format!("&#{};", *c as u32)),
            Piece::HexRef(c) => out.push_str(&format!("&#x{:x};", *c as u32)),
            Piece::CData(s) => {
                out.push_str("<![CDATA[");
                out.push_str(&s.replace("]]>", "]]"));
                out.push_str("]]>");
            }
            Piece::Comment => out.push_str("<!-- c -->"),
            Piece::Pi => out.push_str("<?pi x?>"),
        }
    }

    fn oracle_keys(doc: &str) -> Option<Vec<String>> {
        let tree = roxmltree::Document::parse(doc).ok()?;
        let keys = tree
            .descendants()
            .filter(|n| n.has_tag_name("Key"))
            .map(|n| {
                n.children()
                    .filter(|c| c.is_text())
                    .filter_map(|c| c.text())
                    .collect::<String>()
            })
            .collect();
        Some(keys)
    }

    proptest! {
        #[test]
        fn keys_equal_a_conforming_parsers(
            objects in proptest::collection::vec(proptest::collection::vec(piece(), 1..12), 1..6),
            quiet in any::<bool>(),
        ) {
            let mut doc = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
            for pieces in &objects {
                doc.push_str("\n <Object><Key>");
                for p in pieces {
                    write_piece(&mut doc, p);
                }
                doc.push_str("</Key></Object>");
            }
            if quiet {
                doc.push_str("<Quiet>true</Quiet>");
            }
            doc.push_str("</Delete>");
            let ours = parse(doc.as_bytes());
            let theirs = oracle_keys(&doc);
            match (ours, theirs) {
                (Ok(ours), Some(theirs)) => {
                    let ours_keys: Vec<String> = ours.objects.iter().map(|o| o.key.clone()).collect();
                    prop_assert_eq!(&ours_keys, &theirs, "document: {:?}", doc);
                    // What the gateway forwards means the same to the oracle.
                    prop_assert_eq!(oracle_keys(&ours.to_xml()), Some(theirs));
                    prop_assert_eq!(ours.quiet, quiet);
                }
                (Err(e), Some(theirs)) => {
                    // Only keys a conforming parser reads as empty are
                    // refused (the key-segment guard is the data plane's).
                    prop_assert!(
                        theirs.iter().any(|k| k.is_empty()),
                        "refused {:?} ({}) but the oracle read {:?}", doc, e, theirs
                    );
                }
                (Ok(ours), None) => {
                    prop_assert!(false, "accepted {:?} as {:?}; the oracle refuses it", doc, ours);
                }
                (Err(_), None) => {}
            }
        }

        #[test]
        fn parse_never_panics(doc in "(<|>|/|Delete|Object|Key|Quiet|!--|\\?|\\[CDATA\\[|]]|&|#|;|x|\r|\n| )*") {
            let _ = parse(doc.as_bytes());
        }
    }
}
