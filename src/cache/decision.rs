//! Whether a request may be answered from the cache, and whether an answer
//! may be stored (reference §4): decided here and nowhere else. The fast path,
//! the full path and `explain` call the same functions, and every "no"
//! comes with its reason, which `Cache-Status` (`detail=`), the access log
//! and `explain` report.

use std::time::SystemTime;

use hyper::StatusCode;

use crate::http::headers::Directives;
use crate::policy::Rules;
use crate::soap::control::ResponseEnvelope;

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $label:literal,)*) => {
        /// Why a request is not answered from the cache, or an answer is not
        /// stored.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Uncacheable {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Uncacheable {
            pub const ALL: &'static [Uncacheable] = &[$(Uncacheable::$variant),*];

            /// The reason as `Cache-Status` `detail=`, the access log and
            /// `explain` name it.
            pub fn label(self) -> &'static str {
                match self {
                    $(Uncacheable::$variant => $label,)*
                }
            }

            /// `Cache-Status` of a request forwarded past the cache for this
            /// reason.
            pub fn bypass_status(self) -> &'static str {
                match self {
                    $(Uncacheable::$variant => concat!("soapcache; fwd=bypass; detail=", $label),)*
                }
            }

            /// `Cache-Status` of a miss whose answer was not stored for this
            /// reason.
            pub fn miss_status(self) -> &'static str {
                match self {
                    $(Uncacheable::$variant => concat!("soapcache; fwd=miss; detail=", $label),)*
                }
            }
        }
    };
}

reasons! {
    // What the request and its policy say.
    /// The policy says `cache = false`.
    PolicyOff => "cache-false",
    /// An `[[invalidate]]` operation: a write, whose answer is never shared.
    WriteOperation => "write-operation",
    /// The requester sent `Cache-Control: no-store`.
    NoStore => "no-store",
    /// `Authorization`, `Cookie` or a WS-Security header, and the policy
    /// neither says `shared = true` nor varies by that header
    /// ([`unshared_credentials`] says which).
    Credentials => "credentials",
    /// The `Body` is empty: there is no operation to key.
    NoOperation => "no-operation",
    /// The policy's `key` cannot be evaluated on this request.
    KeyFailed => "key-failed",
    /// A `multipart/related` request (SwA, MTOM): streamed, never cached.
    Multipart => "multipart",
    /// A body larger than soapcache holds (a request past 1 MiB, an answer
    /// past `max_entry_size`): streamed, never cached.
    TooLarge => "too-large",
    // What the answer says.
    /// Not HTTP 200.
    Status => "status",
    /// Not a well-formed SOAP envelope.
    NotSoap => "not-soap",
    /// A SOAP fault.
    Fault => "fault",
    /// The service sent `Cache-Control: no-store` or `private`.
    ResponseNoStore => "response-no-store",
    /// The service sent `Set-Cookie`: a per-user answer.
    SetCookie => "set-cookie",
    /// Neither an addressed `CacheControl` nor a policy lifetime.
    NoLifetime => "no-lifetime",
    /// Its lifetime is already over.
    Expired => "expired",
}

/// What a request says that the decision needs: its headers, and what its
/// body and policy made of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    /// The requester's `Cache-Control`.
    pub directives: Directives,
    pub authorization: bool,
    /// A `Cookie` header.
    pub cookie: bool,
    /// A WS-Security `Security` header block.
    pub security_header: bool,
    /// The operation is an `[[invalidate]]` write.
    pub write_operation: bool,
}

impl RequestFacts {
    /// The facts of a parsed request: its headers, whether its envelope has
    /// a WS-Security header, and whether its operation is a write.
    pub fn of(
        headers: &hyper::HeaderMap,
        security_header: bool,
        write_operation: bool,
    ) -> RequestFacts {
        RequestFacts {
            directives: Directives::of(headers),
            authorization: headers.contains_key(hyper::header::AUTHORIZATION),
            cookie: headers.contains_key(hyper::header::COOKIE),
            security_header,
            write_operation,
        }
    }
}

/// How a request may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Answered from a fresh entry, else fetched and stored.
    Lookup,
    /// `Cache-Control: no-cache`: fetched, and the answer refreshes the
    /// entry.
    Refresh,
    /// Forwarded past the cache both ways, for (at least) this reason.
    Bypass(Uncacheable),
}

/// Every reason a request may not use the cache, in the order they are
/// reported; empty when it may.
pub fn request_reasons(rules: &Rules, facts: &RequestFacts) -> Vec<Uncacheable> {
    let checks = [
        (!rules.cache, Uncacheable::PolicyOff),
        (facts.write_operation, Uncacheable::WriteOperation),
        (facts.directives.no_store, Uncacheable::NoStore),
        (!may_share(rules, facts), Uncacheable::Credentials),
    ];
    checks
        .into_iter()
        .filter_map(|(applies, reason)| applies.then_some(reason))
        .collect()
}

/// How a request may use the cache: the first of [`request_reasons`], or
/// how it may.
pub fn for_request(rules: &Rules, facts: &RequestFacts) -> CacheUse {
    // The same checks as `request_reasons`, without building a list: this
    // runs on every hit.
    let reason = if !rules.cache {
        Some(Uncacheable::PolicyOff)
    } else if facts.write_operation {
        Some(Uncacheable::WriteOperation)
    } else if facts.directives.no_store {
        Some(Uncacheable::NoStore)
    } else if !may_share(rules, facts) {
        Some(Uncacheable::Credentials)
    } else {
        None
    };
    match reason {
        Some(reason) => CacheUse::Bypass(reason),
        None if facts.directives.no_cache => CacheUse::Refresh,
        None => CacheUse::Lookup,
    }
}

/// A credential a request carries (reference §4.2, §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Authorization,
    Cookie,
    /// A WS-Security `Security` header block.
    WsSecurity,
}

impl Credential {
    /// As `explain` names it.
    pub fn label(self) -> &'static str {
        match self {
            Credential::Authorization => "Authorization",
            Credential::Cookie => "Cookie",
            Credential::WsSecurity => "WS-Security header",
        }
    }
}

/// The credentials of a request that keep it out of the shared cache: a
/// shared cache must never hand one user's answer to another. None with
/// `shared = true` (the answer does not depend on who asks); an HTTP header
/// listed in `vary_headers` does not count either, since each of its values
/// gets its own entries. A SOAP header block cannot be a vary header.
pub fn unshared_credentials(
    rules: &Rules,
    facts: &RequestFacts,
) -> impl Iterator<Item = Credential> {
    let varies = |name: &hyper::header::HeaderName| rules.vary_headers.contains(name);
    let present = [
        (
            facts.authorization && !varies(&hyper::header::AUTHORIZATION),
            Credential::Authorization,
        ),
        (
            facts.cookie && !varies(&hyper::header::COOKIE),
            Credential::Cookie,
        ),
        (facts.security_header, Credential::WsSecurity),
    ];
    let shared = rules.shared;
    present
        .into_iter()
        .filter_map(move |(applies, credential)| (applies && !shared).then_some(credential))
}

fn may_share(rules: &Rules, facts: &RequestFacts) -> bool {
    // Most requests carry none: no list to walk.
    if rules.shared || !(facts.authorization || facts.cookie || facts.security_header) {
        return true;
    }
    unshared_credentials(rules, facts).next().is_none()
}

/// What an answer says that the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    pub status: StatusCode,
    /// `None`: not a well-formed SOAP envelope.
    pub envelope: Option<&'a ResponseEnvelope>,
    /// The service's `Cache-Control`.
    pub directives: Directives,
    /// The body as it would be stored (stripped), in bytes.
    pub stored_len: usize,
    /// The answer sets a cookie.
    pub set_cookie: bool,
}

/// When an answer may be stored until (reference §4), or why it may not be.
pub fn storable(
    rules: &Rules,
    response: &ResponseFacts<'_>,
    now: SystemTime,
) -> Result<SystemTime, Uncacheable> {
    if response.status != StatusCode::OK {
        return Err(Uncacheable::Status);
    }
    let envelope = response.envelope.ok_or(Uncacheable::NotSoap)?;
    if envelope.is_fault {
        return Err(Uncacheable::Fault);
    }
    if response.directives.no_store || response.directives.private {
        return Err(Uncacheable::ResponseNoStore);
    }
    // A session cookie makes the answer its requester's own; a stored answer
    // never replays it either way (a hit carries only reference §5.2's
    // headers).
    if response.set_cookie && !rules.shared {
        return Err(Uncacheable::SetCookie);
    }
    if response.stored_len as u64 > rules.max_entry_size {
        return Err(Uncacheable::TooLarge);
    }
    let control = envelope
        .control
        .as_ref()
        .filter(|_| rules.honor_cache_control);
    let expires_at = super::lifetime::expires_at(
        control,
        rules.ttl,
        rules.expires_daily_at,
        rules.max_ttl,
        now,
    )
    .ok_or(Uncacheable::NoLifetime)?;
    if expires_at <= now {
        return Err(Uncacheable::Expired);
    }
    Ok(expires_at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::soap::control::ControlBlock;
    use crate::soap::SoapVersion;

    fn rules() -> Rules {
        Rules::default()
    }

    fn facts() -> RequestFacts {
        RequestFacts::default()
    }

    fn envelope(is_fault: bool, expires: Option<&str>) -> ResponseEnvelope {
        ResponseEnvelope {
            version: SoapVersion::V11,
            is_fault,
            sender_fault: false,
            control: expires.map(|e| ControlBlock {
                cache_key: Some("K".into()),
                expires: Some(e.into()),
                max_age: None,
            }),
            strip: Vec::new(),
            addressing: Vec::new(),
        }
    }

    const LATER: &str = "2999-01-01T00:00:00Z";

    fn response(envelope: Option<&ResponseEnvelope>) -> ResponseFacts<'_> {
        ResponseFacts {
            status: StatusCode::OK,
            envelope,
            directives: Directives::default(),
            stored_len: 10,
            set_cookie: false,
        }
    }

    #[test]
    fn a_plain_request_may_use_the_cache_and_no_cache_refreshes_it() {
        assert_eq!(for_request(&rules(), &facts()), CacheUse::Lookup);
        let mut f = facts();
        f.directives.no_cache = true;
        assert_eq!(for_request(&rules(), &f), CacheUse::Refresh);
        assert!(request_reasons(&rules(), &f).is_empty());
    }

    #[test]
    fn cache_false_bypasses() {
        let r = Rules {
            cache: false,
            ..rules()
        };
        assert_eq!(
            for_request(&r, &facts()),
            CacheUse::Bypass(Uncacheable::PolicyOff)
        );
    }

    #[test]
    fn a_write_operation_bypasses() {
        let f = RequestFacts {
            write_operation: true,
            ..facts()
        };
        assert_eq!(
            for_request(&rules(), &f),
            CacheUse::Bypass(Uncacheable::WriteOperation)
        );
    }

    #[test]
    fn no_store_bypasses_even_with_no_cache() {
        let mut f = facts();
        f.directives.no_store = true;
        f.directives.no_cache = true;
        assert_eq!(
            for_request(&rules(), &f),
            CacheUse::Bypass(Uncacheable::NoStore)
        );
    }

    #[test]
    fn credentials_bypass_unless_shared_or_varied_by() {
        for f in [
            RequestFacts {
                authorization: true,
                ..facts()
            },
            RequestFacts {
                security_header: true,
                ..facts()
            },
        ] {
            assert_eq!(
                for_request(&rules(), &f),
                CacheUse::Bypass(Uncacheable::Credentials)
            );
            let shared = Rules {
                shared: true,
                ..rules()
            };
            assert_eq!(for_request(&shared, &f), CacheUse::Lookup);
        }
        let varied = Rules {
            vary_headers: vec![hyper::header::AUTHORIZATION],
            ..rules()
        };
        let with_authorization = RequestFacts {
            authorization: true,
            ..facts()
        };
        assert_eq!(for_request(&varied, &with_authorization), CacheUse::Lookup);
        // Varying by Authorization does not make a WS-Security header shareable.
        let with_security = RequestFacts {
            security_header: true,
            ..facts()
        };
        assert_eq!(
            for_request(&varied, &with_security),
            CacheUse::Bypass(Uncacheable::Credentials)
        );
    }

    #[test]
    fn a_cookie_is_a_credential_unless_shared_or_varied_by() {
        let with_cookie = RequestFacts {
            cookie: true,
            ..facts()
        };
        assert_eq!(
            for_request(&rules(), &with_cookie),
            CacheUse::Bypass(Uncacheable::Credentials)
        );
        assert_eq!(
            unshared_credentials(&rules(), &with_cookie).collect::<Vec<_>>(),
            [Credential::Cookie]
        );
        let shared = Rules {
            shared: true,
            ..rules()
        };
        assert_eq!(for_request(&shared, &with_cookie), CacheUse::Lookup);
        let varied = Rules {
            vary_headers: vec![hyper::header::COOKIE],
            ..rules()
        };
        assert_eq!(for_request(&varied, &with_cookie), CacheUse::Lookup);
        // Varying by Cookie does not make Authorization shareable.
        let both = RequestFacts {
            authorization: true,
            ..with_cookie
        };
        assert_eq!(
            unshared_credentials(&varied, &both).collect::<Vec<_>>(),
            [Credential::Authorization]
        );
    }

    #[test]
    fn an_answer_that_sets_a_cookie_is_stored_only_when_shared() {
        let env = envelope(false, Some(LATER));
        let facts = ResponseFacts {
            set_cookie: true,
            ..response(Some(&env))
        };
        assert_eq!(
            storable(&rules(), &facts, SystemTime::now()),
            Err(Uncacheable::SetCookie)
        );
        let shared = Rules {
            shared: true,
            ..rules()
        };
        assert!(storable(&shared, &facts, SystemTime::now()).is_ok());
    }

    #[test]
    fn every_request_reason_is_listed_in_order_and_the_first_decides() {
        let r = Rules {
            cache: false,
            ..rules()
        };
        let mut f = RequestFacts {
            authorization: true,
            write_operation: true,
            ..facts()
        };
        f.directives.no_store = true;
        assert_eq!(
            request_reasons(&r, &f),
            [
                Uncacheable::PolicyOff,
                Uncacheable::WriteOperation,
                Uncacheable::NoStore,
                Uncacheable::Credentials
            ]
        );
        assert_eq!(
            for_request(&r, &f),
            CacheUse::Bypass(Uncacheable::PolicyOff)
        );
    }

    #[test]
    fn an_answer_is_stored_until_its_expiry() {
        let now = SystemTime::now();
        let env = envelope(false, Some(LATER));
        let until = storable(&rules(), &response(Some(&env)), now).unwrap();
        assert!(until > now + Duration::from_secs(86_400 * 365));
    }

    #[test]
    fn an_answer_that_is_not_200_is_not_stored() {
        let env = envelope(false, Some(LATER));
        let facts = ResponseFacts {
            status: StatusCode::CREATED,
            ..response(Some(&env))
        };
        assert_eq!(
            storable(&rules(), &facts, SystemTime::now()),
            Err(Uncacheable::Status)
        );
    }

    #[test]
    fn an_answer_that_is_not_soap_is_not_stored() {
        assert_eq!(
            storable(&rules(), &response(None), SystemTime::now()),
            Err(Uncacheable::NotSoap)
        );
    }

    #[test]
    fn faults_are_never_stored() {
        let env = envelope(true, Some(LATER));
        assert_eq!(
            storable(&rules(), &response(Some(&env)), SystemTime::now()),
            Err(Uncacheable::Fault)
        );
    }

    #[test]
    fn an_answer_marked_no_store_or_private_is_not_stored() {
        let env = envelope(false, Some(LATER));
        for (no_store, private) in [(true, false), (false, true)] {
            let mut facts = response(Some(&env));
            facts.directives.no_store = no_store;
            facts.directives.private = private;
            assert_eq!(
                storable(&rules(), &facts, SystemTime::now()),
                Err(Uncacheable::ResponseNoStore)
            );
        }
    }

    #[test]
    fn an_answer_past_max_entry_size_is_not_stored() {
        let env = envelope(false, Some(LATER));
        let facts = ResponseFacts {
            stored_len: (1 << 20) + 1,
            ..response(Some(&env))
        };
        assert_eq!(
            storable(&rules(), &facts, SystemTime::now()),
            Err(Uncacheable::TooLarge)
        );
    }

    #[test]
    fn an_answer_without_a_lifetime_is_not_stored() {
        let env = envelope(false, None);
        assert_eq!(
            storable(&rules(), &response(Some(&env)), SystemTime::now()),
            Err(Uncacheable::NoLifetime)
        );
        // Not even with CacheControl, when the policy does not honor it.
        let env = envelope(false, Some(LATER));
        let distrust = Rules {
            honor_cache_control: false,
            ..rules()
        };
        assert_eq!(
            storable(&distrust, &response(Some(&env)), SystemTime::now()),
            Err(Uncacheable::NoLifetime)
        );
        // A policy ttl is a lifetime.
        let ttl = Rules {
            ttl: Some(Duration::from_secs(60)),
            ..distrust
        };
        assert!(storable(&ttl, &response(Some(&env)), SystemTime::now()).is_ok());
    }

    #[test]
    fn an_answer_already_expired_is_not_stored() {
        let env = envelope(false, Some("2001-03-09T08:00:00Z"));
        assert_eq!(
            storable(&rules(), &response(Some(&env)), SystemTime::now()),
            Err(Uncacheable::Expired)
        );
    }

    #[test]
    fn every_reason_has_its_own_label_and_cache_status() {
        let mut labels: Vec<&str> = Uncacheable::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Uncacheable::ALL.len());
        for reason in Uncacheable::ALL {
            let label = reason.label();
            // An RFC 9211 detail token: no quoting needed.
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
            assert_eq!(
                reason.bypass_status(),
                format!("soapcache; fwd=bypass; detail={label}")
            );
            assert_eq!(
                reason.miss_status(),
                format!("soapcache; fwd=miss; detail={label}")
            );
        }
    }
}
