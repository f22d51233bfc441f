//! The sxd-xpath fallback: the whole request as an sxd-document tree, for
//! the expressions the streaming plan does not cover.

use super::{invalid, SelectorError, XML_NS};
use crate::soap::envelope::OperationElement;

/// The expression as sxd-xpath 0.4 reads it: it takes a `*` right after a
/// `,` for the multiplication operator (`concat('k', *[1])` fails to
/// parse), so such name tests are written `child::*`, the same XPath.
pub(super) fn sxd_dialect(source: &str) -> String {
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

/// The request parsed by sxd-document, with the operation element found.
pub(super) struct SxdTree {
    package: sxd_document::Package,
}

impl SxdTree {
    /// Builds the sxd tree from a roxmltree parse rather than with
    /// sxd-document's own parser, which does not apply a default namespace
    /// declared on a prefixed element (`<x:A xmlns="urn:a"><B/></x:A>`) to
    /// its descendants: names here are roxmltree's, resolved per the spec.
    pub(super) fn parse(op: &OperationElement<'_>) -> Result<SxdTree, SelectorError> {
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

    pub(super) fn evaluate(
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
