//! The default selector (reference §3): `canonical::digest` of the operation
//! element must not depend on how the element is written, and must depend
//! on what it says.
//!
//! From the input: an operation tree A (expanded names, attributes, text),
//! a changed copy B (one text or attribute value replaced), and three
//! renderings: A twice and B once, each with its own choices of prefixes vs
//! default namespace, where namespaces are declared (the element, Body,
//! Envelope), unused declarations, attribute order, quotes, indentation,
//! comments, processing instructions, CDATA, character/entity references,
//! CR LF line ends, SOAP version and envelope prefix.
//!
//! Invariants:
//! * every rendering is accepted by `parse_request`, whose operation has
//!   A's (B's) expanded name;
//! * digest(A rendered one way) == digest(A rendered another way);
//! * digest(B) == digest(A) exactly when A and B have the same canonical
//!   form (same names, attribute values and non-blank text; comments, PIs,
//!   blank text between elements and prefixes do not count).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use soapcache::key::canonical::digest;
use soapcache::soap::envelope::parse_request;
use soapcache_fuzz::xml::{self, canonical, Choices, Element, Limits, Style};

fn digest_of(op: &Element, xml: &str) -> String {
    let env = parse_request(xml.as_bytes())
        .unwrap_or_else(|e| panic!("a valid rendering was refused ({e}): {xml}"));
    let found = env.operation.expect("the rendering has an operation");
    assert_eq!(
        (found.name.namespace.as_str(), found.name.local.as_str()),
        (op.ns, op.local),
        "operation name of {xml}"
    );
    digest(&found)
        .unwrap_or_else(|e| panic!("digest failed ({e}) on {xml}"))
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut c = Choices(&mut u);
    let a = xml::element(&mut c, &Limits::default(), 0);
    let mut b = a.clone();
    xml::mutate(&mut b, &mut c);
    let style = Style {
        attribute_whitespace: true,
        ..Style::default()
    };
    let a1 = xml::request(&a, &mut c, &style);
    let a2 = xml::request(&a, &mut c, &style);
    let b1 = xml::request(&b, &mut c, &style);

    soapcache_fuzz::show("A", &a1);
    soapcache_fuzz::show("A again", &a2);
    soapcache_fuzz::show(
        if canonical(&a) == canonical(&b) {
            "B (equivalent)"
        } else {
            "B (different)"
        },
        &b1,
    );
    let da1 = digest_of(&a, &a1);
    let da2 = digest_of(&a, &a2);
    assert_eq!(
        da1, da2,
        "one operation, two digests:\n{a1}\n{a2}\ntree: {a:?}"
    );
    let db1 = digest_of(&b, &b1);
    let same = canonical(&a) == canonical(&b);
    if same {
        assert_eq!(da1, db1, "equivalent operations, two digests:\n{a1}\n{b1}");
    } else {
        assert_ne!(
            da1,
            db1,
            "different operations, one digest:\n{a1}\n{b1}\ncanonical A: {:?}\ncanonical B: {:?}",
            canonical(&a),
            canonical(&b)
        );
    }
});
