//! Cache keys.

pub mod canonical;
pub mod lookup;
pub mod selector;

use smol_str::SmolStr;

use crate::soap::envelope::OperationElement;
use selector::{Selector, SelectorError};

/// Why a request's selector value could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key selection failed: {0}")]
    Selector(#[from] SelectorError),
    #[error("request digest failed: {0}")]
    Digest(#[from] quick_xml::Error),
}

/// A request's selector value (reference §3): the policy's `key`
/// expressions when its operation has them, else the digest of the
/// canonical operation element. The proxy and `explain` both ask here.
pub fn selector_value(
    policy_key: Option<&Selector>,
    op: &OperationElement<'_>,
) -> Result<SmolStr, KeyError> {
    match policy_key {
        Some(selector) => Ok(SmolStr::from(selector.select(op)?)),
        None => Ok(canonical::digest(op)?),
    }
}
