//! Cryptography of the cache: the chunk cipher (AES-256-GCM, keyed names) and key management
//! (a random data key wrapped by a key from a [`KeySource`]).

pub mod cipher;
pub mod keys;

pub use cipher::{ChunkCipher, NameHasher, RecordCipher};
pub use keys::{DataKey, KdfParams, KeyFileSource, KeySource, Passphrase};
