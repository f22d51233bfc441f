//! Key selection by policy XPath (SPEC §3): each expression is evaluated with
//! the operation element as context node and converted with XPath `string()`;
//! several results are joined with U+001F.
//!
//! Selection runs on every request, hits included, and a hit is a few
//! microseconds in total, so expressions are compiled at policy load into one
//! of two forms:
//!
//! * a **streaming plan** for the forms policies actually use — relative
//!   location paths of child and descendant (`//`) steps with an optional final
//!   attribute step, `.`, `string(…)`, `normalize-space(…)`, and `concat(…)`
//!   of those and string literals. All streaming expressions of a selector
//!   share one quick-xml pass over the operation element's bytes, which stops
//!   as soon as every value is known;
//! * **sxd-xpath** for everything else (predicates, other axes, absolute paths,
//!   arithmetic, other functions): the whole request is parsed into a tree
//!   (≈5× the cost of the streaming pass) and the expression is evaluated with
//!   the operation element as context node.
//!
//! Both forms follow XPath 1.0: name tests match expanded names (namespace URI
//! and local name, never the prefix), an unprefixed name test means "no
//! namespace", and `string()` of a node-set is the string-value of its first
//! node in document order (all descendant character data, CDATA included,
//! references resolved), or `""` for an empty node-set. A property test below
//! checks that the two forms agree.
//!
//! Absolute paths (`/…`, `//x`) start at the document root, so they can match
//! in the SOAP `Header` too; they are left to sxd-xpath rather than being
//! silently narrowed to the operation element.
//!
//! The sxd tree is built from a roxmltree parse, not by sxd-document's own
//! parser, which does not apply a default namespace declared on a prefixed
//! element (`<x:A xmlns="urn:a"><B/></x:A>`) to its descendants.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;

use crate::envelope::{append_character_data, FragmentReader, OperationElement};

/// Joins the values of several key expressions (ASCII "unit separator").
pub const SEPARATOR: char = '\u{1F}';

/// The `xml` prefix is bound by definition in every XML document and XPath
/// context.
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// An expression that does not compile, or a request it cannot be evaluated
/// on. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    /// Index of the expression the error is about, when it is about one.
    pub index: Option<usize>,
    pub message: String,
}

impl SelectorError {
    fn at(index: usize, message: impl Into<String>) -> Self {
        SelectorError {
            index: Some(index),
            message: message.into(),
        }
    }

    fn request(message: impl Into<String>) -> Self {
        SelectorError {
            index: None,
            message: message.into(),
        }
    }
}

/// The compiled `key` expressions of one policy operation.
///
/// Holds only owned, immutable data, so it is `Send + Sync` and can sit in the
/// shared policy set. sxd-xpath's compiled `XPath` is neither, so sxd
/// expressions keep their source and are re-parsed per evaluation; that costs
/// about a microsecond next to the ≈25 µs/KB document parse they need anyway.
#[derive(Debug)]
pub struct Selector {
    expressions: Vec<Expression>,
    /// Distinct location paths of all streaming expressions, evaluated in one pass.
    paths: Vec<PathPattern>,
    /// The policy's namespace bindings, for the sxd-xpath context.
    namespaces: Vec<(String, String)>,
    has_sxd: bool,
}

#[derive(Debug)]
enum Expression {
    Streaming(Vec<Piece>),
    Sxd(String),
}

#[derive(Debug)]
enum Piece {
    Literal(String),
    Path { path: usize, normalize: bool },
}

/// A relative location path of child / descendant steps, optionally ending in
/// an attribute step. No steps and no attribute = the context node itself.
#[derive(Debug, Clone, PartialEq)]
struct PathPattern {
    steps: Vec<Step>,
    attribute: Option<AttributeStep>,
}

#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// Preceded by `//`: any descendant of the previous step's node, not
    /// only a child.
    descendant: bool,
    test: NameTest,
}

#[derive(Debug, Clone, PartialEq)]
struct AttributeStep {
    /// `…//@a`: attributes of the previous node or any of its descendants.
    descendant: bool,
    namespace: String,
    local: String,
}

#[derive(Debug, Clone, PartialEq)]
enum NameTest {
    Any,
    Namespace(String),
    Name { namespace: String, local: String },
}

impl NameTest {
    fn matches(&self, namespace: &[u8], local: &[u8]) -> bool {
        match self {
            NameTest::Any => true,
            NameTest::Namespace(ns) => ns.as_bytes() == namespace,
            NameTest::Name {
                namespace: ns,
                local: l,
            } => l.as_bytes() == local && ns.as_bytes() == namespace,
        }
    }
}

impl Selector {
    /// Compiles the `key` expressions of a policy operation; `namespaces` are
    /// the policy's `[namespaces]` bindings. Fails on the first expression
    /// that is not valid XPath 1.0, uses an undeclared prefix, a variable or
    /// an unknown function; `SelectorError::index` says which one.
    pub fn compile(
        expressions: &[String],
        namespaces: &[(String, String)],
    ) -> Result<Selector, SelectorError> {
        Self::build(expressions, namespaces, true)
    }

    /// Like [`Selector::compile`], but every expression is evaluated with
    /// sxd-xpath. For tests and benchmarks comparing the two evaluators.
    #[doc(hidden)]
    pub fn compile_with_sxd_only(
        expressions: &[String],
        namespaces: &[(String, String)],
    ) -> Result<Selector, SelectorError> {
        Self::build(expressions, namespaces, false)
    }

    /// True when every expression is evaluated by the streaming plan (no tree
    /// is built on a request).
    pub fn is_streaming(&self) -> bool {
        !self.has_sxd
    }

    fn build(
        expressions: &[String],
        namespaces: &[(String, String)],
        allow_streaming: bool,
    ) -> Result<Selector, SelectorError> {
        if expressions.is_empty() {
            return Err(SelectorError::request(
                "a key needs at least one XPath expression",
            ));
        }
        let mut selector = Selector {
            expressions: Vec::with_capacity(expressions.len()),
            paths: Vec::new(),
            namespaces: namespaces.to_vec(),
            has_sxd: false,
        };
        let factory = sxd_xpath::Factory::new();
        for (index, source) in expressions.iter().enumerate() {
            if nesting(source) > MAX_NESTING {
                let reason = format!("nested deeper than {MAX_NESTING} levels");
                return Err(SelectorError::at(index, invalid(source, &reason)));
            }
            let tokens =
                tokenize(source).map_err(|m| SelectorError::at(index, invalid(source, &m)))?;
            if tokens.is_empty() {
                return Err(SelectorError::at(index, "empty XPath expression"));
            }
            check_names(&tokens, namespaces)
                .map_err(|m| SelectorError::at(index, invalid(source, &m)))?;
            let streaming = if allow_streaming {
                StreamingParser::new(&tokens, namespaces).parse()
            } else {
                None
            };
            match streaming {
                Some(pieces) => {
                    let pieces = pieces
                        .into_iter()
                        .map(|piece| match piece {
                            RawPiece::Literal(text) => Piece::Literal(text),
                            RawPiece::Path(path, normalize) => Piece::Path {
                                path: selector.intern(path),
                                normalize,
                            },
                        })
                        .collect();
                    selector.expressions.push(Expression::Streaming(pieces));
                }
                None => match factory.build(&sxd_dialect(source)) {
                    Ok(Some(_)) => {
                        selector.has_sxd = true;
                        selector
                            .expressions
                            .push(Expression::Sxd(sxd_dialect(source)));
                    }
                    Ok(None) => return Err(SelectorError::at(index, "empty XPath expression")),
                    Err(e) => {
                        return Err(SelectorError::at(
                            index,
                            invalid(source, &format!("syntax error ({e})")),
                        ))
                    }
                },
            }
        }
        Ok(selector)
    }

    fn intern(&mut self, path: PathPattern) -> usize {
        match self.paths.iter().position(|p| *p == path) {
            Some(i) => i,
            None => {
                self.paths.push(path);
                self.paths.len() - 1
            }
        }
    }

    /// The selector value of a request: every expression evaluated with the
    /// operation element as context node, converted with `string()`, joined
    /// with U+001F.
    pub fn select(&self, op: &OperationElement<'_>) -> Result<String, SelectorError> {
        let streamed = if self.paths.is_empty() {
            Vec::new()
        } else {
            self.stream(op)?
        };
        let mut tree = if self.has_sxd {
            Some(SxdTree::parse(op)?)
        } else {
            None
        };
        let mut out = String::new();
        for (i, expression) in self.expressions.iter().enumerate() {
            if i > 0 {
                out.push(SEPARATOR);
            }
            match expression {
                Expression::Streaming(pieces) => {
                    for piece in pieces {
                        match piece {
                            Piece::Literal(text) => out.push_str(text),
                            Piece::Path {
                                path,
                                normalize: false,
                            } => out.push_str(&streamed[*path]),
                            Piece::Path {
                                path,
                                normalize: true,
                            } => push_normalized(&mut out, &streamed[*path]),
                        }
                    }
                }
                Expression::Sxd(source) => {
                    let tree = tree.as_mut().expect("parsed when has_sxd");
                    out.push_str(&tree.evaluate(source, &self.namespaces)?);
                }
            }
        }
        Ok(out)
    }

    /// One pass over the operation element computing the string value of
    /// every path. States are `(path, steps matched)` pairs kept per open
    /// element (an NFA over the ancestor chain), in one flat vector so that
    /// the pass does not allocate per element.
    fn stream(&self, op: &OperationElement<'_>) -> Result<Vec<String>, SelectorError> {
        let n = self.paths.len();
        let mut values = vec![String::new(); n];
        // Path is resolved (value final) / being captured from an open element.
        let mut done = vec![false; n];
        let mut capturing = vec![false; n];
        let mut remaining = n;
        // (path, depth of the element whose text is being collected).
        let mut captures: Vec<(usize, usize)> = Vec::new();
        let mut states: Vec<(u32, u32)> = Vec::new();
        let mut frames: Vec<usize> = Vec::new();
        let mut text = String::new();
        let mut reader = op.reader();
        let read_error = |e: quick_xml::Error| {
            SelectorError::request(format!("reading the operation element: {e}"))
        };

        loop {
            let event = reader.next_event().map_err(read_error)?;
            match event {
                Event::Start(ref start) | Event::Empty(ref start) => {
                    let frame = states.len();
                    if frames.is_empty() {
                        // The operation element: the context node.
                        states.extend((0..n as u32).map(|p| (p, 0)));
                    } else if let Some(&last) = frames.last().filter(|&&last| frame > last) {
                        let (ns, local) = element_name(&reader, start);
                        for j in last..frame {
                            let (p, i) = states[j];
                            let pu = p as usize;
                            if done[pu] || capturing[pu] {
                                continue;
                            }
                            let path = &self.paths[pu];
                            match path.steps.get(i as usize) {
                                Some(step) => {
                                    if step.descendant {
                                        push_state(&mut states, frame, (p, i));
                                    }
                                    if let Some(ns) = ns {
                                        if step.test.matches(ns, local) {
                                            push_state(&mut states, frame, (p, i + 1));
                                        }
                                    }
                                }
                                None => {
                                    if path.attribute.as_ref().is_some_and(|a| a.descendant) {
                                        push_state(&mut states, frame, (p, i));
                                    }
                                }
                            }
                        }
                    }
                    frames.push(frame);
                    let depth = frames.len();
                    for &(p, i) in &states[frame..] {
                        let pu = p as usize;
                        let path = &self.paths[pu];
                        if done[pu] || capturing[pu] || (i as usize) < path.steps.len() {
                            continue;
                        }
                        match &path.attribute {
                            None => {
                                capturing[pu] = true;
                                captures.push((pu, depth));
                            }
                            Some(attribute) => {
                                if let Some(value) = find_attribute(&reader, start, attribute)? {
                                    values[pu] = value;
                                    done[pu] = true;
                                    remaining -= 1;
                                }
                            }
                        }
                    }
                    if matches!(event, Event::Empty(_)) {
                        end_element(
                            &mut frames,
                            &mut states,
                            &mut captures,
                            &mut capturing,
                            &mut done,
                            &mut remaining,
                        );
                    }
                }
                Event::End(_) => {
                    end_element(
                        &mut frames,
                        &mut states,
                        &mut captures,
                        &mut capturing,
                        &mut done,
                        &mut remaining,
                    );
                }
                Event::Eof => break,
                ref other if !captures.is_empty() => {
                    text.clear();
                    if append_character_data(other, &mut text).map_err(read_error)? {
                        for &(p, _) in &captures {
                            values[p].push_str(&text);
                        }
                    }
                }
                _ => {}
            }
            if remaining == 0 {
                break;
            }
        }
        Ok(values)
    }
}

fn invalid(source: &str, message: &str) -> String {
    format!("invalid XPath '{source}': {message}")
}

fn push_state(states: &mut Vec<(u32, u32)>, frame: usize, state: (u32, u32)) {
    if !states[frame..].contains(&state) {
        states.push(state);
    }
}

fn end_element(
    frames: &mut Vec<usize>,
    states: &mut Vec<(u32, u32)>,
    captures: &mut Vec<(usize, usize)>,
    capturing: &mut [bool],
    done: &mut [bool],
    remaining: &mut usize,
) {
    let depth = frames.len();
    captures.retain(|&(p, d)| {
        if d == depth {
            capturing[p] = false;
            done[p] = true;
            *remaining -= 1;
            false
        } else {
            true
        }
    });
    if let Some(frame) = frames.pop() {
        states.truncate(frame);
    }
}

/// The element's namespace URI (`b""` = none) and local name; `None` for an
/// undeclared prefix, which the envelope pass has already refused.
fn element_name<'r, 'n>(
    reader: &'r FragmentReader<'_>,
    start: &'n BytesStart<'_>,
) -> (Option<&'r [u8]>, &'n [u8]) {
    let (resolved, local) = reader.resolve_element(start.name());
    let ns = match resolved {
        ResolveResult::Bound(ns) => Some(ns.into_inner()),
        ResolveResult::Unbound => Some(&b""[..]),
        ResolveResult::Unknown(_) => None,
    };
    (ns, local.into_inner())
}

fn find_attribute(
    reader: &FragmentReader<'_>,
    start: &BytesStart<'_>,
    wanted: &AttributeStep,
) -> Result<Option<String>, SelectorError> {
    for attribute in start.attributes() {
        let attribute = attribute
            .map_err(|e| SelectorError::request(format!("reading the operation element: {e}")))?;
        let key = attribute.key.as_ref();
        if key == b"xmlns" || key.starts_with(b"xmlns:") {
            continue; // namespace declarations are not attributes in XPath
        }
        let (resolved, local) = reader.resolve_attribute(attribute.key);
        let ns: &[u8] = match resolved {
            ResolveResult::Bound(ns) => ns.into_inner(),
            ResolveResult::Unbound => b"",
            ResolveResult::Unknown(_) => continue,
        };
        if local.as_ref() == wanted.local.as_bytes() && ns == wanted.namespace.as_bytes() {
            return attribute_value(&attribute.value).map(Some);
        }
    }
    Ok(None)
}

/// Parentheses and brackets nested deeper than this are refused: sxd-xpath
/// parses recursively and would overflow the stack (a crash of `check`,
/// startup or reload) long before any real key gets near it.
const MAX_NESTING: usize = 64;

/// The deepest nesting of `(` and `[` outside string literals.
fn nesting(source: &str) -> usize {
    let (mut depth, mut deepest, mut quote) = (0usize, 0usize, None);
    for ch in source.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(' | '[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (None, ')' | ']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The expression as sxd-xpath 0.4 reads it: it takes a `*` right after a
/// `,` for the multiplication operator (`concat('k', *[1])` fails to
/// parse), so such name tests are written `child::*`, the same XPath.
fn sxd_dialect(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 8);
    let mut quote: Option<char> = None;
    let mut after_comma = false;
    for ch in source.chars() {
        if let Some(q) = quote {
            quote = (ch != q).then_some(q);
            out.push(ch);
            continue;
        }
        match ch {
            '\'' | '"' => {
                quote = Some(ch);
                after_comma = false;
                out.push(ch);
            }
            ',' => {
                after_comma = true;
                out.push(ch);
            }
            c if c.is_ascii_whitespace() => out.push(c),
            '*' if after_comma => {
                out.push_str("child::*");
                after_comma = false;
            }
            c => {
                after_comma = false;
                out.push(c);
            }
        }
    }
    out
}

/// An attribute's XPath value (see `envelope::attribute_value`).
fn attribute_value(raw: &[u8]) -> Result<String, SelectorError> {
    crate::envelope::attribute_value(raw)
        .map_err(|e| SelectorError::request(format!("attribute value: {e}")))
}

/// XPath `normalize-space()`: strip leading and trailing whitespace and
/// collapse inner runs to one space.
fn push_normalized(out: &mut String, text: &str) {
    let mut first = true;
    for word in text.split(is_xpath_space).filter(|w| !w.is_empty()) {
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

fn is_xpath_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

// ---------------------------------------------------------------------------
// sxd-xpath fallback

/// The request parsed by sxd-document, with the operation element found.
struct SxdTree {
    package: sxd_document::Package,
}

impl SxdTree {
    /// Builds the sxd tree from a roxmltree parse rather than with
    /// sxd-document's own parser, which does not apply a default namespace
    /// declared on a prefixed element (`<x:A xmlns="urn:a"><B/></x:A>`) to
    /// its descendants: names here are roxmltree's, resolved per the spec.
    fn parse(op: &OperationElement<'_>) -> Result<SxdTree, SelectorError> {
        let text = std::str::from_utf8(op.document)
            .map_err(|e| SelectorError::request(format!("request is not UTF-8: {e}")))?;
        let tree = roxmltree::Document::parse(text).map_err(|e| {
            SelectorError::request(format!("request does not parse for XPath evaluation: {e}"))
        })?;
        let package = sxd_document::Package::new();
        {
            let document = package.as_document();
            let root = sxd_element(&document, tree.root_element());
            document.root().append_child(root);
        }
        Ok(SxdTree { package })
    }

    fn evaluate(
        &mut self,
        source: &str,
        namespaces: &[(String, String)],
    ) -> Result<String, SelectorError> {
        let document = self.package.as_document();
        let operation = operation_node(&document)
            .ok_or_else(|| SelectorError::request("request has no operation element"))?;
        let xpath = sxd_xpath::Factory::new()
            .build(source)
            .map_err(|e| SelectorError::request(invalid(source, &e.to_string())))?
            .ok_or_else(|| SelectorError::request("empty XPath expression"))?;
        let mut context = sxd_xpath::Context::new();
        context.set_namespace("xml", XML_NS);
        for (prefix, uri) in namespaces {
            context.set_namespace(prefix, uri);
        }
        let value = xpath
            .evaluate(&context, operation)
            .map_err(|e| SelectorError::request(format!("evaluating '{source}': {e}")))?;
        Ok(xpath_string(value))
    }
}

/// The sxd copy of a roxmltree element and everything in it. Recursion
/// depth is bounded by the envelope pass (`envelope::MAX_DEPTH`).
fn sxd_element<'d>(
    document: &sxd_document::dom::Document<'d>,
    node: roxmltree::Node<'_, '_>,
) -> sxd_document::dom::Element<'d> {
    // roxmltree reports the namespace of an element under `xmlns=""` as
    // `Some("")`; for XPath that is no namespace at all.
    let tag = node.tag_name();
    let element = document.create_element(sxd_document::QName::with_namespace_uri(
        no_empty(tag.namespace()),
        tag.name(),
    ));
    for attribute in node.attributes() {
        let name = sxd_document::QName::with_namespace_uri(
            no_empty(attribute.namespace()),
            attribute.name(),
        );
        element.set_attribute_value(name, attribute.value());
    }
    for child in node.children() {
        match child.node_type() {
            roxmltree::NodeType::Element => element.append_child(sxd_element(document, child)),
            roxmltree::NodeType::Text => {
                element.append_child(document.create_text(child.text().unwrap_or_default()))
            }
            roxmltree::NodeType::Comment => {
                element.append_child(document.create_comment(child.text().unwrap_or_default()))
            }
            roxmltree::NodeType::PI => {
                if let Some(pi) = child.pi() {
                    element
                        .append_child(document.create_processing_instruction(pi.target, pi.value));
                }
            }
            roxmltree::NodeType::Root => {}
        }
    }
    element
}

fn no_empty(namespace: Option<&str>) -> Option<&str> {
    namespace.filter(|ns| !ns.is_empty())
}

/// `Envelope/Body/*[1]`.
fn operation_node<'d>(
    document: &sxd_document::dom::Document<'d>,
) -> Option<sxd_document::dom::Element<'d>> {
    let envelope = document
        .root()
        .children()
        .into_iter()
        .find_map(|c| c.element())?;
    let body = envelope
        .children()
        .into_iter()
        .filter_map(|c| c.element())
        .find(|e| {
            e.name().local_part() == "Body"
                && e.name().namespace_uri() == envelope.name().namespace_uri()
        })?;
    body.children().into_iter().find_map(|c| c.element())
}

/// XPath 1.0 `string()` of a value.
fn xpath_string(value: sxd_xpath::Value<'_>) -> String {
    match value {
        sxd_xpath::Value::Number(n) => number_string(n),
        other => other.into_string(),
    }
}

/// Numbers as XPath prints them: integers without a decimal point, no
/// exponent, `NaN`, `Infinity`, `-Infinity`, and `0` for negative zero.
fn number_string(n: f64) -> String {
    if n.is_nan() {
        "NaN".to_owned()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else if n == 0.0 {
        "0".to_owned()
    } else {
        // Rust prints the shortest round-trip decimal and never an
        // exponent, which is what XPath asks for.
        format!("{n}")
    }
}

// ---------------------------------------------------------------------------
// XPath tokens (XPath 1.0 §3.7, with its disambiguation rules)

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(String),
    Number,
    Slash,
    DoubleSlash,
    Dot,
    DotDot,
    At,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// `|`, `+`, `-`, `=`, `!=`, `<`, `<=`, `>`, `>=`, `*` (multiply), `and`, `or`, `mod`, `div`.
    Operator,
    /// `*` as a name test.
    Star,
    Axis,
    NodeType(String),
    Function(Option<String>, String),
    /// `prefix:local`, `local`, or `prefix:*` (local = "*").
    Name(Option<String>, String),
    Variable(Option<String>, String),
}

fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    let skip_space = |mut j: usize| {
        while j < chars.len() && is_xpath_space(chars[j]) {
            j += 1;
        }
        j
    };
    while {
        i = skip_space(i);
        i < chars.len()
    } {
        // XPath 1.0 §3.7: after a token that can end an operand, `*` and
        // names are operators.
        let operator_position = matches!(
            tokens.last(),
            Some(
                Token::Literal(_)
                    | Token::Number
                    | Token::Dot
                    | Token::DotDot
                    | Token::RParen
                    | Token::RBracket
                    | Token::Star
                    | Token::NodeType(_)
                    | Token::Name(..)
                    | Token::Variable(..)
            )
        );
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            '[' => (Token::LBracket, 1),
            ']' => (Token::RBracket, 1),
            ',' => (Token::Comma, 1),
            '@' => (Token::At, 1),
            '|' | '+' | '-' | '=' => (Token::Operator, 1),
            '!' if next == Some('=') => (Token::Operator, 2),
            '<' | '>' if next == Some('=') => (Token::Operator, 2),
            '<' | '>' => (Token::Operator, 1),
            '/' if next == Some('/') => (Token::DoubleSlash, 2),
            '/' => (Token::Slash, 1),
            '.' if next == Some('.') => (Token::DotDot, 2),
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                (Token::Number, number_len(&chars[i..]))
            }
            '.' => (Token::Dot, 1),
            '0'..='9' => (Token::Number, number_len(&chars[i..])),
            '"' | '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&q| q == c)
                    .ok_or("unterminated string literal")?;
                (
                    Token::Literal(chars[i + 1..i + 1 + end].iter().collect()),
                    end + 2,
                )
            }
            '*' if operator_position => (Token::Operator, 1),
            '*' => (Token::Star, 1),
            '$' => {
                let (prefix, local, len) =
                    qname(&chars[i + 1..]).ok_or("'$' must be followed by a variable name")?;
                (Token::Variable(prefix, local), len + 1)
            }
            c if is_name_start(c) => {
                let (prefix, local, len) =
                    qname(&chars[i..]).expect("starts with a name character");
                if operator_position {
                    if prefix.is_none() && matches!(local.as_str(), "and" | "or" | "mod" | "div") {
                        (Token::Operator, len)
                    } else {
                        return Err(format!(
                            "unexpected name '{local}' (an operator was expected)"
                        ));
                    }
                } else {
                    let after = skip_space(i + len);
                    if prefix.is_none()
                        && chars.get(after) == Some(&':')
                        && chars.get(after + 1) == Some(&':')
                    {
                        (Token::Axis, after + 2 - i)
                    } else if chars.get(after) == Some(&'(') && local != "*" {
                        match (prefix, local.as_str()) {
                            (None, "node" | "text" | "comment" | "processing-instruction") => {
                                (Token::NodeType(local), len)
                            }
                            (prefix, _) => (Token::Function(prefix, local), len),
                        }
                    } else {
                        (Token::Name(prefix, local), len)
                    }
                }
            }
            other => return Err(format!("unexpected character '{other}'")),
        };
        tokens.push(token);
        i += len;
    }
    Ok(tokens)
}

fn number_len(chars: &[char]) -> usize {
    let mut len = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    if chars.get(len) == Some(&'.') {
        len += 1;
        len += chars[len..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
    }
    len
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c == '-' || c == '.' || c.is_numeric() || c == '\u{b7}'
}

/// `NCName`, `NCName:NCName` or `NCName:*` at the start of `chars`.
fn qname(chars: &[char]) -> Option<(Option<String>, String, usize)> {
    if !chars.first().is_some_and(|&c| is_name_start(c)) {
        return None;
    }
    let first = chars.iter().take_while(|&&c| is_name_char(c)).count();
    let name: String = chars[..first].iter().collect();
    if chars.get(first) == Some(&':') {
        if chars.get(first + 1) == Some(&'*') {
            return Some((Some(name), "*".to_owned(), first + 2));
        }
        if chars.get(first + 1).is_some_and(|&c| is_name_start(c)) {
            let second = chars[first + 1..]
                .iter()
                .take_while(|&&c| is_name_char(c))
                .count();
            let local = chars[first + 1..first + 1 + second].iter().collect();
            return Some((Some(name), local, first + 1 + second));
        }
    }
    Some((None, name, first))
}

/// XPath 1.0 core functions that sxd-xpath implements, with their arity.
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("last", 0, 0),
    ("position", 0, 0),
    ("count", 1, 1),
    ("local-name", 0, 1),
    ("namespace-uri", 0, 1),
    ("name", 0, 1),
    ("string", 0, 1),
    ("concat", 2, usize::MAX),
    ("starts-with", 2, 2),
    ("contains", 2, 2),
    ("substring-before", 2, 2),
    ("substring-after", 2, 2),
    ("substring", 2, 3),
    ("string-length", 0, 1),
    ("normalize-space", 0, 1),
    ("translate", 3, 3),
    ("boolean", 1, 1),
    ("not", 1, 1),
    ("true", 0, 0),
    ("false", 0, 0),
    ("number", 0, 1),
    ("sum", 1, 1),
    ("floor", 1, 1),
    ("ceiling", 1, 1),
    ("round", 1, 1),
];

/// Checks what sxd-xpath would only find at evaluation time: prefixes bound
/// in the policy, no variables, known functions called with a valid number of
/// arguments.
fn check_names(tokens: &[Token], namespaces: &[(String, String)]) -> Result<(), String> {
    let bound = |prefix: &str| prefix == "xml" || namespaces.iter().any(|(p, _)| p == prefix);
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Name(Some(prefix), _) if !bound(prefix) => {
                return Err(format!(
                    "undefined namespace prefix '{prefix}' (declare it in [namespaces])"
                ))
            }
            Token::Variable(_, name) => {
                return Err(format!("variables are not available (${name})"))
            }
            Token::Function(Some(prefix), local) => {
                return Err(format!("unknown function {prefix}:{local}()"))
            }
            Token::Function(None, name) => {
                let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| f == name) else {
                    return Err(format!("unknown function {name}()"));
                };
                let args = argument_count(&tokens[i + 1..]);
                if args < min || args > max {
                    let expected = match (min, max) {
                        (min, usize::MAX) => format!("at least {min}"),
                        (min, max) if min == max => format!("{min}"),
                        (min, max) => format!("{min} to {max}"),
                    };
                    let plural = if (min, max) == (1, 1) { "" } else { "s" };
                    return Err(format!(
                        "{name}() takes {expected} argument{plural}, not {args}"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Arguments of the call whose `(` starts `tokens` (unbalanced input is left
/// for the XPath parser to report).
fn argument_count(tokens: &[Token]) -> usize {
    let mut depth = 0usize;
    let mut commas = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return if i == 1 { 0 } else { commas + 1 };
                }
            }
            Token::Comma if depth == 1 => commas += 1,
            _ => {}
        }
    }
    commas + 1
}

// ---------------------------------------------------------------------------
// The streaming subset

enum RawPiece {
    Literal(String),
    Path(PathPattern, bool),
}

/// Recognises the streaming subset; `None` sends the expression to sxd-xpath.
struct StreamingParser<'t> {
    tokens: &'t [Token],
    pos: usize,
    namespaces: &'t [(String, String)],
}

impl<'t> StreamingParser<'t> {
    fn new(tokens: &'t [Token], namespaces: &'t [(String, String)]) -> Self {
        StreamingParser {
            tokens,
            pos: 0,
            namespaces,
        }
    }

    fn parse(mut self) -> Option<Vec<RawPiece>> {
        let pieces = match self.peek()? {
            Token::Function(None, name) if name == "concat" => {
                self.pos += 1;
                self.expect(&Token::LParen)?;
                let mut pieces = vec![self.argument()?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    pieces.push(self.argument()?);
                }
                self.expect(&Token::RParen)?;
                pieces
            }
            _ => vec![self.argument()?],
        };
        (self.pos == self.tokens.len()).then_some(pieces)
    }

    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn expect(&mut self, token: &Token) -> Option<()> {
        (self.peek()? == token).then(|| self.pos += 1)
    }

    /// A literal, a path, `string(path?)` or `normalize-space(path?)`.
    fn argument(&mut self) -> Option<RawPiece> {
        match self.peek()? {
            Token::Literal(text) => {
                self.pos += 1;
                Some(RawPiece::Literal(text.clone()))
            }
            Token::Function(None, name) if name == "string" || name == "normalize-space" => {
                let normalize = name == "normalize-space";
                self.pos += 1;
                self.expect(&Token::LParen)?;
                let path = if self.peek() == Some(&Token::RParen) {
                    PathPattern {
                        steps: Vec::new(),
                        attribute: None,
                    }
                } else {
                    self.path()?
                };
                self.expect(&Token::RParen)?;
                Some(RawPiece::Path(path, normalize))
            }
            _ => Some(RawPiece::Path(self.path()?, false)),
        }
    }

    /// A relative location path of `.`, element name tests and a final
    /// attribute step, separated by `/` or `//`.
    fn path(&mut self) -> Option<PathPattern> {
        let mut steps = Vec::new();
        let mut descendant = false;
        loop {
            match self.peek()? {
                Token::Dot => self.pos += 1,
                Token::Star => {
                    self.pos += 1;
                    steps.push(Step {
                        descendant,
                        test: NameTest::Any,
                    });
                    descendant = false;
                }
                Token::Name(prefix, local) => {
                    self.pos += 1;
                    let namespace = self.namespace(prefix.as_deref())?;
                    let test = if local == "*" {
                        NameTest::Namespace(namespace)
                    } else {
                        NameTest::Name {
                            namespace,
                            local: local.clone(),
                        }
                    };
                    steps.push(Step { descendant, test });
                    descendant = false;
                }
                Token::At => {
                    self.pos += 1;
                    let Token::Name(prefix, local) = self.peek()? else {
                        return None;
                    };
                    if local == "*" {
                        // Attribute order within an element is not defined by
                        // XPath; leave `@*` to one evaluator.
                        return None;
                    }
                    self.pos += 1;
                    let attribute = AttributeStep {
                        descendant,
                        namespace: self.namespace(prefix.as_deref())?,
                        local: local.clone(),
                    };
                    return Some(PathPattern {
                        steps,
                        attribute: Some(attribute),
                    });
                }
                _ => return None,
            }
            match self.peek() {
                Some(Token::Slash) => self.pos += 1,
                Some(Token::DoubleSlash) => {
                    self.pos += 1;
                    descendant = true;
                }
                // `a//.` selects `a` first in document order: the pending
                // descendant step changes nothing.
                _ => {
                    return Some(PathPattern {
                        steps,
                        attribute: None,
                    })
                }
            }
        }
    }

    fn namespace(&self, prefix: Option<&str>) -> Option<String> {
        match prefix {
            None => Some(String::new()),
            Some("xml") => Some(XML_NS.to_owned()),
            Some(prefix) => self
                .namespaces
                .iter()
                .find(|(p, _)| p == prefix)
                .map(|(_, uri)| uri.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_request;

    const CATALOG: &str = "http://example.org/2001/06/catalog";

    fn ns() -> Vec<(String, String)> {
        vec![
            ("c".to_owned(), CATALOG.to_owned()),
            ("o".to_owned(), "urn:other".to_owned()),
        ]
    }

    fn envelope(operation: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cat="{CATALOG}">
  <soap:Header><cat:PartNumber>FROM-HEADER</cat:PartNumber></soap:Header>
  <soap:Body>{operation}</soap:Body>
</soap:Envelope>"#
        )
    }

    fn exprs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Selects with the streaming plan and with sxd-xpath, checks they agree.
    fn select_both(operation: &str, list: &[&str]) -> String {
        let xml = envelope(operation);
        let env = parse_request(xml.as_bytes()).expect("valid envelope");
        let op = env.operation.expect("operation");
        let streaming = Selector::compile(&exprs(list), &ns()).expect("compiles");
        let sxd = Selector::compile_with_sxd_only(&exprs(list), &ns()).expect("compiles");
        let a = streaming.select(&op).expect("streaming selects");
        let b = sxd.select(&op).expect("sxd selects");
        assert_eq!(a, b, "streaming and sxd differ for {list:?}");
        a
    }

    fn compile_error(expression: &str) -> String {
        Selector::compile(&exprs(&[expression]), &ns())
            .unwrap_err()
            .message
    }

    const REQUEST: &str = r#"<cat:CatalogPriceRequest xmlns:x="urn:other" id="r1"><cat:PartNumber>ABC-1234</cat:PartNumber><cat:Region>EU</cat:Region><x:Note lang="en">  a  <![CDATA[<b>]]> &amp; &#x41; </x:Note></cat:CatalogPriceRequest>"#;

    #[test]
    fn the_spec_example_selects_the_part_number() {
        assert_eq!(select_both(REQUEST, &["string(c:PartNumber)"]), "ABC-1234");
        let streaming = Selector::compile(&exprs(&["string(c:PartNumber)"]), &ns()).unwrap();
        assert!(streaming.is_streaming());
    }

    #[test]
    fn names_match_by_namespace_uri_not_by_prefix() {
        // The policy says `c`, the request says `cat`; `o` vs `x` likewise.
        assert_eq!(select_both(REQUEST, &["o:Note/@lang"]), "en");
        // An unprefixed name test means "no namespace".
        assert_eq!(select_both(REQUEST, &["string(PartNumber)"]), "");
        let default_ns = format!(
            r#"<CatalogPriceRequest xmlns="{CATALOG}"><PartNumber>P-1</PartNumber></CatalogPriceRequest>"#
        );
        assert_eq!(select_both(&default_ns, &["c:PartNumber"]), "P-1");
        assert_eq!(select_both(&default_ns, &["PartNumber"]), "");
    }

    #[test]
    fn several_expressions_are_joined_with_the_unit_separator() {
        assert_eq!(
            select_both(REQUEST, &["c:PartNumber", "c:Region", "@id"]),
            "ABC-1234\u{1f}EU\u{1f}r1"
        );
    }

    #[test]
    fn string_value_includes_cdata_and_resolved_references() {
        assert_eq!(select_both(REQUEST, &["string(o:Note)"]), "  a  <b> & A ");
        assert_eq!(
            select_both(REQUEST, &["normalize-space(o:Note)"]),
            "a <b> & A"
        );
        assert_eq!(
            select_both(REQUEST, &["string(.)"]),
            "ABC-1234EU  a  <b> & A "
        );
        assert_eq!(
            select_both(REQUEST, &["string()"]),
            "ABC-1234EU  a  <b> & A "
        );
    }

    #[test]
    fn concat_of_paths_and_literals() {
        assert_eq!(
            select_both(
                REQUEST,
                &["concat(c:Region, '/', string(c:PartNumber), \"-\", @id)"]
            ),
            "EU/ABC-1234-r1"
        );
    }

    #[test]
    fn the_first_node_in_document_order_wins() {
        let op = r#"<c:Order xmlns:c="http://example.org/2001/06/catalog"><c:Line n="1"><c:Item>first</c:Item></c:Line><c:Item>second</c:Item><c:Line n="2"><c:Item>third</c:Item></c:Line></c:Order>"#;
        assert_eq!(select_both(op, &[".//c:Item"]), "first");
        assert_eq!(select_both(op, &["c:Item"]), "second");
        assert_eq!(select_both(op, &["c:Line/c:Item"]), "first");
        assert_eq!(select_both(op, &[".//@n"]), "1");
        assert_eq!(select_both(op, &["*/@n"]), "1");
        assert_eq!(select_both(op, &["c:*[2]"]), "second");
        assert_eq!(select_both(op, &["c:Missing"]), "");
        assert_eq!(select_both(op, &["c:Line//@missing"]), "");
    }

    #[test]
    fn nested_matches_are_captured_together() {
        let op =
            r#"<c:A xmlns:c="http://example.org/2001/06/catalog"><c:B>1<c:B>2</c:B>3</c:B></c:A>"#;
        assert_eq!(
            select_both(op, &[".//c:B", "c:B/c:B", "concat(.//c:B//c:B, c:B)"]),
            "123\u{1f}2\u{1f}2123"
        );
    }

    #[test]
    fn absolute_paths_start_at_the_document_root() {
        // `//c:PartNumber` finds the Header's element first: it is not
        // narrowed to the operation element, so it goes to sxd-xpath.
        let s = Selector::compile(&exprs(&["//c:PartNumber"]), &ns()).unwrap();
        assert!(!s.is_streaming());
        assert_eq!(select_both(REQUEST, &["//c:PartNumber"]), "FROM-HEADER");
        assert_eq!(select_both(REQUEST, &[".//c:PartNumber"]), "ABC-1234");
    }

    #[test]
    fn other_xpath_goes_to_sxd_with_xpath_number_formatting() {
        assert_eq!(select_both(REQUEST, &["count(*)"]), "3");
        assert_eq!(select_both(REQUEST, &["1 div 0"]), "Infinity");
        assert_eq!(select_both(REQUEST, &["0 div 0"]), "NaN");
        assert_eq!(select_both(REQUEST, &["-0"]), "0");
        assert_eq!(select_both(REQUEST, &["1.5 * 2"]), "3");
        assert_eq!(select_both(REQUEST, &["c:Region = 'EU'"]), "true");
        assert_eq!(
            select_both(REQUEST, &["translate(c:PartNumber, '-', '')"]),
            "ABC1234"
        );
        assert_eq!(select_both(REQUEST, &["c:*[last()]/@lang | @id"]), "r1");
        assert_eq!(select_both(REQUEST, &["local-name(*[1])"]), "PartNumber");
    }

    #[test]
    fn attributes_are_normalized_as_xml_requires() {
        let op = "<c:A xmlns:c=\"http://example.org/2001/06/catalog\" v=\"a&#10;b\tc &amp; d\"/>";
        let xml = envelope(op);
        let env = parse_request(xml.as_bytes()).unwrap();
        let s = Selector::compile(&exprs(&["@v"]), &ns()).unwrap();
        assert_eq!(s.select(&env.operation.unwrap()).unwrap(), "a\nb c & d");
    }

    #[test]
    fn compile_errors_name_the_problem() {
        assert!(compile_error("string(z:PartNumber)").contains("undefined namespace prefix 'z'"));
        assert!(compile_error("//z:*").contains("undefined namespace prefix 'z'"));
        assert!(compile_error("c:PartNumber[").contains("invalid XPath"));
        assert!(
            compile_error("string(c:A, c:B)").contains("string() takes 0 to 1 arguments, not 2")
        );
        assert!(compile_error("concat(c:A)").contains("at least 2"));
        assert!(compile_error("frobnicate(.)").contains("unknown function frobnicate()"));
        assert!(compile_error("$part").contains("variables"));
        assert!(compile_error("'unterminated").contains("unterminated"));
        assert!(compile_error("   ").contains("empty"));
        let e = Selector::compile(&exprs(&["c:A", "c:B["]), &ns()).unwrap_err();
        assert_eq!(e.index, Some(1));
        // Operator names after an operand are operators, not function calls.
        assert!(
            Selector::compile(&exprs(&["c:A and (c:B)", "2 div (1)", "c:A * 2"]), &ns()).is_ok()
        );
    }

    #[test]
    fn the_streaming_subset_is_recognised() {
        for e in [
            "c:PartNumber",
            "string(c:A/c:B)",
            ".//c:A",
            "c:A//c:B/@id",
            "./c:A/./c:B",
            "@o:id",
            "normalize-space(c:*)",
            "concat('k', c:A, normalize-space(*/@x))",
            "'literal'",
            ".",
        ] {
            let s = Selector::compile(&exprs(&[e]), &ns()).unwrap();
            assert!(s.is_streaming(), "{e} should stream");
        }
        for e in [
            "/c:A",
            "//c:A",
            "c:A[1]",
            "../c:A",
            "child::c:A",
            "@*",
            "c:A | c:B",
            "text()",
            "42",
        ] {
            let s = Selector::compile(&exprs(&[e]), &ns()).unwrap();
            assert!(!s.is_streaming(), "{e} should go to sxd");
        }
    }

    #[test]
    fn selectors_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Selector>();
    }

    mod agreement {
        //! Random requests and expressions from the streaming subset: the
        //! streaming plan and sxd-xpath must select the same value.
        use super::*;
        use proptest::prelude::*;

        const URIS: [&str; 3] = ["urn:a", "urn:b", "urn:c"];
        /// The policy's bindings: two prefixes for one URI, one URI the
        /// requests bind under other prefixes.
        fn policy_ns() -> Vec<(String, String)> {
            vec![
                ("p".to_owned(), "urn:a".to_owned()),
                ("q".to_owned(), "urn:b".to_owned()),
                ("r".to_owned(), "urn:a".to_owned()),
            ]
        }

        #[derive(Debug, Clone)]
        enum Node {
            Element {
                /// None = unprefixed (default namespace in scope applies).
                prefix: Option<&'static str>,
                local: &'static str,
                /// Prefix declarations on this element: (prefix, uri index); "" = default.
                declare: Vec<(&'static str, usize)>,
                attributes: Vec<(Option<&'static str>, &'static str, String)>,
                children: Vec<Node>,
            },
            Text(String),
            CData(String),
        }

        fn text() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "ab", "x y", " ", "  ", "\n", "\t", "&amp;", "&lt;", "&gt;", "&quot;",
                    "&apos;", "&#233;", "&#x41;", "é", "→", "1",
                ]),
                0..4,
            )
            .prop_map(|parts| parts.concat())
        }

        fn attribute_value() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "v", "w z", " ", "&amp;", "&lt;", "&#10;", "&#x9;", "&quot;", "é",
                ]),
                0..3,
            )
            .prop_map(|parts| parts.concat())
        }

        fn node() -> impl Strategy<Value = Node> {
            let leaf = prop_oneof![
                3 => text().prop_map(Node::Text),
                1 => prop::sample::select(vec!["c<d", "]] >", " ", "a&b"]).prop_map(|s| Node::CData(s.to_owned())),
            ];
            let element_leaf = element(Just(Vec::new()).boxed());
            let base = prop_oneof![2 => leaf, 1 => element_leaf];
            base.prop_recursive(5, 40, 4, |inner| {
                element(prop::collection::vec(inner, 0..4).boxed())
            })
        }

        fn element(children: BoxedStrategy<Vec<Node>>) -> impl Strategy<Value = Node> {
            (
                prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
                prop::sample::select(vec!["A", "B", "C"]),
                prop::collection::vec(
                    (prop::sample::select(vec!["", "x", "y", "z"]), 0..URIS.len()),
                    0..2,
                ),
                prop::collection::vec(
                    (
                        prop::option::of(prop::sample::select(vec!["x", "y"])),
                        prop::sample::select(vec!["id", "k"]),
                        attribute_value(),
                    ),
                    0..3,
                ),
                children,
            )
                .prop_map(|(prefix, local, declare, attributes, children)| {
                    Node::Element {
                        prefix,
                        local,
                        declare,
                        attributes,
                        children,
                    }
                })
        }

        /// Serialises with every used prefix declared; duplicate
        /// declarations and duplicate attributes (after namespace
        /// resolution) are dropped.
        fn write(node: &Node, scope: &mut Vec<(String, String)>, out: &mut String) {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::CData(t) => {
                    out.push_str("<![CDATA[");
                    out.push_str(t);
                    out.push_str("]]>");
                }
                Node::Element {
                    prefix,
                    local,
                    declare,
                    attributes,
                    children,
                } => {
                    let mark = scope.len();
                    let mut decls: Vec<(String, String)> = Vec::new();
                    for (p, u) in declare {
                        if !decls.iter().any(|(dp, _)| dp == p) {
                            decls.push((p.to_string(), URIS[*u].to_owned()));
                        }
                    }
                    let mut needed: Vec<&str> = prefix.iter().copied().collect();
                    needed.extend(attributes.iter().filter_map(|(p, _, _)| *p));
                    for p in needed {
                        let declared = decls.iter().any(|(dp, _)| dp == p)
                            || scope.iter().any(|(sp, _)| sp == p);
                        if !declared {
                            decls.push((p.to_owned(), "urn:c".to_owned()));
                        }
                    }
                    let name = match prefix {
                        Some(p) => format!("{p}:{local}"),
                        None => local.to_string(),
                    };
                    out.push('<');
                    out.push_str(&name);
                    for (p, u) in &decls {
                        if p.is_empty() {
                            out.push_str(&format!(" xmlns=\"{u}\""));
                        } else {
                            out.push_str(&format!(" xmlns:{p}=\"{u}\""));
                        }
                    }
                    scope.extend(decls.iter().cloned());
                    let mut seen: Vec<(String, &str)> = Vec::new();
                    for (p, l, v) in attributes {
                        let uri = match p {
                            Some(p) => scope
                                .iter()
                                .rev()
                                .find(|(sp, _)| sp == p)
                                .unwrap()
                                .1
                                .clone(),
                            None => String::new(),
                        };
                        if seen.iter().any(|(su, sl)| *su == uri && sl == l) {
                            continue;
                        }
                        seen.push((uri, l));
                        match p {
                            Some(p) => out.push_str(&format!(" {p}:{l}=\"{v}\"")),
                            None => out.push_str(&format!(" {l}=\"{v}\"")),
                        }
                    }
                    if children.is_empty() {
                        out.push_str("/>");
                    } else {
                        out.push('>');
                        for child in children {
                            write(child, scope, out);
                        }
                        out.push_str(&format!("</{name}>"));
                    }
                    scope.truncate(mark);
                }
            }
        }

        fn request(op: &Node) -> String {
            let mut body = String::new();
            let mut scope = vec![
                ("s".to_owned(), "soap".to_owned()),
                ("x".to_owned(), "urn:a".to_owned()),
                ("y".to_owned(), "urn:b".to_owned()),
            ];
            write(op, &mut scope, &mut body);
            format!(
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:x=\"urn:a\">\
                 <s:Header><x:A>header</x:A></s:Header><s:Body xmlns:y=\"urn:b\">{body}</s:Body></s:Envelope>"
            )
        }

        fn operation() -> impl Strategy<Value = Node> {
            (element(prop::collection::vec(node(), 0..5).boxed()),).prop_map(|(n,)| n)
        }

        fn name_test() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["p:A", "q:B", "r:C", "A", "B", "*", "p:*", "q:*", "."])
                .prop_map(str::to_owned)
        }

        fn path() -> impl Strategy<Value = String> {
            (
                prop::bool::ANY,
                prop::collection::vec((prop::sample::select(vec!["/", "//"]), name_test()), 0..3),
                name_test(),
                prop::option::of(prop::sample::select(vec!["@id", "@k", "@p:id", "@q:k"])),
                prop::sample::select(vec!["/", "//"]),
            )
                .prop_map(|(dot_start, middle, first, attribute, last_sep)| {
                    let mut s = String::new();
                    if dot_start {
                        s.push_str(".//");
                    }
                    s.push_str(&first);
                    for (sep, step) in middle {
                        s.push_str(sep);
                        s.push_str(&step);
                    }
                    if let Some(a) = attribute {
                        s.push_str(last_sep);
                        s.push_str(a);
                    }
                    s
                })
        }

        fn expression() -> impl Strategy<Value = String> {
            prop_oneof![
                path(),
                path().prop_map(|p| format!("string({p})")),
                path().prop_map(|p| format!("normalize-space({p})")),
                prop::sample::select(vec!["@id", "@x:k", "string()", "normalize-space()"])
                    .prop_map(|s| s.replace("x:", "p:")),
                (path(), path()).prop_map(|(a, b)| format!(
                    "concat({a}, '|', string({b}), normalize-space({a}))"
                )),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn streaming_and_sxd_agree(op in operation(), exprs in prop::collection::vec(expression(), 1..4)) {
                let xml = request(&op);
                let env = parse_request(xml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
                let op = env.operation.unwrap();
                let streaming = Selector::compile(&exprs, &policy_ns()).unwrap();
                prop_assert!(streaming.is_streaming(), "{:?} should stream", exprs);
                let sxd = Selector::compile_with_sxd_only(&exprs, &policy_ns()).unwrap();
                let a = streaming.select(&op).unwrap();
                let b = sxd.select(&op).unwrap();
                prop_assert_eq!(a, b, "expressions {:?} on {}", exprs, xml);
            }
        }
    }

    #[test]
    fn fuzzer_findings_stay_fixed() {
        let ns = vec![("c".to_owned(), "urn:x".to_owned())];
        // `xmlns=""` puts an element in no namespace, for sxd too.
        let sel = Selector::compile(&["string(Id[1])".to_owned()], &ns).unwrap();
        let request = |id: &str| {
            format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><c:Op xmlns:c="urn:x" xmlns="urn:x"><Id xmlns="">{id}</Id></c:Op></s:Body></s:Envelope>"#
            )
        };
        let (five, six) = (request("5"), request("6"));
        let select = |xml: &str| {
            let env = crate::envelope::parse_request(xml.as_bytes()).unwrap();
            sel.select(&env.operation.unwrap()).unwrap()
        };
        assert_eq!(
            (select(&five), select(&six)),
            ("5".to_owned(), "6".to_owned())
        );
        // `*` after a comma is a name test, not a multiplication.
        assert!(Selector::compile(&["concat('k', *[1])".to_owned()], &ns).is_ok());
        // Deep nesting is refused, not a stack overflow.
        let deep = format!("{}1{}", "(".repeat(2000), ")".repeat(2000));
        let err = Selector::compile(&[deep], &ns).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }
}
