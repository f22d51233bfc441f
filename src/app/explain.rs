//! `soapcache explain` (reference §1.5): what soapcache would do with one
//! request, told without contacting anything. Every answer here comes from
//! the functions the proxy itself decides with: routing
//! (`PolicySet::route`), the request scan (`soap::envelope`), the cache
//! decision (`cache::decision`), key selection (`key::selector_value`), the
//! lookup key (`key::lookup::Scope`). This module only gathers their
//! answers into an [`Explanation`] and prints it, as text or as JSON: the
//! two are the same value, printed two ways.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Serialize;

use crate::cache::decision::{self, CacheUse, RequestFacts, Uncacheable};
use crate::delivery::{DeliveryMode, ReplyPlan};
use crate::http::headers::{content_soap_version, header_value_list, is_multipart};
use crate::http::request_body::STREAM_THRESHOLD;
use crate::key::lookup::{LookupKey, Scope};
use crate::key::selector::SEPARATOR;
use crate::policy::{rules_for, PolicyError, PolicySet, Rules, Service, DEFAULT_RESULT_RETENTION};
use crate::soap::envelope::{parse_request, OperationElement, RequestEnvelope};
use crate::soap::fault;
use crate::soap::multipart::multipart_root;
use crate::soap::SoapVersion;

/// The arguments of `explain`, as the command line gives them.
#[derive(Debug, Clone)]
pub struct Request {
    pub policies: PathBuf,
    /// The request path (selects the service).
    pub path: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// The body; `None` or `-`: stdin.
    pub file: Option<PathBuf>,
    pub json: bool,
}

/// Why there is nothing to explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{} policy problem(s)", .0.len())]
    Policies(Vec<PolicyError>),
    #[error("cannot read the request from {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--header '{0}': {1}")]
    Header(String, &'static str),
}

/// What soapcache would do with one request.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub path: String,
    pub service: ServiceView,
    /// Set when the message is not acceptable SOAP: the fault soapcache
    /// answers with, and then nothing else is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultView>,
    pub soap_version: Option<&'static str>,
    pub operation: Option<OperationView>,
    pub delivery: DeliveryView,
    pub cache: CacheView,
    pub key: Option<KeyView>,
    pub lookup_key: Option<LookupView>,
    pub lifetime: LifetimeView,
    pub invalidates: Option<InvalidationView>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    /// `false`: no policy route matches; the built-in rules apply.
    pub routed: bool,
    pub route: Option<String>,
    pub source: Option<String>,
    /// `None`: the `--upstream` default.
    pub upstream: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FaultView {
    pub status: u16,
    pub soap_version: &'static str,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct OperationView {
    /// `{namespace}local`.
    pub name: String,
    /// Named by an `[[operation]]` of the policy (else `[defaults]` apply).
    pub declared: bool,
}

/// How the request reaches its service, and what is kept of it
/// (reference §10–§12).
#[derive(Debug, Serialize, Default)]
pub struct DeliveryView {
    pub mode: &'static str,
    /// The id the request gives: its `wsa:MessageID`, else the policy's
    /// `message_id` value. A queued message without one gets a `urn:uuid:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `wsa:MessageID` or `message_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id_from: Option<&'static str>,
    /// Set when the policy's `message_id` cannot be evaluated on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id_error: Option<String>,
    /// The `dedup` window; `None`: repeats are not recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup: Option<String>,
    /// Queued only: where the service's answer goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyView>,
    /// Queued only: how hard it is tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryView>,
    /// Queued only: the `order_by` value its order is kept within.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
}

/// Where a queued message's answer goes (reference §12).
#[derive(Debug, Serialize)]
pub struct ReplyView {
    /// `callback`, `poll`, `drop` or `refused`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_to: Option<String>,
    /// How long a result is kept for `GET /.results/ID`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Why the message would be refused with a fault (a `ReplyTo` the
    /// policy does not allow, or one without a `MessageID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RetryView {
    pub max_attempts: u32,
    pub retry_backoff: String,
    pub max_retry_backoff: String,
    pub deliver_within: String,
}

#[derive(Debug, Serialize)]
pub struct CacheView {
    /// `lookup`, `refresh`, `bypass` or `queued`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// Whether the answer may be stored: when it allows it (§4.1), or never.
    pub store: bool,
    /// Every reason the request may not use the cache, in the order the
    /// decision weighs them; the first is the one `Cache-Status` names.
    pub reasons: Vec<ReasonView>,
}

#[derive(Debug, Serialize)]
pub struct ReasonView {
    /// As `Cache-Status: ...; detail=` names it.
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    /// `policy` (the operation's `key`) or `digest` (reference §3.2).
    pub kind: &'static str,
    pub expressions: Vec<ExpressionView>,
    /// The selector value, when it could be had.
    pub value: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExpressionView {
    pub expression: String,
    pub value: Option<String>,
    pub evaluator: &'static str,
}

#[derive(Debug, Serialize)]
pub struct LookupView {
    pub service: String,
    pub operation: String,
    pub soap_version: &'static str,
    pub selector: String,
    pub vary: Vec<VaryView>,
    /// The key's name outside the process (a shared tier).
    pub id: String,
}

#[derive(Debug, Serialize)]
pub struct VaryView {
    pub header: String,
    /// `None`: the request does not send it (a value too).
    pub value: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LifetimeView {
    pub honor_cache_control: bool,
    pub ttl: Option<String>,
    pub expires_daily_at: Option<String>,
    pub max_ttl: Option<String>,
    pub stale_if_error: String,
    pub stale_while_revalidate: String,
    pub max_entry_size: String,
    pub shared: bool,
}

#[derive(Debug, Serialize)]
pub struct InvalidationView {
    /// The `CacheKey` it purges, once the write succeeds.
    pub key: Option<String>,
    pub error: Option<String>,
    pub targets: Vec<String>,
}

/// Runs `explain`: prints the explanation (or the problem) and says how
/// the process exits: 1 for a message that is not acceptable SOAP, invalid
/// policies or unreadable input; 0 otherwise, cacheable or not.
pub fn run(request: &Request) -> ExitCode {
    match explain_request(request) {
        Ok(explanation) => {
            if request.json {
                match serde_json::to_string_pretty(&explanation) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("soapcache: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render(&explanation));
            }
            if explanation.fault.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(ExplainError::Policies(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soapcache: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the policies, reads the body and explains it.
pub fn explain_request(request: &Request) -> Result<Explanation, ExplainError> {
    let policies = PolicySet::load(&request.policies).map_err(ExplainError::Policies)?;
    let headers = parse_headers(&request.headers)?;
    let body = read_body(request.file.as_deref())?;
    Ok(explain(&policies, &request.path, &headers, &body))
}

fn parse_headers(lines: &[String]) -> Result<HeaderMap, ExplainError> {
    let mut headers = HeaderMap::new();
    for line in lines {
        let bad = |why| ExplainError::Header(line.clone(), why);
        let (name, value) = line.split_once(':').ok_or(bad("not 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| bad("not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn read_body(file: Option<&Path>) -> Result<Vec<u8>, ExplainError> {
    match file.filter(|f| *f != Path::new("-")) {
        Some(path) => std::fs::read(path).map_err(|source| ExplainError::Read {
            what: path.display().to_string(),
            source,
        }),
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|source| ExplainError::Read {
                    what: "stdin".to_owned(),
                    source,
                })?;
            Ok(body)
        }
    }
}

/// What soapcache would do with a POST of `body` to `path` with `headers`.
pub fn explain(policies: &PolicySet, path: &str, headers: &HeaderMap, body: &[u8]) -> Explanation {
    let service = policies.route(path).map(|s| &**s);
    let service_view = service_view(service);
    let multipart = is_multipart(headers);
    // A multipart message is keyed by nothing and forwarded whole; its
    // operation is its root part's.
    let envelope_bytes = match multipart {
        true => headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| multipart_root(body, ct)),
        false => Some(body),
    };
    let parsed = envelope_bytes.map(parse_request);
    let envelope = match parsed {
        Some(Ok(envelope)) => Some(envelope),
        // The proxy forwards a multipart message whose root it cannot read.
        Some(Err(_)) | None if multipart => None,
        Some(Err(e)) => {
            let reason = format!("not an acceptable SOAP message: {e}");
            let fault = fault::bad_request(e.version, content_soap_version(headers), &reason);
            return refused(path, service_view, service, &fault, reason);
        }
        None => None,
    };
    if let Some(envelope) = &envelope {
        if let Err(fault) = crate::proxy::expiry(envelope) {
            let reason = fault_reason(&fault.body);
            return refused(path, service_view, service, &fault, reason);
        }
    }
    let op = envelope.as_ref().and_then(|e| e.operation.as_ref());
    let rules = rules_for(service, op.map(|op| &op.name));
    let mut reasons = Vec::new();
    if multipart {
        reasons.push(Uncacheable::Multipart);
    } else if body.len() > STREAM_THRESHOLD {
        reasons.push(Uncacheable::TooLarge);
    }
    if envelope.is_some() && op.is_none() {
        reasons.push(Uncacheable::NoOperation);
    }
    let facts = op.map(|op| {
        RequestFacts::of(
            headers,
            envelope.as_ref().is_some_and(|e| e.has_security_header),
            service.and_then(|s| s.invalidation(&op.name)).is_some(),
        )
    });
    let mut use_ = None;
    if let Some(facts) = &facts {
        reasons.extend(decision::request_reasons(rules, facts));
        if reasons.is_empty() {
            use_ = Some(decision::for_request(rules, facts));
        }
    }
    let name = service.map_or("default", |s| &s.name);
    let key = op.map(|op| key_view(service, op));
    if key.as_ref().is_some_and(|k| k.error.is_some()) && reasons.is_empty() {
        reasons.push(Uncacheable::KeyFailed);
        use_ = None;
    }
    let queued = rules.delivery == DeliveryMode::Queued && op.is_some();
    let cache = CacheView {
        use_: match use_ {
            _ if queued => "queued",
            Some(CacheUse::Lookup) => "lookup",
            Some(CacheUse::Refresh) => "refresh",
            _ => "bypass",
        },
        store: !queued && use_.is_some(),
        reasons: reasons
            .iter()
            .map(|&reason| ReasonView {
                reason: reason.label(),
                detail: describe(reason, rules, facts.as_ref(), key.as_ref()),
            })
            .collect(),
    };
    let version = envelope.as_ref().map(|e| e.version);
    // Only a request that uses the cache is looked up; a bypassed one still
    // shows what its policy `key` selects, but not the digest, which
    // nothing would compute.
    let looked_up = use_.is_some() && !queued;
    let lookup_key = match (op, version, &key) {
        (
            Some(op),
            Some(version),
            Some(KeyView {
                value: Some(value), ..
            }),
        ) if looked_up => Some(lookup_view(name, op, version, value, headers, rules)),
        _ => None,
    };
    let key = key.filter(|k| looked_up || (!queued && k.kind == "policy"));
    Explanation {
        path: path.to_owned(),
        service: service_view,
        fault: None,
        soap_version: version.map(version_label),
        operation: op.map(|op| OperationView {
            name: op.name.to_string(),
            declared: service.is_some_and(|s| s.operation(&op.name).is_some()),
        }),
        delivery: delivery_view(rules, envelope.as_ref(), op, headers),
        cache,
        key,
        lookup_key,
        lifetime: lifetime_view(rules),
        invalidates: op.and_then(|op| invalidation_view(service, op)),
    }
}

/// The explanation of a message soapcache refuses with `fault`.
fn refused(
    path: &str,
    service_view: ServiceView,
    service: Option<&Service>,
    fault: &fault::Fault,
    reason: String,
) -> Explanation {
    let rules = rules_for(service, None);
    let v11 = fault.content_type.as_bytes().starts_with(b"text/xml");
    Explanation {
        path: path.to_owned(),
        service: service_view,
        fault: Some(FaultView {
            status: fault.status.as_u16(),
            soap_version: if v11 { "1.1" } else { "1.2" },
            reason,
        }),
        soap_version: None,
        operation: None,
        delivery: DeliveryView {
            mode: rules.delivery.label(),
            ..DeliveryView::default()
        },
        cache: CacheView {
            use_: "bypass",
            store: false,
            reasons: Vec::new(),
        },
        key: None,
        lookup_key: None,
        lifetime: lifetime_view(rules),
        invalidates: None,
    }
}

/// The text of a fault's `faultstring` / `env:Text`.
fn fault_reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    ["<faultstring>", "xml:lang=\"en\">"]
        .iter()
        .find_map(|open| {
            let start = text.find(open)? + open.len();
            let end = start + text[start..].find('<')?;
            Some(text[start..end].to_owned())
        })
        .unwrap_or_else(|| text.into_owned())
}

fn service_view(service: Option<&Service>) -> ServiceView {
    match service {
        Some(s) => ServiceView {
            name: s.name.to_string(),
            routed: true,
            route: Some(s.route.clone()),
            source: Some(s.source.display().to_string()),
            upstream: s.upstream.as_ref().map(ToString::to_string),
        },
        None => ServiceView {
            name: "default".to_owned(),
            routed: false,
            route: None,
            source: None,
            upstream: None,
        },
    }
}

fn key_view(service: Option<&Service>, op: &OperationElement<'_>) -> KeyView {
    let policy_key = service
        .and_then(|s| s.operation(&op.name))
        .and_then(|o| o.key.as_ref());
    let selected = crate::key::selector_value(policy_key, op);
    let (value, error) = match selected {
        Ok(value) => (Some(value.to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let expressions = match policy_key {
        // XML text cannot hold U+001F, so the joined value splits back into
        // one value per expression.
        Some(selector) => {
            let mut values = value.as_deref().map(|v| v.split(SEPARATOR));
            selector
                .expressions()
                .map(|(expression, evaluator)| ExpressionView {
                    expression: expression.to_owned(),
                    value: values
                        .as_mut()
                        .and_then(|v| v.next())
                        .map(ToOwned::to_owned),
                    evaluator: evaluator.label(),
                })
                .collect()
        }
        None => Vec::new(),
    };
    KeyView {
        kind: if policy_key.is_some() {
            "policy"
        } else {
            "digest"
        },
        expressions,
        value,
        error,
    }
}

fn lookup_view(
    service: &str,
    op: &OperationElement<'_>,
    version: SoapVersion,
    selector: &str,
    headers: &HeaderMap,
    rules: &Rules,
) -> LookupView {
    let operation = op.name.to_string();
    let scope = Scope::of(
        Arc::from(service),
        Arc::from(operation.as_str()),
        version,
        headers,
        &rules.vary_headers,
    );
    let key = LookupKey {
        scope: Arc::new(scope),
        selector: selector.into(),
    };
    LookupView {
        service: service.to_owned(),
        operation,
        soap_version: version_label(version),
        selector: selector.to_owned(),
        vary: rules
            .vary_headers
            .iter()
            .map(|name| VaryView {
                header: name.to_string(),
                value: header_value_list(headers, name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            })
            .collect(),
        id: key.stable_id(),
    }
}

/// The message id, duplicate suppression and, for a queued operation, its
/// reply plan, retries and order, as the proxy would decide them (with a
/// store for results: `explain` has no `--data-dir` to ask).
fn delivery_view(
    rules: &Rules,
    envelope: Option<&RequestEnvelope<'_>>,
    op: Option<&OperationElement<'_>>,
    headers: &HeaderMap,
) -> DeliveryView {
    let mut view = DeliveryView {
        mode: rules.delivery.label(),
        dedup: (!rules.dedup.is_zero()).then(|| duration(rules.dedup)),
        ..DeliveryView::default()
    };
    let (Some(envelope), Some(op)) = (envelope, op) else {
        return view;
    };
    let addressing = &envelope.addressing;
    match crate::proxy::dedup::message_id(addressing, rules, op) {
        Ok(id) => {
            view.message_id_from = id.as_ref().map(|_| {
                match addressing.message_id.as_deref().filter(|id| !id.is_empty()) {
                    Some(_) => "wsa:MessageID",
                    None => "message_id",
                }
            });
            view.message_id = id;
        }
        Err(e) => view.message_id_error = Some(e.to_string()),
    }
    if rules.delivery != DeliveryMode::Queued {
        return view;
    }
    let retention = rules.result_retention.unwrap_or(DEFAULT_RESULT_RETENTION);
    let plan = crate::proxy::queued::reply_plan(
        addressing,
        headers,
        rules,
        retention,
        view.message_id.as_deref(),
    );
    view.reply = Some(match plan {
        Ok(ReplyPlan::Callback(callback)) => ReplyView {
            kind: "callback",
            reply_to: Some(callback.reply_to),
            fault_to: callback.fault_to,
            retention: None,
            refused: None,
        },
        Ok(ReplyPlan::Poll { retention, .. }) => ReplyView {
            kind: "poll",
            reply_to: None,
            fault_to: None,
            retention: Some(duration(retention)),
            refused: None,
        },
        Ok(ReplyPlan::Drop) => ReplyView {
            kind: "drop",
            reply_to: None,
            fault_to: None,
            retention: None,
            refused: None,
        },
        Err(reason) => ReplyView {
            kind: "refused",
            reply_to: None,
            fault_to: None,
            retention: None,
            refused: Some(reason),
        },
    });
    let retry = &rules.retry;
    view.retry = Some(RetryView {
        max_attempts: retry.max_attempts,
        retry_backoff: duration(retry.retry_backoff),
        max_retry_backoff: duration(retry.max_retry_backoff),
        deliver_within: duration(retry.deliver_within),
    });
    view.order_by = rules.order_by.as_ref().map(|selector| {
        selector
            .select(op)
            .unwrap_or_else(|e| format!("(cannot be evaluated: {e})"))
    });
    view
}

fn lifetime_view(rules: &Rules) -> LifetimeView {
    LifetimeView {
        honor_cache_control: rules.honor_cache_control,
        ttl: rules.ttl.map(duration),
        expires_daily_at: rules
            .expires_daily_at
            .map(|t| format!("{:02}:{:02}:{:02}Z", t.hour(), t.minute(), t.second())),
        max_ttl: rules.max_ttl.map(duration),
        stale_if_error: duration(rules.stale_if_error),
        stale_while_revalidate: duration(rules.stale_while_revalidate),
        max_entry_size: size(rules.max_entry_size),
        shared: rules.shared,
    }
}

fn invalidation_view(
    service: Option<&Service>,
    op: &OperationElement<'_>,
) -> Option<InvalidationView> {
    let invalidation = service?.invalidation(&op.name)?;
    let (key, error) = match invalidation.key.select(op) {
        Ok(key) => (Some(key), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Some(InvalidationView {
        key,
        error,
        targets: invalidation
            .targets
            .iter()
            .map(ToString::to_string)
            .collect(),
    })
}

/// Why a request may not use the cache, in a policy author's words.
fn describe(
    reason: Uncacheable,
    rules: &Rules,
    facts: Option<&RequestFacts>,
    key: Option<&KeyView>,
) -> String {
    match reason {
        Uncacheable::PolicyOff => "the policy says cache = false".to_owned(),
        Uncacheable::WriteOperation => {
            "an [[invalidate]] operation: a write, whose answer is never cached".to_owned()
        }
        Uncacheable::NoStore => "the request says Cache-Control: no-store".to_owned(),
        Uncacheable::Credentials => {
            let carried: Vec<&str> = facts
                .map(|f| {
                    decision::unshared_credentials(rules, f)
                        .map(|c| c.label())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{}: the policy neither says shared = true nor lists the header in vary_headers",
                carried.join(", ")
            )
        }
        Uncacheable::NoOperation => "the Body is empty: there is no operation to key".to_owned(),
        Uncacheable::KeyFailed => format!(
            "the policy's key cannot be evaluated on this request: {}",
            key.and_then(|k| k.error.as_deref()).unwrap_or("-")
        ),
        Uncacheable::Multipart => {
            "a multipart/related message (SwA, MTOM): streamed, never cached".to_owned()
        }
        Uncacheable::TooLarge => format!(
            "a request larger than {} streams to the service and is never cached",
            size(STREAM_THRESHOLD as u64)
        ),
        other => other.label().to_owned(),
    }
}

fn version_label(version: SoapVersion) -> &'static str {
    match version {
        SoapVersion::V11 => "1.1",
        SoapVersion::V12 => "1.2",
        SoapVersion::Draft2001 => "1.2 (2001/12 draft)",
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes % unit == 0)
        .map_or_else(
            || format!("{bytes} bytes"),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

/// The message id, dedup, reply, retry and order lines of `render`.
fn delivery_lines(d: &DeliveryView, line: &mut impl FnMut(&str, &str)) {
    let queued = d.mode == "queued";
    // A read without `dedup` is answered however often it is repeated:
    // nothing to say about its id.
    if !queued && d.dedup.is_none() && d.message_id_error.is_none() {
        return;
    }
    match (&d.message_id, d.message_id_from, &d.message_id_error) {
        (_, _, Some(error)) => line(
            "message id",
            &format!("message_id cannot be evaluated: {error} (the request is refused)"),
        ),
        (Some(id), Some(from), _) => line("message id", &format!("{id} ({from})")),
        _ if queued => line(
            "message id",
            "none given: soapcache names it with a new urn:uuid at acceptance (X-Message-Id)",
        ),
        _ => line("message id", "none"),
    }
    let repeats = match (&d.dedup, &d.message_id, queued) {
        (None, _, _) => "not recognised (no dedup)".to_owned(),
        (Some(window), None, _) => {
            format!("dedup {window}, but this request has no message id to recognise it by")
        }
        (Some(window), Some(_), true) => format!(
            "a repeat of this id within {window} is stored once, answered 202 (or its result) again"
        ),
        (Some(window), Some(_), false) => format!(
            "a repeat of this id within {window} gets the first answer again, byte for byte"
        ),
    };
    line("repeats", &repeats);
    if let Some(reply) = &d.reply {
        let text = match reply.kind {
            "callback" => match &reply.fault_to {
                Some(fault_to) => format!(
                    "callback: the answer POSTed to {}, faults to {fault_to}",
                    reply.reply_to.as_deref().unwrap_or("")
                ),
                None => format!(
                    "callback: the answer POSTed to {}",
                    reply.reply_to.as_deref().unwrap_or("")
                ),
            },
            "poll" => format!(
                "kept for GET /.results/ID for {} (with a --data-dir or --shared-cache)",
                reply.retention.as_deref().unwrap_or("")
            ),
            "refused" => format!(
                "refused with a fault: {}",
                reply.refused.as_deref().unwrap_or("")
            ),
            _ => "dropped: nobody asks for the service's answer".to_owned(),
        };
        line("reply", &text);
    }
    if let Some(retry) = &d.retry {
        line(
            "retries",
            &format!(
                "at most {} attempts, {} after the first failure doubling up to {}; dead-lettered as expired if not delivered within {}",
                retry.max_attempts, retry.retry_backoff, retry.max_retry_backoff, retry.deliver_within
            ),
        );
    }
    if let Some(order) = &d.order_by {
        line(
            "order",
            &format!("one at a time, in acceptance order, with the other messages whose order_by is {order:?}"),
        );
    }
}

/// The explanation as text: one `label  value` line per fact.
pub fn render(x: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        out.push_str(&format!("{label:<13}{value}\n"));
    };
    let s = &x.service;
    match (&s.route, &s.source) {
        (Some(route), Some(source)) => {
            line("service", &format!("{}, route {route} ({source})", s.name))
        }
        _ => line(
            "service",
            &format!(
                "default: no policy route matches {}; the built-in rules apply",
                x.path
            ),
        ),
    }
    line(
        "upstream",
        s.upstream.as_deref().unwrap_or("the --upstream default"),
    );
    if let Some(fault) = &x.fault {
        line(
            "refused",
            &format!(
                "a SOAP {} fault, HTTP {}: {}",
                fault.soap_version, fault.status, fault.reason
            ),
        );
        return out;
    }
    match &x.operation {
        Some(op) => {
            let declared = match (op.declared, s.routed) {
                (true, _) => "an [[operation]] of the policy",
                (false, true) => "not in the policy: its [defaults] apply",
                (false, false) => "no policy: the built-in rules apply",
            };
            line("operation", &format!("{} ({declared})", op.name));
        }
        None => line("operation", "none"),
    }
    line("soap version", x.soap_version.unwrap_or("unknown"));
    line("delivery", x.delivery.mode);
    delivery_lines(&x.delivery, &mut line);
    let cache = match x.cache.use_ {
        "lookup" => {
            "lookup: a fresh entry answers; else forwarded, and the answer stored when it may be"
        }
        "refresh" => {
            "refresh (Cache-Control: no-cache): forwarded, and the answer refreshes the entry"
        }
        "queued" => {
            "not used: a queued operation is answered 202 by soapcache, its answers never cached"
        }
        _ => "bypass: forwarded past the cache, neither looked up nor stored",
    };
    line("cache", cache);
    for reason in &x.cache.reasons {
        line(
            "  because",
            &format!("{}: {}", reason.reason, reason.detail),
        );
    }
    if x.cache.use_ != "queued" {
        line(
            "store",
            if x.cache.store {
                "when the answer allows it: HTTP 200, SOAP without Fault, a lifetime, no Cache-Control no-store/private, no Set-Cookie (unless shared), at most max_entry_size"
            } else {
                "no"
            },
        );
    }
    if let Some(key) = &x.key {
        match (key.kind, &key.error) {
            (_, Some(error)) => line("key", &format!("cannot be evaluated: {error}")),
            ("digest", None) => line(
                "key",
                &format!(
                    "the digest of the canonical operation element: {}",
                    key.value.as_deref().unwrap_or("-")
                ),
            ),
            _ => {
                for e in &key.expressions {
                    line(
                        "key",
                        &format!(
                            "{} = {:?} ({})",
                            e.expression,
                            e.value.as_deref().unwrap_or(""),
                            e.evaluator
                        ),
                    );
                }
            }
        }
    }
    if let Some(lookup) = &x.lookup_key {
        line(
            "lookup key",
            &format!(
                "{} | {} | SOAP {} | {:?}",
                lookup.service, lookup.operation, lookup.soap_version, lookup.selector
            ),
        );
        line("lookup id", &lookup.id);
        if lookup.vary.is_empty() {
            line("vary", "(none)");
        }
        for vary in &lookup.vary {
            let value = vary
                .value
                .as_deref()
                .map_or_else(|| "(absent)".to_owned(), |v| format!("{v:?}"));
            line("vary", &format!("{} = {value}", vary.header));
        }
    }
    if x.cache.use_ != "queued" {
        let l = &x.lifetime;
        let mut rules = Vec::new();
        if l.honor_cache_control {
            rules.push("the service's CacheControl Expires/MaxAge when it sends one".to_owned());
        }
        if let Some(ttl) = &l.ttl {
            rules.push(format!("else ttl {ttl}"));
        }
        if let Some(at) = &l.expires_daily_at {
            rules.push(format!("ending at the next {at} at the latest"));
        }
        if rules.is_empty() {
            rules.push("none: answers are not stored".to_owned());
        }
        if let Some(max) = &l.max_ttl {
            rules.push(format!("capped by max_ttl {max}"));
        }
        line("lifetime", &rules.join("; "));
        line(
            "stale",
            &format!(
                "stale_while_revalidate {}, stale_if_error {}",
                l.stale_while_revalidate, l.stale_if_error
            ),
        );
        line(
            "entries",
            &format!(
                "at most {}{}",
                l.max_entry_size,
                if l.shared { "; shared = true" } else { "" }
            ),
        );
    }
    match &x.invalidates {
        Some(inv) => {
            let what = match (&inv.key, &inv.error) {
                (Some(key), _) => format!("CacheKey {key:?}"),
                (None, error) => format!(
                    "nothing: its key cannot be evaluated ({})",
                    error.as_deref().unwrap_or("-")
                ),
            };
            line(
                "invalidates",
                &format!("{what} of {}, once it succeeds", inv.targets.join(", ")),
            );
        }
        None => line("invalidates", "nothing"),
    }
    out
}
