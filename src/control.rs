//! Responses: is it a SOAP envelope, is it a fault, which `CacheControl`
//! blocks are addressed to soapcache (SOAP 1.1 `actor`, SOAP 1.2 `role`), and
//! their byte ranges so they can be cut out of the original bytes (SPEC §5).
//!
//! Responses are read on the miss path only, so a roxmltree tree is fine
//! here: it gives exact byte ranges for splicing.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::envelope::SoapVersion;

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
    pub control: Option<ControlBlock>,
    /// Byte ranges of every addressed `CacheControl` block, in order.
    pub strip: Vec<Range<usize>>,
}

/// Reads a response body. `None` when it is not a well-formed SOAP envelope
/// (not UTF-8, not XML, a DTD, another root): such bodies pass untouched
/// and are never stored.
pub fn inspect_response(body: &[u8], roles: &[String]) -> Option<ResponseEnvelope> {
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
    let is_fault = body_element
        .children()
        .find(|n| n.is_element())
        .is_some_and(|n| {
            n.tag_name().name() == "Fault" && n.tag_name().namespace() == Some(env_ns)
        });

    let mut control = None;
    let mut strip = Vec::new();
    if let Some(header) = child("Header") {
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
        control,
        strip,
    })
}

/// A block without `actor`/`role` is for the next node on the path, which is
/// us; otherwise its role must be `next` or one the policy says we play.
fn is_addressed_to_us(block: &roxmltree::Node<'_, '_>, env_ns: &str, roles: &[String]) -> bool {
    let role = block
        .attribute((env_ns, "role"))
        .or_else(|| block.attribute((env_ns, "actor")));
    match role {
        None => true,
        Some(role) => {
            let role = role.trim();
            NEXT_ROLES.contains(&role) || roles.iter().any(|r| r == role)
        }
    }
}

/// The string-value of an element: all its descendant text, trimmed.
fn text_of(node: &roxmltree::Node<'_, '_>) -> String {
    let mut out = String::new();
    for d in node.descendants().filter(|d| d.is_text()) {
        out.push_str(d.text().unwrap_or_default());
    }
    out.trim().to_owned()
}

/// The body with the given (sorted, disjoint) ranges cut out; every other
/// byte is the original. Returns the body itself when there is nothing to cut.
pub fn splice(body: &Bytes, strip: &[Range<usize>]) -> Bytes {
    if strip.is_empty() {
        return body.clone();
    }
    let removed: usize = strip.iter().map(|r| r.len()).sum();
    let mut out = BytesMut::with_capacity(body.len().saturating_sub(removed));
    let mut at = 0;
    for range in strip {
        out.extend_from_slice(&body[at..range.start]);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    out.freeze()
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
}
