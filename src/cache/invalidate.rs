//! `[[invalidate]]`: a write operation that succeeded purges the entries
//! its policy targets, whether it was forwarded at once or delivered from
//! the queue later.

use crate::policy::Service;
use crate::soap::envelope::OperationElement;

use super::tier::Tiers;

/// Purges what `op`'s `[[invalidate]]` rule of `service` names, if it has
/// one; how many entries went.
pub async fn after_write(tiers: &Tiers, service: &Service, op: &OperationElement<'_>) -> u64 {
    let Some(invalidation) = service.invalidation(&op.name) else {
        return 0;
    };
    let key = match invalidation.key.select(op) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(service = %service.name, "invalidation key selection failed: {e}");
            return 0;
        }
    };
    let mut purged = 0;
    for target in &invalidation.targets {
        let operation = target.to_string();
        purged += tiers
            .purge(&key, Some(&service.name), Some(&operation))
            .await;
    }
    tracing::info!(service = %service.name, key = %key, purged, "invalidated by {}", op.name.local);
    purged
}
