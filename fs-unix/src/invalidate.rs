//! The core's [`Invalidator`] over fuser's `Notifier`. Notifications are queued to one thread
//! of their own: an entry invalidation takes the directory's lock in the kernel, which a FUSE
//! request in that directory may hold while it waits for the very core call that asked for the
//! invalidation, so sending from the caller's thread could deadlock.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use fs_core::{Invalidator, NodeId};
use fuser::{INodeNo, Notifier};

enum Msg {
    Inode(u64),
    Entry(u64, String),
    Stop,
}

/// Queues invalidations for the notifier thread; inert once the session has ended.
pub(crate) struct FuseInvalidator {
    tx: Sender<Msg>,
    live: AtomicBool,
}

impl FuseInvalidator {
    /// Starts the notifier thread.
    pub(crate) fn start(notifier: Notifier) -> std::io::Result<Arc<FuseInvalidator>> {
        let (tx, rx) = channel::<Msg>();
        std::thread::Builder::new()
            .name("syncoxide-inval".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    let r = match &msg {
                        Msg::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, -1),
                        Msg::Entry(parent, name) => {
                            notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                        }
                        Msg::Stop => break,
                    };
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "kernel refused an invalidation");
                    }
                }
            })?;
        Ok(Arc::new(FuseInvalidator {
            tx,
            live: AtomicBool::new(true),
        }))
    }

    /// Ends the notifier thread (the session is over; the core may still hold this).
    pub(crate) fn stop(&self) {
        self.live.store(false, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
    }

    fn send(&self, msg: Msg) {
        if self.live.load(Ordering::SeqCst) {
            // A closed channel means the session is over: nothing left to invalidate.
            let _ = self.tx.send(msg);
        }
    }
}

impl Invalidator for FuseInvalidator {
    fn inval_inode(&self, ino: NodeId) {
        self.send(Msg::Inode(ino.0));
    }

    fn inval_entry(&self, parent: NodeId, name: &str) {
        self.send(Msg::Entry(parent.0, name.to_string()));
    }
}
