//! WS-Addressing headers (1.0, `2005/08`, and the `2004/08` member
//! submission) and WS-Security's `wsu:Timestamp/wsu:Expires`, read by the
//! same streaming scan that finds a request's operation (see
//! [`super::envelope`]): no second parse. A request without such headers
//! costs the scan nothing but a namespace comparison per header block.

use std::ops::Range;

use quick_xml::events::Event;

use crate::xml::append_character_data;

pub const WSA_2005: &str = "http://www.w3.org/2005/08/addressing";
pub const WSA_2004: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
pub const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";

/// Which WS-Addressing namespace a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsaVersion {
    V2005,
    V2004,
}

impl WsaVersion {
    pub fn of(namespace: &[u8]) -> Option<WsaVersion> {
        match namespace {
            ns if ns == WSA_2005.as_bytes() => Some(WsaVersion::V2005),
            ns if ns == WSA_2004.as_bytes() => Some(WsaVersion::V2004),
            _ => None,
        }
    }

    pub fn namespace(self) -> &'static str {
        match self {
            WsaVersion::V2005 => WSA_2005,
            WsaVersion::V2004 => WSA_2004,
        }
    }

    /// The address meaning "answer on this connection".
    pub fn anonymous(self) -> &'static str {
        match self {
            WsaVersion::V2005 => "http://www.w3.org/2005/08/addressing/anonymous",
            WsaVersion::V2004 => "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous",
        }
    }
}

/// A part of a stored answer's WS-Addressing headers that a hit rewrites
/// (reference §5): the answer relates to the request that fetched it and
/// has that exchange's message id, neither of which belongs to a later
/// requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingPart {
    /// The whole `RelatesTo` element: dropped when the requester sent no
    /// `MessageID`.
    RelatesToElement = 1,
    /// Its text: this requester's `MessageID`.
    RelatesToText = 2,
    /// `MessageID`'s text: a fresh id.
    MessageIdText = 3,
}

impl AddressingPart {
    pub fn from_byte(byte: u8) -> Option<AddressingPart> {
        match byte {
            1 => Some(AddressingPart::RelatesToElement),
            2 => Some(AddressingPart::RelatesToText),
            3 => Some(AddressingPart::MessageIdText),
            _ => None,
        }
    }
}

/// A `ReplyTo` or `FaultTo`: where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    /// The children of `ReferenceParameters` (2005/08; `ReferenceProperties`
    /// and `ReferenceParameters` in 2004/08), as bytes of the document, to
    /// echo in a callback's header.
    pub reference_parameters: Option<Range<usize>>,
    /// The whole element, in the document.
    pub range: Range<usize>,
}

impl Endpoint {
    /// Anonymous (either namespace's) or absent: the answer goes back on the
    /// request's own connection.
    pub fn is_anonymous(&self) -> bool {
        let a = self.address.trim();
        a.is_empty() || a == WsaVersion::V2005.anonymous() || a == WsaVersion::V2004.anonymous()
    }

    /// WS-Addressing 1.0's `none`: no answer is wanted at all.
    pub fn is_none(&self) -> bool {
        self.address.trim() == "http://www.w3.org/2005/08/addressing/none"
    }
}

/// What a request's headers say of addressing and expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addressing {
    pub version: Option<WsaVersion>,
    pub message_id: Option<String>,
    pub action: Option<String>,
    pub to: Option<String>,
    pub reply_to: Option<Endpoint>,
    pub fault_to: Option<Endpoint>,
    /// `wsu:Timestamp/wsu:Expires` of the `wsse:Security` header, as written.
    pub expires: Option<String>,
    /// The `wsse:Security` header block, in the document: the credentials a
    /// replayed answer must match (reference §11.1).
    pub security: Option<Range<usize>>,
}

impl Addressing {
    pub fn is_empty(&self) -> bool {
        *self == Addressing::default()
    }
}

/// The field whose text is being collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MessageId,
    Action,
    To,
    ReplyToAddress,
    FaultToAddress,
    Expires,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    ReplyTo,
    FaultTo,
}

/// Fed the header's events by the envelope scan (`depth`: 3 for a header
/// block, deeper for what it holds; positions are in the document).
#[derive(Debug, Default)]
pub(crate) struct Collector {
    found: Addressing,
    field: Option<Field>,
    text: String,
    endpoint: Option<(Which, usize)>,
    endpoint_address: Option<String>,
    parameters: Option<Range<usize>>,
    parameters_start: Option<usize>,
    in_security: bool,
    security_start: Option<usize>,
    in_timestamp: bool,
}

impl Collector {
    /// A start tag (or empty element) at `depth` inside `Header`; `at` is
    /// where its tag starts, `after` where it ends.
    pub fn start(
        &mut self,
        depth: usize,
        ns: Option<&[u8]>,
        local: &[u8],
        at: usize,
        after: usize,
        empty: bool,
    ) {
        let ns = ns.unwrap_or_default();
        let wsa = WsaVersion::of(ns);
        match depth {
            3 => {
                if let Some(version) = wsa {
                    let field = match local {
                        b"MessageID" => Some(Field::MessageId),
                        b"Action" => Some(Field::Action),
                        b"To" => Some(Field::To),
                        b"ReplyTo" => {
                            self.endpoint = Some((Which::ReplyTo, at));
                            None
                        }
                        b"FaultTo" => {
                            self.endpoint = Some((Which::FaultTo, at));
                            None
                        }
                        _ => None,
                    };
                    self.found.version.get_or_insert(version);
                    self.collect(field, empty);
                    if empty && self.endpoint.is_some() {
                        self.end_endpoint(after);
                    }
                } else if local == b"Security" && ns == WSSE.as_bytes() {
                    self.in_security = !empty;
                    if empty {
                        self.found.security.get_or_insert(at..after);
                    } else {
                        self.security_start = Some(at);
                    }
                }
            }
            4 if self.endpoint.is_some() && wsa.is_some() => match local {
                b"Address" => {
                    let which = self.endpoint.map(|(w, _)| w);
                    let field = match which {
                        Some(Which::ReplyTo) => Some(Field::ReplyToAddress),
                        _ => Some(Field::FaultToAddress),
                    };
                    self.collect(field, empty);
                }
                b"ReferenceParameters" | b"ReferenceProperties" if !empty => {
                    self.parameters_start = Some(after);
                }
                _ => {}
            },
            4 if self.in_security && local == b"Timestamp" && ns == WSU.as_bytes() => {
                self.in_timestamp = !empty;
            }
            5 if self.in_timestamp && local == b"Expires" && ns == WSU.as_bytes() => {
                self.collect(Some(Field::Expires), empty);
            }
            _ => {}
        }
    }

    /// An end tag at `depth` (the depth of the element it closes); `at`
    /// is where the end tag starts, `after` where it ends.
    pub fn end(&mut self, depth: usize, at: usize, after: usize) {
        if self.field.is_some() && matches!(depth, 3..=5) {
            self.finish_field();
        }
        match depth {
            3 => {
                if self.endpoint.is_some() {
                    self.end_endpoint(after);
                }
                if let Some(start) = self.security_start.take() {
                    self.found.security.get_or_insert(start..after);
                }
                self.in_security = false;
            }
            4 => {
                if let Some(start) = self.parameters_start.take() {
                    self.parameters = Some(start..at);
                }
                self.in_timestamp = false;
            }
            _ => {}
        }
    }

    /// Whether text events matter now.
    pub fn wants_text(&self) -> bool {
        self.field.is_some()
    }

    pub fn text(&mut self, event: &Event<'_>) -> Result<(), quick_xml::Error> {
        append_character_data(event, &mut self.text).map(|_| ())
    }

    pub fn finish(self) -> Addressing {
        self.found
    }

    fn collect(&mut self, field: Option<Field>, empty: bool) {
        self.text.clear();
        self.field = field;
        if empty {
            self.finish_field();
        }
    }

    fn finish_field(&mut self) {
        let Some(field) = self.field.take() else {
            return;
        };
        let value = self.text.trim().to_owned();
        let slot = match field {
            Field::MessageId => &mut self.found.message_id,
            Field::Action => &mut self.found.action,
            Field::To => &mut self.found.to,
            Field::Expires => &mut self.found.expires,
            Field::ReplyToAddress | Field::FaultToAddress => {
                self.endpoint_address = Some(value);
                return;
            }
        };
        // The first of a repeated header counts.
        slot.get_or_insert(value);
    }

    fn end_endpoint(&mut self, after: usize) {
        let Some((which, start)) = self.endpoint.take() else {
            return;
        };
        let endpoint = Endpoint {
            address: self.endpoint_address.take().unwrap_or_default(),
            reference_parameters: self.parameters.take(),
            range: start..after,
        };
        let slot = match which {
            Which::ReplyTo => &mut self.found.reply_to,
            Which::FaultTo => &mut self.found.fault_to,
        };
        slot.get_or_insert(endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::envelope::parse_request;

    fn message(wsa: &str, headers: &str) -> String {
        format!(
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:wsa=\"{wsa}\">\
<s:Header>{headers}</s:Header><s:Body><q:Quote xmlns:q=\"urn:q\"/></s:Body></s:Envelope>"
        )
    }

    #[test]
    fn the_scan_reads_every_addressing_header_and_the_expiry() {
        let headers = format!(
            "<wsa:MessageID> urn:uuid:1 </wsa:MessageID><wsa:Action>urn:q/Quote</wsa:Action>\
<wsa:To>http://svc/q</wsa:To>\
<wsa:ReplyTo><wsa:Address>http://client:8000/cb?a=1&amp;b=2</wsa:Address>\
<wsa:ReferenceParameters><c:Ticket xmlns:c=\"urn:c\">T-9</c:Ticket></wsa:ReferenceParameters></wsa:ReplyTo>\
<wsa:FaultTo><wsa:Address>http://client:8000/faults</wsa:Address></wsa:FaultTo>\
<wsse:Security xmlns:wsse=\"{WSSE}\" xmlns:wsu=\"{WSU}\"><wsu:Timestamp><wsu:Created>2026-01-01T00:00:00Z</wsu:Created>\
<wsu:Expires>2026-01-01T00:05:00Z</wsu:Expires></wsu:Timestamp></wsse:Security>"
        );
        let text = message(WSA_2005, &headers);
        let envelope = parse_request(text.as_bytes()).unwrap();
        let a = &envelope.addressing;
        assert_eq!(a.version, Some(WsaVersion::V2005));
        assert_eq!(a.message_id.as_deref(), Some("urn:uuid:1"));
        assert_eq!(a.action.as_deref(), Some("urn:q/Quote"));
        assert_eq!(a.to.as_deref(), Some("http://svc/q"));
        assert_eq!(a.expires.as_deref(), Some("2026-01-01T00:05:00Z"));
        let reply_to = a.reply_to.as_ref().unwrap();
        assert_eq!(reply_to.address, "http://client:8000/cb?a=1&b=2");
        assert!(!reply_to.is_anonymous());
        let parameters = &text[reply_to.reference_parameters.clone().unwrap()];
        assert_eq!(parameters, "<c:Ticket xmlns:c=\"urn:c\">T-9</c:Ticket>");
        let element = &text[reply_to.range.clone()];
        assert!(element.starts_with("<wsa:ReplyTo>") && element.ends_with("</wsa:ReplyTo>"));
        let fault_to = a.fault_to.as_ref().unwrap();
        assert_eq!(fault_to.address, "http://client:8000/faults");
        assert!(fault_to.reference_parameters.is_none());
        assert!(envelope.has_security_header);
        let security = &text[a.security.clone().unwrap()];
        assert!(security.starts_with("<wsse:Security") && security.ends_with("</wsse:Security>"));
    }

    #[test]
    fn the_2004_namespace_and_anonymous_addresses_are_understood() {
        let headers = "<wsa:MessageID>uuid:2</wsa:MessageID><wsa:ReplyTo><wsa:Address>\
http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>";
        let text = message(WSA_2004, headers);
        let envelope = parse_request(text.as_bytes()).unwrap();
        let a = &envelope.addressing;
        assert_eq!(a.version, Some(WsaVersion::V2004));
        assert_eq!(a.message_id.as_deref(), Some("uuid:2"));
        assert!(a.reply_to.as_ref().unwrap().is_anonymous());
        // An empty ReplyTo element, and `none`.
        let text = message(WSA_2005, "<wsa:ReplyTo/>");
        let a = parse_request(text.as_bytes()).unwrap().addressing;
        assert!(a.reply_to.unwrap().is_anonymous());
        let text = message(
            WSA_2005,
            "<wsa:ReplyTo><wsa:Address>http://www.w3.org/2005/08/addressing/none</wsa:Address></wsa:ReplyTo>",
        );
        let a = parse_request(text.as_bytes()).unwrap().addressing;
        assert!(a.reply_to.unwrap().is_none());
    }

    #[test]
    fn an_empty_header_leaves_the_body_s_operation_to_the_body() {
        let text = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Header/>\
<s:Body><q:Quote xmlns:q=\"urn:q\"><q:MessageID>x</q:MessageID></q:Quote></s:Body></s:Envelope>";
        let envelope = parse_request(text.as_bytes()).unwrap();
        assert_eq!(envelope.operation.unwrap().name.local, "Quote");
        assert!(envelope.addressing.is_empty());
    }

    #[test]
    fn headers_of_other_namespaces_or_places_are_not_addressing() {
        // A MessageID in another namespace, and one inside Body.
        let text = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<s:Header><x:MessageID xmlns:x=\"urn:other\">no</x:MessageID></s:Header>\
<s:Body><q:Quote xmlns:q=\"urn:q\"><wsa:MessageID xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">no</wsa:MessageID></q:Quote></s:Body></s:Envelope>";
        let envelope = parse_request(text.as_bytes()).unwrap();
        assert!(envelope.addressing.is_empty(), "{:?}", envelope.addressing);
        // Expires outside a wsse:Security header does not count.
        let text = message(
            WSA_2005,
            &format!("<wsu:Timestamp xmlns:wsu=\"{WSU}\"><wsu:Expires>2000-01-01T00:00:00Z</wsu:Expires></wsu:Timestamp>"),
        );
        assert_eq!(
            parse_request(text.as_bytes()).unwrap().addressing.expires,
            None
        );
    }
}
