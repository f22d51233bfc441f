//! SOAP faults soapcache answers itself (SPEC §2): malformed requests, an
//! unreachable or slow upstream. Always a well-formed envelope in the
//! requester's SOAP version, never an empty body.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;

use crate::envelope::SoapVersion;

/// Who is to blame, in SOAP's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// SOAP 1.1 `Client`, SOAP 1.2 `env:Sender`.
    Sender,
    /// SOAP 1.1 `Server`, SOAP 1.2 `env:Receiver`.
    Receiver,
}

/// A fault ready to send: status, content type and body.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

/// The fault for a request that is not acceptable SOAP. `version` is the
/// envelope's when known; otherwise `soap12_content` (the request said
/// `application/soap+xml`) picks the form. Status: 1.1 → 500, 1.2 → 400,
/// unknown → 400.
pub fn bad_request(version: Option<SoapVersion>, soap12_content: bool, reason: &str) -> Fault {
    let status = match version {
        Some(SoapVersion::V11) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let version = version.unwrap_or(if soap12_content {
        SoapVersion::V12
    } else {
        SoapVersion::V11
    });
    build(version, Culprit::Sender, status, reason)
}

/// A fault with an explicit status (502, 504, 413, ...).
pub fn build(version: SoapVersion, culprit: Culprit, status: StatusCode, reason: &str) -> Fault {
    let reason = quick_xml::escape::escape(reason);
    let ns = version.namespace();
    let body = if version.is_11() {
        let code = match culprit {
            Culprit::Sender => "Client",
            Culprit::Receiver => "Server",
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soap:Envelope xmlns:soap=\"{ns}\"><soap:Body><soap:Fault>\
<faultcode>soap:{code}</faultcode><faultstring>{reason}</faultstring><faultactor>soapcache</faultactor>\
</soap:Fault></soap:Body></soap:Envelope>"
        )
    } else {
        let code = match culprit {
            Culprit::Sender => "Sender",
            Culprit::Receiver => "Receiver",
        };
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<env:Envelope xmlns:env=\"{ns}\"><env:Body><env:Fault>\
<env:Code><env:Value>env:{code}</env:Value></env:Code>\
<env:Reason><env:Text xml:lang=\"en\">{reason}</env:Text></env:Reason>\
<env:Role>soapcache</env:Role>\
</env:Fault></env:Body></env:Envelope>"
        )
    };
    let content_type = if version.is_11() {
        HeaderValue::from_static("text/xml; charset=utf-8")
    } else {
        HeaderValue::from_static("application/soap+xml; charset=utf-8")
    };
    Fault {
        status,
        content_type,
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::inspect_response;

    #[test]
    fn faults_are_well_formed_in_each_version() {
        for version in [SoapVersion::V11, SoapVersion::V12, SoapVersion::Draft2001] {
            let f = build(
                version,
                Culprit::Receiver,
                StatusCode::BAD_GATEWAY,
                "upstream <down> & out",
            );
            let info = inspect_response(&f.body, &[]).expect("a SOAP envelope");
            assert!(info.is_fault);
            assert_eq!(info.version, version);
        }
    }

    #[test]
    fn bad_requests_get_the_status_of_their_version() {
        assert_eq!(bad_request(Some(SoapVersion::V11), false, "x").status, 500);
        assert_eq!(bad_request(Some(SoapVersion::V12), false, "x").status, 400);
        assert_eq!(bad_request(None, false, "x").status, 400);
        let unknown12 = bad_request(None, true, "x");
        assert!(std::str::from_utf8(&unknown12.body)
            .unwrap()
            .contains("env:Sender"));
        let v11 = bad_request(Some(SoapVersion::V11), false, "x");
        assert!(std::str::from_utf8(&v11.body)
            .unwrap()
            .contains("soap:Client"));
    }
}
