//! Key selection by policy XPath (reference §3): each expression is evaluated with
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

use crate::soap::envelope::OperationElement;
use crate::xml::{append_character_data, FragmentReader};

mod lexer;
mod parser;
mod sxd;

use lexer::{check_names, tokenize};
use parser::{RawPiece, StreamingParser};
use sxd::{sxd_dialect, SxdTree};

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
/// expressions keep their source and are re-parsed per evaluation, a small
/// cost next to the document parse they need anyway.
#[derive(Debug)]
pub struct Selector {
    expressions: Vec<Expression>,
    /// Distinct location paths of all streaming expressions, evaluated in one pass.
    paths: Vec<PathPattern>,
    /// The policy's namespace bindings, for the sxd-xpath context.
    namespaces: Vec<(String, String)>,
    has_sxd: bool,
    /// Each expression as the policy wrote it, for `explain`.
    sources: Vec<String>,
}

/// Which evaluator runs an expression (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    /// The streaming plan: one quick-xml pass, no tree.
    Streaming,
    /// sxd-xpath, on a tree of the whole request.
    SxdXpath,
}

impl Evaluator {
    /// As `explain` names it.
    pub fn label(self) -> &'static str {
        match self {
            Evaluator::Streaming => "streaming",
            Evaluator::SxdXpath => "sxd-xpath",
        }
    }
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
            sources: expressions.to_vec(),
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

    /// Each expression as written, with the evaluator that runs it.
    pub fn expressions(&self) -> impl Iterator<Item = (&str, Evaluator)> {
        self.sources
            .iter()
            .zip(&self.expressions)
            .map(|(source, expression)| {
                let evaluator = match expression {
                    Expression::Streaming(_) => Evaluator::Streaming,
                    Expression::Sxd(_) => Evaluator::SxdXpath,
                };
                (source.as_str(), evaluator)
            })
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

/// An attribute's XPath value (see `xml::attribute_value`).
fn attribute_value(raw: &[u8]) -> Result<String, SelectorError> {
    crate::xml::attribute_value(raw)
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

#[cfg(test)]
mod tests;
