//! Key selectors (reference §3): XPath 1.0 `key` expressions, compiled to the
//! streaming plan when they are in its subset and to sxd-xpath otherwise.
//! Complements the proptest in src/selector.rs.
//!
//! Each input is used twice:
//! 1. raw: the text before the first NUL is up to four XPath expressions,
//!    one a line; after it, if present, a request body. Compiling never
//!    panics; the streaming compiler and the sxd-only compiler accept and
//!    refuse the same expressions (an error has a one-line message and the
//!    index of an expression of the list); compiled selectors evaluate on
//!    fixed requests and on the input's request without panicking, and when
//!    the selector streams, streaming and sxd-xpath give the same value;
//! 2. generated: an operation tree rendered as a request (no lone CR line
//!    ends, which roxmltree, under the sxd fallback, keeps as CR) and 1-3
//!    expressions from the streaming subset (child and `//` steps, name tests with policy prefixes, `*`, `p:*`, `.`, a final
//!    attribute step, `string()`, `normalize-space()`, `concat()`): they
//!    must stream, and agree with sxd-xpath.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use soapcache::soap::envelope::parse_request;
use soapcache::key::selector::Selector;
use soapcache_fuzz::alloc::{budget, peak_heap};
use soapcache_fuzz::xml::{self, Choices, Limits, Style};
use soapcache_fuzz::{policy_namespaces, REQUESTS};

fn agree(exprs: &[String], ns: &[(String, String)], xml: &[u8], must_stream: bool) {
    let streaming = Selector::compile(exprs, ns);
    let sxd = Selector::compile_with_sxd_only(exprs, ns);
    let (streaming, sxd) = match (streaming, sxd) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => {
            assert!(
                !must_stream,
                "generated expressions {exprs:?} do not compile: {a}"
            );
            for e in [&a, &b] {
                assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e:?}");
                assert!(e.index.is_none_or(|i| i < exprs.len()), "{e:?}");
            }
            return;
        }
        (a, b) => panic!(
            "the two compilers disagree on {exprs:?}: streaming {:?}, sxd-only {:?}",
            a.map(|s| s.is_streaming()),
            b.map(|_| ())
        ),
    };
    assert!(
        !must_stream || streaming.is_streaming(),
        "{exprs:?} should stream"
    );
    let Ok(env) = parse_request(xml) else { return };
    let Some(op) = env.operation else { return };
    // Selection runs on every request: its heap use must stay in
    // proportion to the request.
    let (a, peak) = peak_heap(|| streaming.select(&op));
    assert!(
        peak <= budget(xml.len()),
        "selecting {exprs:?} used {peak} bytes of heap for a {}-byte request",
        xml.len()
    );
    if !streaming.is_streaming() && !must_stream {
        // Both evaluate with sxd-xpath: nothing to compare.
        return;
    }
    let (b, peak) = peak_heap(|| sxd.select(&op));
    assert!(
        peak <= budget(xml.len()),
        "selecting {exprs:?} with sxd-xpath used {peak} bytes of heap for a {}-byte request",
        xml.len()
    );
    match (&a, &b) {
        (Ok(a), Ok(b)) => assert_eq!(
            a,
            b,
            "streaming and sxd-xpath disagree on {exprs:?} for {}",
            String::from_utf8_lossy(xml)
        ),
        // The sxd side also needs the whole request to be well-formed to
        // its parser; a request error there is not a disagreement on
        // values, but the streaming side must not fail where sxd succeeds.
        (Err(e), Ok(_)) => panic!(
            "streaming failed ({e}) where sxd-xpath succeeded: {exprs:?} on {}",
            String::from_utf8_lossy(xml)
        ),
        _ => {}
    }
}

const NAME_TESTS: [&str; 12] = [
    "p:A",
    "q:B",
    "r:C",
    "c:PartNumber",
    "A",
    "B",
    "PartNumber",
    "*",
    "p:*",
    "q:*",
    ".",
    "p:Ünï",
];
const ATTRIBUTES: [&str; 7] = ["@id", "@k", "@p:id", "@q:k", "@xml:lang", "@xsi:nil", "@ñ"];

fn path(c: &mut Choices<'_, '_>) -> String {
    let mut s = String::new();
    if c.chance(1, 3) {
        s.push_str(".//");
    }
    s.push_str(c.pick(&NAME_TESTS));
    for _ in 0..c.index(3) {
        s.push_str(c.pick(&["/", "//"]));
        s.push_str(c.pick(&NAME_TESTS));
    }
    if c.chance(1, 3) {
        s.push_str(c.pick(&["/", "//"]));
        s.push_str(c.pick(&ATTRIBUTES));
    }
    s
}

fn expression(c: &mut Choices<'_, '_>) -> String {
    match c.index(6) {
        0 => path(c),
        1 => format!("string({})", path(c)),
        2 => format!("normalize-space({})", path(c)),
        3 => c
            .pick(&["@id", "@p:k", "string()", "normalize-space()", ".", "'lit'"])
            .to_owned(),
        4 => format!(
            "concat({}, '|', string({}), normalize-space({}))",
            path(c),
            path(c),
            path(c)
        ),
        _ => format!("concat('k', {})", path(c)),
    }
}

fuzz_target!(|data: &[u8]| {
    let ns = policy_namespaces();

    // 1. Raw expressions.
    let (head, request) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if let Ok(text) = std::str::from_utf8(head) {
        let exprs: Vec<String> = text.lines().take(4).map(str::to_owned).collect();
        if !exprs.is_empty() {
            for xml in REQUESTS {
                agree(&exprs, &ns, xml.as_bytes(), false);
            }
            if let Some(request) = request {
                agree(&exprs, &ns, request, false);
            }
        }
    }

    // 2. Generated requests and streaming expressions.
    let mut u = Unstructured::new(data);
    let mut c = Choices(&mut u);
    let limits = Limits {
        xsi_type: false,
        ..Limits::default()
    };
    let op = xml::element(&mut c, &limits, 0);
    // The sxd tree is built from roxmltree, which keeps a lone literal CR in
    // text as CR (XML reads it as LF, as quick-xml and the streaming plan
    // do): a harmless difference of the fallback, not generated.
    let style = Style {
        lone_cr: false,
        ..Style::default()
    };
    let xml = xml::request(&op, &mut c, &style);
    let exprs: Vec<String> = (0..=c.index(3)).map(|_| expression(&mut c)).collect();
    soapcache_fuzz::show(&format!("{exprs:?} on"), &xml);
    parse_request(xml.as_bytes())
        .unwrap_or_else(|e| panic!("a valid rendering was refused ({e}): {xml}"));
    agree(&exprs, &ns, xml.as_bytes(), true);
});
