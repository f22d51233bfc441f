//! `envelope::parse_request` on arbitrary bytes (the request path: every
//! POST body goes through it, reference §2).
//!
//! Invariants:
//! * it never panics, and its heap use stays within `alloc::budget(len)`;
//! * on Ok, the operation's `xml` is exactly `document[range]`, `document`
//!   is the whole input, and it is one element: starts with `<`, ends
//!   with `>`, and its name is `name`;
//! * on Ok the input is well-formed XML: roxmltree (an independent,
//!   conforming parser) accepts it too;
//! * whenever `xml::proof` proves the input well-formed (which lets
//!   `parse_request` skip roxmltree), roxmltree accepts it;
//! * `canonical::digest` succeeds on the operation and is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soapcache::key::canonical::digest;
use soapcache::soap::envelope::parse_request;
use soapcache_fuzz::alloc::{budget, peak_heap};

fuzz_target!(|data: &[u8]| {
    if soapcache::xml::proof::proves(data) {
        let text = std::str::from_utf8(data).expect("a proven body is UTF-8");
        if let Err(e) = roxmltree::Document::parse(text) {
            panic!("proven well-formed but roxmltree refuses it ({e}): {text:?}");
        }
    }
    let (result, peak) = peak_heap(|| {
        parse_request(data).map(|env| {
            let digest = env.operation.as_ref().map(|op| digest(op));
            (env, digest)
        })
    });
    assert!(
        peak <= budget(data.len()),
        "parse_request + digest used {peak} bytes of heap for {} bytes of input",
        data.len()
    );
    let Ok((env, first_digest)) = result else {
        return;
    };
    let well_formed = match std::str::from_utf8(data) {
        Ok(text) => roxmltree::Document::parse(text).map_err(|e| e.to_string()),
        Err(e) => Err(format!("not UTF-8: {e}")),
    };
    if let Err(e) = &well_formed {
        panic!(
            "parse_request accepted a body that is not well-formed XML ({e}): {:?}",
            String::from_utf8_lossy(data)
        );
    }
    let Some(op) = env.operation else { return };
    assert!(
        std::ptr::eq(op.document, data),
        "document is not the request body"
    );
    assert_eq!(op.xml, &op.document[op.range.clone()]);
    assert!(
        op.xml.starts_with(b"<"),
        "operation xml does not start with '<'"
    );
    assert!(
        op.xml.ends_with(b">"),
        "operation xml does not end with '>'"
    );
    assert!(!op.name.local.is_empty());
    let first = match first_digest.expect("operation present") {
        Ok(d) => d,
        Err(e) => panic!("digest failed on an accepted request: {e}"),
    };
    assert_eq!(first.len(), 22, "a 128-bit digest in base64url");
    assert_eq!(digest(&op).unwrap(), first, "digest is not deterministic");
});
