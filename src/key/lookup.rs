//! The keys the cache is looked up by (reference §3): a request's lookup key
//! `(service, operation, selector value, vary values)`, and an entry's key
//! `(scope, CacheKey)`. Equal keys hash alike in one process (foldhash);
//! a key that leaves the process (a shared tier) is named by
//! [`LookupKey::stable_id`] / [`EntryKey::stable_id`], the same in every
//! process and build.

use std::sync::Arc;

use base64::Engine as _;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use smol_str::SmolStr;

use crate::http::headers::header_value_list;
use crate::soap::SoapVersion;

/// foldhash, randomly seeded per process: keys hold digests and selector
/// values, which SipHash (the default) hashes several times slower, on
/// every hit. Equality is still checked in full on a match. Never used for
/// a key that leaves the process (see [`EntryKey::stable_id`]).
pub type Hasher = foldhash::fast::RandomState;

/// What a key is scoped to: entries of one service, operation and set of
/// vary-header values never answer requests of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub service: Arc<str>,
    /// The operation's expanded name, `{ns}local`.
    pub operation: Arc<str>,
    /// A SOAP 1.2 requester must not get a stored 1.1 envelope (or the
    /// reverse), though their operation elements are alike: an extension
    /// of reference §3's key.
    pub version: SoapVersion,
    /// Each vary header's values, joined when it was sent more than once.
    pub vary: Box<[Option<HeaderValue>]>,
}

/// `(service, operation, selector value, vary values)`. The scope is
/// shared: every entry of an operation points at one, instead of holding
/// a copy of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupKey {
    pub scope: Arc<Scope>,
    /// Digests (22 characters) and most policy keys are held inline.
    pub selector: SmolStr,
}

/// Where an entry lives: its scope and the `CacheKey` it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub scope: Arc<Scope>,
    /// Keys up to 23 bytes (`ABC-1234`, most keys) are held inline: no
    /// allocation of their own per entry, nor per lookup that builds one.
    pub cache_key: SmolStr,
}

impl Scope {
    /// The scope of a request to `operation` of `service`, with the values
    /// of the policy's vary headers as the request sent them.
    pub fn of(
        service: Arc<str>,
        operation: Arc<str>,
        version: SoapVersion,
        headers: &HeaderMap,
        vary_headers: &[HeaderName],
    ) -> Scope {
        Scope {
            service,
            operation,
            version,
            vary: vary_headers
                .iter()
                .map(|name| header_value_list(headers, name))
                .collect(),
        }
    }

    /// Feeds the scope to `hasher`, every field length-prefixed so that no
    /// two scopes give the same bytes.
    fn hash_stable(&self, hasher: &mut blake3::Hasher) {
        field(hasher, self.service.as_bytes());
        field(hasher, self.operation.as_bytes());
        field(hasher, self.version.namespace().as_bytes());
        hasher.update(&(self.vary.len() as u64).to_le_bytes());
        for value in self.vary.iter() {
            match value {
                None => {
                    hasher.update(b"-");
                }
                Some(value) => {
                    hasher.update(b"+");
                    field(hasher, value.as_bytes());
                }
            }
        }
    }
}

impl LookupKey {
    /// The key's name outside this process: a 128-bit BLAKE3 digest of its
    /// fields, base64url. Equal keys have equal ids in every instance.
    pub fn stable_id(&self) -> String {
        stable_id(&self.scope, b"lookup", &self.selector)
    }
}

impl EntryKey {
    /// See [`LookupKey::stable_id`]; an entry key never has the id of a
    /// lookup key.
    pub fn stable_id(&self) -> String {
        stable_id(&self.scope, b"entry", &self.cache_key)
    }
}

fn stable_id(scope: &Scope, kind: &[u8], value: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    field(&mut hasher, kind);
    scope.hash_stable(&mut hasher);
    field(&mut hasher, value.as_bytes());
    let digest = hasher.finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_bytes()[..16])
}

fn field(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str, vary: &[Option<&'static str>], selector: &str) -> LookupKey {
        LookupKey {
            scope: Arc::new(Scope {
                service: service.into(),
                operation: "{urn:c}Price".into(),
                version: SoapVersion::V11,
                vary: vary
                    .iter()
                    .map(|v| v.map(HeaderValue::from_static))
                    .collect(),
            }),
            selector: selector.into(),
        }
    }

    #[test]
    fn stable_ids_are_the_same_in_every_process_and_differ_for_different_keys() {
        let a = key("s", &[Some("t1")], "ABC");
        // A golden value: a change of the derivation splits a fleet's cache.
        assert_eq!(a.stable_id(), "gYqwtRAHCu57kLSqTD2dGg");
        assert_eq!(a.stable_id(), key("s", &[Some("t1")], "ABC").stable_id());
        let others = [
            key("t", &[Some("t1")], "ABC"),
            key("s", &[Some("t2")], "ABC"),
            key("s", &[None], "ABC"),
            key("s", &[], "ABC"),
            key("s", &[Some("t1")], "ABD"),
        ];
        for other in &others {
            assert_ne!(a.stable_id(), other.stable_id(), "{other:?}");
        }
        let entry = EntryKey {
            scope: a.scope.clone(),
            cache_key: a.selector.clone(),
        };
        assert_ne!(entry.stable_id(), a.stable_id());
    }

    #[test]
    fn a_vary_header_sent_twice_is_its_values_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", HeaderValue::from_static("a"));
        headers.append("x-tenant", HeaderValue::from_static("b"));
        let names = [
            HeaderName::from_static("x-tenant"),
            HeaderName::from_static("x-none"),
        ];
        let scope = Scope::of(
            "s".into(),
            "{u}Op".into(),
            SoapVersion::V12,
            &headers,
            &names,
        );
        assert_eq!(
            &*scope.vary,
            &[Some(HeaderValue::from_static("a, b")), None]
        );
    }
}
