//! Policy files (SPEC §7): one TOML file per service, compiled once at load
//! into routing and per-operation rules with their key selectors.
//!
//! Loading never stops at the first problem: a policy author runs
//! `soapcache check` and gets every problem of every file, each as
//! `file:line: message`. To get there the file is first parsed with error
//! recovery into a spanned tree (`toml::de::DeTable`), each section is then
//! checked for unknown keys against its spans and deserialized on its own
//! (serde, `deny_unknown_fields`, `toml::Spanned` values), so one bad
//! `[[operation]]` does not hide the next.
//!
//! Extensions to SPEC §7, all compatible:
//! * every operation rule (`ttl`, `expires_daily_at`, `vary_headers`,
//!   `shared`, `cache`) may also be set in `[defaults]`, and every
//!   `[defaults]` key may be overridden in an `[[operation]]`;
//! * `upstream` may be omitted: the service then uses `--upstream`;
//! * element names may be written `prefix:local`, `local` (no namespace) or
//!   `{uri}local`;
//! * `max_entry_size` may be a plain number of bytes;
//! * `expires_daily_at` accepts `08:00:00Z`, `08:00:00`, `08:00Z`, `08:00`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::envelope::ExpandedName;
use crate::selector::Selector;
use crate::units::{parse_duration, parse_size};

/// One problem in a policy file. `line` is 1-based; 0 when the problem is
/// about the file as a whole (it cannot be read), and then Display leaves
/// the line out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    /// Always one line: values quoted from a file may hold line breaks or
    /// other control characters, which are written escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message: String = self
            .message
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// What governs caching of one operation (or of requests no policy routes:
/// [`Rules::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Obey the service's `CacheControl` blocks.
    pub honor_cache_control: bool,
    /// Upper bound on every lifetime; `None` = no cap.
    pub max_ttl: Option<Duration>,
    /// How long after expiry an entry may still answer when the upstream fails.
    pub stale_if_error: Duration,
    /// Larger answers are not stored (and stream through).
    pub max_entry_size: u64,
    /// Extra SOAP role/actor URIs soapcache plays for `CacheControl` blocks.
    pub roles: Vec<String>,
    /// Cache even without `CacheControl`, for this long.
    pub ttl: Option<Duration>,
    /// Entries expire at the next such UTC time of day at the latest.
    pub expires_daily_at: Option<time::Time>,
    /// Request headers whose values are part of the lookup key.
    pub vary_headers: Vec<hyper::header::HeaderName>,
    /// Cacheable even when the request carries credentials.
    pub shared: bool,
    /// `false`: never cache this operation.
    pub cache: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            honor_cache_control: true,
            max_ttl: None,
            stale_if_error: Duration::ZERO,
            max_entry_size: 1 << 20,
            roles: Vec::new(),
            ttl: None,
            expires_daily_at: None,
            vary_headers: Vec::new(),
            shared: false,
            cache: true,
        }
    }
}

/// An `[[operation]]`: a read whose answers may be cached.
#[derive(Debug)]
pub struct Operation {
    pub name: ExpandedName,
    /// `None`: the key is the digest of the canonical operation element.
    pub key: Option<Selector>,
    /// `[defaults]` overridden by the operation's own keys.
    pub rules: Rules,
}

/// An `[[invalidate]]`: a write that, once it succeeds, purges the entries
/// whose `CacheKey` is its key value, for each target operation.
#[derive(Debug)]
pub struct Invalidation {
    pub name: ExpandedName,
    pub key: Selector,
    pub targets: Vec<ExpandedName>,
}

/// One policy file, compiled.
#[derive(Debug)]
pub struct Service {
    /// Shared, as it is part of every cache key of the service.
    pub name: std::sync::Arc<str>,
    /// Normalised: starts with `/`, no trailing `/` except for `/` itself.
    pub route: String,
    /// `None`: the `--upstream` default applies.
    pub upstream: Option<hyper::Uri>,
    /// The file this service was loaded from.
    pub source: PathBuf,
    pub defaults: Rules,
    pub operations: Vec<Operation>,
    pub invalidations: Vec<Invalidation>,
}

impl Service {
    /// Policies list a handful of operations; a linear scan beats hashing
    /// two strings per lookup.
    pub fn operation(&self, name: &ExpandedName) -> Option<&Operation> {
        self.operations.iter().find(|o| o.name == *name)
    }

    /// The operation's merged rules, or the service defaults for operations
    /// the policy does not list.
    pub fn rules(&self, name: &ExpandedName) -> &Rules {
        self.operation(name).map_or(&self.defaults, |o| &o.rules)
    }

    pub fn invalidation(&self, name: &ExpandedName) -> Option<&Invalidation> {
        self.invalidations.iter().find(|i| i.name == *name)
    }

    /// Path-segment prefix match: `/catalog` matches `/catalog`,
    /// `/catalog/` and `/catalog/x`, not `/catalogue`.
    fn routes(&self, path: &str) -> bool {
        self.route == "/"
            || path
                .strip_prefix(self.route.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// All loaded services, ordered for routing (longest route first).
#[derive(Debug, Default)]
pub struct PolicySet {
    services: Vec<Arc<Service>>,
}

impl PolicySet {
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// Loads a policy file, or every `*.toml` file of a directory
    /// (non-recursive, in name order). Every problem in every file is
    /// collected; the set is returned only when there are none.
    pub fn load(path: &Path) -> Result<PolicySet, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let files = match policy_files(path) {
            Ok(files) => files,
            Err(e) => return Err(vec![e]),
        };
        let mut loaded: Vec<(Service, FileMarks)> = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let mut cx = FileContext {
                        file: &file,
                        text: &text,
                        errors: &mut errors,
                    };
                    if let Some(service) = load_file(&mut cx) {
                        loaded.push(service);
                    }
                }
                Err(e) => errors.push(PolicyError {
                    file: file.clone(),
                    line: 0,
                    message: format!("cannot read policy file: {e}"),
                }),
            }
        }
        check_across_files(&loaded, &mut errors);
        if !errors.is_empty() {
            // Reading order: file by file, top to bottom.
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(errors);
        }
        Ok(PolicySet::new(loaded.into_iter().map(|(s, _)| s).collect()))
    }

    fn new(services: Vec<Service>) -> PolicySet {
        let mut services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        services.sort_by(|a, b| {
            b.route
                .len()
                .cmp(&a.route.len())
                .then_with(|| a.route.cmp(&b.route))
        });
        PolicySet { services }
    }

    /// The service whose route is the longest path-segment prefix of `path`
    /// (the request path without its query).
    pub fn route(&self, path: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.routes(path))
    }

    /// In routing order (longest route first).
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// One line per service, for `soapcache check` and reload logs.
    pub fn summary(&self) -> Vec<String> {
        let mut services: Vec<&Arc<Service>> = self.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
            .into_iter()
            .map(|s| {
                let upstream = s
                    .upstream
                    .as_ref()
                    .map_or_else(|| "the --upstream default".to_owned(), |u| u.to_string());
                format!(
                    "{}: route {} -> {}, {}, {} ({})",
                    s.name,
                    s.route,
                    upstream,
                    plural(s.operations.len(), "operation"),
                    plural(s.invalidations.len(), "invalidation"),
                    s.source.display()
                )
            })
            .collect()
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let error = |message: String| PolicyError {
        file: path.to_path_buf(),
        line: 0,
        message,
    };
    let metadata =
        std::fs::metadata(path).map_err(|e| error(format!("cannot read policies: {e}")))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| error(format!("cannot read policy directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| error(format!("cannot read policy directory: {e}")))?;
        let file = entry.path();
        if file.extension().is_some_and(|x| x == "toml") && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(error("no *.toml policy files in this directory".to_owned()));
    }
    files.sort();
    Ok(files)
}

/// Where the service's name and route are written, for problems between
/// files.
struct FileMarks {
    name_line: usize,
    route_line: usize,
}

fn check_across_files(loaded: &[(Service, FileMarks)], errors: &mut Vec<PolicyError>) {
    for (i, (service, marks)) in loaded.iter().enumerate() {
        let earlier = &loaded[..i];
        if let Some((first, first_marks)) = earlier.iter().find(|(s, _)| s.name == service.name) {
            errors.push(PolicyError {
                file: service.source.clone(),
                line: marks.name_line,
                message: format!(
                    "duplicate service name '{}' (already used in {}:{})",
                    service.name,
                    first.source.display(),
                    first_marks.name_line
                ),
            });
        }
        if let Some((first, first_marks)) = earlier.iter().find(|(s, _)| s.route == service.route) {
            errors.push(PolicyError {
                file: service.source.clone(),
                line: marks.route_line,
                message: format!(
                    "route '{}' is also the route of service '{}' ({}:{}); requests could go to either",
                    service.route,
                    first.name,
                    first.source.display(),
                    first_marks.route_line
                ),
            });
        }
    }
}

// ---------------------------------------------------------------------------
// One file

struct FileContext<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<PolicyError>,
}

impl FileContext<'_> {
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let line = self.line(span.start);
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn toml_error(&mut self, error: &toml::de::Error) {
        let line = error.span().map_or(1, |s| self.line(s.start));
        let message = error
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line,
            message,
        });
    }

    /// Reports keys of `table` not in `allowed`; true when there were none.
    fn check_keys(&mut self, table: &DeTable<'_>, section: &str, allowed: &[&str]) -> bool {
        let mut clean = true;
        for (key, _) in table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!(
                        "unknown key '{}' in {section} (allowed: {})",
                        key.get_ref(),
                        allowed.join(", ")
                    ),
                );
                clean = false;
            }
        }
        clean
    }

    /// Deserializes one section; unknown keys and type errors are reported.
    fn section<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        section: &str,
        allowed: &[&str],
    ) -> Option<T> {
        let DeValue::Table(table) = value.get_ref() else {
            self.error(value.span(), format!("{section} must be a table"));
            return None;
        };
        // Unknown keys are reported and left out, so that the known ones are
        // still checked.
        let value = if self.check_keys(table, section, allowed) {
            value.clone()
        } else {
            Spanned::new(value.span(), DeValue::Table(only_keys(table, allowed)))
        };
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(section) => Some(section),
            Err(e) => {
                self.serde_error(&e, table, section);
                None
            }
        }
    }

    /// A serde error in a section, said in policy terms: which key is
    /// missing, or which key has a value of the wrong type.
    fn serde_error(&mut self, error: &toml::de::Error, table: &DeTable<'_>, section: &str) {
        let message = error.message();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            let line = error.span().map_or(1, |s| self.line(s.start));
            self.errors.push(PolicyError {
                file: self.file.to_path_buf(),
                line,
                message: format!("missing required key '{field}' in {section}"),
            });
            return;
        }
        let key = error.span().and_then(|span| {
            table
                .iter()
                .find(|(_, v)| v.span().start <= span.start && span.end <= v.span().end)
                .map(|(k, _)| k.get_ref().to_string())
        });
        match key {
            Some(key) => {
                let line = error.span().map_or(1, |s| self.line(s.start));
                self.errors.push(PolicyError {
                    file: self.file.to_path_buf(),
                    line,
                    message: format!("{key}: {}", message.trim()),
                });
            }
            None => self.toml_error(error),
        }
    }
}

/// A copy of `table` with only the `allowed` keys.
fn only_keys<'i>(table: &DeTable<'i>, allowed: &[&str]) -> DeTable<'i> {
    let mut kept = DeTable::new();
    for (key, value) in table.iter() {
        if allowed.contains(&key.get_ref().as_ref()) {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept
}

const SERVICE_KEYS: &[&str] = &["name", "route", "upstream"];
const RULE_KEYS: &[&str] = &[
    "honor_cache_control",
    "max_ttl",
    "stale_if_error",
    "max_entry_size",
    "roles",
    "ttl",
    "expires_daily_at",
    "vary_headers",
    "shared",
    "cache",
];
const INVALIDATE_KEYS: &[&str] = &["element", "key", "targets"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: Spanned<String>,
    route: Spanned<String>,
    upstream: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    honor_cache_control: Option<bool>,
    max_ttl: Option<Spanned<String>>,
    stale_if_error: Option<Spanned<String>>,
    max_entry_size: Option<Spanned<SizeValue>>,
    roles: Option<Vec<String>>,
    ttl: Option<Spanned<String>>,
    expires_daily_at: Option<Spanned<String>>,
    vary_headers: Option<Vec<Spanned<String>>>,
    shared: Option<bool>,
    cache: Option<bool>,
}

/// The keys of an `[[operation]]` that are not rules (those are read
/// separately into a [`RuleSection`]).
#[derive(Deserialize)]
struct OperationHead {
    element: Spanned<String>,
    key: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateSection {
    element: Spanned<String>,
    key: Spanned<Vec<Spanned<String>>>,
    targets: Spanned<Vec<Spanned<String>>>,
}

/// `"1MiB"` or a plain number of bytes.
enum SizeValue {
    Text(String),
    Bytes(u64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"1MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

fn load_file(cx: &mut FileContext<'_>) -> Option<(Service, FileMarks)> {
    let (root, syntax_errors) = DeTable::parse_recoverable(cx.text);
    if !syntax_errors.is_empty() {
        // Checking the rest of a half-parsed file mostly reports echoes of
        // the syntax error.
        for e in &syntax_errors {
            cx.toml_error(e);
        }
        return None;
    }

    let mut service = None;
    let mut namespaces = None;
    let mut defaults = None;
    let mut operations: Vec<&Spanned<DeValue<'_>>> = Vec::new();
    let mut invalidations: Vec<&Spanned<DeValue<'_>>> = Vec::new();
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "service" => service = Some(value),
            "namespaces" => namespaces = Some(value),
            "defaults" => defaults = Some(value),
            "operation" | "invalidate" => {
                let list = if key.get_ref() == "operation" {
                    &mut operations
                } else {
                    &mut invalidations
                };
                match value.get_ref() {
                    DeValue::Array(items) => list.extend(items.iter()),
                    _ => cx.error(
                        key.span(),
                        format!("'{0}' must be written [[{0}]] (a list of tables)", key.get_ref()),
                    ),
                }
            }
            other => cx.error(
                key.span(),
                format!(
                    "unknown section '{other}' (allowed: [service], [namespaces], [defaults], [[operation]], [[invalidate]])"
                ),
            ),
        }
    }

    let namespaces = namespaces.map_or_else(Vec::new, |n| read_namespaces(cx, n));

    let header = service.and_then(|s| cx.section::<ServiceSection>(s, "[service]", SERVICE_KEYS));
    if service.is_none() {
        cx.error(0..0, "missing [service] section (name, route, upstream)");
    }

    let mut default_rules = Rules::default();
    if let Some(d) = defaults {
        if let Some(section) = cx.section::<RuleSection>(d, "[defaults]", RULE_KEYS) {
            apply_rules(cx, &mut default_rules, &section);
        }
    }

    let mut compiled_operations: Vec<(Operation, usize)> = Vec::new();
    for value in operations {
        if let Some(op) = read_operation(cx, value, &namespaces, &default_rules) {
            if let Some((_, first_line)) = compiled_operations
                .iter()
                .find(|(o, _)| o.name == op.0.name)
            {
                let message = format!(
                    "duplicate [[operation]] for {} (first at line {first_line})",
                    op.0.name
                );
                cx.error(op.2, message);
            } else {
                compiled_operations.push((op.0, op.1));
            }
        }
    }

    let mut compiled_invalidations: Vec<(Invalidation, usize)> = Vec::new();
    for value in invalidations {
        let Some(section) =
            cx.section::<InvalidateSection>(value, "[[invalidate]]", INVALIDATE_KEYS)
        else {
            continue;
        };
        let name = element_name(cx, &section.element, &namespaces);
        let key = compile_key(cx, &section.key, &namespaces);
        let mut targets = Vec::new();
        let mut targets_ok = true;
        if section.targets.get_ref().is_empty() {
            cx.error(
                section.targets.span(),
                "targets must name at least one operation",
            );
            targets_ok = false;
        }
        for target in section.targets.get_ref() {
            match element_name(cx, target, &namespaces) {
                Some(t) if compiled_operations.iter().any(|(o, _)| o.name == t) => targets.push(t),
                Some(_) => {
                    cx.error(
                        target.span(),
                        format!(
                            "invalidate target '{}' is not an [[operation]] of this service",
                            target.get_ref()
                        ),
                    );
                    targets_ok = false;
                }
                None => targets_ok = false,
            }
        }
        let (Some(name), Some(key), true) = (name, key, targets_ok) else {
            continue;
        };
        let line = cx.line(section.element.span().start);
        if let Some((_, first_line)) = compiled_invalidations.iter().find(|(i, _)| i.name == name) {
            let message =
                format!("duplicate [[invalidate]] for {name} (first at line {first_line})");
            cx.error(section.element.span(), message);
            continue;
        }
        compiled_invalidations.push((Invalidation { name, key, targets }, line));
    }

    let header = header?;
    let name = read_service_name(cx, &header.name);
    let route = read_route(cx, &header.route);
    let upstream = match &header.upstream {
        Some(u) => Some(read_upstream(cx, u)?),
        None => None,
    };
    let service = Service {
        name: name?.into(),
        route: route?,
        upstream,
        source: cx.file.to_path_buf(),
        defaults: default_rules,
        operations: compiled_operations.into_iter().map(|(o, _)| o).collect(),
        invalidations: compiled_invalidations.into_iter().map(|(i, _)| i).collect(),
    };
    let marks = FileMarks {
        name_line: cx.line(header.name.span().start),
        route_line: cx.line(header.route.span().start),
    };
    Some((service, marks))
}

/// Returns the operation, the line of its `element`, and that span.
fn read_operation(
    cx: &mut FileContext<'_>,
    value: &Spanned<DeValue<'_>>,
    namespaces: &[(String, String)],
    defaults: &Rules,
) -> Option<(Operation, usize, std::ops::Range<usize>)> {
    let DeValue::Table(table) = value.get_ref() else {
        cx.error(value.span(), "[[operation]] must be a table");
        return None;
    };
    let mut allowed = vec!["element", "key"];
    allowed.extend_from_slice(RULE_KEYS);
    cx.check_keys(table, "[[operation]]", &allowed);
    let head = match OperationHead::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(head) => head,
        Err(e) => {
            cx.serde_error(&e, table, "[[operation]]");
            return None;
        }
    };
    let rule_value = Spanned::new(value.span(), DeValue::Table(only_keys(table, RULE_KEYS)));
    let mut rules = defaults.clone();
    if let Some(section) = cx.section::<RuleSection>(&rule_value, "[[operation]]", RULE_KEYS) {
        apply_rules(cx, &mut rules, &section);
    }
    let key = head
        .key
        .as_ref()
        .and_then(|k| compile_key(cx, k, namespaces));
    // Problems in the rules or key are reported (so the set will not load);
    // the operation is still returned when its name resolves, so that
    // `targets` naming it do not report it missing as well.
    let name = element_name(cx, &head.element, namespaces)?;
    let line = cx.line(head.element.span().start);
    Some((Operation { name, key, rules }, line, head.element.span()))
}

fn read_namespaces(
    cx: &mut FileContext<'_>,
    value: &Spanned<DeValue<'_>>,
) -> Vec<(String, String)> {
    let DeValue::Table(table) = value.get_ref() else {
        cx.error(
            value.span(),
            "[namespaces] must be a table of prefix = \"uri\"",
        );
        return Vec::new();
    };
    let mut namespaces = Vec::new();
    for (prefix, uri) in table.iter() {
        let p = prefix.get_ref().as_ref();
        if !is_ncname(p) || p.eq_ignore_ascii_case("xml") || p.eq_ignore_ascii_case("xmlns") {
            cx.error(prefix.span(), format!("'{p}' cannot be a namespace prefix"));
            continue;
        }
        match uri.get_ref() {
            DeValue::String(u) if !u.is_empty() => namespaces.push((p.to_owned(), u.to_string())),
            DeValue::String(_) => cx.error(
                uri.span(),
                format!("namespace URI of prefix '{p}' is empty"),
            ),
            other => cx.error(
                uri.span(),
                format!(
                    "namespace URI of prefix '{p}' must be a string, not {}",
                    other.type_str()
                ),
            ),
        }
    }
    namespaces
}

/// Applies a section's keys over `rules`, reporting invalid values.
fn apply_rules(cx: &mut FileContext<'_>, rules: &mut Rules, section: &RuleSection) {
    if let Some(v) = section.honor_cache_control {
        rules.honor_cache_control = v;
    }
    let duration =
        |cx: &mut FileContext<'_>, value: &Spanned<String>, key: &str| match parse_duration(
            value.get_ref(),
        ) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(value.span(), format!("{key}: {e}"));
                None
            }
        };
    if let Some(v) = &section.max_ttl {
        if let Some(d) = duration(cx, v, "max_ttl") {
            rules.max_ttl = Some(d);
        }
    }
    if let Some(v) = &section.stale_if_error {
        if let Some(d) = duration(cx, v, "stale_if_error") {
            rules.stale_if_error = d;
        }
    }
    if let Some(v) = &section.ttl {
        if let Some(d) = duration(cx, v, "ttl") {
            rules.ttl = Some(d);
        }
    }
    if let Some(v) = &section.max_entry_size {
        match v.get_ref() {
            SizeValue::Bytes(b) => rules.max_entry_size = *b,
            SizeValue::Text(t) => match parse_size(t) {
                Ok(b) => rules.max_entry_size = b,
                Err(e) => cx.error(v.span(), format!("max_entry_size: {e}")),
            },
        }
    }
    if let Some(v) = &section.roles {
        rules.roles = v.clone();
    }
    if let Some(v) = &section.expires_daily_at {
        match parse_time_of_day(v.get_ref()) {
            Ok(t) => rules.expires_daily_at = Some(t),
            Err(e) => cx.error(v.span(), format!("expires_daily_at: {e}")),
        }
    }
    if let Some(headers) = &section.vary_headers {
        let mut names = Vec::new();
        for h in headers {
            match hyper::header::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => names.push(name),
                Err(_) => cx.error(
                    h.span(),
                    format!(
                        "vary_headers: '{}' is not a valid HTTP header name",
                        h.get_ref()
                    ),
                ),
            }
        }
        rules.vary_headers = names;
    }
    if let Some(v) = section.shared {
        rules.shared = v;
    }
    if let Some(v) = section.cache {
        rules.cache = v;
    }
}

/// `08:00:00Z`, `08:00:00`, `08:00Z`, `08:00` (also `+00:00` for `Z`): a
/// UTC time of day.
fn parse_time_of_day(text: &str) -> Result<time::Time, String> {
    let bad = || format!("'{text}' is not a UTC time of day like \"08:00:00Z\"");
    let clock = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .unwrap_or(text);
    let parts: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let number = |i: usize| {
        parts
            .get(i)
            .map_or(0, |p| p.parse::<u8>().expect("two digits"))
    };
    let (h, m, s) = (number(0), number(1), number(2));
    time::Time::from_hms(h, m, s)
        .map_err(|_| format!("'{text}' is out of range (00:00:00 to 23:59:59)"))
}

fn read_service_name(cx: &mut FileContext<'_>, name: &Spanned<String>) -> Option<String> {
    let n = name.get_ref();
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        cx.error(
            name.span(),
            format!("service name '{n}' must be letters, digits, '_', '-' or '.' (it appears in keys and metrics)"),
        );
        return None;
    }
    if n == "default" {
        cx.error(
            name.span(),
            "service name 'default' is reserved for requests no policy routes",
        );
        return None;
    }
    Some(n.clone())
}

fn read_route(cx: &mut FileContext<'_>, route: &Spanned<String>) -> Option<String> {
    let r = route.get_ref();
    if !r.starts_with('/') {
        cx.error(route.span(), format!("route '{r}' must start with '/'"));
        return None;
    }
    if r.contains(['?', '#']) || r.contains(char::is_whitespace) || r.contains("//") {
        cx.error(
            route.span(),
            format!("route '{r}' must be a plain path prefix (no query, fragment, spaces or '//')"),
        );
        return None;
    }
    let trimmed = r.trim_end_matches('/');
    Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn read_upstream(cx: &mut FileContext<'_>, upstream: &Spanned<String>) -> Option<hyper::Uri> {
    let text = upstream.get_ref();
    match text.parse::<hyper::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty()) =>
        {
            Some(uri)
        }
        _ => {
            cx.error(
                upstream.span(),
                format!("upstream '{text}' is not an http:// or https:// URL"),
            );
            None
        }
    }
}

/// `prefix:local` through `[namespaces]`, `local` (no namespace) or
/// `{uri}local`.
fn element_name(
    cx: &mut FileContext<'_>,
    text: &Spanned<String>,
    namespaces: &[(String, String)],
) -> Option<ExpandedName> {
    match resolve_name(text.get_ref(), namespaces) {
        Ok(name) => Some(name),
        Err(message) => {
            cx.error(text.span(), message);
            None
        }
    }
}

fn resolve_name(text: &str, namespaces: &[(String, String)]) -> Result<ExpandedName, String> {
    let bad =
        || format!("'{text}' is not an element name (expected prefix:Name, Name or {{uri}}Name)");
    if let Some(rest) = text.strip_prefix('{') {
        let (uri, local) = rest.split_once('}').ok_or_else(bad)?;
        if !is_ncname(local) {
            return Err(bad());
        }
        return Ok(ExpandedName {
            namespace: uri.to_owned(),
            local: local.to_owned(),
        });
    }
    match text.split_once(':') {
        Some((prefix, local)) => {
            if !is_ncname(prefix) || !is_ncname(local) {
                return Err(bad());
            }
            let uri = namespaces
                .iter()
                .find(|(p, _)| p == prefix)
                .map(|(_, u)| u.clone())
                .ok_or_else(|| format!("undefined namespace prefix '{prefix}' in '{text}' (declare it in [namespaces])"))?;
            Ok(ExpandedName {
                namespace: uri,
                local: local.to_owned(),
            })
        }
        None if is_ncname(text) => Ok(ExpandedName {
            namespace: String::new(),
            local: text.to_owned(),
        }),
        None => Err(bad()),
    }
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c == '-' || c == '.' || c.is_alphanumeric() || c == '\u{b7}')
}

/// Compiles a `key` list, reporting each bad expression at its own line.
fn compile_key(
    cx: &mut FileContext<'_>,
    key: &Spanned<Vec<Spanned<String>>>,
    namespaces: &[(String, String)],
) -> Option<Selector> {
    let expressions = key.get_ref();
    if expressions.is_empty() {
        cx.error(key.span(), "key must list at least one XPath expression");
        return None;
    }
    let mut ok = true;
    for e in expressions {
        if let Err(error) = Selector::compile(std::slice::from_ref(e.get_ref()), namespaces) {
            cx.error(e.span(), format!("key: {error}"));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let sources: Vec<String> = expressions.iter().map(|e| e.get_ref().clone()).collect();
    match Selector::compile(&sources, namespaces) {
        Ok(selector) => Some(selector),
        Err(error) => {
            cx.error(key.span(), format!("key: {error}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("soapcache-policy-{}-{name}", std::process::id()));
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
        assert!(summary[0].starts_with(
            "a: route /a -> https://svc.example:8443/a, 0 operations, 0 invalidations ("
        ));
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
        let errors = errors_of("[service]\nname = \"x\"\nroute = \"/x\"\n[[invalidate]]\nelement = \"W\"\ntargets = []\n");
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
    fn times_of_day_in_several_spellings() {
        let t = |s| parse_time_of_day(s);
        assert_eq!(t("08:00:00Z"), Ok(time::macros::time!(08:00:00)));
        assert_eq!(t("08:00:00"), Ok(time::macros::time!(08:00:00)));
        assert_eq!(t("08:30Z"), Ok(time::macros::time!(08:30:00)));
        assert_eq!(t("23:59:59+00:00"), Ok(time::macros::time!(23:59:59)));
        assert!(t("24:00:00Z").unwrap_err().contains("out of range"));
        assert!(t("8:00").is_err());
        assert!(t("08:00:00+02:00").is_err());
    }

    #[test]
    fn element_names_resolve_through_the_namespaces() {
        let ns = vec![("c".to_owned(), "urn:c".to_owned())];
        assert_eq!(resolve_name("c:Op", &ns).unwrap().to_string(), "{urn:c}Op");
        assert_eq!(resolve_name("Op", &ns).unwrap().to_string(), "Op");
        assert_eq!(
            resolve_name("{urn:d}Op", &ns).unwrap().to_string(),
            "{urn:d}Op"
        );
        assert!(resolve_name("d:Op", &ns)
            .unwrap_err()
            .contains("undefined namespace prefix 'd'"));
        assert!(resolve_name("c:", &ns).is_err());
        assert!(resolve_name("a b", &ns).is_err());
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
}
