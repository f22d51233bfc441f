//! A small XML model for structure-aware targets: operation elements are
//! generated as a tree of expanded names, attribute values and text (their
//! *infoset*), then written out as SOAP requests in many equivalent ways
//! (prefixes or default namespaces, declarations on the element or its
//! ancestors, attribute order, quotes, indentation, comments, processing
//! instructions, CDATA, character and entity references, line ends).
//!
//! Every rendering of one tree is the same infoset, so canonical-form
//! digests must agree; [`canonical`] says when two trees must share a
//! digest (reference §3: prefixes, attribute order, whitespace-only text between
//! elements and comments do not count).

use arbitrary::Unstructured;

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const SOAP_DRAFT: &str = "http://www.w3.org/2001/12/soap-envelope";
pub const SOAP_VERSIONS: [&str; 3] = [SOAP11, SOAP12, SOAP_DRAFT];
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
pub const CATALOG: &str = "http://example.org/2001/06/catalog";

/// Element namespaces; "" = no namespace.
pub const ELEMENT_NS: [&str; 4] = ["", "urn:a", "urn:b", CATALOG];
pub const LOCALS: [&str; 6] = ["A", "B", "C", "PartNumber", "x-y.z", "Ünï"];
pub const ATTRIBUTE_LOCALS: [&str; 4] = ["id", "k", "a-b", "ñ"];
/// Prefixes the renderer may bind (never "xml", "xmlns", or a SOAP one).
const PREFIXES: [&str; 6] = ["p", "q", "a", "ns1", "x", "é"];

/// Decisions drawn from fuzz input; once the input is used up every
/// decision is the first choice, so rendering never fails.
pub struct Choices<'a, 'b>(pub &'b mut Unstructured<'a>);

impl Choices<'_, '_> {
    pub fn index(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        self.0.choose_index(n).unwrap_or(0)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.index(items.len())]
    }

    pub fn chance(&mut self, numerator: u8, denominator: u8) -> bool {
        self.0.ratio(numerator, denominator).unwrap_or(false)
    }

    /// Arbitrary Unicode of at most `max` chars, made valid XML 1.0 `Char`s.
    pub fn any_string(&mut self, max: usize) -> String {
        let s: &str = self.0.arbitrary().unwrap_or("");
        s.chars().take(max).map(xml_char).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `c` if it is an XML 1.0 `Char`, else `?`.
pub fn xml_char(c: char) -> char {
    match c {
        '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => c,
        _ => '?',
    }
}

const TEXT_PIECES: [&str; 20] = [
    " ", "  ", "\n", "\t", "\r", "\r\n", "a", "B-1", "&", "<", ">", "]]>", "]]", "\"", "'", "é",
    "𝄞", "x y", "0", "-",
];

/// Text as XML content can hold it, biased towards what needs escaping.
pub fn text(c: &mut Choices<'_, '_>) -> String {
    let mut s = String::new();
    for _ in 0..c.index(5) {
        if c.chance(1, 5) {
            s.push_str(&c.any_string(8));
        } else {
            s.push_str(c.pick(&TEXT_PIECES));
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub ns: &'static str,
    pub local: &'static str,
    pub attributes: Vec<Attribute>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub ns: &'static str,
    pub local: &'static str,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    /// `xsi:type`: a QName whose prefix is as arbitrary as an element's.
    QName {
        ns: &'static str,
        local: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub depth: usize,
    pub children: usize,
    pub attributes: usize,
    /// Generate `xsi:type` (QName-valued) attributes.
    pub xsi_type: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            depth: 5,
            children: 4,
            attributes: 3,
            xsi_type: true,
        }
    }
}

pub fn element(c: &mut Choices<'_, '_>, limits: &Limits, depth: usize) -> Element {
    let ns = c.pick(&ELEMENT_NS);
    let local = c.pick(&LOCALS);
    let mut attributes: Vec<Attribute> = Vec::new();
    for _ in 0..c.index(limits.attributes + 1) {
        let attribute = match c.index(if limits.xsi_type { 6 } else { 5 }) {
            0..=2 => Attribute {
                ns: c.pick(&["", "", "urn:a", "urn:b"]),
                local: c.pick(&ATTRIBUTE_LOCALS),
                value: Value::Text(text(c)),
            },
            3 => Attribute {
                ns: XML_NS,
                local: c.pick(&["lang", "space"]),
                value: Value::Text(text(c)),
            },
            4 => Attribute {
                ns: XSI,
                local: "nil",
                value: Value::Text(c.pick(&["true", "false", " true "]).to_owned()),
            },
            _ => Attribute {
                ns: XSI,
                local: "type",
                value: Value::QName {
                    ns: c.pick(&ELEMENT_NS[1..]),
                    local: c.pick(&LOCALS),
                },
            },
        };
        if !attributes
            .iter()
            .any(|a| a.ns == attribute.ns && a.local == attribute.local)
        {
            attributes.push(attribute);
        }
    }
    let mut children = Vec::new();
    if depth < limits.depth {
        for _ in 0..c.index(limits.children + 1) {
            if c.chance(1, 2) {
                children.push(Node::Element(element(c, limits, depth + 1)));
            } else {
                children.push(Node::Text(text(c)));
            }
        }
    }
    Element {
        ns,
        local,
        attributes,
        children,
    }
}

// ---------------------------------------------------------------------------
// Canonical form (what the digest must see)

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canon {
    Element {
        ns: String,
        local: String,
        /// Sorted (namespace, local, value).
        attributes: Vec<(String, String, String)>,
        children: Vec<Canon>,
    },
    Text(String),
}

fn is_blank(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

pub fn canonical(e: &Element) -> Canon {
    let mut attributes: Vec<(String, String, String)> = e
        .attributes
        .iter()
        .map(|a| {
            let value = match &a.value {
                Value::Text(t) => t.clone(),
                Value::QName { ns, local } => format!("{{{ns}}}{local}"),
            };
            (a.ns.to_owned(), a.local.to_owned(), value)
        })
        .collect();
    attributes.sort();
    let mut children = Vec::new();
    let mut text: Option<String> = None;
    let flush = |text: &mut Option<String>, children: &mut Vec<Canon>| {
        if let Some(t) = text.take() {
            if !is_blank(&t) {
                children.push(Canon::Text(t));
            }
        }
    };
    for child in &e.children {
        match child {
            Node::Text(t) => text.get_or_insert_with(String::new).push_str(t),
            Node::Element(child) => {
                flush(&mut text, &mut children);
                children.push(canonical(child));
            }
        }
    }
    flush(&mut text, &mut children);
    Canon::Element {
        ns: e.ns.to_owned(),
        local: e.local.to_owned(),
        attributes,
        children,
    }
}

/// Changes one text or attribute value somewhere in the tree (the change may
/// or may not matter canonically; compare [`canonical`] forms to know).
pub fn mutate(e: &mut Element, c: &mut Choices<'_, '_>) {
    let mut slots = 0usize;
    count_slots(e, &mut slots);
    let target = c.index(slots + 1);
    let replacement = match c.index(4) {
        0 => text(c),
        1 => " ".to_owned(),
        2 => "\n".to_owned(),
        _ => c.any_string(3),
    };
    let mut at = 0usize;
    if !apply(e, target, &replacement, c, &mut at) {
        // No slot chosen: add a text child (it may be blank).
        e.children.push(Node::Text(replacement));
    }
}

fn count_slots(e: &Element, n: &mut usize) {
    *n += e
        .attributes
        .iter()
        .filter(|a| matches!(a.value, Value::Text(_)))
        .count();
    for child in &e.children {
        match child {
            Node::Text(_) => *n += 1,
            Node::Element(child) => count_slots(child, n),
        }
    }
}

fn apply(
    e: &mut Element,
    target: usize,
    replacement: &str,
    c: &mut Choices<'_, '_>,
    at: &mut usize,
) -> bool {
    let append = c.chance(1, 2);
    for a in e.attributes.iter_mut() {
        if let Value::Text(t) = &mut a.value {
            if *at == target {
                if append {
                    t.push_str(replacement);
                } else {
                    *t = replacement.to_owned();
                }
                return true;
            }
            *at += 1;
        }
    }
    for child in e.children.iter_mut() {
        match child {
            Node::Text(t) => {
                if *at == target {
                    if append {
                        t.push_str(replacement);
                    } else {
                        *t = replacement.to_owned();
                    }
                    return true;
                }
                *at += 1;
            }
            Node::Element(child) => {
                if apply(child, target, replacement, c, at) {
                    return true;
                }
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Rendering

#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Allow `xmlns="…"` on prefixed elements (Envelope, Body, operation
    /// elements). sxd-document 0.3 ignores such declarations for the
    /// element's descendants (a known difference, see selector.rs), so the
    /// selector target turns this off.
    pub default_ns_on_prefixed: bool,
    /// Processing instructions inside the operation element.
    pub processing_instructions: bool,
    /// Write some spaces of attribute values as literal tabs and line
    /// ends (which XML normalizes to spaces).
    pub attribute_whitespace: bool,
    /// Write some line feeds of text as a lone CR (which XML reads as LF).
    pub lone_cr: bool,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            default_ns_on_prefixed: true,
            processing_instructions: true,
            attribute_whitespace: true,
            lone_cr: true,
        }
    }
}

/// In-scope namespace bindings; "" is the default namespace.
struct Scope(Vec<(String, String)>);

impl Scope {
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        self.0
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }

    fn default_ns(&self) -> &str {
        self.lookup("").unwrap_or("")
    }

    /// Non-empty prefixes currently bound to `uri`.
    fn prefixes_for(&self, uri: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (p, _) in &self.0 {
            if !p.is_empty() && self.lookup(p) == Some(uri) && !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// The declarations and prefix uses on one start tag.
struct Tag {
    decls: Vec<(String, String)>,
    used: Vec<(String, String)>,
}

impl Tag {
    fn binding<'s>(&'s self, scope: &'s Scope, prefix: &str) -> Option<&'s str> {
        match self.decls.iter().find(|(p, _)| p == prefix) {
            Some((_, u)) => Some(u.as_str()),
            None => scope.lookup(prefix),
        }
    }

    /// A prefix (never "") that means `uri` on this tag, declaring one when
    /// needed without breaking a prefix the tag already uses.
    fn prefix_for(&mut self, uri: &str, scope: &Scope, c: &mut Choices<'_, '_>) -> String {
        let mut candidates: Vec<String> = scope
            .prefixes_for(uri)
            .into_iter()
            .filter(|p| self.binding(scope, p) == Some(uri))
            .collect();
        for (p, u) in &self.decls {
            if !p.is_empty() && u == uri && !candidates.contains(p) {
                candidates.push(p.clone());
            }
        }
        if !candidates.is_empty() && !c.chance(1, 3) {
            let p = candidates[c.index(candidates.len())].clone();
            self.used.push((p.clone(), uri.to_owned()));
            return p;
        }
        let start = c.index(PREFIXES.len());
        for i in 0..PREFIXES.len() {
            let p = PREFIXES[(start + i) % PREFIXES.len()];
            if self.used.iter().any(|(up, uu)| up == p && uu != uri) {
                continue;
            }
            if self.binding(scope, p) != Some(uri) {
                self.decls.retain(|(dp, _)| dp != p);
                self.decls.push((p.to_owned(), uri.to_owned()));
            }
            self.used.push((p.to_owned(), uri.to_owned()));
            return p.to_owned();
        }
        let p = format!("n{}", self.decls.len());
        self.decls.push((p.clone(), uri.to_owned()));
        self.used.push((p.clone(), uri.to_owned()));
        p
    }
}

/// A SOAP request whose Body holds `op`; Envelope and Body declare some
/// namespaces the operation element may use.
pub fn request(op: &Element, c: &mut Choices<'_, '_>, style: &Style) -> String {
    let mut out = String::new();
    if c.chance(1, 2) {
        out.push_str(c.pick(&[
            "<?xml version=\"1.0\"?>",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<?xml version='1.0' encoding='utf-8' standalone='yes'?>\r\n",
        ]));
    }
    if c.chance(1, 4) {
        out.push_str("<!-- request -->\n");
    }
    let version = c.pick(&SOAP_VERSIONS);
    let env = c.pick(&["s", "soap", "env", "SOAP-ENV", ""]);
    let q = |local: &str| {
        if env.is_empty() {
            local.to_owned()
        } else {
            format!("{env}:{local}")
        }
    };
    let mut scope = Scope(vec![(env.to_owned(), version.to_owned())]);
    out.push('<');
    out.push_str(&q("Envelope"));
    if env.is_empty() {
        out.push_str(&format!(" xmlns=\"{version}\""));
    } else {
        out.push_str(&format!(" xmlns:{env}=\"{version}\""));
    }
    predeclare(&mut out, &mut scope, env, c, style);
    out.push('>');
    if c.chance(1, 3) {
        out.push_str("\n  ");
    }
    if c.chance(1, 3) {
        // A header block in a namespace the operation may use too.
        out.push_str(&format!(
            "<{h}><hb:PartNumber xmlns:hb=\"{uri}\">FROM-HEADER</hb:PartNumber></{h}>",
            h = q("Header"),
            uri = c.pick(&ELEMENT_NS[1..]),
        ));
    }
    out.push('<');
    out.push_str(&q("Body"));
    predeclare(&mut out, &mut scope, env, c, style);
    out.push('>');
    if c.chance(1, 2) {
        out.push_str(c.pick(&["\n    ", " ", "\r\n\t"]));
    }
    if c.chance(1, 5) {
        out.push_str("<!-- the operation -->");
    }
    render_element(op, c, &mut scope, style, &mut out);
    if c.chance(1, 2) {
        out.push_str(c.pick(&["\n  ", "\t"]));
    }
    out.push_str(&format!("</{}>", q("Body")));
    if c.chance(1, 3) {
        out.push('\n');
    }
    out.push_str(&format!("</{}>", q("Envelope")));
    if c.chance(1, 4) {
        out.push_str("\n<!-- end -->\n");
    }
    out
}

/// Some declarations on Envelope or Body, which the operation inherits.
fn predeclare(
    out: &mut String,
    scope: &mut Scope,
    env: &str,
    c: &mut Choices<'_, '_>,
    style: &Style,
) {
    let mut declared: Vec<String> = vec![env.to_owned()];
    for _ in 0..c.index(4) {
        let uri = c.pick(&[ELEMENT_NS[1], ELEMENT_NS[2], ELEMENT_NS[3], XSI]);
        let prefix = if c.chance(1, 4) && !env.is_empty() && style.default_ns_on_prefixed {
            ""
        } else {
            c.pick(&PREFIXES)
        };
        if declared.iter().any(|d| d == prefix) {
            continue;
        }
        declared.push(prefix.to_owned());
        if prefix.is_empty() {
            out.push_str(&format!(" xmlns=\"{uri}\""));
        } else {
            out.push_str(&format!(" xmlns:{prefix}=\"{uri}\""));
        }
        scope.0.push((prefix.to_owned(), uri.to_owned()));
    }
}

/// Writes `e` where the bindings `inherited` are in scope.
pub fn render_in_scope(
    e: &Element,
    c: &mut Choices<'_, '_>,
    style: &Style,
    inherited: &[(String, String)],
    out: &mut String,
) {
    let mut scope = Scope(inherited.to_vec());
    render_element(e, c, &mut scope, style, out);
}

const GAPS: [&str; 6] = ["\n", "\n  ", "  ", "\t", "\r\n    ", " "];
const ATTRIBUTE_SEPARATORS: [&str; 4] = [" ", " ", "\n      ", "\t"];

fn render_element(
    e: &Element,
    c: &mut Choices<'_, '_>,
    scope: &mut Scope,
    style: &Style,
    out: &mut String,
) {
    let mark = scope.0.len();
    let mut tag = Tag {
        decls: Vec::new(),
        used: Vec::new(),
    };
    // The element's own name first: attributes must not break its prefix.
    let qname = if e.ns.is_empty() || c.chance(1, 3) {
        if scope.default_ns() != e.ns {
            tag.decls.push((String::new(), e.ns.to_owned()));
        }
        tag.used.push((String::new(), e.ns.to_owned()));
        e.local.to_owned()
    } else {
        let p = tag.prefix_for(e.ns, scope, c);
        format!("{p}:{}", e.local)
    };
    let prefixed = qname.contains(':');

    let quote = c.pick(&['"', '\'']);
    let mut items: Vec<String> = Vec::new();
    for a in &e.attributes {
        let name = match a.ns {
            "" => a.local.to_owned(),
            XML_NS => format!("xml:{}", a.local),
            ns => format!("{}:{}", tag.prefix_for(ns, scope, c), a.local),
        };
        let value = match &a.value {
            Value::Text(t) => attribute_value(t, quote, c, style.attribute_whitespace),
            Value::QName { ns, local } => {
                let default_here = tag.binding(scope, "").unwrap_or("");
                if default_here == *ns && c.chance(1, 2) {
                    tag.used.push((String::new(), ns.to_string()));
                    local.to_string()
                } else {
                    format!("{}:{local}", tag.prefix_for(ns, scope, c))
                }
            }
        };
        items.push(format!("{name}={quote}{value}{quote}"));
    }
    // Unused declarations: noise the digest must ignore.
    for _ in 0..c.index(3) {
        let uri = c.pick(&["urn:a", "urn:b", "urn:unused", CATALOG]);
        let prefix = if prefixed && style.default_ns_on_prefixed && c.chance(1, 3) {
            ""
        } else {
            c.pick(&["zz", "p", "q", "a"])
        };
        if tag.used.iter().any(|(p, _)| p == prefix) || tag.decls.iter().any(|(p, _)| p == prefix) {
            continue;
        }
        tag.decls.push((prefix.to_owned(), uri.to_owned()));
    }
    for (p, u) in &tag.decls {
        // Plain URIs: quick-xml takes a declaration's raw bytes as the
        // namespace name (it does not resolve references in it).
        if p.is_empty() {
            items.push(format!("xmlns={quote}{u}{quote}"));
        } else {
            items.push(format!("xmlns:{p}={quote}{u}{quote}"));
        }
    }
    // Attribute order: a Fisher-Yates shuffle driven by the input.
    for i in (1..items.len()).rev() {
        let j = c.index(i + 1);
        items.swap(i, j);
    }
    out.push('<');
    out.push_str(&qname);
    for item in &items {
        out.push_str(c.pick(&ATTRIBUTE_SEPARATORS));
        out.push_str(item);
    }
    if c.chance(1, 6) {
        out.push_str(c.pick(&[" ", "\n", "\t"]));
    }
    scope.0.extend(tag.decls.iter().cloned());

    if e.children.is_empty() && c.chance(2, 3) {
        out.push_str("/>");
    } else {
        out.push('>');
        let is_text = |i: usize| matches!(e.children.get(i), Some(Node::Text(_)));
        for (i, child) in e.children.iter().enumerate() {
            // Indentation only where it cannot join a text node.
            if !is_text(i) && (i == 0 || !is_text(i - 1)) && c.chance(1, 2) {
                out.push_str(c.pick(&GAPS));
            }
            noise(c, style, out);
            match child {
                Node::Text(t) => render_text(t, c, style, out),
                Node::Element(child) => render_element(child, c, scope, style, out),
            }
        }
        let n = e.children.len();
        if n > 0 && !is_text(n - 1) && c.chance(1, 2) {
            out.push_str(c.pick(&GAPS));
        }
        noise(c, style, out);
        out.push_str("</");
        out.push_str(&qname);
        if c.chance(1, 8) {
            out.push(' ');
        }
        out.push('>');
    }
    scope.0.truncate(mark);
}

/// Maybe a comment or processing instruction: never content.
fn noise(c: &mut Choices<'_, '_>, style: &Style, out: &mut String) {
    if c.chance(1, 6) {
        if style.processing_instructions && c.chance(1, 3) {
            out.push_str(c.pick(&["<?pi data?>", "<?x-y?>", "<?t a='b'?>"]));
        } else {
            out.push_str(c.pick(&["<!---->", "<!-- note -->", "<!--a-b-->", "<!--<&>-->"]));
        }
    }
}

pub fn render_text(t: &str, c: &mut Choices<'_, '_>, style: &Style, out: &mut String) {
    let chars: Vec<char> = t.chars().collect();
    let mut in_cdata = false;
    for (i, &ch) in chars.iter().enumerate() {
        if c.chance(1, 8) {
            if in_cdata {
                out.push_str("]]>");
            } else {
                out.push_str("<![CDATA[");
            }
            in_cdata = !in_cdata;
        }
        if !in_cdata {
            noise_in_text(c, style, out);
        }
        if in_cdata {
            if ch == '\r' || (ch == '>' && out.ends_with("]]")) {
                out.push_str("]]>");
                in_cdata = false;
            } else {
                if ch == '\n' {
                    out.push_str(c.pick(&["\n", "\r\n"]));
                } else {
                    out.push(ch);
                }
                continue;
            }
        }
        let next_is_newline = !style.lone_cr || chars.get(i + 1).is_none_or(|&n| n == '\n');
        match ch {
            '<' => out.push_str(c.pick(&["&lt;", "&#60;", "&#x3c;"])),
            '&' => out.push_str(c.pick(&["&amp;", "&#38;", "&#x26;"])),
            '>' if out.ends_with("]]") => out.push_str("&gt;"),
            '>' => out.push_str(c.pick(&[">", "&gt;", "&#62;"])),
            '\r' => out.push_str(c.pick(&["&#13;", "&#xD;"])),
            '\n' if next_is_newline => out.push_str(c.pick(&["\n", "\r\n", "&#10;", "&#xA;"])),
            // A lone CR is a line end too, when no LF follows it.
            '\n' => out.push_str(c.pick(&["\n", "\r\n", "&#10;", "&#xA;", "\r"])),
            '"' => out.push_str(c.pick(&["\"", "&quot;", "&#34;"])),
            '\'' => out.push_str(c.pick(&["'", "&apos;", "&#39;"])),
            _ => char_or_reference(ch, c, out),
        }
    }
    if in_cdata {
        out.push_str("]]>");
    }
}

fn noise_in_text(c: &mut Choices<'_, '_>, style: &Style, out: &mut String) {
    if c.chance(1, 24) {
        noise(c, style, out);
    }
}

fn char_or_reference(ch: char, c: &mut Choices<'_, '_>, out: &mut String) {
    match c.index(8) {
        0 => out.push_str(&format!("&#{};", ch as u32)),
        1 => out.push_str(&format!("&#x{:X};", ch as u32)),
        _ => out.push(ch),
    }
}

/// An attribute value whose normalized value (XML 1.0 §3.3.3, CDATA type)
/// is `v`: literal tabs and line ends stand for spaces, references for
/// themselves.
pub fn attribute_value(
    v: &str,
    quote: char,
    c: &mut Choices<'_, '_>,
    literal_whitespace: bool,
) -> String {
    let mut out = String::new();
    for ch in v.chars() {
        match ch {
            ' ' if literal_whitespace => {
                out.push_str(c.pick(&[" ", " ", "\t", "\n", "\r\n", "&#32;", "&#x20;"]))
            }
            ' ' => out.push_str(c.pick(&[" ", " ", "&#32;", "&#x20;"])),
            '\t' => out.push_str(c.pick(&["&#9;", "&#x9;"])),
            '\n' => out.push_str(c.pick(&["&#10;", "&#xA;"])),
            '\r' => out.push_str(c.pick(&["&#13;", "&#xD;"])),
            '<' => out.push_str(c.pick(&["&lt;", "&#60;"])),
            '&' => out.push_str(c.pick(&["&amp;", "&#38;"])),
            '>' => out.push_str(c.pick(&[">", "&gt;"])),
            '"' if quote == '"' => out.push_str(c.pick(&["&quot;", "&#34;"])),
            '\'' if quote == '\'' => out.push_str(c.pick(&["&apos;", "&#39;"])),
            _ => char_or_reference(ch, c, &mut out),
        }
    }
    out
}

/// Escapes text for content with the plain entity references only.
pub fn escape_text(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '&' => out.push_str("&amp;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            _ => out.push(ch),
        }
    }
    out
}
