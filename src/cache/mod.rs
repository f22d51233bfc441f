//! The cache: what an entry is, where entries live (the memory tier, and
//! the tier trait a shared tier implements), whether a request may use or
//! fill it, how long an entry lives, and the two things that keep misses
//! cheap (the memo of repeated bodies, and request coalescing).

pub mod coalesce;
pub mod decision;
pub mod entry;
pub mod invalidate;
pub mod lifetime;
pub mod memo;
pub mod memory;
pub mod shared;
pub mod tier;
