use super::*;

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("soapcache-policy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CATALOG: &str = r#"
[service]
name     = "catalog"
route    = "/catalog"
upstream = "http://127.0.0.1:9000/catalog"

[namespaces]
c = "http://example.org/2001/06/catalog"

[defaults]
max_ttl        = "1d"
stale_if_error = "30s"
max_entry_size = "64KiB"
vary_headers   = ["X-Tenant"]

[[operation]]
element          = "c:CatalogPriceRequest"
key              = ["string(c:PartNumber)"]
ttl              = "24h"
expires_daily_at = "08:00:00Z"

[[operation]]
element      = "c:CatalogSearch"
vary_headers = []
shared       = true
max_entry_size = 1000

[[invalidate]]
element = "c:UpdatePriceRequest"
key     = ["string(c:PartNumber)"]
targets = ["c:CatalogPriceRequest"]
"#;

fn catalog_name(local: &str) -> ExpandedName {
    ExpandedName {
        namespace: "http://example.org/2001/06/catalog".to_owned(),
        local: local.to_owned(),
    }
}

fn load_one(text: &str) -> Result<PolicySet, Vec<PolicyError>> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = Scratch::new(&format!("one-{n}"));
    let path = scratch.write("policy.toml", text);
    PolicySet::load(&path)
}

fn errors_of(text: &str) -> Vec<String> {
    load_one(text)
        .expect_err("should not load")
        .into_iter()
        .map(|e| format!("{}: {}", e.line, e.message))
        .collect()
}

#[test]
fn the_spec_example_loads_and_merges_defaults_into_operations() {
    let set = load_one(CATALOG).expect("loads");
    let service = set.route("/catalog").expect("routed");
    assert_eq!(&*service.name, "catalog");
    assert_eq!(
        service.upstream.as_ref().unwrap().to_string(),
        "http://127.0.0.1:9000/catalog"
    );

    let price = service
        .operation(&catalog_name("CatalogPriceRequest"))
        .expect("operation");
    assert!(price.key.is_some());
    let rules = &price.rules;
    assert_eq!(rules.ttl, Some(Duration::from_secs(86_400)));
    assert_eq!(rules.expires_daily_at, Some(time::macros::time!(08:00:00)));
    // Inherited from [defaults].
    assert_eq!(rules.max_ttl, Some(Duration::from_secs(86_400)));
    assert_eq!(rules.stale_if_error, Duration::from_secs(30));
    assert_eq!(rules.max_entry_size, 64 << 10);
    assert_eq!(
        rules.vary_headers,
        vec![hyper::header::HeaderName::from_static("x-tenant")]
    );
    assert!(rules.cache && rules.honor_cache_control && !rules.shared);

    // Overridden per operation.
    let search = service.rules(&catalog_name("CatalogSearch"));
    assert!(search.vary_headers.is_empty());
    assert!(search.shared);
    assert_eq!(search.max_entry_size, 1000);
    assert_eq!(search.ttl, None);
    assert!(service
        .operation(&catalog_name("CatalogSearch"))
        .unwrap()
        .key
        .is_none());

    // Operations the policy does not list get the defaults.
    let other = service.rules(&catalog_name("Unlisted"));
    assert_eq!(other.max_entry_size, 64 << 10);
    assert_eq!(other.ttl, None);

    let update = service
        .invalidation(&catalog_name("UpdatePriceRequest"))
        .expect("invalidation");
    assert_eq!(update.targets, vec![catalog_name("CatalogPriceRequest")]);
    assert!(service
        .invalidation(&catalog_name("CatalogPriceRequest"))
        .is_none());
}

#[test]
fn rules_default_to_the_documented_values() {
    let r = Rules::default();
    assert!(r.honor_cache_control && r.cache && !r.shared);
    assert_eq!(r.max_ttl, None);
    assert_eq!(r.stale_if_error, Duration::ZERO);
    assert_eq!(r.max_entry_size, 1 << 20);
    assert!(r.roles.is_empty() && r.vary_headers.is_empty());
    assert_eq!((r.ttl, r.expires_daily_at), (None, None));
}

fn service(name: &str, route: &str) -> Service {
    Service {
        name: name.into(),
        route: route.to_owned(),
        upstream: None,
        source: PathBuf::from(format!("{name}.toml")),
        defaults: Rules::default(),
        operations: Vec::new(),
        invalidations: Vec::new(),
    }
}

#[test]
fn the_longest_route_prefix_wins_by_path_segment() {
    let set = PolicySet::new(vec![
        service("all", "/"),
        service("catalog", "/catalog"),
        service("prices", "/catalog/prices"),
    ]);
    let routed = |p: &str| set.route(p).map(|s| &*s.name);
    assert_eq!(routed("/catalog"), Some("catalog"));
    assert_eq!(routed("/catalog/"), Some("catalog"));
    assert_eq!(routed("/catalog/x"), Some("catalog"));
    assert_eq!(routed("/catalog/prices"), Some("prices"));
    assert_eq!(routed("/catalog/prices/eu"), Some("prices"));
    assert_eq!(routed("/catalog/pricesx"), Some("catalog"));
    assert_eq!(routed("/catalogue"), Some("all"));
    assert_eq!(routed("/"), Some("all"));

    let no_root = PolicySet::new(vec![service("catalog", "/catalog")]);
    assert!(no_root.route("/catalogue").is_none());
    assert!(no_root.route("/").is_none());
    assert!(PolicySet::empty().route("/catalog").is_none());
}

#[test]
fn a_directory_loads_every_toml_file_in_name_order() {
    let dir = Scratch::new("dir");
    dir.write("b.toml", "[service]\nname = \"b\"\nroute = \"/b/\"\n");
    dir.write(
        "a.toml",
        "[service]\nname = \"a\"\nroute = \"/a\"\nupstream = \"https://svc.example:8443/a\"\n",
    );
    dir.write("notes.txt", "not a policy");
    std::fs::create_dir(dir.0.join("sub.toml")).unwrap();
    let set = PolicySet::load(&dir.0).expect("loads");
    let summary = set.summary();
    assert_eq!(summary.len(), 2);
    assert!(summary[0]
        .starts_with("a: route /a -> https://svc.example:8443/a, 0 operations, 0 invalidations ("));
    assert!(summary[1].starts_with("b: route /b -> the --upstream default, 0 operations"));
    assert!(set.route("/b/x").unwrap().upstream.is_none());
}

#[test]
fn the_summary_counts_operations_and_invalidations() {
    let set = load_one(CATALOG).unwrap();
    let line = &set.summary()[0];
    assert!(
        line.starts_with("catalog: route /catalog -> http://127.0.0.1:9000/catalog, 2 operations, 1 invalidation ("),
        "{line}"
    );
    assert!(line.ends_with("policy.toml)"), "{line}");
}

#[test]
fn every_problem_in_a_file_is_reported_with_its_line() {
    let text = r#"[service]
name = "bad"
route = "catalog"
upstream = "ftp://x"
colour = "blue"

[namespaces]
c = "urn:c"

[defaults]
max_ttl = "forever"
max_entry_size = "lots"

[[operation]]
element = "z:Op"
key = ["string(q:PartNumber)", "c:A["]
ttl = "1 fortnight"

[[operation]]
element = "c:Op"
expires_daily_at = "25:00:00Z"
vary_headers = ["X Tenant"]
flavour = "x"

[[operation]]
element = "c:Op"

[[operation]]
element = "c:Op"
cache = "no"

[[invalidate]]
element = "c:Write"
key = ["string(c:Id)"]
targets = ["c:Missing"]
"#;
    let errors = errors_of(text);
    let expect = [
        "5: unknown key 'colour' in [service]",
        "11: max_ttl: invalid duration 'forever'",
        "12: max_entry_size: invalid size 'lots'",
        "15: undefined namespace prefix 'z' in 'z:Op'",
        "16: key: invalid XPath 'string(q:PartNumber)': undefined namespace prefix 'q'",
        "16: key: invalid XPath 'c:A[",
        "17: ttl: invalid duration '1 fortnight'",
        "23: unknown key 'flavour' in [[operation]]",
        "35: invalidate target 'c:Missing' is not an [[operation]] of this service",
        "3: route 'catalog' must start with '/'",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    // Type errors come from serde, at the value's line.
    assert!(
        errors
            .iter()
            .any(|x| x.starts_with("30: ") && x.contains("bool")),
        "{errors:#?}"
    );
}

#[test]
fn value_problems_in_one_operation_do_not_hide_the_next() {
    let text = r#"[service]
name = "s"
route = "/s"
upstream = "not a url"

[[operation]]
element = "Op"
expires_daily_at = "25:00:00Z"

[[operation]]
element = "Op2"
vary_headers = ["X Tenant"]

[[operation]]
element = "Op3"

[[operation]]
element = "Op3"
"#;
    let errors = errors_of(text);
    for e in [
        "4: upstream 'not a url' is not an http:// or https:// URL",
        "8: expires_daily_at: '25:00:00Z' is out of range",
        "12: vary_headers: 'X Tenant' is not a valid HTTP header name",
        "18: duplicate [[operation]] for Op3 (first at line 15)",
    ] {
        assert!(
            errors.iter().any(|x| x.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
}

#[test]
fn toml_syntax_errors_have_lines() {
    let errors = errors_of("[service]\nname = \"x\"\nroute = \"/x\nupstream = 3\n");
    assert!(errors.iter().any(|e| e.starts_with("3: ")), "{errors:#?}");
}

#[test]
fn missing_keys_and_sections_are_reported() {
    let errors = errors_of("[namespaces]\nc = \"urn:c\"\n");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("missing [service] section")),
        "{errors:#?}"
    );
    let errors = errors_of("[service]\nname = \"x\"\n");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("1: ") && e.contains("route")),
        "{errors:#?}"
    );
    let errors = errors_of(
        "[service]\nname = \"x\"\nroute = \"/x\"\n[[invalidate]]\nelement = \"W\"\ntargets = []\n",
    );
    assert!(errors.iter().any(|e| e.contains("key")), "{errors:#?}");
}

#[test]
fn duplicate_names_and_equal_routes_across_files_are_reported() {
    let dir = Scratch::new("dup");
    dir.write("a.toml", "[service]\nname = \"x\"\nroute = \"/x\"\n");
    dir.write("b.toml", "[service]\nname = \"x\"\nroute = \"/y\"\n");
    dir.write("c.toml", "[service]\nname = \"z\"\nroute = \"/x/\"\n");
    let errors = PolicySet::load(&dir.0).unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("b.toml:2: duplicate service name 'x' (already used in")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.contains("c.toml:3: route '/x' is also the route of service 'x'")),
        "{shown:#?}"
    );
}

#[test]
fn an_unreadable_path_is_one_error_without_a_line() {
    let errors = PolicySet::load(Path::new("/nonexistent/soapcache/policies")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 0);
    assert!(errors[0]
        .to_string()
        .starts_with("/nonexistent/soapcache/policies: cannot read policies"));
}

#[test]
fn an_error_is_one_line_whatever_the_value_it_quotes() {
    let e = PolicyError {
        file: PathBuf::from("p.toml"),
        line: 4,
        message: "upstream 'f\n://x' is not an http:// or https:// URL".to_owned(),
    };
    assert_eq!(
        e.to_string(),
        "p.toml:4: upstream 'f\\n://x' is not an http:// or https:// URL"
    );
}

#[test]
fn a_misspelt_key_is_matched_to_the_nearest_known_one() {
    use super::load::nearest;
    use super::rules::RULE_KEYS;
    assert_eq!(nearest("vary_header", RULE_KEYS), Some("vary_headers"));
    assert_eq!(nearest("tll", RULE_KEYS), Some("ttl"));
    assert_eq!(nearest("stale-if-error", RULE_KEYS), Some("stale_if_error"));
    assert_eq!(nearest("max_entry_szie", RULE_KEYS), Some("max_entry_size"));
    // Nothing near: no guess.
    assert_eq!(nearest("colour", RULE_KEYS), None);
    assert_eq!(nearest("x", RULE_KEYS), None);
}
