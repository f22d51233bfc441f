//! Policy files (reference §7): `PolicySet::load` on arbitrary file contents.
//!
//! The input is one policy file, or two when it contains a NUL byte (the
//! text before it is `a.toml`, after it `b.toml`, loaded as a directory, so
//! that the checks across files run too).
//!
//! Invariants:
//! * load never panics;
//! * every error names one of the files (its `file`, and its Display
//!   starts with that path) and has a one-line, non-empty message;
//! * an error has line 0 only when the file is not UTF-8 ("cannot read");
//!   otherwise 1 <= line <= the number of lines of that file;
//! * a loaded set routes each service's own route to a service, routes are
//!   normalised ('/' first, no trailing '/' except "/"), and every key
//!   selector evaluates on a request for its operation without panicking.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use soapcache::soap::envelope::parse_request;
use soapcache::policy::PolicySet;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("soapcache-fuzz-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn request_for(namespace: &str, local: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><{local} xmlns="{}" id="7"><PartNumber>ABC-1234</PartNumber><From>EUR</From></{local}></s:Body></s:Envelope>"#,
        namespace
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
    )
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let (path, files): (PathBuf, Vec<(PathBuf, &[u8])>) = match data.iter().position(|&b| b == 0) {
        Some(i) => (
            dir.clone(),
            vec![
                (dir.join("a.toml"), &data[..i]),
                (dir.join("b.toml"), &data[i + 1..]),
            ],
        ),
        None => {
            let file = dir.join("policy.toml");
            (file.clone(), vec![(file, data)])
        }
    };
    for (file, content) in &files {
        std::fs::write(file, content).expect("write policy");
    }

    match PolicySet::load(&path) {
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without errors");
            for e in &errors {
                let (_, content) = files
                    .iter()
                    .find(|(f, _)| *f == e.file)
                    .unwrap_or_else(|| panic!("error about an unknown file: {e}"));
                let shown = e.to_string();
                assert!(shown.starts_with(&e.file.display().to_string()), "{shown}");
                assert!(!e.message.trim().is_empty(), "empty message: {shown}");
                assert!(!shown.contains('\n'), "multi-line error line: {shown:?}");
                match std::str::from_utf8(content) {
                    Err(_) => assert_eq!(e.line, 0, "{shown}"),
                    Ok(text) => {
                        let lines = text.matches('\n').count() + 1;
                        assert!(
                            e.line >= 1 && e.line <= lines,
                            "line {} of {lines}: {shown:?}\n{text}",
                            e.line
                        );
                    }
                }
            }
        }
        Ok(set) => {
            assert!(!set.services().is_empty());
            assert!(!set.summary().is_empty());
            for service in set.services() {
                let route = &service.route;
                assert!(route.starts_with('/'), "route {route:?}");
                assert!(route == "/" || !route.ends_with('/'), "route {route:?}");
                assert!(set.route(route).is_some(), "route {route:?} routes nowhere");
                assert!(files.iter().any(|(f, _)| Path::new(f) == service.source));
                for op in &service.operations {
                    let xml = request_for(&op.name.namespace, &op.name.local);
                    let Ok(env) = parse_request(xml.as_bytes()) else {
                        continue;
                    };
                    let Some(element) = env.operation else {
                        continue;
                    };
                    if let Some(key) = &op.key {
                        let _ = key.select(&element);
                    }
                    let _ = service.rules(&op.name);
                }
                for inv in &service.invalidations {
                    let xml = request_for(&inv.name.namespace, &inv.name.local);
                    let Ok(env) = parse_request(xml.as_bytes()) else {
                        continue;
                    };
                    if let Some(element) = env.operation {
                        let _ = inv.key.select(&element);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
