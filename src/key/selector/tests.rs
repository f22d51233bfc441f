use super::*;
use crate::soap::envelope::parse_request;

const CATALOG: &str = "http://example.org/2001/06/catalog";

fn ns() -> Vec<(String, String)> {
    vec![
        ("c".to_owned(), CATALOG.to_owned()),
        ("o".to_owned(), "urn:other".to_owned()),
    ]
}

fn envelope(operation: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cat="{CATALOG}">
  <soap:Header><cat:PartNumber>FROM-HEADER</cat:PartNumber></soap:Header>
  <soap:Body>{operation}</soap:Body>
</soap:Envelope>"#
    )
}

fn exprs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Selects with the streaming plan and with sxd-xpath, checks they agree.
fn select_both(operation: &str, list: &[&str]) -> String {
    let xml = envelope(operation);
    let env = parse_request(xml.as_bytes()).expect("valid envelope");
    let op = env.operation.expect("operation");
    let streaming = Selector::compile(&exprs(list), &ns()).expect("compiles");
    let sxd = Selector::compile_with_sxd_only(&exprs(list), &ns()).expect("compiles");
    let a = streaming.select(&op).expect("streaming selects");
    let b = sxd.select(&op).expect("sxd selects");
    assert_eq!(a, b, "streaming and sxd differ for {list:?}");
    a
}

fn compile_error(expression: &str) -> String {
    Selector::compile(&exprs(&[expression]), &ns())
        .unwrap_err()
        .message
}

const REQUEST: &str = r#"<cat:CatalogPriceRequest xmlns:x="urn:other" id="r1"><cat:PartNumber>ABC-1234</cat:PartNumber><cat:Region>EU</cat:Region><x:Note lang="en">  a  <![CDATA[<b>]]> &amp; &#x41; </x:Note></cat:CatalogPriceRequest>"#;

#[test]
fn the_spec_example_selects_the_part_number() {
    assert_eq!(select_both(REQUEST, &["string(c:PartNumber)"]), "ABC-1234");
    let streaming = Selector::compile(&exprs(&["string(c:PartNumber)"]), &ns()).unwrap();
    assert!(streaming.is_streaming());
}

#[test]
fn names_match_by_namespace_uri_not_by_prefix() {
    // The policy says `c`, the request says `cat`; `o` vs `x` likewise.
    assert_eq!(select_both(REQUEST, &["o:Note/@lang"]), "en");
    // An unprefixed name test means "no namespace".
    assert_eq!(select_both(REQUEST, &["string(PartNumber)"]), "");
    let default_ns = format!(
        r#"<CatalogPriceRequest xmlns="{CATALOG}"><PartNumber>P-1</PartNumber></CatalogPriceRequest>"#
    );
    assert_eq!(select_both(&default_ns, &["c:PartNumber"]), "P-1");
    assert_eq!(select_both(&default_ns, &["PartNumber"]), "");
}

#[test]
fn several_expressions_are_joined_with_the_unit_separator() {
    assert_eq!(
        select_both(REQUEST, &["c:PartNumber", "c:Region", "@id"]),
        "ABC-1234\u{1f}EU\u{1f}r1"
    );
}

#[test]
fn string_value_includes_cdata_and_resolved_references() {
    assert_eq!(select_both(REQUEST, &["string(o:Note)"]), "  a  <b> & A ");
    assert_eq!(
        select_both(REQUEST, &["normalize-space(o:Note)"]),
        "a <b> & A"
    );
    assert_eq!(
        select_both(REQUEST, &["string(.)"]),
        "ABC-1234EU  a  <b> & A "
    );
    assert_eq!(
        select_both(REQUEST, &["string()"]),
        "ABC-1234EU  a  <b> & A "
    );
}

#[test]
fn concat_of_paths_and_literals() {
    assert_eq!(
        select_both(
            REQUEST,
            &["concat(c:Region, '/', string(c:PartNumber), \"-\", @id)"]
        ),
        "EU/ABC-1234-r1"
    );
}

#[test]
fn the_first_node_in_document_order_wins() {
    let op = r#"<c:Order xmlns:c="http://example.org/2001/06/catalog"><c:Line n="1"><c:Item>first</c:Item></c:Line><c:Item>second</c:Item><c:Line n="2"><c:Item>third</c:Item></c:Line></c:Order>"#;
    assert_eq!(select_both(op, &[".//c:Item"]), "first");
    assert_eq!(select_both(op, &["c:Item"]), "second");
    assert_eq!(select_both(op, &["c:Line/c:Item"]), "first");
    assert_eq!(select_both(op, &[".//@n"]), "1");
    assert_eq!(select_both(op, &["*/@n"]), "1");
    assert_eq!(select_both(op, &["c:*[2]"]), "second");
    assert_eq!(select_both(op, &["c:Missing"]), "");
    assert_eq!(select_both(op, &["c:Line//@missing"]), "");
}

#[test]
fn nested_matches_are_captured_together() {
    let op = r#"<c:A xmlns:c="http://example.org/2001/06/catalog"><c:B>1<c:B>2</c:B>3</c:B></c:A>"#;
    assert_eq!(
        select_both(op, &[".//c:B", "c:B/c:B", "concat(.//c:B//c:B, c:B)"]),
        "123\u{1f}2\u{1f}2123"
    );
}

#[test]
fn absolute_paths_start_at_the_document_root() {
    // `//c:PartNumber` finds the Header's element first: it is not
    // narrowed to the operation element, so it goes to sxd-xpath.
    let s = Selector::compile(&exprs(&["//c:PartNumber"]), &ns()).unwrap();
    assert!(!s.is_streaming());
    assert_eq!(select_both(REQUEST, &["//c:PartNumber"]), "FROM-HEADER");
    assert_eq!(select_both(REQUEST, &[".//c:PartNumber"]), "ABC-1234");
}

#[test]
fn other_xpath_goes_to_sxd_with_xpath_number_formatting() {
    assert_eq!(select_both(REQUEST, &["count(*)"]), "3");
    assert_eq!(select_both(REQUEST, &["1 div 0"]), "Infinity");
    assert_eq!(select_both(REQUEST, &["0 div 0"]), "NaN");
    assert_eq!(select_both(REQUEST, &["-0"]), "0");
    assert_eq!(select_both(REQUEST, &["1.5 * 2"]), "3");
    assert_eq!(select_both(REQUEST, &["c:Region = 'EU'"]), "true");
    assert_eq!(
        select_both(REQUEST, &["translate(c:PartNumber, '-', '')"]),
        "ABC1234"
    );
    assert_eq!(select_both(REQUEST, &["c:*[last()]/@lang | @id"]), "r1");
    assert_eq!(select_both(REQUEST, &["local-name(*[1])"]), "PartNumber");
}

#[test]
fn attributes_are_normalized_as_xml_requires() {
    let op = "<c:A xmlns:c=\"http://example.org/2001/06/catalog\" v=\"a&#10;b\tc &amp; d\"/>";
    let xml = envelope(op);
    let env = parse_request(xml.as_bytes()).unwrap();
    let s = Selector::compile(&exprs(&["@v"]), &ns()).unwrap();
    assert_eq!(s.select(&env.operation.unwrap()).unwrap(), "a\nb c & d");
}

#[test]
fn compile_errors_name_the_problem() {
    assert!(compile_error("string(z:PartNumber)").contains("undefined namespace prefix 'z'"));
    assert!(compile_error("//z:*").contains("undefined namespace prefix 'z'"));
    assert!(compile_error("c:PartNumber[").contains("invalid XPath"));
    assert!(compile_error("string(c:A, c:B)").contains("string() takes 0 to 1 arguments, not 2"));
    assert!(compile_error("concat(c:A)").contains("at least 2"));
    assert!(compile_error("frobnicate(.)").contains("unknown function frobnicate()"));
    assert!(compile_error("$part").contains("variables"));
    assert!(compile_error("'unterminated").contains("unterminated"));
    assert!(compile_error("   ").contains("empty"));
    let e = Selector::compile(&exprs(&["c:A", "c:B["]), &ns()).unwrap_err();
    assert_eq!(e.index, Some(1));
    // Operator names after an operand are operators, not function calls.
    assert!(Selector::compile(&exprs(&["c:A and (c:B)", "2 div (1)", "c:A * 2"]), &ns()).is_ok());
}

#[test]
fn the_streaming_subset_is_recognised() {
    for e in [
        "c:PartNumber",
        "string(c:A/c:B)",
        ".//c:A",
        "c:A//c:B/@id",
        "./c:A/./c:B",
        "@o:id",
        "normalize-space(c:*)",
        "concat('k', c:A, normalize-space(*/@x))",
        "'literal'",
        ".",
    ] {
        let s = Selector::compile(&exprs(&[e]), &ns()).unwrap();
        assert!(s.is_streaming(), "{e} should stream");
    }
    for e in [
        "/c:A",
        "//c:A",
        "c:A[1]",
        "../c:A",
        "child::c:A",
        "@*",
        "c:A | c:B",
        "text()",
        "42",
    ] {
        let s = Selector::compile(&exprs(&[e]), &ns()).unwrap();
        assert!(!s.is_streaming(), "{e} should go to sxd");
    }
}

#[test]
fn selectors_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Selector>();
}

mod agreement {
    //! Random requests and expressions from the streaming subset: the
    //! streaming plan and sxd-xpath must select the same value.
    use super::*;
    use proptest::prelude::*;

    const URIS: [&str; 3] = ["urn:a", "urn:b", "urn:c"];
    /// The policy's bindings: two prefixes for one URI, one URI the
    /// requests bind under other prefixes.
    fn policy_ns() -> Vec<(String, String)> {
        vec![
            ("p".to_owned(), "urn:a".to_owned()),
            ("q".to_owned(), "urn:b".to_owned()),
            ("r".to_owned(), "urn:a".to_owned()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Node {
        Element {
            /// None = unprefixed (default namespace in scope applies).
            prefix: Option<&'static str>,
            local: &'static str,
            /// Prefix declarations on this element: (prefix, uri index); "" = default.
            declare: Vec<(&'static str, usize)>,
            attributes: Vec<(Option<&'static str>, &'static str, String)>,
            children: Vec<Node>,
        },
        Text(String),
        CData(String),
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "ab", "x y", " ", "  ", "\n", "\t", "&amp;", "&lt;", "&gt;", "&quot;", "&apos;",
                "&#233;", "&#x41;", "é", "→", "1",
            ]),
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    fn attribute_value() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "v", "w z", " ", "&amp;", "&lt;", "&#10;", "&#x9;", "&quot;", "é",
            ]),
            0..3,
        )
        .prop_map(|parts| parts.concat())
    }

    fn node() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            3 => text().prop_map(Node::Text),
            1 => prop::sample::select(vec!["c<d", "]] >", " ", "a&b"]).prop_map(|s| Node::CData(s.to_owned())),
        ];
        let element_leaf = element(Just(Vec::new()).boxed());
        let base = prop_oneof![2 => leaf, 1 => element_leaf];
        base.prop_recursive(5, 40, 4, |inner| {
            element(prop::collection::vec(inner, 0..4).boxed())
        })
    }

    fn element(children: BoxedStrategy<Vec<Node>>) -> impl Strategy<Value = Node> {
        (
            prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
            prop::sample::select(vec!["A", "B", "C"]),
            prop::collection::vec(
                (prop::sample::select(vec!["", "x", "y", "z"]), 0..URIS.len()),
                0..2,
            ),
            prop::collection::vec(
                (
                    prop::option::of(prop::sample::select(vec!["x", "y"])),
                    prop::sample::select(vec!["id", "k"]),
                    attribute_value(),
                ),
                0..3,
            ),
            children,
        )
            .prop_map(
                |(prefix, local, declare, attributes, children)| Node::Element {
                    prefix,
                    local,
                    declare,
                    attributes,
                    children,
                },
            )
    }

    /// Serialises with every used prefix declared; duplicate
    /// declarations and duplicate attributes (after namespace
    /// resolution) are dropped.
    fn write(node: &Node, scope: &mut Vec<(String, String)>, out: &mut String) {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::CData(t) => {
                out.push_str("<![CDATA[");
                out.push_str(t);
                out.push_str("]]>");
            }
            Node::Element {
                prefix,
                local,
                declare,
                attributes,
                children,
            } => {
                let mark = scope.len();
                let mut decls: Vec<(String, String)> = Vec::new();
                for (p, u) in declare {
                    if !decls.iter().any(|(dp, _)| dp == p) {
                        decls.push((p.to_string(), URIS[*u].to_owned()));
                    }
                }
                let mut needed: Vec<&str> = prefix.iter().copied().collect();
                needed.extend(attributes.iter().filter_map(|(p, _, _)| *p));
                for p in needed {
                    let declared =
                        decls.iter().any(|(dp, _)| dp == p) || scope.iter().any(|(sp, _)| sp == p);
                    if !declared {
                        decls.push((p.to_owned(), "urn:c".to_owned()));
                    }
                }
                let name = match prefix {
                    Some(p) => format!("{p}:{local}"),
                    None => local.to_string(),
                };
                out.push('<');
                out.push_str(&name);
                for (p, u) in &decls {
                    if p.is_empty() {
                        out.push_str(&format!(" xmlns=\"{u}\""));
                    } else {
                        out.push_str(&format!(" xmlns:{p}=\"{u}\""));
                    }
                }
                scope.extend(decls.iter().cloned());
                let mut seen: Vec<(String, &str)> = Vec::new();
                for (p, l, v) in attributes {
                    let uri = match p {
                        Some(p) => scope
                            .iter()
                            .rev()
                            .find(|(sp, _)| sp == p)
                            .unwrap()
                            .1
                            .clone(),
                        None => String::new(),
                    };
                    if seen.iter().any(|(su, sl)| *su == uri && sl == l) {
                        continue;
                    }
                    seen.push((uri, l));
                    match p {
                        Some(p) => out.push_str(&format!(" {p}:{l}=\"{v}\"")),
                        None => out.push_str(&format!(" {l}=\"{v}\"")),
                    }
                }
                if children.is_empty() {
                    out.push_str("/>");
                } else {
                    out.push('>');
                    for child in children {
                        write(child, scope, out);
                    }
                    out.push_str(&format!("</{name}>"));
                }
                scope.truncate(mark);
            }
        }
    }

    fn request(op: &Node) -> String {
        let mut body = String::new();
        let mut scope = vec![
            ("s".to_owned(), "soap".to_owned()),
            ("x".to_owned(), "urn:a".to_owned()),
            ("y".to_owned(), "urn:b".to_owned()),
        ];
        write(op, &mut scope, &mut body);
        format!(
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:x=\"urn:a\">\
                 <s:Header><x:A>header</x:A></s:Header><s:Body xmlns:y=\"urn:b\">{body}</s:Body></s:Envelope>"
            )
    }

    fn operation() -> impl Strategy<Value = Node> {
        (element(prop::collection::vec(node(), 0..5).boxed()),).prop_map(|(n,)| n)
    }

    fn name_test() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["p:A", "q:B", "r:C", "A", "B", "*", "p:*", "q:*", "."])
            .prop_map(str::to_owned)
    }

    fn path() -> impl Strategy<Value = String> {
        (
            prop::bool::ANY,
            prop::collection::vec((prop::sample::select(vec!["/", "//"]), name_test()), 0..3),
            name_test(),
            prop::option::of(prop::sample::select(vec!["@id", "@k", "@p:id", "@q:k"])),
            prop::sample::select(vec!["/", "//"]),
        )
            .prop_map(|(dot_start, middle, first, attribute, last_sep)| {
                let mut s = String::new();
                if dot_start {
                    s.push_str(".//");
                }
                s.push_str(&first);
                for (sep, step) in middle {
                    s.push_str(sep);
                    s.push_str(&step);
                }
                if let Some(a) = attribute {
                    s.push_str(last_sep);
                    s.push_str(a);
                }
                s
            })
    }

    fn expression() -> impl Strategy<Value = String> {
        prop_oneof![
            path(),
            path().prop_map(|p| format!("string({p})")),
            path().prop_map(|p| format!("normalize-space({p})")),
            prop::sample::select(vec!["@id", "@x:k", "string()", "normalize-space()"])
                .prop_map(|s| s.replace("x:", "p:")),
            (path(), path())
                .prop_map(|(a, b)| format!("concat({a}, '|', string({b}), normalize-space({a}))")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn streaming_and_sxd_agree(op in operation(), exprs in prop::collection::vec(expression(), 1..4)) {
            let xml = request(&op);
            let env = parse_request(xml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            let op = env.operation.unwrap();
            let streaming = Selector::compile(&exprs, &policy_ns()).unwrap();
            prop_assert!(streaming.is_streaming(), "{:?} should stream", exprs);
            let sxd = Selector::compile_with_sxd_only(&exprs, &policy_ns()).unwrap();
            let a = streaming.select(&op).unwrap();
            let b = sxd.select(&op).unwrap();
            prop_assert_eq!(a, b, "expressions {:?} on {}", exprs, xml);
        }
    }
}

#[test]
fn fuzzer_findings_stay_fixed() {
    let ns = vec![("c".to_owned(), "urn:x".to_owned())];
    // `xmlns=""` puts an element in no namespace, for sxd too.
    let sel = Selector::compile(&["string(Id[1])".to_owned()], &ns).unwrap();
    let request = |id: &str| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><c:Op xmlns:c="urn:x" xmlns="urn:x"><Id xmlns="">{id}</Id></c:Op></s:Body></s:Envelope>"#
        )
    };
    let (five, six) = (request("5"), request("6"));
    let select = |xml: &str| {
        let env = crate::soap::envelope::parse_request(xml.as_bytes()).unwrap();
        sel.select(&env.operation.unwrap()).unwrap()
    };
    assert_eq!(
        (select(&five), select(&six)),
        ("5".to_owned(), "6".to_owned())
    );
    // `*` after a comma is a name test, not a multiplication.
    assert!(Selector::compile(&["concat('k', *[1])".to_owned()], &ns).is_ok());
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{}1{}", "(".repeat(2000), ")".repeat(2000));
    let err = Selector::compile(&[deep], &ns).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}
