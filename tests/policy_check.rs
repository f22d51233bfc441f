//! `soapcache check --policies PATH` as a policy author uses it: the shipped
//! example policies check clean, and every kind of problem is reported as
//! `file:line: message` on stderr, followed by a count, with exit status 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .arg("check")
        .arg("--policies")
        .arg(path)
        .env_remove("SOAPCACHE_POLICIES")
        .output()
        .expect("run soapcache check")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_clean(path: &Path) -> String {
    let output = check(path);
    assert!(
        output.status.success(),
        "{} should check clean, got {:?}\nstderr:\n{}",
        path.display(),
        output.status,
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn every_shipped_policy_checks_clean() {
    let dir = manifest_dir().join("policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("policies/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected example policies in {}",
        dir.display()
    );
    for file in &files {
        let out = assert_clean(file);
        assert_eq!(out.lines().count(), 1, "one summary line per file: {out}");
    }
    // All together, as `serve --policies policies/` would load them.
    let out = assert_clean(&dir);
    assert_eq!(out.lines().count(), files.len(), "{out}");
}

#[test]
fn the_catalog_example_is_the_spec_service() {
    let out = assert_clean(&manifest_dir().join("policies/catalog.toml"));
    assert!(
        out.starts_with("catalog: route /catalog -> http://127.0.0.1:9000/catalog, 1 operation, 1 invalidation ("),
        "{out}"
    );
    assert!(out.trim_end().ends_with("catalog.toml)"), "{out}");
}

#[test]
fn the_currency_example_checks_clean() {
    let out = assert_clean(&manifest_dir().join("policies/currency.toml"));
    assert!(
        out.starts_with(
            "rates: route /rates -> http://127.0.0.1:9100/rates, 3 operations, 1 invalidation ("
        ),
        "{out}"
    );
}

/// (fixture file, line, fragment of the message) for every problem kind.
const EXPECTED: &[(&str, usize, &str)] = &[
    // TOML syntax
    ("syntax.toml", 5, "invalid basic string"),
    // unknown keys and sections
    ("unknown_keys.toml", 4, "unknown key 'colour' in [service]"),
    // ... with the nearest known key, when one is near
    (
        "unknown_keys.toml",
        8,
        "unknown key 'tll' in [[operation]]; did you mean 'ttl'?",
    ),
    (
        "unknown_keys.toml",
        10,
        "unknown section 'caching' (allowed",
    ),
    (
        "unknown_keys.toml",
        15,
        "unknown key 'vary_header' in [[operation]]; did you mean 'vary_headers'?",
    ),
    // missing required keys
    (
        "missing_key.toml",
        1,
        "missing required key 'route' in [service]",
    ),
    (
        "missing_key.toml",
        4,
        "missing required key 'key' in [[invalidate]]",
    ),
    // undefined prefixes: element name, XPath, invalidate target
    (
        "prefixes.toml",
        9,
        "undefined namespace prefix 'z' in 'z:GetThing'",
    ),
    (
        "prefixes.toml",
        13,
        "invalid XPath 'string(q:Id)': undefined namespace prefix 'q'",
    ),
    (
        "prefixes.toml",
        18,
        "undefined namespace prefix 'y' in 'y:GetOther'",
    ),
    // XPath that does not compile, each at its own line
    ("xpath.toml", 12, "invalid XPath 'c:Items/c:Item['"),
    ("xpath.toml", 13, "unknown function frobnicate()"),
    // bad values
    ("values.toml", 3, "route 'values' must start with '/'"),
    (
        "values.toml",
        4,
        "upstream 'ftp://127.0.0.1/values' is not an http:// or https:// URL",
    ),
    ("values.toml", 7, "max_entry_size: invalid size 'lots'"),
    (
        "values.toml",
        8,
        "stale_if_error: invalid duration 'a while'",
    ),
    (
        "values.toml",
        12,
        "ttl: invalid duration '24 hours and a bit'",
    ),
    (
        "values.toml",
        13,
        "expires_daily_at: '25:00:00Z' is out of range",
    ),
    (
        "values.toml",
        14,
        "vary_headers: 'X Tenant' is not a valid HTTP header name",
    ),
    // operations
    (
        "operations.toml",
        9,
        "duplicate [[operation]] for GetThing (first at line 6)",
    ),
    (
        "operations.toml",
        15,
        "invalidate target 'GetNothing' is not an [[operation]] of this service",
    ),
    // queued delivery: bad values and settings that contradict each other
    (
        "delivery.toml",
        8,
        "max_retry_backoff (1s) is shorter than retry_backoff (10s)",
    ),
    (
        "delivery.toml",
        12,
        "delivery: 'later' is not \"direct\" or \"queued\"",
    ),
    (
        "delivery.toml",
        17,
        "max_attempts: 0 is not a number of attempts",
    ),
    (
        "delivery.toml",
        18,
        "deliver_within: must be more than zero",
    ),
    (
        "delivery.toml",
        19,
        "order_by: invalid XPath 'string(q:Id)': undefined namespace prefix 'q'",
    ),
    (
        "delivery.toml",
        20,
        "ttl has no effect on a queued operation",
    ),
    (
        "delivery.toml",
        24,
        "max_attempts applies only to queued operations, and this one has delivery = \"direct\"",
    ),
    (
        "delivery.toml",
        29,
        "invalidate target 'Send' is a queued operation",
    ),
    // between files
    (
        "same_name_b.toml",
        3,
        "duplicate service name 'twin' (already used in",
    ),
    (
        "same_route_b.toml",
        4,
        "route '/shared' is also the route of service 'route-a'",
    ),
    (
        "messaging.toml",
        3,
        "is under /.results, soapcache's own path",
    ),
    ("messaging.toml", 9, "dedup: "),
    (
        "messaging.toml",
        10,
        "reply_to_allowed: 'ftp://clients/*' is not an http:// or https:// URL",
    ),
    (
        "messaging.toml",
        14,
        "message_id has no effect on a direct operation without dedup",
    ),
];

#[test]
fn every_problem_in_every_broken_file_is_reported_with_file_and_line() {
    let dir = manifest_dir().join("tests/fixtures/policies/broken");
    let output = check(&dir);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr:\n{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).is_empty(),
        "nothing on stdout: {}",
        stdout(&output)
    );

    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    for &(file, line, fragment) in EXPECTED {
        let location = format!("{}:{line}: ", dir.join(file).display());
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&location) && l.contains(fragment)),
            "expected `{location}…{fragment}…` in:\n{err}"
        );
    }
    // Nothing but problem lines and the final count; no echoes of one
    // problem as several.
    let problems = lines.len() - 1;
    assert_eq!(
        problems,
        EXPECTED.len(),
        "unexpected extra problems:\n{err}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("{problems} problem(s) found").as_str())
    );
    for l in &lines[..problems] {
        assert!(
            l.starts_with(&dir.display().to_string()),
            "not a file:line: line: {l}"
        );
    }
}

#[test]
fn a_single_broken_file_fails_with_its_problems() {
    let file = manifest_dir().join("tests/fixtures/policies/broken/values.toml");
    let output = check(&file);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    let expected = EXPECTED
        .iter()
        .filter(|(f, _, _)| *f == "values.toml")
        .count();
    assert_eq!(err.lines().count(), expected + 1, "{err}");
    assert!(
        err.ends_with(&format!("{expected} problem(s) found\n")),
        "{err}"
    );
}

#[test]
fn a_missing_path_is_a_problem_too() {
    let output = check(Path::new("/nonexistent/soapcache-policies"));
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with("/nonexistent/soapcache-policies: cannot read policies"),
        "{err}"
    );
    assert!(err.ends_with("1 problem(s) found\n"), "{err}");
}
