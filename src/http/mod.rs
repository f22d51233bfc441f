//! HTTP on both sides of the proxy.

pub mod body;
pub mod client;
pub mod headers;
pub mod listener;
pub mod request_body;
pub mod tls;
