//! The encrypted, size-bounded, persistent chunk cache of syncoxide.
//!
//! It stores chunks of remote objects by an opaque [`ChunkKey`] (object id, provider version,
//! chunk index), encrypted with AES-256-GCM under a data key that is wrapped by a key derived
//! with Argon2id from a passphrase (or another [`KeySource`]). It knows nothing of FUSE,
//! providers or inodes.
//!
//! - [`ChunkCache`] (store.rs): get/put/pin/unpin/mark_clean, the hard byte limit, eviction.
//! - [`format`]: the chunk file format; [`index`]: the persisted eviction order;
//!   [`crypto`]: cipher and keys; [`layout`]: the directory and its repair at open.
//! - [`SingleFlight`]: one fetch for concurrent misses of one chunk.
//!
//! The on-disk formats are documented in `docs/CACHE_FORMAT.md`.
#![warn(clippy::unwrap_used)]

pub mod crypto;
pub mod error;
pub mod evict;
pub mod format;
pub mod health;
pub mod index;
pub mod key;
pub mod layout;
pub mod singleflight;
pub mod store;

pub use crypto::{DataKey, KdfParams, KeyFileSource, KeySource, Passphrase};
pub use error::{CacheError, Result};
pub use evict::EvictionKind;
pub use health::Health;
pub use key::{ChunkKey, ChunkName, ObjectId, Version};
pub use layout::{is_cache_dir, ChunkState};
pub use singleflight::SingleFlight;
pub use store::{CacheConfig, CacheLimit, ChunkCache, PutKind, PutOutcome, Stats, Usage};
