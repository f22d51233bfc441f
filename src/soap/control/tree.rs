//! The tree reading of a response: roxmltree, a strict parser, for bodies
//! outside the streaming proof's plain shape, and the reference the
//! streaming reading is checked against.

use std::ops::Range;

use super::{code_blames_sender, role_is_ours, ControlBlock, ResponseEnvelope, CACHE_NS};
use crate::soap::addressing::{AddressingPart, WsaVersion};
use crate::soap::SoapVersion;

/// Reads a response body with roxmltree: `None` when it is not a
/// well-formed SOAP envelope. The caller has bounded its namespace
/// declarations (see `inspect_response`).
pub fn read(body: &[u8], roles: &[String]) -> Option<ResponseEnvelope> {
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
    code_blames_sender(&code.map(|c| text_of(&c)).unwrap_or_default())
}

/// A block without `actor`/`role` is for the next node on the path, which is
/// us; otherwise its role must be `next` or one the policy says we play.
fn is_addressed_to_us(block: &roxmltree::Node<'_, '_>, env_ns: &str, roles: &[String]) -> bool {
    let role = block
        .attribute((env_ns, "role"))
        .or_else(|| block.attribute((env_ns, "actor")));
    role_is_ours(role, roles)
}

/// The string-value of an element: all its descendant text, trimmed.
fn text_of(node: &roxmltree::Node<'_, '_>) -> String {
    let mut out = String::new();
    for d in node.descendants().filter(|d| d.is_text()) {
        out.push_str(d.text().unwrap_or_default());
    }
    out.trim().to_owned()
}
