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
    ///
    /// `uploaded` must be an earlier state of this content *in the same frame*: based on the
    /// same version, so that this content differs from it only by writes (new local
    /// generations) and truncates. The uploader keeps every queued commit in the frame of the
    /// file's content by rebasing it too whenever an upload of the file is done (see
    /// `uploader.rs`). Anything else (another base, a chunk that went from local back to the
    /// base) cannot be reasoned about chunk by chunk: then nothing is changed and `false` is
    /// returned (the bytes stay right; the file just stays modified).
    pub fn rebase(&mut self, uploaded: &Content, version: Version, chunk_size: u64) -> bool {
        let cs = chunk_size;
        let same_base =
            self.base.as_ref().map(|b| &b.version) == uploaded.base.as_ref().map(|b| &b.version);
        if !same_base {
            return false;
        }
        // Within a frame the base length only shrinks (truncates).
        let here = self.base.as_ref().map_or(0, |b| b.len);
        let there = uploaded.base.as_ref().map_or(0, |b| b.len);
        let limit = self.size.min(uploaded.size);
        let mut len = limit;
        let mut alias = BTreeMap::new();
        for i in 0..limit.div_ceil(cs) {
            match (self.src(i, cs), uploaded.src(i, cs)) {
                // Not written since: the new version has these bytes, and the snapshot's local
                // chunk is a cached copy of them.
                (ChunkSrc::Local(g), ChunkSrc::Local(h)) if g == h => {
                    alias.insert(i, g);
                }
                // Written since the snapshot: stays local.
                (ChunkSrc::Local(_), _) => {}
                // The same base bytes in both, up to where each has them.
                (ChunkSrc::Base { alias: a }, ChunkSrc::Base { .. }) => {
                    if let Some(g) = a {
                        alias.insert(i, g);
                    }
                    // Truncated inside this chunk since the snapshot: the rest reads as zeros.
                    // (A truncate rewrites its partial last chunk, so this is only a guard.)
                    if here < there.min((i + 1) * cs) {
                        len = len.min(here);
                    }
                }
                (ChunkSrc::Hole, ChunkSrc::Hole) => {}
                // Truncated since: those bytes must stay zeros. Nothing after this chunk comes
                // from the base any more (the base length is at most here).
                (ChunkSrc::Hole, _) => {
                    len = len.min(i * cs);
                    break;
                }
                // Base bytes where the snapshot had its own or none: not an earlier state.
                (ChunkSrc::Base { .. }, ChunkSrc::Local(_) | ChunkSrc::Hole) => return false,
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
        true
    }
}

impl Content {
    /// The content of a file that has had nothing written since the snapshot `uploaded` (so it
    /// has exactly its bytes) once that became remote version `version`: everything comes
    /// from the new version, and the snapshot's local chunks (and its cached copies of whole
    /// base chunks) are cached copies of it. Unlike [`Content::rebase`] this needs no common
    /// frame; the generation is the caller's to keep.
    pub fn settled(uploaded: &Content, version: Version, chunk_size: u64) -> Content {
        let cs = chunk_size;
        let size = uploaded.size;
        let mut alias = BTreeMap::new();
        for i in 0..size.div_ceil(cs) {
            match uploaded.src(i, cs) {
                ChunkSrc::Local(g) => {
                    alias.insert(i, g);
                }
                // A cached copy holds the base's bytes, which are this chunk's only where the
                // base still covers all of it.
                ChunkSrc::Base { alias: Some(g) } => {
                    let here = uploaded.base.as_ref().map_or(0, |b| b.len);
                    if here >= size.min((i + 1) * cs) {
                        alias.insert(i, g);
                    }
                }
                ChunkSrc::Base { alias: None } | ChunkSrc::Hole => {}
            }
        }
        Content {
            size,
            base: Some(Base {
                version,
                len: size,
                size,
            }),
            local: BTreeMap::new(),
            alias,
            gen: uploaded.gen,
        }
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
        assert!(c.rebase(&snap, Version::from("v2"), CS));
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
        assert!(c.rebase(&snap, Version::from("v2"), CS));
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
        assert!(c.rebase(&snap, Version::from("v2"), CS));
        assert!(!c.is_modified(), "{c:?}");
        assert_eq!(c.src(2, CS), ChunkSrc::Base { alias: None });
    }

    #[test]
    fn rebase_of_a_queued_commit_keeps_it_in_the_frame_of_the_file() {
        // Commit A (chunk 0) uploads while commit B (chunks 0 and 1) is taken. When A is done,
        // both the file and B are rebased on it; when B is done, the file is clean.
        let mut c = Content {
            size: 1,
            gen: 2,
            ..Content::default()
        };
        c.local.insert(0, 1);
        let a = c.clone();
        c.local.insert(1, 2);
        c.size = 101;
        let mut b = c.clone();
        c.gen = 3;
        assert!(c.rebase(&a, Version::from("v1"), CS));
        assert!(b.rebase(&a, Version::from("v1"), CS));
        assert_eq!(c.src(0, CS), ChunkSrc::Base { alias: Some(1) });
        assert_eq!(c.src(1, CS), ChunkSrc::Local(2));
        assert!(c.rebase(&b, Version::from("v2"), CS));
        assert!(!c.is_modified(), "{c:?}");
        assert_eq!(c.local_chunks().count(), 2);
    }

    #[test]
    fn rebase_refuses_a_snapshot_of_another_frame() {
        // The file was rebased on an upload, the snapshot was not: nothing is changed.
        let mut c = Content::remote(Version::from("v1"), 1);
        c.alias.insert(0, 1);
        c.size = 101;
        c.local.insert(1, 2);
        let before = c.clone();
        let mut snap = Content {
            size: 101,
            gen: 2,
            ..Content::default()
        };
        snap.local.insert(0, 1);
        snap.local.insert(1, 2);
        assert!(!c.rebase(&snap, Version::from("v2"), CS));
        assert_eq!(c, before);
        // Same base version, but a chunk that went from local back to the base.
        let mut snap = before.clone();
        snap.alias.clear();
        snap.local.insert(0, 1);
        assert!(!c.rebase(&snap, Version::from("v2"), CS));
        assert_eq!(c, before);
    }

    #[test]
    fn settled_content_reads_the_uploaded_bytes_from_the_new_version() {
        let mut snap = Content::remote(Version::from("v1"), 250);
        snap.alias.insert(0, 1);
        snap.alias.insert(1, 1);
        snap.local.insert(2, 2);
        snap.truncate(150, CS);
        snap.truncate(300, CS);
        snap.local.insert(2, 3);
        let c = Content::settled(&snap, Version::from("v2"), CS);
        assert!(!c.is_modified(), "{c:?}");
        assert_eq!(c.src(0, CS), ChunkSrc::Base { alias: Some(1) });
        // Chunk 1 was cut at 150: its cached copy holds bytes that are zeros now.
        assert_eq!(c.src(1, CS), ChunkSrc::Base { alias: None });
        assert_eq!(c.src(2, CS), ChunkSrc::Base { alias: Some(3) });
        assert_eq!(c.size, 300);
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
        assert!(c.rebase(&snap, Version::from("v2"), CS));
        assert_eq!(c.src(0, CS), ChunkSrc::Base { alias: Some(1) });
        assert_eq!(c.src(1, CS), ChunkSrc::Hole);
        assert_eq!(c.src(2, CS), ChunkSrc::Hole);
        assert!(c.is_modified());
    }
}
