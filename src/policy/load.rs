//! Reading policy files: every problem of every file, each as
//! `file:line: message`, never only the first.
//!
//! The file is first parsed with error recovery into a spanned tree
//! (`toml::de::DeTable`), each section is then checked for unknown keys
//! against its spans and deserialized on its own (serde,
//! `deny_unknown_fields`, `toml::Spanned` values), so one bad
//! `[[operation]]` does not hide the next.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::rules::{apply_rules, check_rules, RuleSection, RULE_KEYS};
use super::values::{
    compile_key, element_name, is_ncname, read_route, read_service_name, read_upstream,
};
use super::{Invalidation, Operation, Rules, Service};
use crate::delivery::DeliveryMode;
use crate::xml::ExpandedName;

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

/// Loads a policy file, or every `*.toml` file of a directory
/// (non-recursive, in name order). Every problem in every file is
/// collected; the set is returned only when there are none.
pub(super) fn services(path: &Path) -> Result<Vec<Service>, Vec<PolicyError>> {
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
    Ok(loaded.into_iter().map(|(s, _)| s).collect())
}

/// One policy given as text (`name` says where it came from in errors).
pub(super) fn service_from_text(name: &Path, text: &str) -> Result<Service, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut cx = FileContext {
        file: name,
        text,
        errors: &mut errors,
    };
    match load_file(&mut cx) {
        Some((service, _)) if errors.is_empty() => Ok(service),
        _ => Err(errors),
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

pub(super) struct FileContext<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<PolicyError>,
}

impl FileContext<'_> {
    pub(super) fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn error(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
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
                let unknown = key.get_ref();
                let hint = nearest(unknown, allowed)
                    .map(|known| format!("; did you mean '{known}'?"))
                    .unwrap_or_default();
                self.error(
                    key.span(),
                    format!(
                        "unknown key '{unknown}' in {section}{hint} (allowed: {})",
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

const SECTIONS: &[&str] = &[
    "service",
    "namespaces",
    "defaults",
    "operation",
    "invalidate",
];

/// The known name closest to a misspelt one, when it is close enough to be
/// what was meant: a few edits apart (a missing `s`, two letters swapped,
/// `-` for `_`), never a third of the word or more.
pub(super) fn nearest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
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
const INVALIDATE_KEYS: &[&str] = &["element", "key", "targets"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: Spanned<String>,
    route: Spanned<String>,
    upstream: Option<Spanned<String>>,
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
                        format!(
                            "'{0}' must be written [[{0}]] (a list of tables)",
                            key.get_ref()
                        ),
                    ),
                }
            }
            other => {
                let hint = nearest(other, SECTIONS)
                    .map(|known| format!("; did you mean '{known}'?"))
                    .unwrap_or_default();
                cx.error(
                    key.span(),
                    format!(
                        "unknown section '{other}'{hint} (allowed: [service], [namespaces], [defaults], [[operation]], [[invalidate]])"
                    ),
                )
            }
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
            apply_rules(cx, &mut default_rules, &section, &namespaces);
            check_rules(cx, &default_rules, &section, false);
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
        let key = compile_key(cx, &section.key, &namespaces, "key");
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
            let operation =
                |t: &ExpandedName| compiled_operations.iter().find(|(o, _)| o.name == *t);
            match element_name(cx, target, &namespaces) {
                Some(t)
                    if operation(&t)
                        .is_some_and(|(o, _)| o.rules.delivery == DeliveryMode::Queued) =>
                {
                    cx.error(
                        target.span(),
                        format!(
                            "invalidate target '{}' is a queued operation: its answers are never cached, so there is nothing to purge",
                            target.get_ref()
                        ),
                    );
                    targets_ok = false;
                }
                Some(t) if operation(&t).is_some() => targets.push(t),
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
        apply_rules(cx, &mut rules, &section, namespaces);
        check_rules(cx, &rules, &section, true);
    }
    let key = head
        .key
        .as_ref()
        .and_then(|k| compile_key(cx, k, namespaces, "key"));
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
