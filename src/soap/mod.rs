//! SOAP messages: the envelope versions, the request scan, multipart
//! roots, `CacheControl` blocks and the faults soapcache answers itself.

pub mod addressing;
pub mod control;
pub mod envelope;
pub mod fault;
pub mod multipart;

pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const SOAP12_DRAFT_NS: &str = "http://www.w3.org/2001/12/soap-envelope";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SoapVersion {
    V11,
    V12,
    /// The 2001/12 working-draft namespace used in early SOAP 1.2 examples;
    /// it is answered like SOAP 1.2.
    Draft2001,
}

impl SoapVersion {
    pub fn from_namespace(ns: &[u8]) -> Option<SoapVersion> {
        match ns {
            n if n == SOAP11_NS.as_bytes() => Some(SoapVersion::V11),
            n if n == SOAP12_NS.as_bytes() => Some(SoapVersion::V12),
            n if n == SOAP12_DRAFT_NS.as_bytes() => Some(SoapVersion::Draft2001),
            _ => None,
        }
    }

    pub fn namespace(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_NS,
            SoapVersion::V12 => SOAP12_NS,
            SoapVersion::Draft2001 => SOAP12_DRAFT_NS,
        }
    }

    pub fn is_11(self) -> bool {
        self == SoapVersion::V11
    }
}
