//! Responses: is it a SOAP envelope, is it a fault, which `CacheControl`
//! blocks are addressed to soapcache (SOAP 1.1 `actor`, SOAP 1.2 `role`), and
//! their byte ranges so they can be cut out of the original bytes (reference §5).
//!
//! Responses are read on the miss path only, so a roxmltree tree is fine
//! here: it gives exact byte ranges for splicing.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::soap::addressing::{AddressingPart, WsaVersion};
use crate::soap::SoapVersion;

/// Namespace of the `CacheControl` header block.
pub const CACHE_NS: &str = "http://example.org/2001/06/cache";

/// The `next` role (SOAP 1.2) / actor (SOAP 1.1, 2001/12 draft): every
/// intermediary plays it.
const NEXT_ROLES: [&str; 4] = [
    "http://schemas.xmlsoap.org/soap/actor/next",
    "http://www.w3.org/2003/05/soap-envelope/role/next",
    "http://www.w3.org/2001/12/soap-envelope/actor/next",
    "http://www.w3.org/2001/12/soap-envelope/role/next",
];

/// See `inspect_response`: the same bound as requests have.
const MAX_DECLARATIONS: usize = crate::soap::envelope::MAX_NAMESPACE_DECLARATIONS;

/// The content of the first `CacheControl` block addressed to soapcache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlBlock {
    pub cache_key: Option<String>,
    pub expires: Option<String>,
    pub max_age: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseEnvelope {
    pub version: SoapVersion,
    pub is_fault: bool,
    /// For a fault: whether its code blames the sender (SOAP 1.1 `Client`,
    /// SOAP 1.2 `env:Sender`), which retrying cannot help.
    pub sender_fault: bool,
    pub control: Option<ControlBlock>,
    /// Byte ranges of every addressed `CacheControl` block, in order.
    pub strip: Vec<Range<usize>>,
    /// The WS-Addressing reply headers a stored copy must not replay as
    /// they are (reference §5), by position.
    pub addressing: Vec<(AddressingPart, Range<usize>)>,
}

impl ResponseEnvelope {
    /// The addressing ranges as they fall in the body with the `strip`
    /// blocks cut out: shifted by what was cut before them; one that
    /// overlaps a cut block is dropped.
    pub fn addressing_after_strip(&self) -> Vec<(AddressingPart, Range<usize>)> {
        let strip = &self.strip;
        self.addressing
            .iter()
            .filter(|(_, r)| !strip.iter().any(|s| s.start < r.end && r.start < s.end))
            .map(|(part, r)| {
                let cut: usize = strip
                    .iter()
                    .filter(|s| s.end <= r.start)
                    .map(|s| s.len())
                    .sum();
                (*part, r.start - cut..r.end - cut)
            })
            .collect()
    }
}

/// Reads a response body. `None` when it is not a well-formed SOAP envelope
/// (not UTF-8, not XML, a DTD, another root): such bodies pass untouched
/// and are never stored.
pub fn inspect_response(body: &[u8], roles: &[String]) -> Option<ResponseEnvelope> {
    // roxmltree gives every element that declares a namespace its own copy
    // of the bindings in scope: thousands of declarations on thousands of
    // elements would take memory quadratic in the body. Real SOAP answers
    // declare a handful; a flood is passed on untouched and never stored.
    let declarations = memchr::memmem::find_iter(body, b"xmlns")
        .take(MAX_DECLARATIONS + 1)
        .count();
    if declarations > MAX_DECLARATIONS {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let envelope = doc.root_element();
    let version = SoapVersion::from_namespace(envelope.tag_name().namespace()?.as_bytes())?;
    if envelope.tag_name().name() != "Envelope" {
        return None;
    }
    let env_ns = version.namespace();
    let child = |name: &str| {
        envelope.children().find(|n| {
            n.is_element()
                && n.tag_name().name() == name
                && n.tag_name().namespace() == Some(env_ns)
        })
    };
    let body_element = child("Body")?;
    let fault = body_element
        .children()
        .find(|n| n.is_element())
        .filter(|n| n.tag_name().name() == "Fault" && n.tag_name().namespace() == Some(env_ns));
    let is_fault = fault.is_some();
    let sender_fault = fault.is_some_and(|f| blames_sender(&f, version));

    let mut control = None;
    let mut strip = Vec::new();
    let mut addressing = Vec::new();
    if let Some(header) = child("Header") {
        addressing = reply_headers(&header);
        for block in header.children().filter(|n| {
            n.is_element()
                && n.tag_name().name() == "CacheControl"
                && n.tag_name().namespace() == Some(CACHE_NS)
        }) {
            if !is_addressed_to_us(&block, env_ns, roles) {
                continue;
            }
            strip.push(block.range());
            if control.is_none() {
                let field = |name: &str| {
                    block
                        .children()
                        .find(|n| {
                            n.is_element()
                                && n.tag_name().name() == name
                                && n.tag_name().namespace() == Some(CACHE_NS)
                        })
                        .map(|n| text_of(&n))
                };
                control = Some(ControlBlock {
                    cache_key: field("CacheKey"),
                    expires: field("Expires"),
                    max_age: field("MaxAge"),
                });
            }
        }
    }
    Some(ResponseEnvelope {
        version,
        is_fault,
        sender_fault,
        control,
        strip,
        addressing,
    })
}

/// `RelatesTo` (the element and its text) and `MessageID` (its text) among
/// the header blocks, in either WS-Addressing namespace, first of each.
fn reply_headers(header: &roxmltree::Node<'_, '_>) -> Vec<(AddressingPart, Range<usize>)> {
    let text_range = |n: &roxmltree::Node<'_, '_>| {
        let first = n.first_child()?;
        let last = n.last_child()?;
        Some(first.range().start..last.range().end)
    };
    let mut parts = Vec::new();
    let (mut relates_to, mut message_id) = (false, false);
    for block in header.children().filter(|n| n.is_element()) {
        let wsa = block
            .tag_name()
            .namespace()
            .is_some_and(|ns| WsaVersion::of(ns.as_bytes()).is_some());
        if !wsa {
            continue;
        }
        match block.tag_name().name() {
            "RelatesTo" if !relates_to => {
                relates_to = true;
                parts.push((AddressingPart::RelatesToElement, block.range()));
                if let Some(text) = text_range(&block) {
                    parts.push((AddressingPart::RelatesToText, text));
                }
            }
            "MessageID" if !message_id => {
                message_id = true;
                if let Some(text) = text_range(&block) {
                    parts.push((AddressingPart::MessageIdText, text));
                }
            }
            _ => {}
        }
    }
    parts.sort_by_key(|(_, r)| (r.start, std::cmp::Reverse(r.end)));
    parts
}

/// The fault code's local part: SOAP 1.1 `faultcode` (`Client`, or a
/// dotted refinement `Client.Authentication`), SOAP 1.2 `Code/Value`.
fn blames_sender(fault: &roxmltree::Node<'_, '_>, version: SoapVersion) -> bool {
    fn element<'a, 'i>(
        parent: &roxmltree::Node<'a, 'i>,
        name: &str,
    ) -> Option<roxmltree::Node<'a, 'i>> {
        parent
            .children()
            .find(|n| n.is_element() && n.tag_name().name() == name)
    }
    let code = if version.is_11() {
        element(fault, "faultcode")
    } else {
        element(fault, "Code").and_then(|code| element(&code, "Value"))
    };
    let text = code.map(|c| text_of(&c)).unwrap_or_default();
    let local = text.rsplit(':').next().unwrap_or_default();
    let head = local.split('.').next().unwrap_or_default();
    head == "Client" || head == "Sender"
}

/// A block without `actor`/`role` is for the next node on the path, which is
/// us; otherwise its role must be `next` or one the policy says we play.
fn is_addressed_to_us(block: &roxmltree::Node<'_, '_>, env_ns: &str, roles: &[String]) -> bool {
    let role = block
        .attribute((env_ns, "role"))
        .or_else(|| block.attribute((env_ns, "actor")));
    role_is_ours(role, roles)
}

fn role_is_ours(role: Option<&str>, roles: &[String]) -> bool {
    role.is_none_or(|role| {
        let role = role.trim();
        NEXT_ROLES.contains(&role) || roles.iter().any(|r| r == role)
    })
}

/// The string-value of an element: all its descendant text, trimmed.
fn text_of(node: &roxmltree::Node<'_, '_>) -> String {
    let mut out = String::new();
    for d in node.descendants().filter(|d| d.is_text()) {
        out.push_str(d.text().unwrap_or_default());
    }
    out.trim().to_owned()
}

/// The addressed `CacheControl` blocks of a response known only by its
/// first bytes (a large answer that streams through): a streaming scan of
/// the envelope's `Header`, which precedes `Body`. Empty when `Body` does not
/// start within `head` or the head is not a SOAP envelope, so a block is
/// cut only when the scan is certain of it.
pub fn addressed_blocks_in_head(head: &[u8], roles: &[String]) -> Vec<Range<usize>> {
    use quick_xml::events::Event;
    use quick_xml::name::ResolveResult;

    let mut reader = quick_xml::NsReader::from_reader(head);
    let mut depth = 0usize;
    let mut version = None;
    let mut blocks = Vec::new();
    let mut open_block: Option<usize> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let Ok((resolved, event)) = reader.read_resolved_event() else {
            return Vec::new();
        };
        let ns = match &resolved {
            ResolveResult::Bound(ns) => Some(ns.0.to_vec()),
            _ => None,
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                depth += 1;
                let local = e.local_name();
                match depth {
                    1 => {
                        version = ns.as_deref().and_then(SoapVersion::from_namespace);
                        if version.is_none() || local.as_ref() != b"Envelope" {
                            return Vec::new();
                        }
                    }
                    2 if local.as_ref() == b"Body" => return blocks,
                    3 if local.as_ref() == b"CacheControl"
                        && ns.as_deref() == Some(CACHE_NS.as_bytes()) =>
                    {
                        let env_ns = version.map_or("", |v| v.namespace());
                        let role = e.attributes().flatten().find_map(|a| {
                            let (attr_ns, attr_local) = reader.resolve_attribute(a.key);
                            let in_env = matches!(attr_ns, ResolveResult::Bound(n) if n.0 == env_ns.as_bytes());
                            let named = matches!(attr_local.as_ref(), b"role" | b"actor");
                            (in_env && named).then(|| String::from_utf8_lossy(&a.value).into_owned())
                        });
                        if role_is_ours(role.as_deref(), roles) {
                            if is_empty {
                                blocks.push(before..reader.buffer_position() as usize);
                            } else {
                                open_block = Some(before);
                            }
                        }
                    }
                    _ => {}
                }
                if is_empty {
                    depth -= 1;
                }
            }
            Event::End(_) => {
                if depth == 3 {
                    if let Some(start) = open_block.take() {
                        blocks.push(start..reader.buffer_position() as usize);
                    }
                }
                depth = depth.saturating_sub(1);
            }
            Event::DocType(_) | Event::Eof => return Vec::new(),
            _ => {}
        }
    }
}

/// The body with the given (sorted, disjoint) ranges cut out; every other
/// byte is the original. Returns the body itself when there is nothing to cut.
pub fn splice(body: &Bytes, strip: &[Range<usize>]) -> Bytes {
    if strip.is_empty() {
        return body.clone();
    }
    let kept = kept(body, strip);
    let mut out = BytesMut::with_capacity(kept.iter().map(|p| p.len()).sum());
    for piece in kept {
        out.extend_from_slice(piece);
    }
    out.freeze()
}

/// The pieces of the body around the given (sorted, disjoint) ranges: what
/// [`splice`] joins, for a caller that copies them somewhere itself.
pub fn kept<'a>(body: &'a [u8], strip: &[Range<usize>]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::with_capacity(strip.len() + 1);
    let mut at = 0;
    for range in strip {
        pieces.push(body.get(at..range.start).unwrap_or_default());
        at = range.end;
    }
    pieces.push(body.get(at..).unwrap_or_default());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- priced by the catalog -->
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">
  <env:Header>
    <ca:CacheControl xmlns:ca="http://example.org/2001/06/cache">
      <ca:CacheKey>ABC-1234</ca:CacheKey>
      <ca:Expires>2001-03-09T08:00:00Z</ca:Expires>
    </ca:CacheControl>
    <x:Other xmlns:x="urn:x">keep</x:Other>
  </env:Header>
  <env:Body><p:Price xmlns:p="urn:p">42.00</p:Price></env:Body>
</env:Envelope>"#;

    #[test]
    fn reads_the_addressed_block_and_its_exact_range() {
        let info = inspect_response(RESPONSE.as_bytes(), &[]).expect("soap");
        assert_eq!(info.version, SoapVersion::V12);
        assert!(!info.is_fault);
        let control = info.control.expect("control");
        assert_eq!(control.cache_key.as_deref(), Some("ABC-1234"));
        assert_eq!(control.expires.as_deref(), Some("2001-03-09T08:00:00Z"));
        assert_eq!(control.max_age, None);
        let cut = &RESPONSE[info.strip[0].clone()];
        assert!(cut.starts_with("<ca:CacheControl") && cut.ends_with("</ca:CacheControl>"));
    }

    #[test]
    fn a_fault_says_whether_it_blames_the_sender() {
        let v11 = |code: &str| {
            format!("<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>{code}</faultcode><faultstring>x</faultstring></s:Fault></s:Body></s:Envelope>")
        };
        let v12 = |code: &str| {
            format!("<e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\"><e:Body><e:Fault><e:Code><e:Value>{code}</e:Value></e:Code><e:Reason><e:Text xml:lang=\"en\">x</e:Text></e:Reason></e:Fault></e:Body></e:Envelope>")
        };
        for (body, sender) in [
            (v11("s:Client"), true),
            (v11("Client.Authentication"), true),
            (v11("s:Server"), false),
            (v12("e:Sender"), true),
            (v12("e:Receiver"), false),
        ] {
            let info = inspect_response(body.as_bytes(), &[]).unwrap();
            assert!(info.is_fault, "{body}");
            assert_eq!(info.sender_fault, sender, "{body}");
        }
        assert!(
            !inspect_response(RESPONSE.as_bytes(), &[])
                .unwrap()
                .sender_fault
        );
    }

    #[test]
    fn splicing_removes_exactly_the_block() {
        let body = Bytes::from_static(RESPONSE.as_bytes());
        let info = inspect_response(&body, &[]).unwrap();
        let stripped = splice(&body, &info.strip);
        let block = &RESPONSE[info.strip[0].clone()];
        assert_eq!(stripped, RESPONSE.replacen(block, "", 1).as_bytes());
        assert!(inspect_response(&stripped, &[]).unwrap().control.is_none());
    }

    #[test]
    fn blocks_for_other_roles_stay_and_are_not_obeyed() {
        let other = RESPONSE.replace(
            "<ca:CacheControl xmlns:ca",
            r#"<ca:CacheControl env:role="urn:someone-else" xmlns:ca"#,
        );
        let info = inspect_response(other.as_bytes(), &[]).unwrap();
        assert!(info.control.is_none() && info.strip.is_empty());
        let ours = inspect_response(other.as_bytes(), &["urn:someone-else".to_owned()]).unwrap();
        assert!(ours.control.is_some());
        let next = RESPONSE.replace(
            "<ca:CacheControl xmlns:ca",
            r#"<ca:CacheControl env:role="http://www.w3.org/2003/05/soap-envelope/role/next" xmlns:ca"#,
        );
        assert!(inspect_response(next.as_bytes(), &[])
            .unwrap()
            .control
            .is_some());
    }

    #[test]
    fn soap11_actor_and_faults() {
        let fault = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><c:CacheControl xmlns:c="http://example.org/2001/06/cache" s:actor="http://schemas.xmlsoap.org/soap/actor/next"><c:CacheKey>k</c:CacheKey></c:CacheControl></s:Header><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>x</faultstring></s:Fault></s:Body></s:Envelope>"#;
        let info = inspect_response(fault.as_bytes(), &[]).unwrap();
        assert!(info.is_fault);
        assert_eq!(info.strip.len(), 1);
    }

    #[test]
    fn non_soap_bodies_are_not_envelopes() {
        assert!(inspect_response(b"<html/>", &[]).is_none());
        assert!(inspect_response(b"\xff\xfe", &[]).is_none());
        assert!(inspect_response(b"<!DOCTYPE x><x/>", &[]).is_none());
    }

    #[test]
    fn blocks_are_found_in_the_head_of_a_streaming_answer() {
        let info = inspect_response(RESPONSE.as_bytes(), &[]).unwrap();
        let body_at = RESPONSE.find("<env:Body>").unwrap();
        // Enough bytes to see Body start: the same block as the full parse.
        let head = &RESPONSE.as_bytes()[..body_at + 12];
        assert_eq!(addressed_blocks_in_head(head, &[]), info.strip);
        // Body not reached yet: nothing is certain, nothing is cut.
        assert!(addressed_blocks_in_head(&RESPONSE.as_bytes()[..body_at - 5], &[]).is_empty());
        assert!(addressed_blocks_in_head(b"<html>", &[]).is_empty());
    }

    #[test]
    fn a_flood_of_namespace_declarations_is_not_parsed() {
        let elements: String = (0..600).map(|_| "<a xmlns:b=\"v\"/>").collect();
        let body = format!(
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Header>{elements}</s:Header><s:Body/></s:Envelope>"
        );
        assert!(inspect_response(body.as_bytes(), &[]).is_none());
    }
}
