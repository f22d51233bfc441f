//! Starting, running and stopping soapcache.

pub mod cli;
pub mod demo;
pub mod explain;
pub mod server;
pub mod shutdown;
pub mod state;
