//! A cheap proof that a document is well-formed XML, made from the events
//! of a quick-xml pass that reads it anyway.
//!
//! quick-xml checks less than XML requires (name characters, attribute
//! syntax, references, characters, prefixes), so a body it reads cleanly is
//! not yet known to be well-formed, and roxmltree, a strict parser, has had
//! to read every such body again: on the miss path that second parse was a
//! fifth of soapcache's CPU. The proof covers the plain shape nearly every
//! SOAP message has: ASCII names, quoted attribute values, predefined and
//! character references, declared prefixes, comments, CDATA, an XML
//! declaration for UTF-8, LF line ends. Anything else (a DTD, a processing
//! instruction, a CR, a non-ASCII name, a byte order mark...) leaves the
//! proof open, and the verdict to roxmltree, as before.
//!
//! The proof must never hold for a document roxmltree refuses. The
//! `envelope` and `splice` fuzz targets check exactly that on arbitrary
//! bytes, as do the property tests below.

use quick_xml::events::Event;

/// The namespace the `xml` prefix is bound to (Namespaces in XML §3).
pub const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// More attributes than this on one element leave the proof open: the
/// duplicate check is quadratic.
const MAX_ATTRIBUTES: usize = 32;

/// The proof so far; fed every event of one pass, in order.
pub struct Proof<'a> {
    /// The bytes the pass reads, which event positions index.
    document: &'a [u8],
    open: bool,
    /// An empty element's bindings stay in scope until the next event, so
    /// that the caller can resolve its names with them.
    empty_pending: bool,
    events: usize,
    depth: usize,
    roots: usize,
    /// Prefix bindings in scope: (depth of the element declaring it,
    /// prefix, namespace). The default namespace has the empty prefix.
    bindings: Vec<(usize, &'a [u8], &'a [u8])>,
    attributes: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Proof<'a> {
    /// A proof for `document` (the bytes the pass reads), whose whole bytes are checked here once:
    /// UTF-8 is the caller's to check (both callers need the `&str`).
    pub fn new(document: &'a [u8]) -> Proof<'a> {
        // Branch-free, so that it compiles to vector code: this reads every
        // byte of every message.
        let control = document.iter().fold(false, |seen, &b| {
            seen | (b < 0x20 && b != b'\t' && b != b'\n')
        });
        // U+FFFE and U+FFFF are not XML characters; a byte order mark is
        // left to roxmltree.
        let nonchar = memchr::memchr_iter(0xEF, document).any(|at| {
            document.get(at + 1) == Some(&0xBF) && matches!(document.get(at + 2), Some(0xBE | 0xBF))
        });
        Proof {
            document,
            empty_pending: false,
            open: control || nonchar || document.starts_with(b"\xEF\xBB\xBF"),
            events: 0,
            depth: 0,
            roots: 0,
            bindings: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// Leaves the proof to roxmltree whatever comes (what `new` does not
    /// see: a byte order mark the pass skips).
    pub fn leave_open(&mut self) {
        self.open = true;
    }

    /// Whether the events so far, ending with `Eof`, prove the document
    /// well-formed.
    pub fn holds(&self) -> bool {
        !self.open && self.roots == 1 && self.depth == 0
    }

    /// Takes the next event; `at` is where it starts in the document.
    pub fn event(&mut self, event: &Event<'a>, at: usize) {
        if self.open {
            return;
        }
        if std::mem::take(&mut self.empty_pending) {
            self.end();
        }
        let first = self.events == 0;
        self.events += 1;
        let ok = match event {
            Event::Start(start) => self.start(self.tag_at(at, start.len())),
            Event::Empty(start) => {
                self.empty_pending = true;
                self.start(self.tag_at(at, start.len()))
            }
            Event::End(_) => {
                // quick-xml (check_end_names) has matched the name.
                self.end();
                true
            }
            Event::Text(text) => {
                let text: &[u8] = text;
                // Refs come as their own events: a `&` here is a stray one.
                (self.depth > 0 || text.iter().all(u8::is_ascii_whitespace))
                    && !has(text, b'&')
                    && (!has(text, b']') || memchr::memmem::find(text, b"]]>").is_none())
            }
            Event::GeneralRef(name) => self.depth > 0 && reference_ok(name),
            Event::CData(_) => self.depth > 0,
            Event::Comment(text) => {
                let text: &[u8] = text;
                memchr::memmem::find(text, b"--").is_none() && text.last() != Some(&b'-')
            }
            Event::Decl(decl) => {
                // From the document, as a start tag is: the pseudo-attributes
                // go into the proof's own list.
                let document: &'a [u8] = self.document;
                let content = document
                    .get(at..)
                    .and_then(|d| d.strip_prefix(b"<?"))
                    .and_then(|d| d.get(..decl.len()));
                first && at == 0 && content.is_some_and(|c| declaration_ok(c, &mut self.attributes))
            }
            Event::Eof => true,
            Event::PI(_) | Event::DocType(_) => false,
        };
        self.open = !ok;
    }

    /// Whether the proof is still possible: once open, it stays open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The attributes of the last start tag, raw values (`name`, `value`).
    pub fn attributes(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.attributes
    }

    /// An element's or attribute's `prefix:local` name resolved here: its
    /// namespace (`None` for none) and local part. Unprefixed attributes
    /// have no namespace; unprefixed elements the default one.
    pub fn resolve(&self, name: &'a [u8], element: bool) -> (Option<&'a [u8]>, &'a [u8]) {
        let (namespace, local) = match split(name) {
            (Some(prefix), local) => (self.namespace(prefix), local),
            (None, local) if element => (self.namespace(b""), local),
            (None, local) => (None, local),
        };
        // `xmlns=""` puts unprefixed elements in no namespace.
        (namespace.filter(|ns| !ns.is_empty()), local)
    }

    /// The namespace `prefix` is bound to here, if any (`xml` always is).
    pub fn namespace(&self, prefix: &[u8]) -> Option<&'a [u8]> {
        if prefix == b"xml" {
            return Some(XML_NS);
        }
        self.bindings
            .iter()
            .rev()
            .find(|(_, p, _)| *p == prefix)
            .map(|(_, _, ns)| *ns)
            .filter(|ns| !ns.is_empty() || prefix.is_empty())
    }

    /// A start tag's content, from the document rather than the event: the
    /// bindings it declares outlive the event.
    fn tag_at(&self, at: usize, len: usize) -> Option<&'a [u8]> {
        let document: &'a [u8] = self.document;
        match document.get(at) {
            Some(b'<') => document.get(at + 1..at + 1 + len),
            _ => None,
        }
    }

    fn start(&mut self, raw: Option<&'a [u8]>) -> bool {
        let Some(raw) = raw else {
            return false;
        };
        if self.depth == 0 {
            self.roots += 1;
            if self.roots > 1 {
                return false;
            }
        }
        self.depth += 1;
        let Some(name) = tag(raw, &mut self.attributes) else {
            return false;
        };
        let depth = self.depth;
        for &(key, value) in &self.attributes {
            let prefix = match key.strip_prefix(b"xmlns") {
                Some(b"") => b"".as_slice(),
                Some(rest) => match rest.strip_prefix(b":") {
                    Some(prefix) => prefix,
                    None => continue,
                },
                None => continue,
            };
            let reserved = prefix.len() >= 3 && prefix[..3].eq_ignore_ascii_case(b"xml");
            // An undeclaration (`xmlns:p=""`) is XML 1.1 only; the two
            // reserved namespaces cannot be bound; references in a
            // namespace name are left to roxmltree.
            if reserved
                || (value.is_empty() && !prefix.is_empty())
                || value == XML_NS
                || value == XMLNS_NS
                || has(value, b'&')
            {
                return false;
            }
            self.bindings.push((depth, prefix, value));
        }
        if let (Some(prefix), _) = split(name) {
            // roxmltree refuses an element in the `xml` namespace.
            if prefix == b"xmlns" || prefix == b"xml" || self.namespace(prefix).is_none() {
                return false;
            }
        }
        // Every prefixed attribute's prefix is bound, and no two attributes
        // share a name, before or after prefixes are resolved.
        for (i, &(key, _)) in self.attributes.iter().enumerate() {
            let (prefix, local) = split(key);
            let resolved = match prefix {
                Some(b"xmlns") | None => None,
                Some(prefix) => match self.namespace(prefix) {
                    Some(ns) => Some(ns),
                    None => return false,
                },
            };
            for &(other, _) in &self.attributes[..i] {
                if other == key {
                    return false;
                }
                let (other_prefix, other_local) = split(other);
                if let (Some(ns), Some(p)) = (resolved, other_prefix) {
                    if other_local == local && p != b"xmlns" && self.namespace(p) == Some(ns) {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn end(&mut self) {
        let depth = self.depth;
        while self.bindings.last().is_some_and(|(d, _, _)| *d == depth) {
            self.bindings.pop();
        }
        self.depth = depth.saturating_sub(1);
    }
}

/// Whether `byte` is in `bytes`: a plain loop, which for the few bytes of a
/// name, a value or a text between tags is faster than a call to memchr.
fn has(bytes: &[u8], byte: u8) -> bool {
    bytes.iter().fold(false, |seen, &b| seen | (b == byte))
}

/// `prefix:local` or `local`.
fn split(name: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match name.iter().position(|b| *b == b':') {
        Some(at) => (Some(&name[..at]), &name[at + 1..]),
        None => (None, name),
    }
}

/// Byte classes of a start tag's content, looked up once per byte: `tag`
/// reads every tag of every message, and its own loops over the same bytes
/// again and again (name, prefix, spaces, value) were most of the proof's
/// cost.
const NAME: u8 = 1;
/// Letters and `_`: what may start a name or the part after its colon.
const NAME_START: u8 = 2;
const SPACE: u8 = 4;

/// Which bytes may be in an ASCII name (letters, digits, `_`, `-`, `.`),
/// which may start one, and which are XML spaces (CR is left to roxmltree).
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            table[b] = NAME | NAME_START;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            table[b] = NAME;
        } else if c == b' ' || c == b'\t' || c == b'\n' {
            table[b] = SPACE;
        }
        b += 1;
    }
    table
};

fn is_space(b: u8) -> bool {
    CLASS[b as usize] & SPACE != 0
}

/// The ASCII XML name starting at `*at` (at most one colon, between two
/// non-empty parts, each starting with a letter or `_`), and `*at` moved
/// past it. `None` when there is none, or it is not plainly a name.
fn name_at<'a>(raw: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let start = *at;
    let mut colon = None;
    let mut i = start;
    while let Some(&b) = raw.get(i) {
        if CLASS[b as usize] & NAME == 0 {
            if b != b':' || colon.is_some() {
                break;
            }
            colon = Some(i);
        }
        i += 1;
    }
    let starts = |at: usize| {
        raw.get(at)
            .is_some_and(|b| CLASS[*b as usize] & NAME_START != 0)
    };
    // A second colon ends the scan on it: what follows is then no space,
    // and the caller refuses the tag.
    if !starts(start) || colon.is_some_and(|c| c + 1 == i || !starts(c + 1)) {
        return None;
    }
    *at = i;
    Some(&raw[start..i])
}

/// `*at` moved past the spaces there; whether there were any.
fn skip_spaces(raw: &[u8], at: &mut usize) -> bool {
    let start = *at;
    while raw.get(*at).is_some_and(|b| is_space(*b)) {
        *at += 1;
    }
    *at > start
}

/// A start tag's content (`name attr="v" ...`, without `<`, `/` and `>`):
/// its name, with its attributes in `attributes`; `None` when it is not
/// plainly well-formed. One pass, left to right.
fn tag<'a>(raw: &'a [u8], attributes: &mut Vec<(&'a [u8], &'a [u8])>) -> Option<&'a [u8]> {
    attributes.clear();
    let mut at = 0;
    let name = name_at(raw, &mut at)?;
    loop {
        // Attributes are separated by whitespace.
        let spaced = skip_spaces(raw, &mut at);
        if at == raw.len() {
            return Some(name);
        }
        if !spaced || attributes.len() == MAX_ATTRIBUTES {
            return None;
        }
        let key = name_at(raw, &mut at)?;
        skip_spaces(raw, &mut at);
        if raw.get(at) != Some(&b'=') {
            return None;
        }
        at += 1;
        skip_spaces(raw, &mut at);
        let quote = *raw.get(at)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value_start = at + 1;
        let value_len = memchr::memchr(quote, raw.get(value_start..)?)?;
        let value = &raw[value_start..value_start + value_len];
        if memchr::memchr2(b'<', b'&', value).is_some()
            && (has(value, b'<') || !references_ok(value))
        {
            return None;
        }
        attributes.push((key, value));
        at = value_start + value_len + 1;
    }
}

/// Every `&` in `text` starts a reference that is well-formed and known.
fn references_ok(mut text: &[u8]) -> bool {
    while let Some(at) = memchr::memchr(b'&', text) {
        let after = &text[at + 1..];
        let Some(end) = memchr::memchr(b';', after) else {
            return false;
        };
        if !reference_ok(&after[..end]) {
            return false;
        }
        text = &after[end + 1..];
    }
    true
}

/// A reference's name (between `&` and `;`): one of XML's five predefined
/// entities, or a character reference to an XML character.
fn reference_ok(name: &[u8]) -> bool {
    let code = match name {
        b"lt" | b"gt" | b"amp" | b"apos" | b"quot" => return true,
        [b'#', b'x', hex @ ..] => parse_code(hex, 16),
        [b'#', decimal @ ..] => parse_code(decimal, 10),
        _ => None,
    };
    code.is_some_and(
        |c| matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF),
    )
}

fn parse_code(digits: &[u8], radix: u32) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    if !text.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(text, radix).ok()
}

/// `<?xml version="1.0" [encoding="UTF-8"] [standalone="yes|no"] ?>`.
/// `attributes` is the proof's own list, lent for the pseudo-attributes.
fn declaration_ok<'a>(decl: &'a [u8], attributes: &mut Vec<(&'a [u8], &'a [u8])>) -> bool {
    if tag(decl, attributes) != Some(b"xml".as_slice()) {
        return false;
    }
    let mut expected = [b"version".as_slice(), b"encoding", b"standalone"].into_iter();
    for (i, (key, value)) in attributes.iter().enumerate() {
        // Each in this order, version first and required.
        if !expected.any(|name| name == *key) || i == 0 && *key != b"version" {
            return false;
        }
        let ok = match *key {
            b"version" => *value == b"1.0",
            b"encoding" => value.eq_ignore_ascii_case(b"utf-8"),
            _ => *value == b"yes" || *value == b"no",
        };
        if !ok {
            return false;
        }
    }
    !attributes.is_empty()
}

/// Reads `document` once with quick-xml and says whether the proof holds:
/// the property tests' and fuzz targets' entry point; the parsers feed
/// their own pass instead.
pub fn proves(document: &[u8]) -> bool {
    if std::str::from_utf8(document).is_err() {
        return false;
    }
    let mut proof = Proof::new(document);
    let mut reader = quick_xml::Reader::from_reader(document);
    reader.config_mut().check_end_names = true;
    loop {
        let at = reader.buffer_position() as usize;
        match reader.read_event() {
            Ok(event) => {
                let eof = matches!(event, Event::Eof);
                proof.event(&event, at);
                if eof {
                    return proof.holds();
                }
            }
            Err(_) => return false,
        }
    }
}

/// What the property tests here and in `soap::control` make documents
/// from: a seeded generator and pieces of XML, good and bad.
#[cfg(test)]
pub(crate) mod sweep {
    /// A small random generator for the sweep (xorshift: no seed crate).
    pub struct Rng(pub u64);

    impl Rng {
        pub fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        pub fn pick<'p>(&mut self, from: &[&'p str]) -> &'p str {
            from[self.below(from.len())]
        }
    }

    /// Pieces of XML, good and bad, that documents are made of.
    pub const PIECES: &[&str] = &[
        "<a>",
        "</a>",
        "<b/>",
        "<p:c xmlns:p=\"urn:p\">",
        "</p:c>",
        "<p:d/>",
        "<q:e>",
        "</q:e>",
        "<a x='1'>",
        "<a x='1' x='2'>",
        "<a p:x='1' xmlns:p='u'>",
        "<a xmlns=''>",
        "<a xmlns:p=''>",
        "<a xmlns:xml='u'>",
        "<a y=\"&amp;&#65;\">",
        "<a y='&#0;'>",
        "<a y='<'>",
        "<a y=v>",
        "<a y='1'z='2'>",
        "<a\ty = '1' >",
        "text",
        " ",
        "\n",
        "&amp;",
        "&#x41;",
        "&#xD800;",
        "&#1;",
        "&nope;",
        "&",
        "<",
        ">",
        "]]>",
        "<![CDATA[x]]>",
        "<![CDATA[",
        "<!--c-->",
        "<!--a--b-->",
        "<!---->",
        "<?pi?>",
        "<?xml version='1.0'?>",
        "<!DOCTYPE a>",
        "\r",
        "\u{1}",
        "\u{FFFF}",
        "é",
        "<é/>",
        "'",
        "\"",
        "=",
        "/",
        ":",
        "<:a/>",
        "<a:/>",
        "<xmlns:a/>",
    ];

    /// One piece inserted, a few bytes removed, or one replaced by a piece.
    pub fn mutate(rng: &mut Rng, doc: &mut String) {
        let mut at = rng.below(doc.len() + 1);
        while !doc.is_char_boundary(at) {
            at -= 1;
        }
        let piece = PIECES[rng.below(PIECES.len())];
        let mut end = (at + 1 + rng.below(4)).min(doc.len());
        while !doc.is_char_boundary(end) {
            end += 1;
        }
        match rng.below(3) {
            0 => doc.insert_str(at, piece),
            1 => doc.replace_range(at..end, ""),
            _ => doc.replace_range(at..end, piece),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sweep::{Rng, PIECES};
    use super::*;
    use proptest::prelude::*;

    fn roxmltree_accepts(doc: &str) -> bool {
        roxmltree::Document::parse(doc).is_ok()
    }

    #[test]
    fn plain_soap_is_proven() {
        for doc in [
            r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><p:Q xmlns:p="urn:p" a='1' p:b="x &amp; &#65;">t &lt; &#x263A;<![CDATA[<x>]]><!-- c --></p:Q></s:Body></s:Envelope>
"#,
            "<a xml:lang=\"en\"><b xmlns=\"urn:d\"/></a>",
            "<?xml version='1.0' standalone='yes' ?><a/>",
        ] {
            assert!(proves(doc.as_bytes()), "{doc}");
            assert!(roxmltree_accepts(doc), "{doc}");
        }
    }

    #[test]
    fn what_quick_xml_lets_through_is_not_proven() {
        for doc in [
            "<a b='1'c='2'/>",
            "<a b=1/>",
            "<a>]]></a>",
            "<a></a><b/>",
            "<a b='<'/>",
            "<a b='1' b='2'/>",
            "<a xmlns:p='u' xmlns:q='u' p:x='1' q:x='2'/>",
            "<p:a/>",
            "<xml:lang.ee/>",
            "<a p:x='1'/>",
            "<a xmlns:p=''/>",
            "<a xmlns:xml2='u'/>",
            "<1a/>",
            "<a:b:c xmlns:a='u'/>",
            "<a>&bogus;</a>",
            "<a>&#0;</a>",
            "<a b='&#1;'/>",
            "<a><!-- a -- b --></a>",
            "<a><?pi x?></a>",
            "<?xml version='1.1'?><a/>",
            "<?xml encoding='utf-8'?><a/>",
            " <?xml version='1.0'?><a/>",
            "<a>\u{1}</a>",
            "<a>\r\n</a>",
            "<a>\u{FFFE}</a>",
            "\u{FEFF}<a/>",
            "<!DOCTYPE a><a/>",
            "text<a/>",
            "<a>",
            "",
        ] {
            assert!(!proves(doc.as_bytes()), "{doc:?} proven");
        }
    }

    /// A document of the plain shape: nested elements with attributes,
    /// prefixes, text, references, comments and CDATA.
    fn plain(rng: &mut Rng, out: &mut String, depth: usize) {
        let name = rng.pick(&["a", "p:b", "c.d", "_e-1", "q:f"]);
        out.push('<');
        out.push_str(name);
        if name.starts_with("p:") || rng.below(3) == 0 {
            out.push_str(" xmlns:p=\"urn:p\"");
        }
        if name.starts_with("q:") {
            out.push_str(" xmlns:q='urn:q'");
        }
        let tag_start = out.len();
        for _ in 0..rng.below(3) {
            let attribute = rng.pick(&[
                " x='1'",
                " p:y=\"&amp;\"",
                "\tz = \"&#65;\"",
                " xml:lang='en'",
                " xmlns='urn:d'",
            ]);
            // roxmltree lets a repeated namespace declaration pass; the
            // proof does not, and other repeats are errors.
            if !out[tag_start..].contains(attribute) {
                out.push_str(attribute);
            }
        }
        if rng.below(4) == 0 {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for _ in 0..rng.below(4) {
            match rng.below(6) {
                0 if depth < 4 => plain(rng, out, depth + 1),
                1 => out.push_str(rng.pick(&["&lt;", "&#x263A;", "&quot;"])),
                2 => out.push_str("<!-- note -->"),
                3 => out.push_str("<![CDATA[<raw> & ]]>"),
                _ => out.push_str(rng.pick(&["text", " ", "\n  ", "é", "a > b"])),
            }
        }
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }

    /// The proof never holds for a document roxmltree refuses, over plain
    /// documents and the same with one piece inserted, removed or
    /// replaced; and it holds for most plain ones.
    #[test]
    fn a_sweep_of_documents_agrees_with_roxmltree() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut proven, mut accepted, mut plain_proven, mut plain_accepted) = (0, 0, 0, 0);
        let total = 40_000;
        for i in 0..total {
            let mut doc = String::new();
            if rng.below(4) == 0 {
                doc.push_str(rng.pick(&[
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
                    "<?xml version='1.0'?>",
                ]));
            }
            plain(&mut rng, &mut doc, 0);
            let mutated = i % 2 == 1;
            if mutated {
                sweep::mutate(&mut rng, &mut doc);
            }
            let ok = roxmltree_accepts(&doc);
            accepted += usize::from(ok);
            plain_accepted += usize::from(ok && !mutated);
            if proves(doc.as_bytes()) {
                proven += 1;
                plain_proven += usize::from(!mutated);
                assert!(ok, "proven but refused by roxmltree: {doc:?}");
            }
        }
        assert!(
            plain_proven == plain_accepted,
            "only {plain_proven} of {plain_accepted} well-formed plain documents proven"
        );
        eprintln!("{proven} proven, {accepted} well-formed, of {total}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The proof never holds for a document roxmltree refuses.
        #[test]
        fn a_proven_document_is_well_formed(pieces in proptest::collection::vec(0..PIECES.len(), 0..24)) {
            let doc: String = pieces.iter().map(|&i| PIECES[i]).collect();
            if proves(doc.as_bytes()) {
                prop_assert!(roxmltree_accepts(&doc), "proven but refused by roxmltree: {doc:?}");
            }
        }

        /// Plain documents are proven (the proof is worth having).
        #[test]
        fn a_plain_document_is_proven(depth in 1usize..6, text in "[a-z &<>]{0,12}") {
            let escaped = text.replace('&', "&amp;").replace('<', "&lt;");
            let open: String = (0..depth).map(|i| format!("<e{i} k=\"{escaped}\">")).collect();
            let close: String = (0..depth).rev().map(|i| format!("</e{i}>")).collect();
            let doc = format!("{open}{escaped}{close}");
            prop_assert!(proves(doc.as_bytes()), "{doc:?}");
            prop_assert!(roxmltree_accepts(&doc));
        }
    }
}
