//! Responses: `control::inspect_response` + `control::splice` (reference §4, §5:
//! addressed CacheControl blocks are cut out, every other byte stays).
//!
//! Each input is used twice:
//! 1. as raw bytes: `inspect_response` never panics; when it answers, the
//!    strip ranges are sorted, disjoint, in bounds and each is one element
//!    (`<…>`); the spliced body is the input minus exactly those ranges,
//!    is still a SOAP envelope of the same version and fault-ness, and has
//!    no addressed CacheControl left; an entry stored from the kept pieces
//!    holds the same bytes; the lifetime parsers accept whatever
//!    the block says without panicking;
//!    and where the streaming reading decides on its own, it is exactly
//!    the tree reading, and when it reads an envelope (its proof of
//!    well-formedness held) roxmltree accepts the body;
//! 2. as the choices of a generated response (fuzz/src/response.rs): the
//!    same checks, plus the exact expected answer: version, fault, the
//!    byte ranges of precisely the addressed blocks (no role, `next`, or a
//!    role in `roles`; not other roles, not other namespaces, not nested,
//!    not in the Body) and the CacheKey/Expires/MaxAge of the first one.
#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::Unstructured;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use soapcache::soap::control::{inspect_response, kept, splice, stream, tree, ResponseEnvelope};
use soapcache::cache::lifetime::{expires_at, parse_date_time, parse_max_age};
use soapcache::cache::entry::{Entry, Times};
use soapcache_fuzz::response::response;
use soapcache_fuzz::xml::Choices;

fn check(body: &[u8], roles: &[String], info: &ResponseEnvelope) {
    let mut at = 0;
    for r in &info.strip {
        assert!(
            r.start >= at && r.start < r.end && r.end <= body.len(),
            "bad strip ranges {:?} for {} bytes",
            info.strip,
            body.len()
        );
        assert!(
            body[r.start] == b'<' && body[r.end - 1] == b'>',
            "strip range {r:?} is not an element"
        );
        at = r.end;
    }
    let bytes = Bytes::copy_from_slice(body);
    let out = splice(&bytes, &info.strip);
    let mut expected = Vec::with_capacity(body.len());
    let mut next = 0;
    for r in &info.strip {
        expected.extend_from_slice(&body[next..r.start]);
        next = r.end;
    }
    expected.extend_from_slice(&body[next..]);
    assert!(
        out[..] == expected[..],
        "splice did not remove exactly the strip ranges"
    );
    // A stored answer is built from the kept pieces, not from `splice`.
    let stored_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let entry = Entry::new(
        &kept(body, &info.strip),
        None,
        Times {
            stored_at: stored_at,
            expires_at: stored_at + Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        },
    );
    assert!(
        entry.body() == &expected[..],
        "the stored body differs from the spliced one"
    );
    let again = inspect_response(&out, roles).unwrap_or_else(|| {
        panic!(
            "the spliced response is no SOAP envelope: {:?}",
            String::from_utf8_lossy(&out)
        )
    });
    assert!(
        again.strip.is_empty() && again.control.is_none(),
        "an addressed CacheControl is left after splicing: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        (again.version, again.is_fault),
        (info.version, info.is_fault)
    );

    if let Some(control) = &info.control {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        if let Some(e) = &control.expires {
            let _ = parse_date_time(e);
        }
        if let Some(m) = &control.max_age {
            let _ = parse_max_age(m);
        }
        let _ = expires_at(
            Some(control),
            Some(Duration::from_secs(60)),
            None,
            Some(Duration::from_secs(86_400)),
            now,
        );
    }
}

/// The streaming reading against the tree reading on the same bytes.
fn differential(body: &[u8], roles: &[String]) {
    let stream::Read::Decided(streamed) = stream::read(body, roles) else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    if streamed.is_some() {
        if let Err(e) = roxmltree::Document::parse(&text) {
            panic!("proven well-formed but roxmltree refuses it ({e}): {text:?}");
        }
    }
    assert_eq!(
        streamed,
        tree::read(body, roles),
        "the streaming and tree readings differ on {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let roles = vec!["urn:role:a".to_owned()];
    differential(data, &roles);
    if let Some(info) = inspect_response(data, &roles) {
        check(data, &roles, &info);
    }

    let mut u = Unstructured::new(data);
    let generated = response(&mut Choices(&mut u));
    soapcache_fuzz::show(
        &format!("response, roles {:?}", generated.roles),
        &generated.xml,
    );
    let xml = generated.xml.as_bytes();
    differential(xml, &generated.roles);
    let Some(info) = inspect_response(xml, &generated.roles) else {
        panic!("a generated response was refused: {:?}", generated.xml);
    };
    let e = &generated.expected;
    assert_eq!(info.version.namespace(), e.version, "{:?}", generated.xml);
    assert_eq!(info.is_fault, e.is_fault, "fault? {:?}", generated.xml);
    assert_eq!(
        info.strip, e.strip,
        "addressed blocks differ (roles {:?}): {:?}",
        generated.roles, generated.xml
    );
    let control = info
        .control
        .as_ref()
        .map(|c| (c.cache_key.clone(), c.expires.clone(), c.max_age.clone()));
    assert_eq!(
        control, e.control,
        "CacheControl fields of {:?}",
        generated.xml
    );
    check(xml, &generated.roles, &info);
});
