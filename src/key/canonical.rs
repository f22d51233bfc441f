//! The default selector: a digest of the operation element's canonical form
//! (reference §3). Namespace prefixes are replaced by their URIs, attributes are
//! ordered, whitespace-only text and comments are dropped, so requests that
//! differ only in those respects share a key.
//!
//! The canonical form is written as it is read, every field
//! length-prefixed so that no two different forms can produce the same
//! byte stream, into one buffer hashed once: BLAKE3 fed a few bytes at a
//! time spent more on each call than on the bytes.

use base64::Engine as _;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use smol_str::SmolStr;

use crate::soap::envelope::OperationElement;
use crate::xml::{append_character_data, FragmentReader};

const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";

/// A 128-bit digest of the operation element, as 22 base64url characters.
///
/// 128 bits: a stray collision between two requests of one scope is out of
/// reach (at a billion stored keys, about 1 in 10^21), and forging a request
/// with another's digest takes 2^128 tries. 22 characters: the key is held
/// inline in its `SmolStr`, so a link costs no allocation for it.
pub fn digest(op: &OperationElement<'_>) -> Result<SmolStr, quick_xml::Error> {
    let mut reader = op.reader();
    // Names, lengths and text: about the size of the element itself.
    let mut hasher = Canonical(Vec::with_capacity(op.xml.len() + 64));
    let mut text = String::new();
    let mut attributes: Vec<(Vec<u8>, Vec<u8>, String)> = Vec::new();
    loop {
        let event = reader.next_event()?;
        if append_character_data(&event, &mut text)? {
            continue;
        }
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                flush_text(&mut hasher, &mut text);
                hash_start(&mut hasher, &reader, start, &mut attributes)?;
                if matches!(event, Event::Empty(_)) {
                    hasher.update(b"E");
                }
            }
            Event::End(_) => {
                flush_text(&mut hasher, &mut text);
                hasher.update(b"E");
            }
            Event::Eof => break,
            // Comments, processing instructions, declarations: not content.
            _ => {}
        }
    }
    let hash = blake3::hash(&hasher.0);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..16]);
    Ok(SmolStr::new(encoded))
}

/// The canonical form's bytes, as they are written.
struct Canonical(Vec<u8>);

impl Canonical {
    fn update(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn field(hasher: &mut Canonical, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn flush_text(hasher: &mut Canonical, text: &mut String) {
    if !text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .is_empty()
    {
        hasher.update(b"T");
        field(hasher, text.as_bytes());
    }
    text.clear();
}

fn namespace<'r>(resolved: &'r ResolveResult<'_>) -> &'r [u8] {
    match resolved {
        ResolveResult::Bound(ns) => ns.0,
        ResolveResult::Unbound => b"",
        // Undeclared prefixes cannot occur: the envelope pass rejected them.
        ResolveResult::Unknown(prefix) => prefix,
    }
}

fn hash_start(
    hasher: &mut Canonical,
    reader: &FragmentReader<'_>,
    start: &BytesStart<'_>,
    attributes: &mut Vec<(Vec<u8>, Vec<u8>, String)>,
) -> Result<(), quick_xml::Error> {
    let (ns, local) = reader.resolve_element(start.name());
    hasher.update(b"S");
    field(hasher, namespace(&ns));
    field(hasher, local.as_ref());

    attributes.clear();
    // The envelope pass has refused duplicate attributes already: the
    // check again would allocate its list of names on every element.
    for attribute in start.attributes().with_checks(false) {
        let attribute = attribute?;
        if attribute.key.as_namespace_binding().is_some() {
            continue;
        }
        let (resolved, local) = reader.resolve_attribute(attribute.key);
        let ns = namespace(&resolved).to_vec();
        let mut value = crate::xml::attribute_value(&attribute.value)?;
        // xsi:type names a type by QName: its prefix is as arbitrary as an
        // element's, so it is canonicalised the same way.
        if ns == XSI_NS && local.as_ref() == b"type" {
            let qname = quick_xml::name::QName(value.as_bytes());
            let (type_ns, type_local) = reader.resolve_element(qname);
            value = format!(
                "{{{}}}{}",
                String::from_utf8_lossy(namespace(&type_ns)),
                String::from_utf8_lossy(type_local.as_ref())
            );
        }
        attributes.push((ns, local.as_ref().to_vec(), value));
    }
    attributes.sort();
    for (ns, local, value) in attributes.iter() {
        hasher.update(b"A");
        field(hasher, ns);
        field(hasher, local);
        field(hasher, value.as_bytes());
    }
    hasher.update(b">");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::envelope::parse_request;

    fn digest_of(xml: &str) -> SmolStr {
        let env = parse_request(xml.as_bytes()).expect("valid envelope");
        digest(&env.operation.expect("operation")).expect("digest")
    }

    fn wrap(env_attrs: &str, body: &str) -> String {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" {env_attrs}><s:Body>{body}</s:Body></s:Envelope>"#
        )
    }

    #[test]
    fn prefixes_attribute_order_and_indentation_do_not_change_the_digest() {
        let a = digest_of(&wrap(
            r#"xmlns:c="urn:cat""#,
            r#"<c:Price a="1" b="2"><c:Part>X-1</c:Part></c:Price>"#,
        ));
        let b = digest_of(&wrap(
            "",
            "<p:Price xmlns:p=\"urn:cat\" b=\"2\" a=\"1\">\n    <p:Part>X-1</p:Part>\n</p:Price>",
        ));
        let c = digest_of(&wrap(
            "",
            r#"<Price xmlns="urn:cat" b='2' a='1'><!-- note --><Part>X-<![CDATA[1]]></Part></Price>"#,
        ));
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn different_content_names_or_namespaces_change_the_digest() {
        let base = digest_of(&wrap(
            "",
            r#"<c:Price xmlns:c="urn:cat"><c:Part>X-1</c:Part></c:Price>"#,
        ));
        for other in [
            r#"<c:Price xmlns:c="urn:cat"><c:Part>X-2</c:Part></c:Price>"#,
            r#"<c:Price xmlns:c="urn:other"><c:Part>X-1</c:Part></c:Price>"#,
            r#"<c:Price xmlns:c="urn:cat"><c:Item>X-1</c:Item></c:Price>"#,
            r#"<c:Price xmlns:c="urn:cat" a=""><c:Part>X-1</c:Part></c:Price>"#,
            r#"<c:Price xmlns:c="urn:cat"><c:Part>X-1</c:Part><c:Part/></c:Price>"#,
            r#"<c:Price xmlns:c="urn:cat"><c:Part> X-1</c:Part></c:Price>"#,
        ] {
            assert_ne!(base, digest_of(&wrap("", other)), "{other}");
        }
    }

    #[test]
    fn entity_references_equal_their_characters() {
        let a = digest_of(&wrap("", r#"<P xmlns="urn:x">a&amp;b&#65;</P>"#));
        let b = digest_of(&wrap("", r#"<P xmlns="urn:x">a<![CDATA[&]]>bA</P>"#));
        assert_eq!(a, b);
    }

    #[test]
    fn xsi_type_prefixes_are_canonicalised() {
        let xsi = r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#;
        let a = digest_of(&wrap(
            xsi,
            r#"<P xmlns="urn:x" xmlns:t="urn:t" xsi:type="t:Kind"/>"#,
        ));
        let b = digest_of(&wrap(
            xsi,
            r#"<P xmlns="urn:x" xmlns:u="urn:t" xsi:type="u:Kind"/>"#,
        ));
        assert_eq!(a, b);
    }

    #[test]
    fn attribute_values_are_compared_as_xml_normalizes_them() {
        // A literal tab or line feed is a space; a character reference is kept.
        let tab = digest_of(&wrap("", "<P xmlns=\"urn:x\" a=\"x\ty\"/>"));
        let space = digest_of(&wrap("", "<P xmlns=\"urn:x\" a=\"x y\"/>"));
        let reference = digest_of(&wrap("", "<P xmlns=\"urn:x\" a=\"x&#10;y\"/>"));
        let literal_lf = digest_of(&wrap("", "<P xmlns=\"urn:x\" a=\"x\ny\"/>"));
        assert_eq!(tab, space);
        assert_eq!(literal_lf, space);
        assert_ne!(reference, space);
    }
}
