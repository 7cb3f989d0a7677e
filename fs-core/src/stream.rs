//! Sequential read streams: a file read from start to end is fetched with **one** ranged read of
//! the provider from where the reading is to the end of the file, consumed only as far as the
//! read-ahead window asks (the transport's flow control holds the rest back), instead of one
//! request per chunk. Every request costs a round trip (and, on some servers, time in
//! proportion to the object's size), so a 1 GiB file read as 1024 chunk requests is much
//! slower than one stream.
//!
//! A stream belongs to a node (and the version it reads). Its pump task reads chunk after chunk
//! up to the *target* the read-ahead sets (see `Vfs::prefetch`), hands each one to waiting
//! readers from memory (`ready`) and stores it in the cache in the background. A reader that
//! misses a chunk the stream is about to deliver waits for it instead of fetching it again.
//! The stream ends when it reaches the end of the file, fails (the readers then fetch chunk by
//! chunk, as without a stream), is replaced by one for a jump ahead, or sits idle for
//! [`IDLE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument;

use cache::PutKind;

use crate::provider::RemotePath;
use crate::types::NodeId;
use crate::vfs::{lock, Vfs};

/// A stream nobody asked anything of for this long is closed.
const IDLE: Duration = Duration::from_secs(10);
/// Chunks of one stream being written to the cache at once.
const PUTS_IN_FLIGHT: usize = 4;

/// One open sequential read of a node's remote version.
pub(crate) struct Stream {
    version: cache::Version,
    object: cache::ObjectId,
    /// The first chunk of the stream.
    start: u64,
    /// The next chunk the stream delivers.
    next: AtomicU64,
    /// One past the last chunk of the file.
    end: u64,
    /// Bytes of the remote version.
    len: u64,
    /// The pump reads up to and including this chunk, then waits.
    target: AtomicU64,
    /// The target was raised, or the stream is to stop.
    more: Notify,
    /// A chunk was delivered, or the stream ended.
    landed: Notify,
    over: AtomicBool,
    /// Delivered chunks not yet in the cache.
    /// Delivered chunks, kept (whether or not in the cache yet: `true` once stored) until the
    /// readers are past them, so that a reader takes them from memory, not decrypting them
    /// from the cache again.
    ready: Mutex<HashMap<u64, (Bytes, bool)>>,
    /// One past the highest chunk a reader took from `ready`.
    taken: AtomicU64,
    puts: Arc<Semaphore>,
}

impl Stream {
    fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Asks the pump to read up to chunk `to`.
    fn raise(&self, to: u64) {
        if self.target.fetch_max(to, Ordering::AcqRel) < to {
            self.more.notify_one();
        }
    }

    /// Chunk `i` from memory, if delivered and still kept.
    fn take(&self, i: u64) -> Option<Bytes> {
        let b = lock(&self.ready).get(&i).map(|(b, _)| b.clone())?;
        self.taken.fetch_max(i + 1, Ordering::AcqRel);
        Some(b)
    }

    /// Chunk `i` is in the cache now: what the readers are past, and what a window beyond
    /// them does not need, is no longer kept in memory.
    fn stored(&self, i: u64, window: u64) {
        let taken = self.taken.load(Ordering::Acquire);
        let mut ready = lock(&self.ready);
        if let Some(e) = ready.get_mut(&i) {
            e.1 = true;
        }
        ready.retain(|&k, (_, stored)| !*stored || k + 1 >= taken && k < taken + window);
    }

    fn finish(&self) {
        self.over.store(true, Ordering::Release);
        self.more.notify_one();
        self.landed.notify_waiters();
    }
}

/// Where a stream's pump spent its time (for the log).
#[derive(Default)]
struct Waits {
    reader: Duration,
    network: Duration,
    cache: Duration,
}

/// The streams of a mount, by node.
pub(crate) type Streams = Mutex<HashMap<NodeId, Arc<Stream>>>;

impl Vfs {
    /// Read-ahead of chunks `from..=to` of `node`'s remote version (`len` bytes at `path`):
    /// the node's stream is asked to go on to `to`, or one is started at `from`.
    pub(crate) fn stream_ahead(
        &self,
        node: NodeId,
        path: RemotePath,
        object: cache::ObjectId,
        version: cache::Version,
        len: u64,
        (from, to): (u64, u64),
    ) {
        let cs = self.inner.cfg.chunk_size;
        let end = len.div_ceil(cs);
        if from >= end {
            return;
        }
        let reach = self.inner.cfg.max_readahead_chunks.max(1) * 2;
        let (s, budget) = {
            let mut streams = lock(&self.inner.streams);
            if let Some(s) = streams.get(&node) {
                let next = s.next();
                // Contiguous with what the stream was asked for (the read-ahead runs ahead of
                // what the stream delivered when the provider is the slower one).
                let asked = s.target.load(Ordering::Acquire);
                if !s.is_over() && s.version == version && from <= asked + 1 + reach {
                    if to >= next {
                        s.raise(to.min(end - 1));
                    }
                    return;
                }
                // Ended, of another version, or a jump ahead: replaced.
                tracing::debug!(
                    node = node.0,
                    from,
                    to,
                    next,
                    asked,
                    over = s.is_over(),
                    "read stream replaced"
                );
                s.finish();
                streams.remove(&node);
            }
            // A stream holds up to a window of chunks: that much of the prefetch budget (none
            // left: no read-ahead, never a wait).
            let want =
                u32::try_from(self.inner.cfg.max_readahead_chunks.max(1)).unwrap_or(u32::MAX);
            let Ok(budget) = Arc::clone(&self.inner.prefetch).try_acquire_many_owned(want) else {
                return;
            };
            let s = Arc::new(Stream {
                version,
                object,
                start: from,
                next: AtomicU64::new(from),
                end,
                len,
                target: AtomicU64::new(to.min(end - 1)),
                more: Notify::new(),
                landed: Notify::new(),
                over: AtomicBool::new(false),
                ready: Mutex::new(HashMap::new()),
                taken: AtomicU64::new(from),
                puts: Arc::new(Semaphore::new(PUTS_IN_FLIGHT)),
            });
            streams.insert(node, Arc::clone(&s));
            (s, budget)
        };
        let vfs = self.clone();
        tokio::spawn(async move {
            let span = tracing::debug_span!("stream", node = node.0, %path, from);
            vfs.pump(&s, &path).instrument(span).await;
            s.finish();
            // Delivered chunks stay reachable through the stream until they are in the cache:
            // a reader of the last ones (still being stored) would otherwise fetch them again.
            let _ = s.puts.acquire_many(PUTS_IN_FLIGHT as u32).await;
            drop(budget);
            let mut streams = lock(&vfs.inner.streams);
            if streams.get(&node).is_some_and(|t| Arc::ptr_eq(t, &s)) {
                streams.remove(&node);
            }
        });
    }

    /// The stream of `node` reading `version`.
    fn stream_of(&self, node: NodeId, version: &cache::Version) -> Option<Arc<Stream>> {
        let s = lock(&self.inner.streams).get(&node).cloned()?;
        (s.version == *version).then_some(s)
    }

    /// Chunk `i` of `node`'s `version` if its stream delivered it and keeps it in memory.
    pub(crate) fn chunk_in_stream(
        &self,
        node: NodeId,
        v: &cache::Version,
        i: u64,
    ) -> Option<Bytes> {
        self.stream_of(node, v)?.take(i)
    }

    /// Chunk `i` of `node`'s `version` from its stream, if the stream is about to deliver it:
    /// waits for it (up to the provider timeout). `None`: fetch it some other way.
    pub(crate) async fn chunk_from_stream(
        &self,
        node: NodeId,
        version: &cache::Version,
        i: u64,
    ) -> Option<Bytes> {
        let s = self.stream_of(node, version)?;
        let reach = self.inner.cfg.max_readahead_chunks.max(1);
        // (A chunk delivered already may still be on its way into the cache: from `ready`.)
        if s.is_over() && i >= s.next() || i < s.start || i >= s.end || i > s.next() + reach {
            tracing::debug!(
                node = node.0,
                chunk = i,
                next = s.next(),
                over = s.is_over(),
                "not from the read stream"
            );
            return None;
        }
        s.raise(i);
        let deadline = tokio::time::Instant::now() + self.inner.cfg.provider_timeout;
        loop {
            let landed = s.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            if s.next() > i || s.is_over() {
                break;
            }
            if tokio::time::timeout_at(deadline, landed).await.is_err() {
                return None;
            }
        }
        if s.next() <= i {
            return None;
        }
        if let Some(b) = s.take(i) {
            return Some(b);
        }
        let key = crate::content::remote_key(&s.object, &s.version, i);
        let cache = self.inner.cache.clone();
        tokio::task::spawn_blocking(move || cache.get(&key))
            .await
            .ok()?
            .ok()
            .flatten()
    }

    /// Reads the stream's chunks into the cache as the target asks, until the end of the file,
    /// a failure, a replacement or [`IDLE`].
    async fn pump(&self, s: &Arc<Stream>, path: &RemotePath) {
        let cs = self.inner.cfg.chunk_size;
        let deadline = self.inner.cfg.provider_timeout;
        let answer = self.inner.cfg.offline_timeout.min(deadline);
        let first = s.next();
        let opened = tokio::time::timeout(
            answer,
            self.inner
                .provider
                .read(path, &s.version, first * cs, s.len - first * cs),
        )
        .await;
        let mut body = match opened {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(%path, error = %e, "read stream failed to open");
                return;
            }
            Err(_) => {
                tracing::debug!(%path, "read stream: no answer within the offline timeout");
                return;
            }
        };
        self.inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity(cs as usize);
        let mut waits = Waits::default();
        self.pump_body(s, path, &mut body, &mut buf, &mut waits)
            .await;
        tracing::debug!(%path, reader_ms = waits.reader.as_millis() as u64, network_ms = waits.network.as_millis() as u64, cache_ms = waits.cache.as_millis() as u64, "read stream ended");
    }

    /// [`Vfs::pump`] once the stream is open.
    async fn pump_body(
        &self,
        s: &Arc<Stream>,
        path: &RemotePath,
        body: &mut crate::provider::ByteStream,
        buf: &mut BytesMut,
        waits: &mut Waits,
    ) {
        let cs = self.inner.cfg.chunk_size;
        let deadline = self.inner.cfg.provider_timeout;
        let mut carry = Bytes::new();
        loop {
            let t0 = tokio::time::Instant::now();
            // Wait for a reader to want more.
            loop {
                let more = s.more.notified();
                tokio::pin!(more);
                more.as_mut().enable();
                if s.is_over() {
                    return;
                }
                if s.target.load(Ordering::Acquire) >= s.next() {
                    break;
                }
                if tokio::time::timeout(IDLE, more).await.is_err() {
                    return;
                }
            }
            let i = s.next();
            let want = (s.len - i * cs).min(cs) as usize;
            let t1 = tokio::time::Instant::now();
            waits.reader += t1 - t0;
            while buf.len() < want {
                if !carry.is_empty() {
                    // What the last frame brought past the previous chunk.
                    let b = std::mem::take(&mut carry);
                    carry = fill(buf, want, b);
                    continue;
                }
                match tokio::time::timeout(deadline, body.next()).await {
                    Ok(Some(Ok(b))) => carry = fill(buf, want, b),
                    Ok(Some(Err(e))) => {
                        tracing::debug!(%path, chunk = i, error = %e, "read stream failed");
                        return;
                    }
                    Ok(None) => {
                        tracing::debug!(%path, chunk = i, "read stream ended early");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%path, chunk = i, "read stream stalled");
                        return;
                    }
                }
            }
            // The chunk keeps the buffer: a new one of a whole chunk is filled next (a buffer
            // that grew chunk by chunk was reallocated and copied again for every chunk).
            let chunk = std::mem::replace(buf, BytesMut::with_capacity(cs as usize)).freeze();
            let t2 = tokio::time::Instant::now();
            waits.network += t2 - t1;
            self.note_reachable(true);
            self.inner
                .counters
                .fetched_bytes
                .fetch_add(want as u64, Ordering::Relaxed);
            let Ok(permit) = Arc::clone(&s.puts).acquire_owned().await else {
                return;
            };
            waits.cache += t2.elapsed();
            lock(&s.ready).insert(i, (chunk.clone(), false));
            s.next.store(i + 1, Ordering::Release);
            s.landed.notify_waiters();
            let key = crate::content::remote_key(&s.object, &s.version, i);
            let window = self.inner.cfg.max_readahead_chunks.max(1) * 2;
            let (cache, s2) = (self.inner.cache.clone(), Arc::clone(s));
            tokio::task::spawn_blocking(move || {
                if !cache.contains(&key) {
                    // Best effort: a full cache still served the readers from `ready`.
                    let _ = cache.put(&key, &chunk, PutKind::Clean);
                }
                s2.stored(i, window);
                drop(permit);
            });
            if i + 1 >= s.end {
                return;
            }
        }
    }
}

/// Appends `b` to `buf` up to `want` bytes; returns the rest of `b`.
fn fill(buf: &mut BytesMut, want: usize, b: Bytes) -> Bytes {
    let need = want.saturating_sub(buf.len());
    if b.len() <= need {
        buf.extend_from_slice(&b);
        Bytes::new()
    } else {
        buf.extend_from_slice(&b[..need]);
        b.slice(need..)
    }
}
