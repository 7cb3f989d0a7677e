//! What a file's bytes are made of: chunks of a remote version (the *base*), chunks written
//! locally (by *generation*), and holes. This is what makes write-back, crash replay and
//! conditional upload exact.
//!
//! - Chunk `i` covers bytes `[i * chunk_size, (i + 1) * chunk_size)`.
//! - `local[i] = g`: the chunk was written locally in generation `g`; its bytes are the cache
//!   chunk `(object, "l<g>", i)` (dirty until uploaded). A chunk file holds at most
//!   `chunk_size` bytes; bytes past its end (up to the file size) read as zeros.
//! - else, if `i * chunk_size < base.len`: the chunk comes from the base version (bytes past
//!   `base.len` read as zeros: the file was truncated since); cached as `(object, "r<v>", i)`,
//!   or, after our own upload, also as an alias key in `alias`.
//! - else: a hole (zeros).
//!
//! Generations make snapshots immutable: a commit (close, fsync) records the content as it is and
//! bumps the generation, so later writes go to new chunk keys and the commit's chunks stay as
//! they were until its upload is done. See `docs/WAL_FORMAT.md` for how commits are journaled.

use std::collections::BTreeMap;

use cache::{ChunkKey, ObjectId, Version};

/// The remote content a file is based on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub version: Version,
    /// Bytes of the base still part of the file (the remote size, or less after a truncate).
    pub len: u64,
    /// Size of the remote object.
    pub size: u64,
}

/// Where the bytes of one chunk come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkSrc {
    /// Written locally in this generation.
    Local(u64),
    /// From the base version; `alias` is a local generation whose chunk holds the same bytes.
    Base { alias: Option<u64> },
    /// Zeros.
    Hole,
}

/// A file's content map.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Content {
    pub size: u64,
    pub base: Option<Base>,
    /// Chunks written locally, by generation.
    pub local: BTreeMap<u64, u64>,
    /// Base chunks also cached under a local generation's key (our own upload of them).
    pub alias: BTreeMap<u64, u64>,
    /// The generation new writes go to.
    pub gen: u64,
}

impl Content {
    /// Content of a remote file at `version`.
    pub fn remote(version: Version, size: u64) -> Self {
        Content {
            size,
            base: Some(Base {
                version,
                len: size,
                size,
            }),
            ..Content::default()
        }
    }

    /// Whether anything was written locally (the file differs from its base).
    pub fn is_modified(&self) -> bool {
        !self.local.is_empty()
            || match &self.base {
                Some(b) => b.len != b.size || self.size != b.size,
                None => true,
            }
    }

    pub fn src(&self, index: u64, chunk_size: u64) -> ChunkSrc {
        if index.saturating_mul(chunk_size) >= self.size {
            return ChunkSrc::Hole;
        }
        if let Some(&g) = self.local.get(&index) {
            return ChunkSrc::Local(g);
        }
        match &self.base {
            Some(b) if index * chunk_size < b.len => ChunkSrc::Base {
                alias: self.alias.get(&index).copied(),
            },
            _ => ChunkSrc::Hole,
        }
    }

    /// Sets the size. Shrinking drops whole chunks past the end and clamps the base; the caller
    /// rewrites a partial last local chunk (it must read as zeros past the new end).
    pub fn truncate(&mut self, size: u64, chunk_size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(chunk_size);
            self.local.split_off(&first_gone);
            self.alias.split_off(&first_gone);
            if let Some(b) = &mut self.base {
                b.len = b.len.min(size);
            }
        }
        self.size = size;
    }

    /// Every local generation chunk this content references: `(index, generation)`.
    pub fn local_chunks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.local
            .iter()
            .map(|(&i, &g)| (i, g))
            .chain(self.alias.iter().map(|(&i, &g)| (i, g)))
    }

    /// After the snapshot `uploaded` became remote version `version`, rebase this (current)
    /// content on it: the base becomes `version`, and every chunk that is still exactly what
    /// the snapshot had is now provided by the base (a local chunk of the snapshot becomes a
    /// cached alias of it, so it is no longer dirty). Chunks written since stay local. The base
    /// stops before the first chunk the snapshot had data in that is now a hole (truncated
    /// since), so truncated bytes never come back.
    pub fn rebase(&mut self, uploaded: &Content, version: Version, chunk_size: u64) {
        let cs = chunk_size;
        let limit = self.size.min(uploaded.size);
        let mut len = limit;
        let mut alias = BTreeMap::new();
        for i in 0..limit.div_ceil(cs) {
            // `uploaded` is an earlier state of this content (later states only add local
            // chunks and truncate), so a chunk not written since has the same bytes in both.
            let here = self.base.as_ref().map_or(0, |b| b.len);
            match (self.src(i, cs), uploaded.src(i, cs)) {
                (ChunkSrc::Local(g), ChunkSrc::Local(h)) if g == h => {
                    alias.insert(i, g);
                }
                // Written since the snapshot: stays local.
                (ChunkSrc::Local(_), _) => {}
                // Not written since: the new version has these bytes. A cached copy of them
                // (an alias, or the snapshot's local chunk) stays usable.
                (ChunkSrc::Base { alias: a }, ChunkSrc::Local(h)) => {
                    alias.insert(i, a.unwrap_or(h));
                    // Truncated inside this chunk since the snapshot: the rest reads as zeros.
                    if here < uploaded.size.min((i + 1) * cs) {
                        len = len.min(here);
                    }
                }
                (ChunkSrc::Base { alias: a }, ChunkSrc::Base { .. }) => {
                    if let Some(g) = a {
                        alias.insert(i, g);
                    }
                    let there = uploaded.base.as_ref().map_or(0, |b| b.len);
                    if here < there.min((i + 1) * cs) {
                        len = len.min(here);
                    }
                }
                (ChunkSrc::Hole, ChunkSrc::Hole) => {}
                // Truncated since: those bytes must stay zeros.
                (ChunkSrc::Hole, _) | (ChunkSrc::Base { .. }, ChunkSrc::Hole) => {
                    len = len.min(i * cs);
                    break;
                }
            }
        }
        alias.retain(|i, _| i * cs < len);
        for i in alias.keys() {
            self.local.remove(i);
        }
        self.alias = alias;
        self.base = Some(Base {
            version,
            len,
            size: uploaded.size,
        });
    }
}

/// Cache key of chunk `index` of object `object` for a source.
pub fn local_key(object: &ObjectId, gen: u64, index: u64) -> ChunkKey {
    ChunkKey {
        object_id: object.clone(),
        version: Version::from(format!("l{gen}")),
        index,
    }
}

/// Cache key of chunk `index` of remote version `version` of `object`.
pub fn remote_key(object: &ObjectId, version: &Version, index: u64) -> ChunkKey {
    let mut v = Vec::with_capacity(1 + version.as_bytes().len());
    v.push(b'r');
    v.extend_from_slice(version.as_bytes());
    ChunkKey {
        object_id: object.clone(),
        version: Version::from(v),
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 100;

    #[test]
    fn sources_of_a_remote_file_with_local_writes() {
        let mut c = Content::remote(Version::from("v1"), 250);
        assert!(!c.is_modified());
        c.local.insert(1, 7);
        assert_eq!(c.src(0, CS), ChunkSrc::Base { alias: None });
        assert_eq!(c.src(1, CS), ChunkSrc::Local(7));
        assert_eq!(c.src(2, CS), ChunkSrc::Base { alias: None });
        assert_eq!(c.src(3, CS), ChunkSrc::Hole);
        c.truncate(120, CS);
        assert_eq!(c.base.as_ref().unwrap().len, 120);
        c.truncate(500, CS);
        assert_eq!(
            c.src(2, CS),
            ChunkSrc::Hole,
            "truncated base bytes never come back"
        );
        assert_eq!(c.src(1, CS), ChunkSrc::Local(7));
        c.truncate(50, CS);
        assert!(c.local.is_empty());
        assert!(c.is_modified());
    }

    #[test]
    fn rebase_after_an_unchanged_upload_makes_the_file_clean() {
        let mut c = Content {
            size: 150,
            gen: 2,
            ..Content::default()
        };
        c.local.insert(0, 1);
        c.local.insert(1, 1);
        let snap = c.clone();
        c.rebase(&snap, Version::from("v2"), CS);
        assert!(!c.is_modified());
        assert_eq!(c.src(1, CS), ChunkSrc::Base { alias: Some(1) });
        assert_eq!(c.local_chunks().count(), 2);
    }

    #[test]
    fn rebase_after_later_writes_keeps_them_local() {
        let mut c = Content::remote(Version::from("v1"), 300);
        c.local.insert(0, 1);
        let snap = c.clone();
        c.local.insert(2, 2);
        c.rebase(&snap, Version::from("v2"), CS);
        assert!(c.is_modified());
        assert_eq!(c.base.as_ref().unwrap().version, Version::from("v2"));
        assert_eq!(c.src(1, CS), ChunkSrc::Base { alias: None });
        assert_eq!(c.src(2, CS), ChunkSrc::Local(2));
        assert_eq!(
            c.src(0, CS),
            ChunkSrc::Base { alias: Some(1) },
            "uploaded: no longer dirty"
        );
    }

    #[test]
    fn an_uploaded_extending_truncate_leaves_the_file_clean() {
        let mut c = Content::remote(Version::from("v1"), 150);
        c.truncate(250, CS);
        let snap = c.clone();
        c.rebase(&snap, Version::from("v2"), CS);
        assert!(!c.is_modified(), "{c:?}");
        assert_eq!(c.src(2, CS), ChunkSrc::Base { alias: None });
    }

    #[test]
    fn rebase_never_brings_truncated_bytes_back() {
        let mut c = Content {
            size: 300,
            gen: 2,
            ..Content::default()
        };
        for i in 0..3 {
            c.local.insert(i, 1);
        }
        let snap = c.clone();
        c.truncate(100, CS);
        c.truncate(300, CS);
        c.rebase(&snap, Version::from("v2"), CS);
        assert_eq!(c.src(0, CS), ChunkSrc::Base { alias: Some(1) });
        assert_eq!(c.src(1, CS), ChunkSrc::Hole);
        assert_eq!(c.src(2, CS), ChunkSrc::Hole);
        assert!(c.is_modified());
    }
}
