//! SOAP faults soapcache answers itself (reference §2): malformed requests, an
//! unreachable or slow upstream. Always a well-formed envelope in the
//! requester's SOAP version, never an empty body.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;

use crate::soap::SoapVersion;

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

/// The fault for a request that is not acceptable SOAP. Its version is the
/// envelope's when the scan got that far, else the one the content type
/// names (`content`, see `http::headers::content_soap_version`). The status
/// follows the fault's form: the SOAP 1.1 HTTP binding answers every fault
/// with 500, and a requester that goes by the status would otherwise see a
/// transport error instead of a fault (a DTD before the envelope is
/// refused before the envelope's version is known, and is still a 1.1
/// fault when the content type is `text/xml`). SOAP 1.2 says 400 for a
/// sender fault. A request that names no version either way gets 400, and
/// so the 1.2 form: the only form a 400 goes with.
pub fn bad_request(
    version: Option<SoapVersion>,
    content: Option<SoapVersion>,
    reason: &str,
) -> Fault {
    let version = version.or(content).unwrap_or(SoapVersion::V12);
    build(version, Culprit::Sender, sender_status(version), reason)
}

/// The HTTP status of a sender fault (reference §2): 500 in SOAP 1.1 form,
/// 400 in SOAP 1.2 form.
pub fn sender_status(version: SoapVersion) -> StatusCode {
    if version.is_11() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// The SOAP version of a fault soapcache answers on the service's behalf
/// (502, 504, 503, ...) when the request's envelope did not say: the
/// content type's, else 1.1 (the status says what happened either way).
pub fn content_version(content: Option<SoapVersion>) -> SoapVersion {
    content.unwrap_or(SoapVersion::V11)
}

/// The fault for a request whose `wsu:Timestamp/wsu:Expires` has passed
/// (reference §11.2): SOAP 1.1 `Client` with a faultstring starting
/// `MessageExpired`, HTTP 500; SOAP 1.2 `env:Sender` with the subcode
/// `wsse:MessageExpired`, HTTP 400.
pub fn message_expired(version: SoapVersion, expires: &str) -> Fault {
    let reason =
        format!("MessageExpired: the message expired at {expires} (wsu:Timestamp/wsu:Expires)");
    if version.is_11() {
        return build(
            version,
            Culprit::Sender,
            StatusCode::INTERNAL_SERVER_ERROR,
            &reason,
        );
    }
    let reason = quick_xml::escape::escape(&reason);
    let ns = version.namespace();
    let wsse = crate::soap::addressing::WSSE;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<env:Envelope xmlns:env=\"{ns}\" xmlns:wsse=\"{wsse}\"><env:Body><env:Fault>\
<env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>wsse:MessageExpired</env:Value></env:Subcode></env:Code>\
<env:Reason><env:Text xml:lang=\"en\">{reason}</env:Text></env:Reason>\
<env:Role>soapcache</env:Role>\
</env:Fault></env:Body></env:Envelope>"
    );
    Fault {
        status: StatusCode::BAD_REQUEST,
        content_type: HeaderValue::from_static("application/soap+xml; charset=utf-8"),
        body: Bytes::from(body),
    }
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
    use crate::soap::control::inspect_response;

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
    fn an_expired_message_gets_message_expired_in_each_version() {
        let v11 = message_expired(SoapVersion::V11, "2001-01-01T00:00:00Z");
        assert_eq!(v11.status, 500);
        let text = std::str::from_utf8(&v11.body).unwrap();
        assert!(text.contains("soap:Client") && text.contains("<faultstring>MessageExpired"));
        let v12 = message_expired(SoapVersion::V12, "x");
        assert_eq!(v12.status, 400);
        let text = std::str::from_utf8(&v12.body).unwrap();
        assert!(text.contains("<env:Subcode><env:Value>wsse:MessageExpired</env:Value>"));
        assert!(inspect_response(&v12.body, &[]).unwrap().sender_fault);
    }

    #[test]
    fn bad_requests_get_the_status_of_their_version() {
        let v11 = Some(SoapVersion::V11);
        let v12 = Some(SoapVersion::V12);
        assert_eq!(bad_request(v11, None, "x").status, 500);
        assert_eq!(bad_request(v12, v11, "x").status, 400, "the envelope wins");
        assert_eq!(
            bad_request(None, v11, "x").status,
            500,
            "then the content type"
        );
        assert_eq!(bad_request(None, v12, "x").status, 400);
        let unknown = bad_request(None, None, "x");
        assert_eq!(unknown.status, 400);
        assert!(std::str::from_utf8(&unknown.body)
            .unwrap()
            .contains("env:Sender"));
        let v11 = bad_request(v11, None, "x");
        assert!(std::str::from_utf8(&v11.body)
            .unwrap()
            .contains("soap:Client"));
    }
}
