//! Operating soapcache.

pub mod access_log;
pub mod admin;
pub mod metrics;
