//! SOAP request envelopes: one streaming pass (quick-xml) that checks the
//! message is a well-formed SOAP envelope and finds the operation element.
//!
//! This runs on every POST, hits included, so it never builds a tree: it
//! records byte ranges and the namespace scope at the operation element, and
//! the key selectors (`key::selector`, `key::canonical`) read the operation element
//! again from those bytes alone.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, ResolveResult};

use crate::soap::addressing::{Addressing, Collector};
use crate::soap::SoapVersion;
use crate::xml::proof::Proof;
use crate::xml::{append_character_data, ExpandedName, FragmentReader};

/// Deeper nesting than this is refused: real SOAP messages are shallow, and
/// the bound keeps every later pass (selectors, digest) linear and small.
pub const MAX_DEPTH: usize = 256;

/// More namespace declarations than this in one message are refused (real
/// SOAP messages declare a handful); see `check_attributes`.
pub const MAX_NAMESPACE_DECLARATIONS: usize = 512;

/// More attributes than this on one element are refused.
pub const MAX_ATTRIBUTES: usize = 256;

/// Why a request body is not an acceptable SOAP envelope. `version` is the
/// envelope's version when it got far enough to tell, so that the fault can
/// be answered in the requester's own SOAP version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct EnvelopeError {
    pub version: Option<SoapVersion>,
    pub reason: String,
}

impl EnvelopeError {
    fn new(version: Option<SoapVersion>, reason: impl Into<String>) -> Self {
        EnvelopeError {
            version,
            reason: reason.into(),
        }
    }
}

/// The first element child of `Body`: its name, its exact bytes and the
/// namespace bindings in scope at its start tag (declared on `Envelope`,
/// `Body` or itself), so that it can be read on its own.
#[derive(Debug, Clone)]
pub struct OperationElement<'a> {
    pub name: ExpandedName,
    pub xml: &'a [u8],
    /// Where `xml` stands in `document`.
    pub range: Range<usize>,
    /// The whole request body, for evaluators that need a full tree.
    pub document: &'a [u8],
    scope: NamespaceResolver,
}

impl<'a> OperationElement<'a> {
    /// A namespace-resolving reader over this element alone.
    pub fn reader(&self) -> FragmentReader<'a> {
        FragmentReader::new(self.xml, self.scope.clone())
    }
}

/// What soapcache needs to know about a request envelope.
#[derive(Debug, Clone)]
pub struct RequestEnvelope<'a> {
    pub version: SoapVersion,
    /// `None` for an empty `Body`.
    pub operation: Option<OperationElement<'a>>,
    /// A WS-Security `Security` header block is present: the request carries
    /// credentials, so its answer is private unless the policy says otherwise.
    pub has_security_header: bool,
    /// WS-Addressing headers and `wsu:Expires`, when it has them.
    pub addressing: Addressing,
}

/// Checks `body` is a well-formed SOAP envelope without a DTD and finds its
/// operation. One pass over the whole body, no tree.
pub fn parse_request(body: &[u8]) -> Result<RequestEnvelope<'_>, EnvelopeError> {
    match scan(body, false)? {
        Scanned::Whole(envelope) => Ok(envelope),
        Scanned::Head(head) => Err(EnvelopeError::new(
            Some(head.version),
            "incomplete envelope",
        )),
    }
}

/// What the first bytes of a large request tell: enough to route it and
/// name its operation while the rest streams through unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub version: SoapVersion,
    /// `None` when the operation's start tag is not within the head.
    pub operation: Option<ExpandedName>,
    pub has_security_header: bool,
}

/// Reads the first bytes of a request up to its operation's start tag. A
/// DTD or a root that is not a SOAP Envelope is refused as in
/// `parse_request`; running out of bytes is not an error here.
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, EnvelopeError> {
    match scan(head, true)? {
        Scanned::Head(head) => Ok(head),
        Scanned::Whole(envelope) => Ok(RequestHead {
            version: envelope.version,
            operation: envelope.operation.map(|op| op.name),
            has_security_header: envelope.has_security_header,
        }),
    }
}

// Made once per request and moved out at once: boxing the large variant
// would cost an allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
enum Scanned<'a> {
    Whole(RequestEnvelope<'a>),
    Head(RequestHead),
}

/// The one pass behind `parse_request` (`head_only = false`: the whole
/// body, every well-formedness check) and `parse_request_head` (stop at the
/// operation's start tag or where the bytes end).
fn scan(body: &[u8], head_only: bool) -> Result<Scanned<'_>, EnvelopeError> {
    // quick-xml skips a UTF-8 byte order mark without counting it in its
    // positions: read past it ourselves so ranges index `body` exactly.
    let bom = if body.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let document = body;
    let body = &body[bom..];
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    // Names are resolved outside the operation's content only (see
    // `in_content`).
    let mut resolver = NamespaceResolver::default();

    let mut version: Option<SoapVersion> = None;
    // Element stack depth; 1 = Envelope, 2 = Header/Body, 3 = their children.
    let mut depth = 0usize;
    let mut in_header = false;
    let mut in_body = false;
    let mut seen_body = false;
    let mut has_security_header = false;
    let mut operation: Option<OperationElement<'_>> = None;
    let mut operation_start: Option<(usize, ExpandedName, NamespaceResolver)> = None;
    let mut root_done = false;
    let mut declarations = 0usize;
    let mut addressing = Collector::default();
    let mut proof = Proof::new(body);
    if bom > 0 {
        proof.leave_open();
    }

    loop {
        let before = reader.buffer_position() as usize;
        let read = reader.read_event();
        let event = match read {
            Ok(ok) => ok,
            // A head ends anywhere, mid-tag included.
            Err(_) if head_only && version.is_some() => {
                return Ok(Scanned::Head(RequestHead {
                    version: version.unwrap_or(SoapVersion::V11),
                    operation: None,
                    has_security_header,
                }))
            }
            Err(e) => return Err(EnvelopeError::new(version, format!("malformed XML: {e}"))),
        };
        if !head_only {
            proof.event(&event, before);
        }
        let is_empty = matches!(event, Event::Empty(_));
        match event {
            Event::DocType(_) => {
                return Err(EnvelopeError::new(
                    version,
                    "a DTD is not allowed in a SOAP message",
                ))
            }
            Event::Start(ref start) | Event::Empty(ref start) => {
                if root_done {
                    return Err(EnvelopeError::new(
                        version,
                        "malformed XML: content after the root element",
                    ));
                }
                if head_only || proof.is_open() {
                    check_attributes(start, version, &mut declarations)?;
                } else {
                    // The proof has read this tag's attributes, their syntax
                    // and uniqueness included, and holds at most a handful.
                    declarations += proof
                        .attributes()
                        .iter()
                        .filter(|(key, _)| is_namespace_declaration(key))
                        .count();
                }
                if declarations > MAX_NAMESPACE_DECLARATIONS {
                    let reason =
                        format!("more than {MAX_NAMESPACE_DECLARATIONS} namespace declarations");
                    return Err(EnvelopeError::new(version, reason));
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(EnvelopeError::new(
                        version,
                        format!("XML nesting deeper than {MAX_DEPTH} elements"),
                    ));
                }
                let in_content = in_content(in_body, depth);
                let ns = if in_content {
                    None
                } else {
                    resolver
                        .push(start)
                        .map_err(|e| EnvelopeError::new(version, format!("malformed XML: {e}")))?;
                    namespace_of(resolver.resolve_element(start.name()).0, version)?
                };
                let local = start.local_name();
                match depth {
                    1 => {
                        version = match (local.as_ref(), ns.and_then(SoapVersion::from_namespace)) {
                            (b"Envelope", Some(v)) => Some(v),
                            (b"Envelope", None) => {
                                return Err(EnvelopeError::new(
                                    None,
                                    "Envelope is not in a known SOAP envelope namespace",
                                ))
                            }
                            _ => {
                                return Err(EnvelopeError::new(
                                    None,
                                    "the root element is not a SOAP Envelope",
                                ))
                            }
                        };
                    }
                    2 => {
                        let env_ns = version.map(|v| v.namespace().as_bytes());
                        let is_env = ns == env_ns;
                        match local.as_ref() {
                            b"Header" if is_env && !seen_body => in_header = !is_empty,
                            b"Body" if is_env && !seen_body => {
                                in_body = true;
                                seen_body = true;
                            }
                            _ => {
                                return Err(EnvelopeError::new(
                                    version,
                                    "Envelope may contain only Header and Body",
                                ))
                            }
                        }
                    }
                    3.. if in_header => {
                        if depth == 3 && local.as_ref() == b"Security" {
                            has_security_header = true;
                        }
                        // `<` name and attributes `>` (or `/>`).
                        let tag = start.len() + if is_empty { 3 } else { 2 };
                        let after = before + bom + tag;
                        addressing.start(depth, ns, local.as_ref(), before + bom, after, is_empty);
                    }
                    3 if in_body && operation.is_none() && operation_start.is_none() => {
                        let name = ExpandedName {
                            namespace: String::from_utf8_lossy(ns.unwrap_or_default()).into_owned(),
                            local: String::from_utf8_lossy(local.as_ref()).into_owned(),
                        };
                        if head_only {
                            return Ok(Scanned::Head(RequestHead {
                                version: version.unwrap_or(SoapVersion::V11),
                                operation: Some(name),
                                has_security_header,
                            }));
                        }
                        let end = reader.buffer_position() as usize;
                        let scope = resolver.clone();
                        if is_empty {
                            operation = Some(OperationElement {
                                name,
                                xml: &body[before..end],
                                range: before + bom..end + bom,
                                document,
                                scope,
                            });
                        } else {
                            operation_start = Some((before, name, scope));
                        }
                    }
                    _ => {}
                }
                if is_empty {
                    if !in_content {
                        resolver.pop();
                    }
                    depth -= 1;
                    if depth == 0 {
                        root_done = true;
                    }
                }
            }
            Event::End(_) => {
                if !in_content(in_body, depth) {
                    resolver.pop();
                }
                if in_header && depth >= 3 {
                    let after = reader.buffer_position() as usize + bom;
                    addressing.end(depth, before + bom, after);
                }
                if depth == 3 && in_body {
                    if let Some((start, name, scope)) = operation_start.take() {
                        let end = reader.buffer_position() as usize;
                        operation = Some(OperationElement {
                            name,
                            xml: &body[start..end],
                            range: start + bom..end + bom,
                            document,
                            scope,
                        });
                    }
                }
                if depth == 2 {
                    in_header = false;
                    in_body = false;
                }
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    root_done = true;
                }
            }
            Event::Text(ref text)
                if (depth <= 1 || depth == 2 && in_body)
                    && !text.iter().all(u8::is_ascii_whitespace) =>
            {
                let at = if depth == 0 {
                    "outside"
                } else {
                    "directly inside"
                };
                let what = match depth {
                    0 => "the root element",
                    1 => "Envelope",
                    _ => "Body",
                };
                return Err(EnvelopeError::new(
                    version,
                    format!("text {at} {what} is not allowed"),
                ));
            }
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)
                if in_header && addressing.wants_text() =>
            {
                addressing
                    .text(&event)
                    .map_err(|e| EnvelopeError::new(version, format!("malformed XML: {e}")))?;
            }
            Event::CData(_) if depth <= 1 => {
                return Err(EnvelopeError::new(version, "CDATA outside Body content"))
            }
            Event::GeneralRef(_) if depth <= 1 || depth == 2 && in_body => {
                return Err(EnvelopeError::new(
                    version,
                    "malformed XML: text outside elements",
                ))
            }
            Event::GeneralRef(_) => {
                // Only character references and the five predefined
                // entities exist without a DTD.
                append_character_data(&event, &mut String::new())
                    .map_err(|e| EnvelopeError::new(version, format!("malformed XML: {e}")))?;
            }
            Event::Eof => break,
            _ => {}
        }
    }

    let Some(version) = version else {
        return Err(EnvelopeError::new(None, "empty body: no SOAP Envelope"));
    };
    if head_only {
        return Ok(Scanned::Head(RequestHead {
            version,
            operation: operation.map(|op| op.name),
            has_security_header,
        }));
    }
    if !root_done {
        return Err(EnvelopeError::new(
            Some(version),
            "malformed XML: the document ends before Envelope is closed",
        ));
    }
    if !seen_body {
        return Err(EnvelopeError::new(Some(version), "Envelope has no Body"));
    }
    check_well_formed(document, version, proof.holds())?;
    Ok(Scanned::Whole(RequestEnvelope {
        version,
        operation,
        has_security_header,
        addressing: addressing.finish(),
    }))
}

/// The full well-formedness check quick-xml's scan does not make (names,
/// characters, attribute values, attributes duplicated after namespace
/// resolution, ...): the scan's own proof when it holds (`proven`, see
/// `xml::proof`), else roxmltree, a strict parser. It runs only for bodies
/// not seen before: repeats are answered from the memo without any parse.
fn check_well_formed(
    document: &[u8],
    version: SoapVersion,
    proven: bool,
) -> Result<(), EnvelopeError> {
    let malformed =
        |reason: String| EnvelopeError::new(Some(version), format!("malformed XML: {reason}"));
    let text = std::str::from_utf8(document).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
    if proven {
        return Ok(());
    }
    names_resolve(document, version)?;
    roxmltree::Document::parse(text).map_err(|e| malformed(e.to_string()))?;
    Ok(())
}

/// Whether an element at `depth` is inside the operation's content. The
/// scan looks up no name there, and the bindings declared there go out of
/// scope before any name it looks up, so it neither resolves those names
/// nor pushes those bindings: resolving every element (quick-xml's
/// `NsReader`) was about a fifth of the scan's instructions. Prefixes there
/// are checked with the rest of the content's well-formedness: by the
/// proof, or when that does not hold by `check_well_formed`.
fn in_content(in_body: bool, depth: usize) -> bool {
    in_body && depth > 3
}

/// Every element name's prefix is bound, and no binding is one Namespaces
/// in XML forbids, read with the scan's own words for namespace errors.
/// The proof checks all of it when it holds; roxmltree lets one thing
/// through that quick-xml's resolution refuses: a prefix "undeclared" by
/// `xmlns:p=""` (XML 1.1 only) and then used.
fn names_resolve(document: &[u8], version: SoapVersion) -> Result<(), EnvelopeError> {
    let version = Some(version);
    let mut reader = quick_xml::NsReader::from_reader(document);
    loop {
        match reader.read_resolved_event() {
            Ok((resolved, Event::Start(_) | Event::Empty(_))) => {
                namespace_of(resolved, version)?;
            }
            Ok((_, Event::Eof)) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(EnvelopeError::new(version, format!("malformed XML: {e}"))),
        }
    }
}

/// A prefix with no declaration makes the document not namespace-well-formed.
fn namespace_of(
    resolved: ResolveResult<'_>,
    version: Option<SoapVersion>,
) -> Result<Option<&[u8]>, EnvelopeError> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(Some(ns.0)),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(EnvelopeError::new(
            version,
            format!(
                "malformed XML: undeclared namespace prefix '{}'",
                String::from_utf8_lossy(&prefix)
            ),
        )),
    }
}

/// `xmlns` or `xmlns:prefix`.
fn is_namespace_declaration(key: &[u8]) -> bool {
    key.strip_prefix(b"xmlns")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b':')
}

/// Attribute syntax and uniqueness are part of well-formedness; quick-xml
/// checks them only when the attributes are iterated. Also counts the
/// namespace declarations: resolving a name looks through the bindings in
/// scope, so many declarations times many elements would cost time
/// quadratic in the body size.
fn check_attributes(
    start: &BytesStart<'_>,
    version: Option<SoapVersion>,
    declarations: &mut usize,
) -> Result<(), EnvelopeError> {
    let mut count = 0usize;
    for attribute in start.attributes() {
        match attribute {
            Err(e) => return Err(EnvelopeError::new(version, format!("malformed XML: {e}"))),
            Ok(a) if a.key.as_namespace_binding().is_some() => *declarations += 1,
            Ok(_) => {}
        }
        count += 1;
        if count > MAX_ATTRIBUTES {
            let reason = format!("more than {MAX_ATTRIBUTES} attributes on one element");
            return Err(EnvelopeError::new(version, reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::{SOAP12_DRAFT_NS, SOAP12_NS};

    const SOAP11: &str = r#"<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:catalog">
  <soap:Header><wsse:Security xmlns:wsse="urn:wsse"/></soap:Header>
  <soap:Body>
    <c:CatalogPriceRequest><c:PartNumber>ABC-1234</c:PartNumber></c:CatalogPriceRequest>
  </soap:Body>
</soap:Envelope>"#;

    #[test]
    fn finds_version_operation_and_its_exact_bytes() {
        let env = parse_request(SOAP11.as_bytes()).expect("valid");
        assert_eq!(env.version, SoapVersion::V11);
        assert!(env.has_security_header);
        let op = env.operation.expect("operation");
        assert_eq!(op.name.namespace, "urn:catalog");
        assert_eq!(op.name.local, "CatalogPriceRequest");
        assert_eq!(
            std::str::from_utf8(op.xml).unwrap(),
            "<c:CatalogPriceRequest><c:PartNumber>ABC-1234</c:PartNumber></c:CatalogPriceRequest>"
        );
        assert_eq!(&SOAP11.as_bytes()[op.range.clone()], op.xml);
    }

    #[test]
    fn the_fragment_reader_resolves_inherited_prefixes() {
        let env = parse_request(SOAP11.as_bytes()).unwrap();
        let op = env.operation.unwrap();
        let mut reader = op.reader();
        let mut names = Vec::new();
        loop {
            match reader.next_event().unwrap() {
                Event::Start(s) => {
                    let (ns, local) = reader.resolve_element(s.name());
                    let ns = match ns {
                        ResolveResult::Bound(n) => String::from_utf8(n.0.to_vec()).unwrap(),
                        other => format!("{other:?}"),
                    };
                    names.push(format!("{ns} {}", String::from_utf8_lossy(local.as_ref())));
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(
            names,
            ["urn:catalog CatalogPriceRequest", "urn:catalog PartNumber"]
        );
    }

    #[test]
    fn soap12_and_the_2001_draft_are_recognised() {
        for (ns, v) in [
            (SOAP12_NS, SoapVersion::V12),
            (SOAP12_DRAFT_NS, SoapVersion::Draft2001),
        ] {
            let xml = format!(
                r#"<e:Envelope xmlns:e="{ns}"><e:Body><Op xmlns="urn:x"/></e:Body></e:Envelope>"#
            );
            let env = parse_request(xml.as_bytes()).unwrap();
            assert_eq!(env.version, v);
            assert_eq!(env.operation.unwrap().xml, b"<Op xmlns=\"urn:x\"/>");
        }
    }

    #[test]
    fn namespace_errors_inside_the_operation_are_refused() {
        // The scan resolves no name inside the operation: these are the
        // proof's to refuse, or `check_well_formed`'s when a CR leaves the
        // proof open.
        let refused = [
            r#"<q:a/>"#,
            r#"<p:a xmlns:p=""/>"#,
            r#"<a xmlns:xml="urn:other"/>"#,
            r#"<a xmlns:xmlns="urn:x"/>"#,
            r#"<a xmlns:p="http://www.w3.org/2000/xmlns/"/>"#,
            r#"<a xmlns:p="http://www.w3.org/XML/1998/namespace"/>"#,
            r#"<xmlns:a/>"#,
            r#"<a q:n="1"/>"#,
            r#"<a xmlns:q="urn:q"/><q:b/>"#,
        ];
        let accepted = [
            r#"<a xmlns=""><b/></a>"#,
            r#"<q:a xmlns:q="urn:q"><q:b/></q:a>"#,
            r#"<a xml:lang="en"/>"#,
        ];
        for (content, ok) in refused
            .iter()
            .map(|c| (c, false))
            .chain(accepted.iter().map(|c| (c, true)))
        {
            for line_end in ["\n", "\r\n"] {
                let xml = format!(
                    r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">{line_end}<soap:Body><Op xmlns="urn:x">{content}</Op></soap:Body></soap:Envelope>"#
                );
                let result = parse_request(xml.as_bytes());
                assert_eq!(result.is_ok(), ok, "{xml:?}: {result:?}");
            }
        }
    }

    #[test]
    fn rejects_dtds_malformed_xml_and_non_soap() {
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>"#;
        assert!(parse_request(dtd.as_bytes())
            .unwrap_err()
            .reason
            .contains("DTD"));

        let unclosed = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><a></soap:Body></soap:Envelope>"#;
        let err = parse_request(unclosed.as_bytes()).unwrap_err();
        assert_eq!(err.version, Some(SoapVersion::V11));

        let truncated = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><a/>"#;
        assert!(parse_request(truncated.as_bytes()).is_err());

        assert_eq!(parse_request(b"<a/>").unwrap_err().version, None);
        assert!(parse_request(b"").is_err());
        assert!(parse_request(b"not xml at all").is_err());
        let no_body = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"/>"#;
        assert!(parse_request(no_body.as_bytes()).is_err());
        let dup_attr = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><a x="1" x="2"/></soap:Body></soap:Envelope>"#;
        assert!(parse_request(dup_attr.as_bytes()).is_err());
        let undeclared = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><q:a/></soap:Body></soap:Envelope>"#;
        assert!(parse_request(undeclared.as_bytes()).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut xml = String::from(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>"#,
        );
        xml.push_str(&"<a>".repeat(MAX_DEPTH + 1));
        xml.push_str(&"</a>".repeat(MAX_DEPTH + 1));
        xml.push_str("</soap:Body></soap:Envelope>");
        assert!(parse_request(xml.as_bytes())
            .unwrap_err()
            .reason
            .contains("nesting"));
    }

    #[test]
    fn the_head_of_a_large_request_names_its_operation() {
        let cut = &SOAP11.as_bytes()[..SOAP11.find("<c:PartNumber>").unwrap() + 5];
        let head = parse_request_head(cut).expect("head");
        assert_eq!(head.version, SoapVersion::V11);
        assert!(head.has_security_header);
        assert_eq!(head.operation.unwrap().local, "CatalogPriceRequest");
        // Cut before the operation: known version, no operation yet.
        let early = &SOAP11.as_bytes()[..SOAP11.find("<soap:Body>").unwrap() + 3];
        assert_eq!(parse_request_head(early).unwrap().operation, None);
        // A DTD or another root is refused even in a head.
        assert!(parse_request_head(b"<!DOCTYPE x []><x/>").is_err());
        assert!(parse_request_head(b"<order><item>").is_err());
    }

    #[test]
    fn floods_of_namespace_declarations_or_attributes_are_refused() {
        // Spread over three elements, each within the attribute bound.
        let decls = |from: usize, n: usize| -> String {
            (from..from + n)
                .map(|i| format!(" xmlns:n{i}=\"u\""))
                .collect()
        };
        let third = MAX_NAMESPACE_DECLARATIONS / 3 + 1;
        let xml = format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"{}><soap:Body{}><a{}/></soap:Body></soap:Envelope>"#,
            decls(0, third),
            decls(third, third),
            decls(2 * third, third)
        );
        assert!(parse_request(xml.as_bytes())
            .unwrap_err()
            .reason
            .contains("namespace declarations"));
        let attrs: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}=\"1\""))
            .collect();
        let xml = format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><a{attrs}/></soap:Body></soap:Envelope>"#
        );
        assert!(parse_request(xml.as_bytes())
            .unwrap_err()
            .reason
            .contains("attributes"));
    }

    #[test]
    fn what_a_quick_scan_would_let_through_is_refused_too() {
        let wrap = |op: &str| {
            format!(
                r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{op}</soap:Body></soap:Envelope>"#
            )
        };
        for bad in [
            r#"<a x="1<2"/>"#,
            r#"<a x="&bogus;"/>"#,
            r#"<a q:x="1"/>"#,
            r#"<a xmlns:p="u" xmlns:q="u" p:x="1" q:x="2"/>"#,
            "<a>\u{1}</a>",
            "<a><!-- a -- b --></a>",
            "<a>]]></a>",
        ] {
            let err = parse_request(wrap(bad).as_bytes()).expect_err(bad);
            assert_eq!(err.version, Some(SoapVersion::V11), "{bad}");
        }
        assert!(parse_request(b"<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><a>\xff</a></soap:Body></soap:Envelope>").is_err());
    }

    #[test]
    fn a_byte_order_mark_does_not_shift_the_operation() {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend_from_slice(SOAP11.as_bytes());
        let env = parse_request(&body).expect("valid with a BOM");
        let op = env.operation.unwrap();
        assert!(op.xml.starts_with(b"<c:CatalogPriceRequest>"));
        assert_eq!(&body[op.range.clone()], op.xml);
    }
}
