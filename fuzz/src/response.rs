//! SOAP responses with `CacheControl` header blocks, generated together
//! with what `control::inspect_response` must find in them: which blocks
//! are addressed to soapcache (their exact byte ranges) and the fields of
//! the first one (reference §4, §5).

use std::ops::Range;

use crate::xml::{self, Choices, Style, SOAP_VERSIONS};

pub const CACHE_NS: &str = "http://example.org/2001/06/cache";

const NEXT_ROLES: [&str; 4] = [
    "http://schemas.xmlsoap.org/soap/actor/next",
    "http://www.w3.org/2003/05/soap-envelope/role/next",
    "http://www.w3.org/2001/12/soap-envelope/actor/next",
    "http://www.w3.org/2001/12/soap-envelope/role/next",
];

const ROLES: [&str; 9] = [
    NEXT_ROLES[0],
    NEXT_ROLES[1],
    NEXT_ROLES[2],
    NEXT_ROLES[3],
    "urn:role:a",
    "urn:role:b",
    "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver",
    "http://www.w3.org/2003/05/soap-envelope/role/none",
    "",
];

/// What soapcache must read from a generated response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub version: &'static str,
    pub is_fault: bool,
    /// Byte ranges of the addressed blocks, in document order.
    pub strip: Vec<Range<usize>>,
    /// (CacheKey, Expires, MaxAge) of the first addressed block.
    pub control: Option<(Option<String>, Option<String>, Option<String>)>,
}

pub struct Response {
    pub xml: String,
    /// The extra roles soapcache plays (policy `roles`).
    pub roles: Vec<String>,
    pub expected: Expected,
}

#[derive(Clone, Copy, PartialEq)]
enum RoleAttribute {
    None,
    /// `env:role` (in the envelope's namespace).
    Role,
    /// `env:actor`.
    Actor,
    /// `role` without a namespace: not the SOAP attribute.
    Unqualified,
    /// `o:role` in another namespace: not the SOAP attribute either.
    OtherNs,
}

#[derive(Clone, Copy, PartialEq)]
enum Field {
    CacheKey,
    Expires,
    MaxAge,
    Other,
    /// `CacheKey` in another namespace: not a field.
    ForeignCacheKey,
}

const VALUES: [&str; 10] = [
    "ABC-1234",
    "2001-03-09T08:00:00Z",
    "2099-01-01T00:00:00+02:00",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "3600",
    "PT1H",
    "P1Y2M3DT4H5M6.7S",
    "  padded  ",
    "",
    "18446744073709551616",
];

pub fn response(c: &mut Choices<'_, '_>) -> Response {
    let style = Style::default();
    let mut roles = Vec::new();
    for _ in 0..c.index(3) {
        roles.push(
            c.pick(&["urn:role:a", "urn:role:b", "", " urn:role:a"])
                .to_owned(),
        );
    }
    let version = c.pick(&SOAP_VERSIONS);
    let env = c.pick(&["env", "s", "soap", ""]);
    let q = |local: &str| {
        if env.is_empty() {
            local.to_owned()
        } else {
            format!("{env}:{local}")
        }
    };
    let mut out = String::new();
    if c.chance(1, 8) {
        out.push('\u{FEFF}');
    }
    if c.chance(1, 2) {
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    if c.chance(1, 4) {
        out.push_str("<!-- priced by the catalog -->\n");
    }
    // The `ca` prefix may be declared on Envelope, for the right namespace
    // or another one.
    let ca_on_envelope = match c.index(3) {
        0 => None,
        1 => Some(CACHE_NS),
        _ => Some("urn:not-the-cache"),
    };
    out.push_str(&format!("<{}", q("Envelope")));
    if env.is_empty() {
        out.push_str(&format!(" xmlns=\"{version}\""));
    } else {
        out.push_str(&format!(" xmlns:{env}=\"{version}\""));
    }
    if let Some(uri) = ca_on_envelope {
        out.push_str(&format!(" xmlns:ca=\"{uri}\""));
    }
    out.push('>');
    let mut strip = Vec::new();
    let mut control = None;
    if c.chance(3, 4) {
        out.push_str(c.pick(&["", "\n  ", "\r\n"]));
        let header_empty = c.chance(1, 10);
        if header_empty {
            out.push_str(&format!("<{}/>", q("Header")));
        } else {
            out.push_str(&format!("<{}>", q("Header")));
            for _ in 0..c.index(6) {
                match c.index(8) {
                    0..=4 => {
                        let start = out.len();
                        let block =
                            control_block(c, &mut out, version, env, ca_on_envelope, &roles);
                        if let Some(fields) = block {
                            strip.push(start..out.len());
                            control.get_or_insert(fields);
                        }
                    }
                    5 => {
                        // A CacheControl that is not a header block itself.
                        out.push_str("<x:Other xmlns:x=\"urn:x\" xmlns:ca2=\"");
                        out.push_str(CACHE_NS);
                        out.push_str("\"><ca2:CacheControl><ca2:CacheKey>nested</ca2:CacheKey></ca2:CacheControl></x:Other>");
                    }
                    6 => out.push_str(c.pick(&["\n    ", " ", "\t"])),
                    _ => out.push_str("<!-- <ca:CacheControl/> -->"),
                }
            }
            out.push_str(&format!("</{}>", q("Header")));
        }
    }
    out.push_str(c.pick(&["", "\n  "]));
    out.push_str(&format!("<{}>", q("Body")));
    if c.chance(1, 3) {
        out.push_str("\n    <!-- answer -->");
    }
    let is_fault = match c.index(4) {
        0 => {
            out.push_str(&format!(
                "<{f}><faultcode>{e}Server</faultcode><faultstring>{s}</faultstring></{f}>",
                f = q("Fault"),
                e = if env.is_empty() {
                    String::new()
                } else {
                    format!("{env}:")
                },
                s = xml::escape_text(&xml::text(c)),
            ));
            true
        }
        1 => false,
        2 => {
            out.push_str(&format!(
                "<p:Price xmlns:p=\"urn:p\" xmlns:ca=\"{CACHE_NS}\"><ca:CacheControl><ca:CacheKey>in-body</ca:CacheKey></ca:CacheControl></p:Price>"
            ));
            false
        }
        _ => {
            let payload = xml::element(c, &xml::Limits::default(), 2);
            let inherited = vec![(env.to_owned(), version.to_owned())];
            xml::render_in_scope(&payload, c, &style, &inherited, &mut out);
            false
        }
    };
    out.push_str(&format!("</{}>", q("Body")));
    out.push_str(c.pick(&["", "\n"]));
    out.push_str(&format!("</{}>", q("Envelope")));
    out.push_str(c.pick(&["", "\n", "\n<!-- done -->"]));
    Response {
        xml: out,
        roles,
        expected: Expected {
            version,
            is_fault,
            strip,
            control,
        },
    }
}

/// Writes one `CacheControl` header block; returns its fields when the
/// block is addressed to soapcache.
#[allow(clippy::type_complexity)]
fn control_block(
    c: &mut Choices<'_, '_>,
    out: &mut String,
    version: &str,
    env: &str,
    ca_on_envelope: Option<&str>,
    roles: &[String],
) -> Option<(Option<String>, Option<String>, Option<String>)> {
    let style = Style::default();
    // How the block's name is written, and which namespace that gives it.
    let (prefix, mut decls, ns): (String, Vec<(String, String)>, &str) = match c.index(5) {
        0 => ("ca".into(), vec![("ca".into(), CACHE_NS.into())], CACHE_NS),
        1 if ca_on_envelope.is_some() => ("ca".into(), vec![], ca_on_envelope.unwrap()),
        2 => (
            String::new(),
            vec![(String::new(), CACHE_NS.into())],
            CACHE_NS,
        ),
        3 => (
            "c".into(),
            vec![("c".into(), "urn:other-cache".into())],
            "urn:other-cache",
        ),
        _ => ("cc".into(), vec![("cc".into(), CACHE_NS.into())], CACHE_NS),
    };
    let q = |local: &str| {
        if prefix.is_empty() {
            local.to_owned()
        } else {
            format!("{prefix}:{local}")
        }
    };
    let role_kind = c.pick(&[
        RoleAttribute::None,
        RoleAttribute::None,
        RoleAttribute::Role,
        RoleAttribute::Actor,
        RoleAttribute::Unqualified,
        RoleAttribute::OtherNs,
    ]);
    let mut role_value = c.pick(&ROLES).to_owned();
    if c.chance(1, 4) {
        role_value = format!("{} {role_value}\t", c.pick(&["", " ", "\n"]));
    }
    if c.chance(1, 16) {
        role_value = c.any_string(6);
    }
    let quote = c.pick(&['"', '\'']);
    let mut attributes = Vec::new();
    match role_kind {
        RoleAttribute::None => {}
        RoleAttribute::Role | RoleAttribute::Actor => {
            let local = if role_kind == RoleAttribute::Role {
                "role"
            } else {
                "actor"
            };
            let p = if env.is_empty() || c.chance(1, 4) {
                decls.push(("e".into(), version.into()));
                "e"
            } else {
                env
            };
            attributes.push(format!(
                "{p}:{local}={quote}{}{quote}",
                xml::attribute_value(&role_value, quote, c, true)
            ));
        }
        RoleAttribute::Unqualified => attributes.push(format!(
            "role={quote}{}{quote}",
            xml::attribute_value(&role_value, quote, c, true)
        )),
        RoleAttribute::OtherNs => {
            decls.push(("o".into(), "urn:o".into()));
            attributes.push(format!(
                "o:actor={quote}{}{quote}",
                xml::attribute_value(&role_value, quote, c, true)
            ));
        }
    }
    if !env.is_empty() && c.chance(1, 6) {
        attributes.push(format!("{env}:mustUnderstand=\"1\""));
    }
    for (p, u) in &decls {
        if p.is_empty() {
            attributes.push(format!("xmlns=\"{u}\""));
        } else {
            attributes.push(format!("xmlns:{p}=\"{u}\""));
        }
    }
    for i in (1..attributes.len()).rev() {
        let j = c.index(i + 1);
        attributes.swap(i, j);
    }
    out.push('<');
    out.push_str(&q("CacheControl"));
    for a in &attributes {
        out.push(' ');
        out.push_str(a);
    }

    let mut fields: Vec<(Field, String)> = Vec::new();
    let n = c.index(5);
    if n == 0 && c.chance(1, 2) {
        out.push_str("/>");
    } else {
        out.push('>');
        for _ in 0..n {
            let field = c.pick(&[
                Field::CacheKey,
                Field::CacheKey,
                Field::Expires,
                Field::MaxAge,
                Field::Other,
                Field::ForeignCacheKey,
            ]);
            let name = match field {
                Field::CacheKey => q("CacheKey"),
                Field::Expires => q("Expires"),
                Field::MaxAge => q("MaxAge"),
                Field::Other => q("Note"),
                Field::ForeignCacheKey => "f:CacheKey".to_owned(),
            };
            out.push_str(c.pick(&["", "\n      ", " "]));
            out.push('<');
            out.push_str(&name);
            if field == Field::ForeignCacheKey {
                out.push_str(" xmlns:f=\"urn:f\"");
            }
            out.push('>');
            // The value: text (maybe split by CDATA, references, comments)
            // and perhaps a nested element whose text counts too.
            let mut value = String::new();
            for _ in 0..=c.index(2) {
                let piece = if c.chance(1, 2) {
                    c.pick(&VALUES).to_owned()
                } else {
                    xml::text(c)
                };
                if c.chance(1, 6) {
                    out.push_str("<i:Part xmlns:i=\"urn:i\">");
                    xml_text(&piece, c, &style, out);
                    out.push_str("</i:Part>");
                } else {
                    xml_text(&piece, c, &style, out);
                }
                value.push_str(&piece);
            }
            out.push_str(&format!("</{name}>"));
            fields.push((field, value));
        }
        out.push_str(c.pick(&["", "\n    "]));
        out.push_str(&format!("</{}>", q("CacheControl")));
    }

    if ns != CACHE_NS {
        return None;
    }
    let addressed = match role_kind {
        RoleAttribute::None | RoleAttribute::Unqualified | RoleAttribute::OtherNs => true,
        RoleAttribute::Role | RoleAttribute::Actor => {
            let role = role_value.trim();
            NEXT_ROLES.contains(&role) || roles.iter().any(|r| r == role)
        }
    };
    if !addressed {
        return None;
    }
    let get = |kind: Field| {
        fields
            .iter()
            .find(|(f, _)| *f == kind)
            .map(|(_, v)| v.trim().to_owned())
    };
    Some((
        get(Field::CacheKey),
        get(Field::Expires),
        get(Field::MaxAge),
    ))
}

fn xml_text(value: &str, c: &mut Choices<'_, '_>, style: &Style, out: &mut String) {
    // roxmltree 0.21 leaves a lone CR in text as it is (XML reads it as a
    // line feed); harmless for CacheControl values, so not generated.
    let style = Style {
        lone_cr: false,
        ..*style
    };
    xml::render_text(value, c, &style, out);
}
