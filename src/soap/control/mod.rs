//! Responses: is it a SOAP envelope, is it a fault, which `CacheControl`
//! blocks are addressed to soapcache (SOAP 1.1 `actor`, SOAP 1.2 `role`), and
//! their byte ranges so they can be cut out of the original bytes (reference §5).
//!
//! Two readings give the same answer: a streaming one (`stream`) that
//! proves the document well-formed as it goes, and roxmltree's tree
//! (`tree`) for bodies outside the proof's plain shape.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::soap::addressing::AddressingPart;
use crate::soap::SoapVersion;

pub mod stream;
pub mod tree;

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
///
/// One streaming pass reads what is needed and proves the whole document
/// well-formed on the way (`xml::proof`); a body outside the proof's plain
/// shape is read by roxmltree instead, as it always was. Both readings
/// agree wherever the proof holds: the `splice` fuzz target and the
/// property tests check that.
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
    // Not UTF-8: `stream::read` decides `None` (one check of every byte).
    match stream::read(body, roles) {
        stream::Read::Decided(envelope) => envelope,
        stream::Read::Unproven => tree::read(body, roles),
    }
}

fn role_is_ours(role: Option<&str>, roles: &[String]) -> bool {
    role.is_none_or(|role| {
        let role = role.trim();
        NEXT_ROLES.contains(&role) || roles.iter().any(|r| r == role)
    })
}

/// Whether a fault code (its text, `prefix:Local` or a dotted refinement
/// `Client.Authentication`) blames the sender: SOAP 1.1 `Client`, SOAP 1.2
/// `Sender`.
fn code_blames_sender(code: &str) -> bool {
    let local = code.rsplit(':').next().unwrap_or_default();
    let head = local.split('.').next().unwrap_or_default();
    head == "Client" || head == "Sender"
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
    use crate::xml::proof::sweep::{mutate, Rng};

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

    /// A SOAP response of the shapes services send, with the variations
    /// both readings must agree on: versions, prefixes, roles and actors,
    /// fields with references, CDATA, comments or markup, reply headers,
    /// faults, repeated or reordered Header and Body.
    fn response(rng: &mut Rng) -> String {
        let (env, code) = match rng.below(2) {
            0 => ("http://schemas.xmlsoap.org/soap/envelope/", 11),
            _ => ("http://www.w3.org/2003/05/soap-envelope", 12),
        };
        let e = rng.pick(&["s", "env", "soap"]);
        let mut out = String::new();
        if rng.below(2) == 0 {
            out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
        }
        out.push_str(&format!("<{e}:Envelope xmlns:{e}=\"{env}\""));
        if rng.below(2) == 0 {
            out.push_str(" xmlns:wsa=\"http://www.w3.org/2005/08/addressing\"");
        }
        out.push('>');
        let text = |rng: &mut Rng| {
            rng.pick(&[
                "k-1",
                " spaced ",
                "a&amp;b",
                "&#65;&#x42;",
                "<![CDATA[c<d]]>",
                "x<!-- c -->y",
                "<i>in</i>ner",
                "",
                "2099-01-01T00:00:00Z",
                "PT60S",
                "\n  60\n",
            ])
            .to_owned()
        };
        let mut header = String::new();
        for _ in 0..rng.below(5) {
            let block = match rng.below(7) {
                0 | 1 => {
                    let role = rng
                        .pick(&[
                            "",
                            " {e}:role=\"http://www.w3.org/2003/05/soap-envelope/role/next\"",
                            " {e}:actor=\"http://schemas.xmlsoap.org/soap/actor/next\"",
                            " {e}:role=\"urn:other\"",
                            " {e}:role=\" urn:ours \"",
                            " role=\"urn:other\"",
                            " {e}:actor=\"urn:ours\" {e}:role=\"urn:other\"",
                        ])
                        .replace("{e}", e);
                    let c = rng.pick(&["ca", "c"]);
                    let mut fields = String::new();
                    for _ in 0..rng.below(4) {
                        let name = rng.pick(&["CacheKey", "Expires", "MaxAge", "Other"]);
                        let inner = text(rng);
                        if inner.is_empty() && rng.below(2) == 0 {
                            fields.push_str(&format!("<{c}:{name}/>"));
                        } else {
                            fields.push_str(&format!("<{c}:{name}>{inner}</{c}:{name}>"));
                        }
                    }
                    if fields.is_empty() && rng.below(2) == 0 {
                        format!("<{c}:CacheControl xmlns:{c}=\"{CACHE_NS}\"{role}/>")
                    } else {
                        format!("<{c}:CacheControl xmlns:{c}=\"{CACHE_NS}\"{role}>{fields}</{c}:CacheControl>")
                    }
                }
                2 | 3 => {
                    let name = rng.pick(&["RelatesTo", "MessageID"]);
                    let ns = rng.pick(&[
                        "http://www.w3.org/2005/08/addressing",
                        "http://schemas.xmlsoap.org/ws/2004/08/addressing",
                    ]);
                    let inner = rng.pick(&["urn:uuid:1", "", " urn:x ", "u<!--c-->v", "&amp;"]);
                    if inner.is_empty() && rng.below(2) == 0 {
                        format!("<a:{name} xmlns:a=\"{ns}\"/>")
                    } else {
                        format!("<a:{name} xmlns:a=\"{ns}\">{inner}</a:{name}>")
                    }
                }
                4 => "<wsa:MessageID>urn:uuid:2</wsa:MessageID>".to_owned(),
                5 => "<x:Trace xmlns:x=\"urn:x\"><x:CacheKey>no</x:CacheKey></x:Trace>".to_owned(),
                _ => "\n    ".to_owned(),
            };
            header.push_str(&block);
        }
        let fault = match (rng.below(3), code) {
            (0, 11) => format!(
                "<{e}:Fault><faultcode>{}</faultcode><faultstring>x</faultstring></{e}:Fault>",
                rng.pick(&["s:Client", "Client.Auth", "s:Server", " Client "])
            ),
            (0, _) => format!(
                "<{e}:Fault><{e}:Code><{e}:Value>{}</{e}:Value></{e}:Code><{e}:Reason><{e}:Text xml:lang=\"en\">x</{e}:Text></{e}:Reason></{e}:Fault>",
                rng.pick(&["env:Sender", "e:Receiver", "Sender"])
            ),
            _ => "<p:Answer xmlns:p=\"urn:p\"><p:Price>42</p:Price></p:Answer>".to_owned(),
        };
        let header = format!("<{e}:Header>{header}</{e}:Header>");
        let body = format!("<{e}:Body>{fault}</{e}:Body>");
        match rng.below(6) {
            0 => out.push_str(&body),
            1 => out.push_str(&format!("{body}{header}")),
            2 => out.push_str(&format!("{header}{header}{body}{body}")),
            _ => out.push_str(&format!("{header}\n  {body}")),
        }
        out.push_str(&format!("</{e}:Envelope>"));
        out
    }

    /// The streaming reading, where it is sure of itself, is the tree
    /// reading: over generated responses and the same mutated.
    #[test]
    fn both_readings_agree() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let roles = vec!["urn:ours".to_owned()];
        let (mut proven, mut plain, mut plain_proven) = (0, 0, 0);
        let total = 30_000;
        for i in 0..total {
            let mut doc = response(&mut rng);
            let mutated = i % 3 == 2;
            if mutated {
                mutate(&mut rng, &mut doc);
            }
            plain += usize::from(!mutated);
            let tree = tree::read(doc.as_bytes(), &roles);
            if let stream::Read::Decided(streamed) = stream::read(doc.as_bytes(), &roles) {
                proven += 1;
                plain_proven += usize::from(!mutated);
                assert_eq!(streamed, tree, "the readings differ on {doc:?}");
            }
            assert_eq!(inspect_response(doc.as_bytes(), &roles), tree, "{doc:?}");
        }
        assert!(
            plain_proven * 10 >= plain * 7,
            "only {plain_proven} of {plain} plain responses read by the stream"
        );
        eprintln!("{proven} of {total} read by the stream");
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
