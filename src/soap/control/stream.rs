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

/// Where the pass stands, by the element it is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Other,
    /// The first `Header`, or a header block in it.
    Header,
    Body,
    /// The first element child of `Body`, a `Fault`.
    Fault,
    /// A `RelatesTo`/`MessageID` header block whose text is wanted.
    Reply(AddressingPart),
    /// The first addressed `CacheControl` block, or a field in it.
    Control,
}

/// Text being gathered: a fault code or a `CacheControl` field, with the
/// depth of its element.
struct Gathering {
    depth: usize,
    field: Field,
    text: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    FaultCode,
    CacheKey,
    Expires,
    MaxAge,
}

pub fn read(body: &[u8], roles: &[String]) -> Read {
    match pass(body, roles) {
        Some(read) => read,
        None => Read::Unproven,
    }
}

/// `None` when the pass cannot decide (see [`Read::Unproven`]).
fn pass(body: &[u8], roles: &[String]) -> Option<Read> {
    if std::str::from_utf8(body).is_err() {
        return Some(Read::Decided(None));
    }
    let mut proof = Proof::new(body);
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().check_end_names = true;

    let mut version: Option<SoapVersion> = None;
    let mut depth = 0usize;
    let mut inside = [Inside::Other; 6];
    let (mut seen_header, mut seen_body, mut seen_body_child) = (false, false, false);
    let (mut is_fault, mut fault_code_seen, mut sender_fault) = (false, false, false);
    let mut control: Option<ControlBlock> = None;
    let mut fields_seen = [false; 3];
    let mut strip: Vec<Range<usize>> = Vec::new();
    let mut open_block: Option<usize> = None;
    let mut addressing: Vec<(AddressingPart, Range<usize>)> = Vec::new();
    let (mut relates_to, mut message_id) = (false, false);
    // A reply header's content: where its text starts and ends.
    let mut reply_text: Option<Range<usize>> = None;
    let mut gathering: Option<Gathering> = None;
    // What a SOAP 1.2 fault's `Code` is marked as: inside the fault, so
    // that its `Value` child is read.
    let mut return_here = Inside::Other;

    loop {
        let at = reader.buffer_position() as usize;
        let event = reader.read_event().ok()?;
        proof.event(&event, at);
        if proof.is_open() {
            return None;
        }
        let end = reader.buffer_position() as usize;
        let parent = if depth == 0 {
            Inside::Other
        } else {
            inside.get(depth - 1).copied().unwrap_or(Inside::Other)
        };
        if matches!(parent, Inside::Reply(_)) && !matches!(event, Event::Text(_) | Event::End(_)) {
            // More than text in a reply header: the tree reading knows the
            // ranges of its children.
            return None;
        }
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let empty = matches!(event, Event::Empty(_));
                depth += 1;
                // The name from the document, not the event: it is resolved
                // with bindings that outlive the event.
                let name: &[u8] = body.get(at + 1..at + 1 + start.name().as_ref().len())?;
                let (ns, local) = proof.resolve(name, true);
                let env_ns = version.map(|v| v.namespace().as_bytes());
                let here = match (depth, parent) {
                    (1, _) => {
                        version = ns.and_then(SoapVersion::from_namespace);
                        if version.is_none() || local != b"Envelope" {
                            return Some(Read::Decided(None));
                        }
                        Inside::Other
                    }
                    (2, _) if ns == env_ns && local == b"Header" && !seen_header => {
                        seen_header = true;
                        Inside::Header
                    }
                    (2, _) if ns == env_ns && local == b"Body" && !seen_body => {
                        seen_body = true;
                        Inside::Body
                    }
                    (3, Inside::Header) => header_block(
                        ns,
                        local,
                        &mut relates_to,
                        &mut message_id,
                        &mut addressing,
                        at..end,
                    )
                    .map(|part| {
                        reply_text = None;
                        Inside::Reply(part)
                    })
                    .or_else(|| {
                        let ours = ns == Some(CACHE_NS.as_bytes())
                            && local == b"CacheControl"
                            && addressed(&proof, env_ns, roles);
                        if !ours {
                            return None;
                        }
                        open_block = Some(at);
                        let first = control.is_none();
                        if first {
                            control = Some(ControlBlock::default());
                        }
                        first.then_some(Inside::Control)
                    })
                    .unwrap_or(Inside::Other),
                    (3, Inside::Body) if !seen_body_child => {
                        seen_body_child = true;
                        is_fault = ns == env_ns && local == b"Fault";
                        if is_fault {
                            Inside::Fault
                        } else {
                            Inside::Other
                        }
                    }
                    (4, Inside::Fault) if !fault_code_seen => {
                        let v11 = version.is_some_and(SoapVersion::is_11);
                        if v11 && local == b"faultcode" {
                            fault_code_seen = true;
                            gathering = Some(Gathering {
                                depth,
                                field: Field::FaultCode,
                                text: String::new(),
                            });
                        } else if !v11 && local == b"Code" {
                            fault_code_seen = true;
                            // Code/Value: the value is one level down; depth
                            // 0 until it is found.
                            gathering = Some(Gathering {
                                depth: 0,
                                field: Field::FaultCode,
                                text: String::new(),
                            });
                            return_here = Inside::Fault;
                        }
                        std::mem::replace(&mut return_here, Inside::Other)
                    }
                    (5, Inside::Fault)
                        if local == b"Value"
                            && gathering.as_ref().is_some_and(|g| g.depth == 0) =>
                    {
                        if let Some(g) = gathering.as_mut() {
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
                        if let Some((i, field)) = field.filter(|(i, _)| !fields_seen[*i]) {
                            fields_seen[i] = true;
                            gathering = Some(Gathering {
                                depth,
                                field,
                                text: String::new(),
                            });
                        }
                        Inside::Control
                    }
                    (_, Inside::Control) => Inside::Control,
                    _ => Inside::Other,
                };
                if let Some(slot) = inside.get_mut(depth - 1) {
                    *slot = here;
                }
                if empty {
                    element_end(
                        &mut depth,
                        end,
                        here,
                        &mut open_block,
                        &mut strip,
                        &mut reply_text,
                        &mut addressing,
                        &mut gathering,
                        &mut control,
                        &mut sender_fault,
                    );
                }
            }
            Event::End(_) => {
                let here = inside.get(depth - 1).copied().unwrap_or(Inside::Other);
                element_end(
                    &mut depth,
                    end,
                    here,
                    &mut open_block,
                    &mut strip,
                    &mut reply_text,
                    &mut addressing,
                    &mut gathering,
                    &mut control,
                    &mut sender_fault,
                );
            }
            Event::Text(_) if matches!(parent, Inside::Reply(_)) => {
                reply_text = Some(at..end);
            }
            Event::Eof => break,
            ref other => {
                if let Some(g) = gathering
                    .as_mut()
                    .filter(|g| g.depth > 0 && depth >= g.depth)
                {
                    append_character_data(other, &mut g.text).ok()?;
                }
            }
        }
    }
    if !proof.holds() {
        return None;
    }
    let Some(version) = version.filter(|_| seen_body) else {
        return Some(Read::Decided(None));
    };
    addressing.sort_by_key(|(_, r)| (r.start, std::cmp::Reverse(r.end)));
    Some(Read::Decided(Some(ResponseEnvelope {
        version,
        is_fault,
        sender_fault: is_fault && sender_fault,
        control,
        strip,
        addressing,
    })))
}

/// A `RelatesTo` or `MessageID` header block, the first of each: records
/// the element's range for `RelatesTo` (its end comes later) and says which
/// text is wanted.
fn header_block(
    ns: Option<&[u8]>,
    local: &[u8],
    relates_to: &mut bool,
    message_id: &mut bool,
    addressing: &mut Vec<(AddressingPart, Range<usize>)>,
    tag: Range<usize>,
) -> Option<AddressingPart> {
    WsaVersion::of(ns?)?;
    match local {
        b"RelatesTo" if !*relates_to => {
            *relates_to = true;
            addressing.push((AddressingPart::RelatesToElement, tag));
            Some(AddressingPart::RelatesToText)
        }
        b"MessageID" if !*message_id => {
            *message_id = true;
            Some(AddressingPart::MessageIdText)
        }
        _ => None,
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

fn set_field(control: Option<&mut ControlBlock>, field: Field, text: String) {
    let Some(control) = control else { return };
    match field {
        Field::CacheKey => control.cache_key = Some(text),
        Field::Expires => control.expires = Some(text),
        Field::MaxAge => control.max_age = Some(text),
        Field::FaultCode => {}
    }
}

/// An element ends at `end`: closes what it opened.
#[allow(clippy::too_many_arguments)]
fn element_end(
    depth: &mut usize,
    end: usize,
    here: Inside,
    open_block: &mut Option<usize>,
    strip: &mut Vec<Range<usize>>,
    reply_text: &mut Option<Range<usize>>,
    addressing: &mut Vec<(AddressingPart, Range<usize>)>,
    gathering: &mut Option<Gathering>,
    control: &mut Option<ControlBlock>,
    sender_fault: &mut bool,
) {
    if let Inside::Reply(part) = here {
        if let Some(text) = reply_text.take() {
            addressing.push((part, text));
        }
        if part == AddressingPart::RelatesToText {
            // The element's range, recorded at its start, ends here.
            if let Some((_, range)) = addressing
                .iter_mut()
                .rev()
                .find(|(p, _)| *p == AddressingPart::RelatesToElement)
            {
                range.end = end;
            }
        }
    }
    if *depth == 3 {
        if let Some(start) = open_block.take() {
            strip.push(start..end);
        }
    }
    if let Some(g) = gathering.take_if(|g| g.depth == *depth) {
        let text = g.text.trim().to_owned();
        match g.field {
            Field::FaultCode => *sender_fault = code_blames_sender(&text),
            field => set_field(control.as_mut(), field, text),
        }
    }
    *depth -= 1;
}
