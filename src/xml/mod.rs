//! XML helpers shared by the request scan, the key selectors and the
//! digest: expanded names, a namespace-aware reader over one element's
//! bytes, and character data as XML defines it.

pub mod proof;

use quick_xml::events::Event;
use quick_xml::name::{LocalName, NamespaceResolver, QName, ResolveResult};
use quick_xml::Reader;

/// An expanded XML name `{namespace}local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpandedName {
    pub namespace: String,
    pub local: String,
}

impl std::fmt::Display for ExpandedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{{{}}}{}", self.namespace, self.local)
        }
    }
}

/// A namespace-resolving event reader over one element's bytes, seeded with
/// the bindings in scope where the element stands in its document.
pub struct FragmentReader<'a> {
    reader: Reader<&'a [u8]>,
    scope: NamespaceResolver,
    pending_pop: bool,
}

impl<'a> FragmentReader<'a> {
    /// A reader over `xml`, an element whose start tag sees the bindings of
    /// `scope`.
    pub fn new(xml: &'a [u8], scope: NamespaceResolver) -> FragmentReader<'a> {
        let mut reader = Reader::from_reader(xml);
        reader.config_mut().check_end_names = true;
        FragmentReader {
            reader,
            scope,
            pending_pop: false,
        }
    }

    pub fn next_event(&mut self) -> Result<Event<'a>, quick_xml::Error> {
        if self.pending_pop {
            self.scope.pop();
            self.pending_pop = false;
        }
        let event = self.reader.read_event()?;
        match &event {
            Event::Start(start) => {
                let _ = self.scope.push(start);
            }
            Event::Empty(start) => {
                let _ = self.scope.push(start);
                self.pending_pop = true;
            }
            Event::End(_) => self.pending_pop = true,
            _ => {}
        }
        Ok(event)
    }

    pub fn resolve_element<'n>(&self, name: QName<'n>) -> (ResolveResult<'_>, LocalName<'n>) {
        self.scope.resolve_element(name)
    }

    pub fn resolve_attribute<'n>(&self, name: QName<'n>) -> (ResolveResult<'_>, LocalName<'n>) {
        self.scope.resolve_attribute(name)
    }

    pub fn decoder(&self) -> quick_xml::encoding::Decoder {
        self.reader.decoder()
    }
}

/// An attribute's value as XML defines it: literal line ends, tabs and
/// newlines become spaces (attribute-value normalization for undeclared
/// attributes), then references are resolved, so `&#10;` stays a line feed.
pub fn attribute_value(raw: &[u8]) -> Result<String, quick_xml::Error> {
    let raw = std::str::from_utf8(raw).map_err(quick_xml::encoding::EncodingError::from)?;
    let normalized: std::borrow::Cow<'_, str> =
        if raw.bytes().any(|b| matches!(b, b'\t' | b'\n' | b'\r')) {
            std::borrow::Cow::Owned(raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "))
        } else {
            std::borrow::Cow::Borrowed(raw)
        };
    Ok(quick_xml::escape::unescape(&normalized)?.into_owned())
}

/// Appends the character data an event contributes to a text node (text,
/// CDATA, entity and character references), unescaped. Returns false for
/// events that are not character data.
pub fn append_character_data(
    event: &Event<'_>,
    out: &mut String,
) -> Result<bool, quick_xml::Error> {
    match event {
        Event::Text(text) => out.push_str(&text.xml_content()?),
        Event::CData(cdata) => out.push_str(&cdata.xml_content()?),
        Event::GeneralRef(reference) => {
            if let Some(ch) = reference.resolve_char_ref()? {
                // XML 1.0 Char: no NUL and no C0 controls but tab, LF, CR.
                if ch < ' ' && !matches!(ch, '\t' | '\n' | '\r') {
                    return Err(quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::InvalidCharRef(
                            quick_xml::escape::ParseCharRefError::IllegalCharacter(u32::from(ch)),
                        ),
                    ));
                }
                out.push(ch);
            } else {
                let name = reference.xml_content()?;
                match quick_xml::escape::resolve_predefined_entity(&name) {
                    Some(value) => out.push_str(value),
                    None => {
                        return Err(quick_xml::Error::Escape(
                            quick_xml::escape::EscapeError::UnrecognizedEntity(
                                0..0,
                                name.into_owned(),
                            ),
                        ))
                    }
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}
