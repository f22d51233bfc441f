//! Asynchronous replies (reference §12): which callback addresses a queued
//! operation may answer to, the request as the service sees it (answer on
//! this connection), and the callback message made of its answer.

use std::ops::Range;

use bytes::Bytes;
use hyper::Uri;

use super::Callback;
use crate::soap::addressing::{Addressing, Endpoint, WsaVersion};

/// One `reply_to_allowed` entry: an `http://` or `https://` URL whose
/// scheme, host and port must match exactly, and whose path must equal the
/// pattern's, or start with it when the pattern ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyPattern {
    scheme: String,
    host: String,
    port: u16,
    path: String,
    prefix: bool,
    source: String,
}

impl ReplyPattern {
    pub fn parse(text: &str) -> Result<ReplyPattern, String> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(format!("'{text}': '*' may only end a pattern"));
        }
        let uri: Uri = body
            .parse()
            .map_err(|e| format!("'{text}' is not a URL: {e}"))?;
        let (scheme, host, port) = endpoint(&uri)
            .ok_or_else(|| format!("'{text}' is not an http:// or https:// URL with a host"))?;
        Ok(ReplyPattern {
            scheme,
            host,
            port,
            path: uri.path().to_owned(),
            prefix,
            source: text.to_owned(),
        })
    }

    /// Whether soapcache may POST to `address`.
    pub fn allows(&self, address: &str) -> bool {
        let Ok(uri) = address.trim().parse::<Uri>() else {
            return false;
        };
        let Some((scheme, host, port)) = endpoint(&uri) else {
            return false;
        };
        if scheme != self.scheme || host != self.host || port != self.port {
            return false;
        }
        let path = uri.path();
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Scheme, host (lower case) and port (the scheme's default when absent).
fn endpoint(uri: &Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
    Some((scheme, host, uri.port_u16().unwrap_or(default)))
}

/// Whether any pattern allows `address`.
pub fn allowed(patterns: &[ReplyPattern], address: &str) -> bool {
    patterns.iter().any(|p| p.allows(address))
}

/// The request with its `ReplyTo` (and `FaultTo`) made anonymous, so that
/// the service answers soapcache on the same connection. The elements are
/// replaced whole, each declaring its namespace as the default one (no
/// prefix needs to be in scope).
pub fn anonymized(body: &Bytes, addressing: &Addressing) -> Bytes {
    let version = addressing.version.unwrap_or(WsaVersion::V2005);
    let mut replaced: Vec<(&Range<usize>, &str)> = [
        (addressing.reply_to.as_ref(), "ReplyTo"),
        (addressing.fault_to.as_ref(), "FaultTo"),
    ]
    .into_iter()
    .filter_map(|(endpoint, name)| endpoint.map(|e| (&e.range, name)))
    .filter(|(range, _)| range.end <= body.len())
    .collect();
    if replaced.is_empty() {
        return body.clone();
    }
    replaced.sort_by_key(|(range, _)| range.start);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    for (range, name) in replaced {
        if range.start < at {
            continue;
        }
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(
            format!(
                "<{name} xmlns=\"{ns}\"><Address>{anonymous}</Address></{name}>",
                ns = version.namespace(),
                anonymous = version.anonymous()
            )
            .as_bytes(),
        );
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

/// The reference parameters an endpoint asked to have echoed, from the
/// request they were read from.
pub fn reference_parameters<'a>(body: &'a [u8], endpoint: Option<&Endpoint>) -> &'a [u8] {
    endpoint
        .and_then(|e| e.reference_parameters.clone())
        .and_then(|range| body.get(range))
        .unwrap_or_default()
}

/// Why an answer cannot be made into a callback.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("the service's answer is not a SOAP envelope: {0}")]
    NotSoap(String),
}

/// The service's answer as the callback to `to`: its envelope with
/// `wsa:To`, `wsa:RelatesTo` (the request's `MessageID`), `wsa:Action`
/// when the answer has none (the request's followed by `Response`, or the
/// WS-Addressing fault action for a fault), and the endpoint's reference
/// parameters, each marked `IsReferenceParameter` (WS-Addressing 1.0 SOAP
/// binding §3).
pub fn callback_message(
    answer: &[u8],
    to: &str,
    callback: &Callback,
    reference_parameters: &[u8],
    is_fault: bool,
) -> Result<Vec<u8>, CallbackError> {
    let text = std::str::from_utf8(answer).map_err(|e| CallbackError::NotSoap(e.to_string()))?;
    let document =
        roxmltree::Document::parse(text).map_err(|e| CallbackError::NotSoap(e.to_string()))?;
    let envelope = document.root_element();
    if envelope.tag_name().name() != "Envelope" {
        return Err(CallbackError::NotSoap("its root is not Envelope".into()));
    }
    let ns = callback.namespace.as_str();
    let ns = if ns.is_empty() {
        WsaVersion::V2005.namespace()
    } else {
        ns
    };
    let children: Vec<roxmltree::Node<'_, '_>> =
        envelope.children().filter(|n| n.is_element()).collect();
    let header = children.first().filter(|n| n.tag_name().name() == "Header");
    let has_action = header.is_some_and(|h| {
        h.children().any(|n| {
            n.is_element()
                && n.tag_name().name() == "Action"
                && n.tag_name().namespace() == Some(ns)
        })
    });
    let mut blocks = String::new();
    let mut element = |name: &str, value: &str| {
        blocks.push_str(&format!(
            "<{name} xmlns=\"{ns}\">{}</{name}>",
            quick_xml::escape::escape(value)
        ));
    };
    element("To", to);
    element("RelatesTo", &callback.relates_to);
    let action = match (is_fault, callback.action.as_deref()) {
        (true, _) => Some(format!("{ns}/fault")),
        (false, Some(action)) => Some(format!("{action}Response")),
        // A request without an Action gives nothing to derive one from.
        (false, None) => None,
    };
    if let (false, Some(action)) = (has_action, action) {
        element("Action", &action);
    }
    let mut blocks = blocks.into_bytes();
    blocks.extend_from_slice(&marked_parameters(reference_parameters, ns));

    let mut out = Vec::with_capacity(answer.len() + blocks.len() + 128);
    match header {
        Some(header) => {
            // After the Header's start tag, or in place of an empty one.
            let range = header.range();
            let start_tag_end = answer[range.clone()]
                .iter()
                .position(|&b| b == b'>')
                .map(|p| range.start + p + 1)
                .unwrap_or(range.end);
            if answer[..start_tag_end].ends_with(b"/>") {
                let prefix = prefix_of(answer, range.start);
                out.extend_from_slice(&answer[..range.start]);
                out.extend_from_slice(format!("<{prefix}Header>").as_bytes());
                out.extend_from_slice(&blocks);
                out.extend_from_slice(format!("</{prefix}Header>").as_bytes());
                out.extend_from_slice(&answer[range.end..]);
            } else {
                out.extend_from_slice(&answer[..start_tag_end]);
                out.extend_from_slice(&blocks);
                out.extend_from_slice(&answer[start_tag_end..]);
            }
        }
        None => {
            let at = children
                .first()
                .map(|n| n.range().start)
                .ok_or_else(|| CallbackError::NotSoap("its Envelope is empty".into()))?;
            let prefix = prefix_of(answer, envelope.range().start);
            out.extend_from_slice(&answer[..at]);
            out.extend_from_slice(format!("<{prefix}Header>").as_bytes());
            out.extend_from_slice(&blocks);
            out.extend_from_slice(format!("</{prefix}Header>").as_bytes());
            out.extend_from_slice(&answer[at..]);
        }
    }
    Ok(out)
}

/// `p:` for an element whose tag at `at` is `<p:Name`, empty for `<Name`.
fn prefix_of(document: &[u8], at: usize) -> String {
    let tag = &document[at.saturating_add(1).min(document.len())..];
    let name_end = tag
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
        .unwrap_or(tag.len());
    let name = String::from_utf8_lossy(&tag[..name_end]);
    match name.split_once(':') {
        Some((prefix, _)) => format!("{prefix}:"),
        None => String::new(),
    }
}

/// Each top-level element of `parameters` with
/// `wsa:IsReferenceParameter="true"` added to its start tag.
fn marked_parameters(parameters: &[u8], ns: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(parameters.len() + 96);
    let mut depth = 0usize;
    let mut i = 0;
    while i < parameters.len() {
        let rest = &parameters[i..];
        if rest.starts_with(b"<") {
            let Some(close) = rest.iter().position(|&b| b == b'>') else {
                out.extend_from_slice(rest);
                break;
            };
            let tag = &rest[..=close];
            let is_end = tag.starts_with(b"</");
            let is_special = tag.starts_with(b"<!") || tag.starts_with(b"<?");
            let is_empty = tag.ends_with(b"/>");
            if !is_end && !is_special && depth == 0 {
                let cut = if is_empty {
                    tag.len() - 2
                } else {
                    tag.len() - 1
                };
                out.extend_from_slice(&tag[..cut]);
                out.extend_from_slice(
                    format!(
                        " xmlns:soapcache-wsa=\"{ns}\" soapcache-wsa:IsReferenceParameter=\"true\""
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(&tag[cut..]);
            } else {
                out.extend_from_slice(tag);
            }
            if is_end {
                depth = depth.saturating_sub(1);
            } else if !is_special && !is_empty {
                depth += 1;
            }
            i += close + 1;
        } else {
            let next = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
            out.extend_from_slice(&rest[..next]);
            i += next;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_scheme_host_and_port_exactly_and_paths_by_prefix() {
        let p = ReplyPattern::parse("http://clients.internal:8000/*").unwrap();
        assert!(p.allows("http://clients.internal:8000/cb"));
        assert!(p.allows("http://CLIENTS.internal:8000/cb/deeper?x=1"));
        assert!(!p.allows("http://clients.internal:8001/cb"));
        assert!(!p.allows("https://clients.internal:8000/cb"));
        assert!(!p.allows("http://clients.internal.evil:8000/cb"));
        assert!(!p.allows("http://evil/?http://clients.internal:8000/"));
        assert!(!p.allows("not a url"));
        let exact = ReplyPattern::parse("https://a.example/hook").unwrap();
        assert!(exact.allows("https://a.example:443/hook"));
        assert!(!exact.allows("https://a.example/hook2"));
        assert!(!exact.allows("https://a.example/"));
    }

    fn callback() -> Callback {
        Callback {
            reply_to: "http://client:8000/cb".into(),
            fault_to: None,
            relates_to: "urn:uuid:1".into(),
            action: Some("urn:q/Quote".into()),
            namespace: WsaVersion::V2005.namespace().into(),
        }
    }

    #[test]
    fn a_callback_carries_to_relates_to_action_and_marked_parameters() {
        let answer = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><r:QuoteResponse xmlns:r="urn:q"><r:Price>9</r:Price></r:QuoteResponse></s:Body></s:Envelope>"#;
        let params = br#"<c:Ticket xmlns:c="urn:c">T-9</c:Ticket><c:Empty xmlns:c="urn:c"/>"#;
        let out =
            callback_message(answer, "http://client:8000/cb", &callback(), params, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        let header = doc.root_element().first_element_child().unwrap();
        assert_eq!(header.tag_name().name(), "Header");
        let ns = WsaVersion::V2005.namespace();
        let value = |name: &str| {
            header
                .children()
                .find(|n| n.tag_name().name() == name && n.tag_name().namespace() == Some(ns))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        assert_eq!(value("To").as_deref(), Some("http://client:8000/cb"));
        assert_eq!(value("RelatesTo").as_deref(), Some("urn:uuid:1"));
        assert_eq!(value("Action").as_deref(), Some("urn:q/QuoteResponse"));
        let marked: Vec<_> = header
            .children()
            .filter(|n| n.attribute((ns, "IsReferenceParameter")) == Some("true"))
            .map(|n| n.tag_name().name())
            .collect();
        assert_eq!(marked, ["Ticket", "Empty"]);
        assert!(text.contains("<r:Price>9</r:Price>"));
    }

    #[test]
    fn a_callback_keeps_the_answers_own_action_and_fills_an_empty_header() {
        let answer = br#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header/><e:Body><x/></e:Body></e:Envelope>"#;
        let out = callback_message(answer, "http://c/", &callback(), b"", true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header><To "#
            ),
            "{text}"
        );
        roxmltree::Document::parse(&text).unwrap();
        let with_action = br#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header><a:Action xmlns:a="http://www.w3.org/2005/08/addressing">urn:mine</a:Action></e:Header><e:Body><x/></e:Body></e:Envelope>"#;
        let text = String::from_utf8(
            callback_message(with_action, "http://c/", &callback(), b"", false).unwrap(),
        )
        .unwrap();
        assert_eq!(text.matches("Action").count(), 2, "{text}");
        assert!(callback_message(b"not xml", "http://c/", &callback(), b"", false).is_err());
    }

    #[test]
    fn the_service_sees_anonymous_reply_to_and_fault_to() {
        let body = Bytes::from_static(br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:wsa="http://www.w3.org/2005/08/addressing"><s:Header><wsa:MessageID>urn:1</wsa:MessageID><wsa:ReplyTo><wsa:Address>http://client/cb</wsa:Address></wsa:ReplyTo><wsa:FaultTo><wsa:Address>http://client/f</wsa:Address></wsa:FaultTo></s:Header><s:Body><q:Quote xmlns:q="urn:q"/></s:Body></s:Envelope>"#);
        let envelope = crate::soap::envelope::parse_request(&body).unwrap();
        let out = anonymized(&body, &envelope.addressing);
        let again = crate::soap::envelope::parse_request(&out).unwrap();
        assert!(again.addressing.reply_to.as_ref().unwrap().is_anonymous());
        assert!(again.addressing.fault_to.as_ref().unwrap().is_anonymous());
        assert_eq!(again.addressing.message_id.as_deref(), Some("urn:1"));
        assert!(!String::from_utf8_lossy(&out).contains("client"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(ReplyPattern::parse("ftp://x/*").is_err());
        assert!(ReplyPattern::parse("http://*.example/").is_err());
        assert!(ReplyPattern::parse("/relative").is_err());
        assert!(ReplyPattern::parse("http://x/a*b").is_err());
    }
}
