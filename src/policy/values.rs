//! The values of `[service]`, element names and `key` lists: read, checked
//! and reported at their line.

use toml::Spanned;

use super::load::FileContext;
use crate::key::selector::Selector;
use crate::xml::ExpandedName;

pub(super) fn read_service_name(
    cx: &mut FileContext<'_>,
    name: &Spanned<String>,
) -> Option<String> {
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

pub(super) fn read_route(cx: &mut FileContext<'_>, route: &Spanned<String>) -> Option<String> {
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
    // `/.results/ID` is soapcache's own path (reference §12.2), matched
    // before every route: a service there would never be reached.
    if trimmed == "/.results" || trimmed.starts_with("/.results/") {
        cx.error(
            route.span(),
            format!("route '{r}' is under /.results, soapcache's own path for results to poll"),
        );
        return None;
    }
    Some(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

pub(super) fn read_upstream(
    cx: &mut FileContext<'_>,
    upstream: &Spanned<String>,
) -> Option<hyper::Uri> {
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
pub(super) fn element_name(
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

pub(super) fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c == '-' || c == '.' || c.is_alphanumeric() || c == '\u{b7}')
}

/// Compiles a `key` list, reporting each bad expression at its own line.
pub(super) fn compile_key(
    cx: &mut FileContext<'_>,
    key: &Spanned<Vec<Spanned<String>>>,
    namespaces: &[(String, String)],
    name: &str,
) -> Option<Selector> {
    let expressions = key.get_ref();
    if expressions.is_empty() {
        cx.error(
            key.span(),
            format!("{name} must list at least one XPath expression"),
        );
        return None;
    }
    let mut ok = true;
    for e in expressions {
        if let Err(error) = Selector::compile(std::slice::from_ref(e.get_ref()), namespaces) {
            cx.error(e.span(), format!("{name}: {error}"));
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
            cx.error(key.span(), format!("{name}: {error}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
