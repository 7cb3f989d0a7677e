//! Key management of the cache: the random data key, and the key file that keeps it wrapped.
//!
//! Why it exists: every chunk in the cache is encrypted under one random 32-byte [`DataKey`]. That
//! key must survive restarts, so it is stored in the cache directory in a small file named
//! [`KEY_FILE_NAME`], encrypted ("wrapped") with AES-256-GCM under a wrapping key that comes from
//! a [`KeySource`]: a [`Passphrase`] (through Argon2id) or a [`KeyFileSource`] (32 raw random
//! bytes kept somewhere else, no KDF).
//!
//! What it guarantees:
//! - The data key is never written anywhere in the clear. It, the passphrase and every derived
//!   key live in buffers that are zeroized on drop, and no `Debug` output shows them.
//! - Every byte of the key file is authenticated: the header (KDF id, Argon2 parameters, salt)
//!   is the AEAD associated data, so weakening the stored parameters makes unlocking fail. A
//!   CRC-32C over the whole file tells accidental damage ([`CacheError::KeyFileCorrupt`]) apart
//!   from a wrong passphrase ([`CacheError::WrongPassphrase`]) before any expensive KDF runs.
//! - Unlocking with a wrong passphrase or key file changes no file.
//! - Writing the key file is atomic and durable (temporary file, fsync, rename, fsync of the
//!   directory): after a crash the cache has either the old or the new key file, never a torn one.
//! - Changing the passphrase re-wraps the same data key, so the cached chunks stay readable.
//! - [`destroy_key_file`] crypto-erases the cache: without the data key no chunk can be read.
//!
//! Callers hold the cache directory lock: the functions here are not safe against two processes
//! writing the key file of one directory at the same time.
//!
//! The byte layout is documented in `docs/CACHE_FORMAT.md` ("Key file") and pinned by a golden
//! test in `cache/tests/keys.rs`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest;
use zeroize::{Zeroize, Zeroizing};

use super::cipher::{fill_random, random_nonce, NONCE_LEN, TAG_LEN};
use crate::error::{CacheError, Result};

use sealed::{Kdf, KdfSpec, WrapKey, WrappingKey};

/// Name of the key file inside the cache directory.
pub const KEY_FILE_NAME: &str = "key";
/// Name of the temporary file a new key file is written to before it is renamed over `key`.
const TMP_FILE_NAME: &str = "key.tmp";

/// Format version of the key file this build writes and reads.
pub const KEY_FILE_VERSION: u16 = 1;
/// Length in bytes of a version-1 key file.
pub const KEY_FILE_LEN: usize = OFF_CRC + 4;

const MAGIC: [u8; 4] = *b"SOXK";
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;

// Byte offsets of the version-1 layout (little endian). See docs/CACHE_FORMAT.md.
const OFF_VERSION: usize = 4; // u16
const OFF_KDF: usize = 6; // u8
const OFF_RESERVED: usize = 7; // u8, must be 0
const OFF_M_KIB: usize = 8; // u32
const OFF_T_COST: usize = 12; // u32
const OFF_P_COST: usize = 16; // u32
const OFF_SALT: usize = 20; // [u8; 16]
/// The nonce starts right after the header; every byte before it is the AEAD associated data.
const OFF_NONCE: usize = 36; // [u8; 12]
const OFF_SEALED: usize = OFF_NONCE + NONCE_LEN; // ciphertext [u8; 32] then tag [u8; 16]
const SEALED_LEN: usize = KEY_LEN + TAG_LEN;
const OFF_CRC: usize = OFF_SEALED + SEALED_LEN; // u32, CRC-32C of every byte before it

/// KDF ids stored in the key file.
const KDF_ID_ARGON2ID: u8 = 1;
const KDF_ID_RAW_KEY: u8 = 2;

/// Upper bounds on stored Argon2id parameters. They are far above anything sensible and exist so
/// that a damaged or hostile key file cannot make unlocking allocate terabytes or run for days.
const MAX_M_KIB: u32 = 4 * 1024 * 1024; // 4 GiB
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 255;

/// Largest key file read before giving up (a version-1 file is [`KEY_FILE_LEN`] bytes).
const MAX_KEY_FILE_READ: u64 = 4096;

/// Domain-separation label of [`DataKey::fingerprint`].
const FINGERPRINT_LABEL: &[u8] = b"syncoxide cache data key fingerprint v1";

// ---------------------------------------------------------------------------------------------
// Data key
// ---------------------------------------------------------------------------------------------

/// The random 256-bit key all chunks of one cache are encrypted under (through subkeys, see
/// [`crate::crypto::ChunkCipher`]). Zeroized on drop; `Debug` never shows it.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = DataKey(Zeroizing::new([0u8; KEY_LEN]));
        fill_random(&mut key.0[..]);
        key
    }

    /// A key with the given bytes (golden tests, tools). Real caches use [`DataKey::generate`].
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let key = DataKey(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// The key bytes, for deriving the chunk cipher's subkeys.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short, one-way identifier of the key (the first 8 bytes of a domain-separated SHA-256
    /// of it), to compare keys in tests and logs without handling the key itself.
    #[doc(hidden)]
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(FINGERPRINT_LABEL);
        ctx.update(&self.0[..]);
        let hash = ctx.finish();
        let mut out = [0u8; 8];
        out.copy_from_slice(&hash.as_ref()[..8]);
        out
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------
// KDF parameters
// ---------------------------------------------------------------------------------------------

/// Argon2id cost parameters used when a passphrase wraps the data key.
///
/// They only matter when a key file is written: unlocking always uses the parameters stored in
/// the key file (which are authenticated), so changing the defaults never locks anyone out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Number of passes over the memory.
    pub t_cost: u32,
    /// Number of lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// Argon2id with 64 MiB, 3 passes, 4 lanes: the second recommended setting of RFC 9106
    /// (section 4) for memory-constrained environments. Why these numbers:
    /// - 64 MiB is as much memory as we can spend: the mount process must stay under 200 MiB
    ///   resident, and the derivation runs while the chunk cache and the file system are
    ///   starting. The memory is freed (after being zeroized) as soon as the key is derived.
    /// - 3 passes bring one derivation to about 110-170 ms on the project's 2-core machines
    ///   (release build; debug builds take about 2 s): unnoticeable once per mount, yet every
    ///   passphrase guess costs an attacker as much.
    /// - 4 lanes follow the RFC. The `argon2` crate computes them one after the other, so they do
    ///   not cost more threads, and a future parallel implementation stays compatible.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };

    /// 64 KiB, 1 pass, 1 lane. **For tests only**: it offers next to no protection against
    /// passphrase guessing. Never use it for a real cache.
    pub const FAST_INSECURE: KdfParams = KdfParams {
        m_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// Checks the parameters: what Argon2id accepts (at least 1 pass, 1 to 2^24-1 lanes, at
    /// least 8 KiB of memory per lane) within this crate's sanity bounds (at most 4 GiB, 64
    /// passes, 255 lanes). The error says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        argon2_params(*self).map(|_| ())
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams::DEFAULT
    }
}

fn argon2_params(p: KdfParams) -> std::result::Result<Params, String> {
    let describe = |why: &str| {
        format!(
            "invalid Argon2id parameters (m_kib={}, t_cost={}, p_cost={}): {why}",
            p.m_kib, p.t_cost, p.p_cost
        )
    };
    if p.m_kib > MAX_M_KIB {
        return Err(describe(&format!(
            "memory above the limit of {MAX_M_KIB} KiB"
        )));
    }
    if p.t_cost > MAX_T_COST {
        return Err(describe(&format!("more than {MAX_T_COST} passes")));
    }
    if p.p_cost > MAX_P_COST {
        return Err(describe(&format!("more than {MAX_P_COST} lanes")));
    }
    Params::new(p.m_kib, p.t_cost, p.p_cost, Some(KEY_LEN)).map_err(|e| {
        describe(&format!(
            "{e} (at least 1 pass, 1 lane and 8 KiB of memory per lane are needed)"
        ))
    })
}

/// Argon2id(passphrase, salt, params) into a 32-byte wrapping key. The working memory, which
/// holds passphrase-dependent state, is zeroized before it is freed.
fn argon2id(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    p: KdfParams,
) -> std::result::Result<WrappingKey, String> {
    let params = argon2_params(p)?;
    let mut memory = Zeroizing::new(vec![Block::default(); params.block_count()]);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = WrappingKey(Zeroizing::new([0u8; KEY_LEN]));
    let started = Instant::now();
    argon
        .hash_password_into_with_memory(passphrase, salt, &mut key.0[..], &mut memory[..])
        .map_err(|e| format!("Argon2id failed: {e}"))?;
    tracing::debug!(
        m_kib = p.m_kib,
        t_cost = p.t_cost,
        p_cost = p.p_cost,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "derived the key-wrapping key from the passphrase"
    );
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Key sources
// ---------------------------------------------------------------------------------------------

/// Where the key that wraps the data key comes from.
///
/// The trait is sealed: its working methods live in a private supertrait, so that every source
/// agrees with the key file format. It is the seam for more sources: an OS keyring source
/// (Secret Service, macOS Keychain, Windows Credential Manager) would hold 32 random bytes in the
/// keyring, get a KDF id of its own in the key file, and implement the private supertrait here;
/// nothing else changes.
pub trait KeySource: Send + Sync + WrapKey {
    /// What the user would call this source: `"passphrase"`, `"key file"`. Used in
    /// [`CacheError::KeySourceMismatch`] messages.
    fn kind(&self) -> &'static str;
}

mod sealed {
    use super::{KdfParams, Zeroizing, KEY_LEN, SALT_LEN};
    use crate::error::Result;
    use std::path::Path;

    /// How the wrapping key is obtained; stored in the key file as the KDF id.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kdf {
        /// Argon2id over a passphrase (id 1).
        Argon2id,
        /// The 32 bytes of a key file are the wrapping key (id 2).
        RawKey,
    }

    impl Kdf {
        /// The [`super::KeySource::kind`] of the sources using this KDF.
        pub fn source_kind(self) -> &'static str {
            match self {
                Kdf::Argon2id => "passphrase",
                Kdf::RawKey => "key file",
            }
        }
    }

    /// The KDF part of a key file header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct KdfSpec {
        pub kdf: Kdf,
        /// All zero for [`Kdf::RawKey`].
        pub params: KdfParams,
        /// All zero for [`Kdf::RawKey`].
        pub salt: [u8; SALT_LEN],
    }

    /// The key that wraps the data key. Zeroized on drop.
    pub struct WrappingKey(pub Zeroizing<[u8; KEY_LEN]>);

    /// The working part of [`super::KeySource`], private so that the trait stays sealed.
    pub trait WrapKey {
        /// The KDF this source uses.
        fn kdf(&self) -> Kdf;
        /// A fresh KDF spec for writing a new key file (a new random salt for passphrases).
        fn new_spec(&self) -> KdfSpec;
        /// The wrapping key for `spec` (as stored in, or about to be written to, the key file of
        /// the cache in `dir`). `spec.kdf` equals `self.kdf()`.
        fn wrapping_key(&self, spec: &KdfSpec, dir: &Path) -> Result<WrappingKey>;
    }
}

/// A passphrase typed by the user. The wrapping key is Argon2id(passphrase, salt, params) with a
/// random salt stored in the key file.
///
/// The passphrase is used as the UTF-8 bytes given, without any normalization or trimming:
/// callers reading it from a terminal or file strip the line ending themselves. Zeroized on drop;
/// `Debug` never shows it.
pub struct Passphrase {
    secret: Zeroizing<String>,
    params: KdfParams,
}

impl Passphrase {
    /// A passphrase that writes key files with `params` (unlocking always uses the stored ones).
    pub fn new(passphrase: impl Into<String>, params: KdfParams) -> Self {
        Passphrase {
            secret: Zeroizing::new(passphrase.into()),
            params,
        }
    }

    /// The same passphrase, writing key files with `params`.
    pub fn with_params(mut self, params: KdfParams) -> Self {
        self.params = params;
        self
    }

    /// The parameters new key files are written with.
    pub fn params(&self) -> KdfParams {
        self.params
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Passphrase::new(s, KdfParams::DEFAULT)
    }
}

impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Passphrase::new(s, KdfParams::DEFAULT)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl KeySource for Passphrase {
    fn kind(&self) -> &'static str {
        Kdf::Argon2id.source_kind()
    }
}

impl WrapKey for Passphrase {
    fn kdf(&self) -> Kdf {
        Kdf::Argon2id
    }

    fn new_spec(&self) -> KdfSpec {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        KdfSpec {
            kdf: Kdf::Argon2id,
            params: self.params,
            salt,
        }
    }

    fn wrapping_key(&self, spec: &KdfSpec, _dir: &Path) -> Result<WrappingKey> {
        argon2id(self.secret.as_bytes(), &spec.salt, spec.params)
            .map_err(|reason| CacheError::InvalidKdfParams { reason })
    }
}

/// A file holding the wrapping key itself: exactly 32 random bytes, or those bytes as 64 hex
/// characters with an optional line ending. No KDF is applied: the bytes are the key, so they must
/// come from a random source (see [`generate_key_file`]).
///
/// The file is read each time a key is needed. It is refused ([`CacheError::BadKeyFile`]) when
/// it has another size or format, is all zero bytes, is not a regular file, or (on Unix) can be
/// read or written by group or others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileSource {
    path: PathBuf,
}

impl KeyFileSource {
    /// A source reading `path` (not read until a key is needed).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KeyFileSource { path: path.into() }
    }

    /// Writes a new random key file at `path` (see [`generate_key_file`]) and returns a source
    /// reading it.
    pub fn generate(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        generate_key_file(&path)?;
        Ok(KeyFileSource { path })
    }

    /// The path of the key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bad(&self, reason: impl Into<String>) -> CacheError {
        CacheError::BadKeyFile {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Reads and checks the file; returns the 32 key bytes.
    fn read_key(&self) -> Result<WrappingKey> {
        let path = &self.path;
        // Looked at before opening too: opening a FIFO or a device could block or read forever.
        match fs::metadata(path) {
            Ok(meta) if !meta.is_file() => return Err(self.bad("it is not a regular file")),
            Ok(_) => {}
            Err(e) => return Err(CacheError::io("stat key file", path, e)),
        }
        let mut file = File::open(path).map_err(|e| CacheError::io("open key file", path, e))?;
        // Checked on the open file, so the checks and the read see the same file.
        let meta = file
            .metadata()
            .map_err(|e| CacheError::io("stat key file", path, e))?;
        if !meta.is_file() {
            return Err(self.bad("it is not a regular file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(self.bad(format!(
                    "it can be read or written by group or others (mode {:04o}); restrict it to \
                     its owner with `chmod 600 {}`",
                    mode & 0o7777,
                    path.display()
                )));
            }
        }
        const WHAT_IT_MUST_BE: &str = "a key file must hold exactly 32 random bytes, or 64 hex \
             characters optionally followed by a newline (create one with \
             `(umask 077; head -c 32 /dev/urandom > FILE)`)";
        let len = meta.len();
        if !matches!(len, 32 | 64 | 65 | 66) {
            return Err(self.bad(format!("it is {len} bytes long; {WHAT_IT_MUST_BE}")));
        }

        // Read into a fixed, zeroized buffer (no reallocation leaving copies behind).
        let mut buf = Zeroizing::new([0u8; 67]);
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CacheError::io("read key file", path, e)),
            }
        }
        let content = &buf[..n];
        let mut key = WrappingKey(Zeroizing::new([0u8; KEY_LEN]));
        match n {
            32 => key.0.copy_from_slice(content),
            64..=66 => {
                let hex = match content {
                    [hex @ .., b'\r', b'\n'] | [hex @ .., b'\n'] => hex,
                    hex => hex,
                };
                if hex.len() != 2 * KEY_LEN || !decode_hex(hex, &mut key.0) {
                    return Err(self.bad(format!(
                        "its {n} bytes are not 64 hex characters; {WHAT_IT_MUST_BE}"
                    )));
                }
            }
            _ => {
                return Err(self.bad(format!(
                    "it is {n} bytes long (it changed while being read); {WHAT_IT_MUST_BE}"
                )))
            }
        }
        if key.0.iter().all(|&b| b == 0) {
            return Err(self.bad(format!(
                "it is all zero bytes, not a random key; {WHAT_IT_MUST_BE}"
            )));
        }
        Ok(key)
    }
}

fn decode_hex(hex: &[u8], out: &mut [u8; KEY_LEN]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *o = (hi << 4) | lo,
            _ => return false,
        }
    }
    true
}

impl KeySource for KeyFileSource {
    fn kind(&self) -> &'static str {
        Kdf::RawKey.source_kind()
    }
}

impl WrapKey for KeyFileSource {
    fn kdf(&self) -> Kdf {
        Kdf::RawKey
    }

    fn new_spec(&self) -> KdfSpec {
        KdfSpec {
            kdf: Kdf::RawKey,
            params: KdfParams {
                m_kib: 0,
                t_cost: 0,
                p_cost: 0,
            },
            salt: [0u8; SALT_LEN],
        }
    }

    fn wrapping_key(&self, _spec: &KdfSpec, _dir: &Path) -> Result<WrappingKey> {
        self.read_key()
    }
}

/// Writes a new key file for [`KeyFileSource`] at `path`: 32 random bytes, mode 0600, fsynced
/// (file and directory). Refuses to overwrite an existing file ([`CacheError::BadKeyFile`]): it
/// may be the only way into a cache.
pub fn generate_key_file(path: &Path) -> Result<()> {
    let mut file = match create_private(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CacheError::BadKeyFile {
                path: path.to_path_buf(),
                reason: "it already exists; refusing to overwrite a key file (it may be the only \
                         way to open a cache): choose another path, or move the old file away \
                         first"
                    .to_string(),
            })
        }
        Err(e) => return Err(CacheError::io("create key file", path, e)),
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(&mut key[..]);
    let written = file.write_all(&key[..]).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(CacheError::io("write key file", path, e));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

// ---------------------------------------------------------------------------------------------
// Key file encoding
// ---------------------------------------------------------------------------------------------

/// The version-1 key file wrapping `data_key` under `wrapping` with `nonce`.
fn encode(
    data_key: &DataKey,
    spec: &KdfSpec,
    wrapping: &WrappingKey,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let mut out = Zeroizing::new([0u8; KEY_FILE_LEN]);
    out[..OFF_VERSION].copy_from_slice(&MAGIC);
    out[OFF_VERSION..OFF_KDF].copy_from_slice(&KEY_FILE_VERSION.to_le_bytes());
    out[OFF_KDF] = match spec.kdf {
        Kdf::Argon2id => KDF_ID_ARGON2ID,
        Kdf::RawKey => KDF_ID_RAW_KEY,
    };
    out[OFF_RESERVED] = 0;
    out[OFF_M_KIB..OFF_T_COST].copy_from_slice(&spec.params.m_kib.to_le_bytes());
    out[OFF_T_COST..OFF_P_COST].copy_from_slice(&spec.params.t_cost.to_le_bytes());
    out[OFF_P_COST..OFF_SALT].copy_from_slice(&spec.params.p_cost.to_le_bytes());
    out[OFF_SALT..OFF_NONCE].copy_from_slice(&spec.salt);
    out[OFF_NONCE..OFF_SEALED].copy_from_slice(&nonce);

    let (header, rest) = out.split_at_mut(OFF_SEALED);
    let aad = &header[..OFF_NONCE];
    let (ciphertext, rest) = rest.split_at_mut(KEY_LEN);
    ciphertext.copy_from_slice(data_key.expose());
    let key = aead_key(wrapping);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            ciphertext,
        )
        .unwrap_or_else(|_| unreachable!("GCM seals 32 bytes"));
    rest[..TAG_LEN].copy_from_slice(tag.as_ref());

    let crc = crc32c::crc32c(&out[..OFF_CRC]);
    out[OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    out.to_vec()
}

fn aead_key(wrapping: &WrappingKey) -> LessSafeKey {
    let unbound = UnboundKey::new(&AES_256_GCM, &wrapping.0[..])
        .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
    LessSafeKey::new(unbound)
}

/// A parsed (not yet opened) key file.
struct Parsed {
    spec: KdfSpec,
    aad: [u8; OFF_NONCE],
    nonce: [u8; NONCE_LEN],
    sealed: [u8; SEALED_LEN],
}

fn le_u32(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

/// Parses the key file `file` of the cache in `dir`. Checks structure only; the AEAD tag is
/// checked when the wrapped key is opened.
fn parse(bytes: &[u8], dir: &Path, file: &Path) -> Result<Parsed> {
    let corrupt = |reason: String| CacheError::KeyFileCorrupt {
        path: file.to_path_buf(),
        reason,
    };
    if bytes.len() < OFF_KDF {
        return Err(corrupt(format!(
            "it is {} bytes long, a key file is {KEY_FILE_LEN} bytes",
            bytes.len()
        )));
    }
    if bytes[..OFF_VERSION] != MAGIC {
        return Err(corrupt(
            "it does not start with \"SOXK\" (this is not a syncoxide key file)".to_string(),
        ));
    }
    let version = u16::from_le_bytes([bytes[OFF_VERSION], bytes[OFF_VERSION + 1]]);
    if version != KEY_FILE_VERSION {
        return Err(CacheError::UnsupportedFormat {
            what: "key file",
            path: dir.to_path_buf(),
            found: version,
            supported: KEY_FILE_VERSION,
        });
    }
    if bytes.len() != KEY_FILE_LEN {
        return Err(corrupt(format!(
            "it is {} bytes long, a version-{KEY_FILE_VERSION} key file is {KEY_FILE_LEN} bytes",
            bytes.len()
        )));
    }
    let stored_crc = le_u32(bytes, OFF_CRC);
    if crc32c::crc32c(&bytes[..OFF_CRC]) != stored_crc {
        return Err(corrupt(
            "its checksum does not match (it was damaged on disk)".to_string(),
        ));
    }
    if bytes[OFF_RESERVED] != 0 {
        return Err(corrupt(format!(
            "reserved byte is {}, not 0",
            bytes[OFF_RESERVED]
        )));
    }
    let params = KdfParams {
        m_kib: le_u32(bytes, OFF_M_KIB),
        t_cost: le_u32(bytes, OFF_T_COST),
        p_cost: le_u32(bytes, OFF_P_COST),
    };
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&bytes[OFF_SALT..OFF_NONCE]);
    let kdf = match bytes[OFF_KDF] {
        KDF_ID_ARGON2ID => {
            argon2_params(params).map_err(corrupt)?;
            Kdf::Argon2id
        }
        KDF_ID_RAW_KEY => {
            if params.m_kib != 0 || params.t_cost != 0 || params.p_cost != 0 || salt != [0; 16] {
                return Err(corrupt(
                    "a raw-key entry has non-zero KDF parameters or salt".to_string(),
                ));
            }
            Kdf::RawKey
        }
        other => return Err(corrupt(format!("unknown key derivation id {other}"))),
    };
    let mut aad = [0u8; OFF_NONCE];
    aad.copy_from_slice(&bytes[..OFF_NONCE]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[OFF_NONCE..OFF_SEALED]);
    let mut sealed = [0u8; SEALED_LEN];
    sealed.copy_from_slice(&bytes[OFF_SEALED..OFF_CRC]);
    Ok(Parsed {
        spec: KdfSpec { kdf, params, salt },
        aad,
        nonce,
        sealed,
    })
}

/// Opens the wrapped key; `None` if the wrapping key is wrong or the file was tampered with.
fn open(parsed: &Parsed, wrapping: &WrappingKey) -> Option<DataKey> {
    let key = aead_key(wrapping);
    let mut buf = Zeroizing::new(parsed.sealed);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(parsed.nonce),
            Aad::from(&parsed.aad[..]),
            &mut buf[..],
        )
        .ok()?;
    if plain.len() != KEY_LEN {
        return None;
    }
    let mut data_key = DataKey(Zeroizing::new([0u8; KEY_LEN]));
    data_key.0.copy_from_slice(plain);
    Some(data_key)
}

/// Wraps `data_key` under a fresh spec from `source` for the cache in `dir`.
fn seal_with_source(
    data_key: &DataKey,
    source: &dyn KeySource,
    dir: &Path,
    salt: Option<[u8; SALT_LEN]>,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let mut spec = source.new_spec();
    if spec.kdf == Kdf::Argon2id {
        if let Some(salt) = salt {
            spec.salt = salt;
        }
        // Refuse to write parameters that this build would later refuse to read.
        argon2_params(spec.params).map_err(|reason| CacheError::InvalidKdfParams { reason })?;
    }
    let wrapping = source.wrapping_key(&spec, dir)?;
    Ok(encode(data_key, &spec, &wrapping, nonce))
}

/// The key file bytes wrapping `data_key` under `source` with the given salt (ignored for
/// key-file sources, whose salt is all zero) and nonce. Deterministic, for golden tests; real
/// key files always get a fresh random salt and nonce.
#[doc(hidden)]
pub fn encode_key_file_for_test(
    data_key: &DataKey,
    source: &dyn KeySource,
    salt: [u8; 16],
    nonce: [u8; 12],
) -> Result<Vec<u8>> {
    seal_with_source(data_key, source, Path::new("."), Some(salt), nonce)
}

// ---------------------------------------------------------------------------------------------
// Key file operations
// ---------------------------------------------------------------------------------------------

/// True if the cache directory `dir` has a key file (a cache was created there).
pub fn key_file_exists(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(KEY_FILE_NAME)).is_ok()
}

/// What a key file says about itself, readable without any key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFileInfo {
    /// The [`KeySource::kind`] that unlocks it: `"passphrase"` or `"key file"` (so a front end
    /// knows whether to prompt for a passphrase).
    pub source_kind: &'static str,
    /// The stored Argon2id parameters, for a passphrase-wrapped key (so a front end can offer to
    /// re-wrap under stronger ones with [`change_key`]).
    pub kdf_params: Option<KdfParams>,
}

/// Reads the header of the key file of `dir` and checks its structure and checksum (not the
/// key: no KDF runs). Errors as [`unlock`] except the key errors.
pub fn key_file_info(dir: &Path) -> Result<KeyFileInfo> {
    let file = dir.join(KEY_FILE_NAME);
    let parsed = parse(&read_key_file(&file)?, dir, &file)?;
    Ok(KeyFileInfo {
        source_kind: parsed.spec.kdf.source_kind(),
        kdf_params: match parsed.spec.kdf {
            Kdf::Argon2id => Some(parsed.spec.params),
            Kdf::RawKey => None,
        },
    })
}

/// Unlocks the existing key file of `dir`, or creates one (with a new random data key) if there
/// is none.
///
/// Creating a key file where a previous one was lost makes any chunks left in the directory
/// unreadable; they fail their integrity check and are fetched again.
pub fn load_or_create(dir: &Path, source: &dyn KeySource) -> Result<DataKey> {
    let file = dir.join(KEY_FILE_NAME);
    match fs::symlink_metadata(&file) {
        Ok(_) => return unlock(dir, source),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CacheError::io("stat key file", &file, e)),
    }
    let data_key = DataKey::generate();
    let bytes = seal_with_source(&data_key, source, dir, None, random_nonce())?;
    write_key_file(dir, &bytes, false)?;
    tracing::info!(dir = %dir.display(), source = source.kind(), "created a new cache key");
    Ok(data_key)
}

/// Unlocks the key file of `dir` with `source`. Errors: [`CacheError::Io`] (`NotFound` if there is
/// no key file), [`CacheError::KeyFileCorrupt`], [`CacheError::UnsupportedFormat`],
/// [`CacheError::KeySourceMismatch`], [`CacheError::BadKeyFile`], or
/// [`CacheError::WrongPassphrase`]. Never changes any file.
pub fn unlock(dir: &Path, source: &dyn KeySource) -> Result<DataKey> {
    let file = dir.join(KEY_FILE_NAME);
    let bytes = read_key_file(&file)?;
    let parsed = parse(&bytes, dir, &file)?;
    if parsed.spec.kdf != source.kdf() {
        return Err(CacheError::KeySourceMismatch {
            path: dir.to_path_buf(),
            expected: parsed.spec.kdf.source_kind(),
            given: source.kind(),
        });
    }
    let wrapping = source.wrapping_key(&parsed.spec, dir)?;
    match open(&parsed, &wrapping) {
        Some(key) => Ok(key),
        None => Err(CacheError::WrongPassphrase {
            path: dir.to_path_buf(),
        }),
    }
}

/// Re-wraps the data key of `dir` under `new` (new salt and nonce, `new`'s parameters). The data
/// key is unchanged, so the cached chunks stay readable. Nothing changes if `old` does not
/// unlock the key file or `new` cannot give a key.
///
/// The previous key file's blocks are overwritten with random bytes after the new file is in
/// place (where the file system allows). This does not revoke an old passphrase from someone who
/// copied the old key file: the data key is the same. To revoke, wipe the cache
/// ([`destroy_key_file`]).
pub fn change_key(dir: &Path, old: &dyn KeySource, new: &dyn KeySource) -> Result<()> {
    let data_key = unlock(dir, old)?;
    let bytes = seal_with_source(&data_key, new, dir, None, random_nonce())?;
    write_key_file(dir, &bytes, true)?;
    tracing::info!(dir = %dir.display(), source = new.kind(), "re-wrapped the cache key");
    Ok(())
}

/// Crypto-erases the cache in `dir`: overwrites the key file (and a leftover `key.tmp`) with
/// random bytes of the same length, fsyncs it, unlinks it and fsyncs the directory. Without the
/// data key no chunk can be decrypted, so the chunk files need not be overwritten. `Ok` if there
/// is no key file.
///
/// On copy-on-write file systems (btrfs, ZFS) and flash storage the old blocks may survive the
/// overwrite; they still hold only the wrapped key, protected by the passphrase or key file.
pub fn destroy_key_file(dir: &Path) -> Result<()> {
    let mut removed = false;
    for name in [TMP_FILE_NAME, KEY_FILE_NAME] {
        removed |= erase_file(&dir.join(name))?;
    }
    if removed {
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), "crypto-erased the cache key");
    }
    Ok(())
}

/// Overwrites `path` with random bytes, fsyncs and unlinks it. `Ok(false)` if it does not exist.
fn erase_file(path: &Path) -> Result<bool> {
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CacheError::io("open key file to erase it", path, e)),
    };
    overwrite_with_random(&mut file).map_err(|e| CacheError::io("overwrite key file", path, e))?;
    drop(file);
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(CacheError::io("remove key file", path, e)),
    }
}

/// Overwrites the whole of `file` in place with random bytes and fsyncs it.
fn overwrite_with_random(file: &mut File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut buf = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        fill_random(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn read_key_file(file: &Path) -> Result<Vec<u8>> {
    let f = File::open(file).map_err(|e| CacheError::io("open key file", file, e))?;
    let mut bytes = Vec::with_capacity(KEY_FILE_LEN);
    f.take(MAX_KEY_FILE_READ + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::io("read key file", file, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE_READ {
        return Err(CacheError::KeyFileCorrupt {
            path: file.to_path_buf(),
            reason: format!("it is larger than {MAX_KEY_FILE_READ} bytes"),
        });
    }
    Ok(bytes)
}

/// Creates `path` with O_EXCL, readable and writable by its owner only.
fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Atomically and durably replaces the key file of `dir` with `bytes`. With `erase_old`, the
/// previous key file's blocks are overwritten with random bytes once the new one is in place.
fn write_key_file(dir: &Path, bytes: &[u8], erase_old: bool) -> Result<()> {
    let tmp = dir.join(TMP_FILE_NAME);
    let dst = dir.join(KEY_FILE_NAME);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(CacheError::io("remove stale key file", &tmp, e)),
    }
    let mut file = create_private(&tmp).map_err(|e| CacheError::io("create key file", &tmp, e))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(CacheError::io("write key file", &tmp, e));
    }

    // Keep the old file open across the rename so its blocks can be scrubbed afterwards. Only on
    // Unix: elsewhere an open file cannot be renamed over.
    let old = if erase_old && cfg!(unix) {
        OpenOptions::new().write(true).open(&dst).ok()
    } else {
        None
    };
    if let Err(e) = fs::rename(&tmp, &dst) {
        drop(old);
        let _ = fs::remove_file(&tmp);
        return Err(CacheError::io("rename key file", &dst, e));
    }
    sync_dir(dir)?;
    if let Some(mut old) = old {
        if let Err(e) = overwrite_with_random(&mut old) {
            tracing::warn!(dir = %dir.display(), error = %e,
                "could not overwrite the previous key file's blocks (the new key file is in place)");
        }
    }
    Ok(())
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CacheError::io("sync directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
