//! The streaming reading of a response: one quick-xml pass that finds what
//! `tree::read` finds and proves the document well-formed on the way.
//! Whatever it is not certain of (the proof left open, a reply header with
//! more than text in it) it leaves to the tree reading.

use std::ops::Range;

use quick_xml::events::Event;

use super::{code_blames_sender, role_is_ours, ControlBlock, ResponseEnvelope, CACHE_NS};
use crate::soap::addressing::{AddressingPart, WsaVersion};
use crate::soap::SoapVersion;
use crate::xml::append_character_data;
use crate::xml::proof::Proof;

pub enum Read {
    /// The pass decided: the reading of a document proven well-formed, or
    /// `None` for a body that is no SOAP envelope (decided as soon as the
    /// root element says so, proven or not: nothing after it can make one).
    Decided(Option<ResponseEnvelope>),
    /// Not proven: the tree reading decides.
    Unproven,
}

pub fn read(body: &[u8], roles: &[String]) -> Read {
    if std::str::from_utf8(body).is_err() {
        return Read::Decided(None);
    }
    match pass(body, roles) {
        Some(read) => read,
        None => Read::Unproven,
    }
}

/// What an open element is, for the elements inside it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Other,
    /// The first `Header`.
    Header,
    /// The first `Body`.
    Body,
    /// The first element child of `Body`, a `Fault`; or, in SOAP 1.2, its
    /// `Code`, whose `Value` child is read.
    Fault,
    /// A `RelatesTo`/`MessageID` header block whose text is wanted.
    Reply(AddressingPart),
    /// The first addressed `CacheControl` block, or an element in it.
    Control,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    FaultCode,
    CacheKey,
    Expires,
    MaxAge,
}

/// Text being gathered (a fault code or a `CacheControl` field) with the
/// depth of its element; depth 0 while a SOAP 1.2 `Code` waits for its
/// `Value`.
struct Gathering {
    depth: usize,
    field: Field,
    text: String,
}

/// Deeper elements than this are only counted: everything the reading
/// looks for is at depth 5 or less.
const TRACKED_DEPTH: usize = 6;

/// Everything found so far, and where the pass stands.
#[derive(Default)]
struct Found {
    version: Option<SoapVersion>,
    depth: usize,
    inside: [Option<Inside>; TRACKED_DEPTH],
    seen_header: bool,
    seen_body: bool,
    seen_body_child: bool,
    is_fault: bool,
    fault_code_seen: bool,
    sender_fault: bool,
    control: Option<ControlBlock>,
    fields_seen: [bool; 3],
    strip: Vec<Range<usize>>,
    /// Where the addressed `CacheControl` block being read starts.
    open_block: Option<usize>,
    addressing: Vec<(AddressingPart, Range<usize>)>,
    relates_to: bool,
    message_id: bool,
    /// The text of the reply header being read.
    reply_text: Option<Range<usize>>,
    gathering: Option<Gathering>,
}

/// `None` when the pass cannot decide (see [`Read::Unproven`]).
fn pass(body: &[u8], roles: &[String]) -> Option<Read> {
    let mut proof = Proof::new(body);
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    let mut found = Found::default();
    loop {
        let at = reader.buffer_position() as usize;
        let event = reader.read_event().ok()?;
        proof.event(&event, at);
        if proof.is_open() {
            return None;
        }
        let end = reader.buffer_position() as usize;
        let parent = found.innermost();
        if matches!(parent, Inside::Reply(_)) && !matches!(event, Event::Text(_) | Event::End(_)) {
            // More than text in a reply header: the tree reading knows the
            // ranges of its children.
            return None;
        }
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                // The name from the document, not the event: it is resolved
                // with bindings that outlive the event.
                let name = body.get(at + 1..at + 1 + start.name().as_ref().len())?;
                let (ns, local) = proof.resolve(name, true);
                found.depth += 1;
                let here = match found.start(ns, local, parent, at..end, &proof, roles) {
                    Some(here) => here,
                    None => return Some(Read::Decided(None)),
                };
                if let Some(slot) = found.inside.get_mut(found.depth - 1) {
                    *slot = Some(here);
                }
                if matches!(event, Event::Empty(_)) {
                    found.end(end);
                }
            }
            Event::End(_) => found.end(end),
            Event::Text(_) if matches!(parent, Inside::Reply(_)) => {
                found.reply_text = Some(at..end);
            }
            Event::Eof => break,
            ref other => {
                let depth = found.depth;
                if let Some(g) = found.gathering.as_mut() {
                    if g.depth > 0 && depth >= g.depth {
                        append_character_data(other, &mut g.text).ok()?;
                    }
                }
            }
        }
    }
    if !proof.holds() {
        return None;
    }
    Some(Read::Decided(found.finish()))
}

impl Found {
    /// The innermost open element.
    fn innermost(&self) -> Inside {
        match self.depth {
            0 => Inside::Other,
            d => self
                .inside
                .get(d - 1)
                .copied()
                .flatten()
                .unwrap_or(Inside::Other),
        }
    }

    /// An element starts (`self.depth` is already its depth), its start tag
    /// at `tag`: what it is for its children; `None` for a root that is no
    /// SOAP Envelope.
    fn start(
        &mut self,
        ns: Option<&[u8]>,
        local: &[u8],
        parent: Inside,
        tag: Range<usize>,
        proof: &Proof<'_>,
        roles: &[String],
    ) -> Option<Inside> {
        let env_ns = self.version.map(|v| v.namespace().as_bytes());
        let depth = self.depth;
        let here = match (depth, parent) {
            (1, _) => {
                self.version = ns.and_then(SoapVersion::from_namespace);
                if self.version.is_none() || local != b"Envelope" {
                    return None;
                }
                Inside::Other
            }
            (2, _) if ns == env_ns && local == b"Header" && !self.seen_header => {
                self.seen_header = true;
                Inside::Header
            }
            (2, _) if ns == env_ns && local == b"Body" && !self.seen_body => {
                self.seen_body = true;
                Inside::Body
            }
            (3, Inside::Header) => self.header_block(ns, local, tag, proof, env_ns, roles),
            (3, Inside::Body) if !self.seen_body_child => {
                self.seen_body_child = true;
                self.is_fault = ns == env_ns && local == b"Fault";
                if self.is_fault {
                    Inside::Fault
                } else {
                    Inside::Other
                }
            }
            (4, Inside::Fault) if !self.fault_code_seen => {
                let v11 = self.version.is_some_and(SoapVersion::is_11);
                if v11 && local == b"faultcode" {
                    self.fault_code_seen = true;
                    self.gather(depth, Field::FaultCode);
                    Inside::Other
                } else if !v11 && local == b"Code" {
                    self.fault_code_seen = true;
                    self.gather(0, Field::FaultCode);
                    Inside::Fault
                } else {
                    Inside::Other
                }
            }
            (5, Inside::Fault) if local == b"Value" => {
                if let Some(g) = self.gathering.as_mut().filter(|g| g.depth == 0) {
                    g.depth = depth;
                }
                Inside::Other
            }
            (4, Inside::Control) if ns == Some(CACHE_NS.as_bytes()) => {
                let field = match local {
                    b"CacheKey" => Some((0, Field::CacheKey)),
                    b"Expires" => Some((1, Field::Expires)),
                    b"MaxAge" => Some((2, Field::MaxAge)),
                    _ => None,
                };
                if let Some((i, field)) = field.filter(|(i, _)| !self.fields_seen[*i]) {
                    self.fields_seen[i] = true;
                    self.gather(depth, field);
                }
                Inside::Control
            }
            (_, Inside::Control) => Inside::Control,
            _ => Inside::Other,
        };
        Some(here)
    }

    /// A direct child of `Header`: the first `RelatesTo`, the first
    /// `MessageID` (either WS-Addressing namespace), or a `CacheControl`
    /// block addressed to us.
    fn header_block(
        &mut self,
        ns: Option<&[u8]>,
        local: &[u8],
        tag: Range<usize>,
        proof: &Proof<'_>,
        env_ns: Option<&[u8]>,
        roles: &[String],
    ) -> Inside {
        if ns.and_then(WsaVersion::of).is_some() {
            match local {
                b"RelatesTo" if !self.relates_to => {
                    self.relates_to = true;
                    // The element's range; its end is set where it ends.
                    self.addressing
                        .push((AddressingPart::RelatesToElement, tag));
                    self.reply_text = None;
                    return Inside::Reply(AddressingPart::RelatesToText);
                }
                b"MessageID" if !self.message_id => {
                    self.message_id = true;
                    self.reply_text = None;
                    return Inside::Reply(AddressingPart::MessageIdText);
                }
                _ => return Inside::Other,
            }
        }
        let ours = ns == Some(CACHE_NS.as_bytes())
            && local == b"CacheControl"
            && addressed(proof, env_ns, roles);
        if !ours {
            return Inside::Other;
        }
        self.open_block = Some(tag.start);
        if self.control.is_some() {
            return Inside::Other;
        }
        self.control = Some(ControlBlock::default());
        Inside::Control
    }

    fn gather(&mut self, depth: usize, field: Field) {
        self.gathering = Some(Gathering {
            depth,
            field,
            text: String::new(),
        });
    }

    /// The element at `self.depth` ends at `end`: closes what it opened.
    fn end(&mut self, end: usize) {
        let depth = self.depth;
        if let Inside::Reply(part) = self.innermost() {
            if let Some(text) = self.reply_text.take() {
                self.addressing.push((part, text));
            }
            if part == AddressingPart::RelatesToText {
                if let Some((_, range)) = self
                    .addressing
                    .iter_mut()
                    .rev()
                    .find(|(p, _)| *p == AddressingPart::RelatesToElement)
                {
                    range.end = end;
                }
            }
        }
        if depth == 3 {
            if let Some(start) = self.open_block.take() {
                self.strip.push(start..end);
            }
        }
        if let Some(g) = self.gathering.take_if(|g| g.depth == depth) {
            let text = g.text.trim().to_owned();
            let control = self.control.as_mut();
            match (g.field, control) {
                (Field::FaultCode, _) => self.sender_fault = code_blames_sender(&text),
                (Field::CacheKey, Some(c)) => c.cache_key = Some(text),
                (Field::Expires, Some(c)) => c.expires = Some(text),
                (Field::MaxAge, Some(c)) => c.max_age = Some(text),
                (_, None) => {}
            }
        }
        if let Some(slot) = self.inside.get_mut(depth.saturating_sub(1)) {
            *slot = None;
        }
        self.depth = depth.saturating_sub(1);
    }

    /// The reading of a proven document: `None` without a `Body`.
    fn finish(mut self) -> Option<ResponseEnvelope> {
        let version = self.version.filter(|_| self.seen_body)?;
        self.addressing
            .sort_by_key(|(_, r)| (r.start, std::cmp::Reverse(r.end)));
        Some(ResponseEnvelope {
            version,
            is_fault: self.is_fault,
            sender_fault: self.is_fault && self.sender_fault,
            control: self.control,
            strip: self.strip,
            addressing: self.addressing,
        })
    }
}

/// Whether the `CacheControl` start tag just read is addressed to us: its
/// `role` (else `actor`) attribute in the envelope's namespace.
fn addressed(proof: &Proof<'_>, env_ns: Option<&[u8]>, roles: &[String]) -> bool {
    let attribute = |wanted: &[u8]| {
        proof.attributes().iter().find_map(|&(key, value)| {
            let (ns, local) = proof.resolve(key, false);
            (ns.is_some() && ns == env_ns && local == wanted).then_some(value)
        })
    };
    let Some(raw) = attribute(b"role").or_else(|| attribute(b"actor")) else {
        return role_is_ours(None, roles);
    };
    match crate::xml::attribute_value(raw) {
        Ok(value) => role_is_ours(Some(&value), roles),
        Err(_) => false,
    }
}
