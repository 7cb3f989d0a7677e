//! What this provider knows of the names in the folders it made itself, so that a write into
//! such a folder can skip the listing at the name (see "Checks before a write" in the S3
//! module's documentation).
//!
//! A folder's view starts empty when this provider makes the folder (the check before the
//! `mkdir` found nothing under it), and is renewed by one listing of the folder once it is
//! older than its time to live ([`NAMES_TTL`], the drive's default poll interval: what another
//! tool changes is seen by the drive within as long anyway). A name is in a view when that listing showed it, or when this
//! provider changed something at it since (noted before the request is sent, so a listing
//! that raced the change cannot drop it). A name in no fresh view is taken as free: nothing at
//! it, neither file, link nor folder. A name noted as a file is a file this provider wrote and
//! has not touched since (or the listing showed only that object); every other name present
//! is [`Named::Maybe`], which sends the write to the full check. Only what the provider itself
//! did, and what a listing younger than the time to live showed, is ever taken on trust.
//!
//! Pure bookkeeping; the caller holds it under a mutex, never across an `.await`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{RemotePath, DIRS_SEEN_MAX};

/// How long a listing of a folder made here stands for the folder's names.
pub const NAMES_TTL: Duration = Duration::from_secs(60);

/// Names one view holds at most: one listing page. A folder with more is checked name by
/// name.
pub(super) const FOLDER_NAMES_MAX: usize = 1000;

/// What a view says is at a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Named {
    /// Only the file object of the name.
    File,
    /// Something, or a change by this provider whose outcome is not known: check.
    Maybe,
}

/// The answer of [`FolderNames::lookup`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// Nothing at the name, and the folder is there: known as of the time given (when the
    /// request it comes from was sent).
    Free(Instant),
    /// Only the file of the name, and the folder is there (as of the time given).
    File(Instant),
    /// No trusted answer: check the name itself.
    Unknown,
    /// The view is old: list the folder, then call [`FolderNames::refreshed`] with this ticket
    /// (or [`FolderNames::refresh_failed`]).
    Refresh(u64),
}

struct View {
    /// Set when the view was made; a refresh's listing counts for the view it was asked for.
    generation: u64,
    /// When the request that the names come from was sent; `None`: the folder outgrew one
    /// page, it is checked name by name from now on.
    taken: Option<Instant>,
    names: HashMap<String, Named>,
    refreshing: bool,
}

/// The views of the folders this provider made, by folder.
pub(super) struct FolderNames {
    views: HashMap<RemotePath, View>,
    generations: u64,
    ttl: Duration,
}

impl FolderNames {
    /// Views that stand for `ttl` after their listing.
    pub(super) fn new(ttl: Duration) -> Self {
        FolderNames {
            views: HashMap::new(),
            generations: 0,
            ttl,
        }
    }

    /// This provider made folder `dir` with a request sent at `at`, after a check (sent
    /// before) found nothing under it.
    pub(super) fn made(&mut self, dir: &RemotePath, at: Instant) {
        if self.views.len() >= DIRS_SEEN_MAX {
            // Dropping a view is always safe: it only makes writes check again.
            let ttl = self.ttl;
            self.views
                .retain(|_, v| v.refreshing || v.taken.is_some_and(|t| t.elapsed() < ttl));
            if self.views.len() >= DIRS_SEEN_MAX {
                self.views.clear();
            }
        }
        self.generations += 1;
        self.views.insert(
            dir.clone(),
            View {
                generation: self.generations,
                taken: Some(at),
                names: HashMap::new(),
                refreshing: false,
            },
        );
    }

    /// What is at `path`, from the view of its folder; an old view is to be renewed
    /// ([`Lookup::Refresh`]) unless a refresh is under way already.
    pub(super) fn lookup(&mut self, path: &RemotePath) -> Lookup {
        self.look(path, true)
    }

    /// As [`lookup`](Self::lookup), never asking for a refresh.
    pub(super) fn known(&mut self, path: &RemotePath) -> Lookup {
        self.look(path, false)
    }

    fn look(&mut self, path: &RemotePath, may_refresh: bool) -> Lookup {
        let ttl = self.ttl;
        let Some(v) = path.parent().and_then(|d| self.views.get_mut(&d)) else {
            return Lookup::Unknown;
        };
        let Some(taken) = v.taken else {
            return Lookup::Unknown;
        };
        if taken.elapsed() >= ttl {
            if v.refreshing || !may_refresh {
                return Lookup::Unknown;
            }
            v.refreshing = true;
            return Lookup::Refresh(v.generation);
        }
        match v.names.get(path.name()) {
            None => Lookup::Free(taken),
            Some(Named::File) => Lookup::File(taken),
            Some(Named::Maybe) => Lookup::Unknown,
        }
    }

    /// The listing of folder `dir` asked for with ticket `generation`, sent at `at`, showed
    /// `names` (`complete`: all of them, on one page). A listing that shows nothing at all
    /// (not even the folder's marker) means the folder may be gone: the view is dropped.
    pub(super) fn refreshed(
        &mut self,
        dir: &RemotePath,
        generation: u64,
        at: Instant,
        names: impl IntoIterator<Item = (String, Named)>,
        anything: bool,
        complete: bool,
    ) {
        let Some(v) = self
            .views
            .get_mut(dir)
            .filter(|v| v.generation == generation)
        else {
            return;
        };
        v.refreshing = false;
        if !anything {
            self.views.remove(dir);
            return;
        }
        if !complete {
            v.taken = None;
            v.names.clear();
            return;
        }
        for (name, named) in names {
            let e = v.names.entry(name).or_insert(named);
            if named == Named::Maybe {
                *e = Named::Maybe;
            }
        }
        if v.names.len() > FOLDER_NAMES_MAX {
            v.taken = None;
            v.names.clear();
            return;
        }
        v.taken = v.taken.max(Some(at));
    }

    /// The refresh with ticket `generation` did not get its listing.
    pub(super) fn refresh_failed(&mut self, dir: &RemotePath, generation: u64) {
        if let Some(v) = self
            .views
            .get_mut(dir)
            .filter(|v| v.generation == generation)
        {
            v.refreshing = false;
        }
    }

    /// This provider is about to change what is at `path` (`Maybe`), or wrote the file there
    /// and nothing else is at the name (`File`).
    pub(super) fn note(&mut self, path: &RemotePath, named: Named) {
        let Some(v) = path.parent().and_then(|d| self.views.get_mut(&d)) else {
            return;
        };
        if v.taken.is_none() {
            return;
        }
        v.names.insert(path.name().to_string(), named);
        if v.names.len() > FOLDER_NAMES_MAX {
            v.taken = None;
            v.names.clear();
        }
    }

    /// `p` and everything under it are no folders this provider vouches for any more (it
    /// removed or moved them, or put something else at `p`); what is at `p` is to be checked.
    pub(super) fn forget(&mut self, p: &RemotePath) {
        self.views.retain(|d, _| !d.starts_with(p));
        self.note(p, Named::Maybe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    fn rp(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[test]
    fn a_folder_made_here_knows_its_names_until_it_is_old() {
        let mut n = FolderNames::new(TTL);
        assert_eq!(
            n.lookup(&rp("d/a")),
            Lookup::Unknown,
            "a folder not made here"
        );
        n.made(&rp("d"), Instant::now());
        assert!(matches!(n.lookup(&rp("d/a")), Lookup::Free(_)));
        n.note(&rp("d/a"), Named::Maybe);
        assert_eq!(n.lookup(&rp("d/a")), Lookup::Unknown, "a write under way");
        n.note(&rp("d/a"), Named::File);
        assert!(matches!(n.lookup(&rp("d/a")), Lookup::File(_)));
        n.note(&rp("d/a"), Named::Maybe);
        assert_eq!(n.lookup(&rp("d/a")), Lookup::Unknown, "removed, or not");
        assert_eq!(n.lookup(&rp("d/e/x")), Lookup::Unknown, "a folder below");

        let old = Instant::now() - TTL;
        n.made(&rp("o"), old);
        n.note(&rp("o/a"), Named::Maybe);
        let Lookup::Refresh(ticket) = n.lookup(&rp("o/b")) else {
            panic!("an old view is renewed");
        };
        assert_eq!(
            n.lookup(&rp("o/b")),
            Lookup::Unknown,
            "one refresh at a time"
        );
        let listed = [
            ("b".to_string(), Named::File),
            ("c".to_string(), Named::Maybe),
        ];
        n.refreshed(&rp("o"), ticket, Instant::now(), listed, true, true);
        assert!(matches!(n.lookup(&rp("o/b")), Lookup::File(_)));
        assert_eq!(n.lookup(&rp("o/c")), Lookup::Unknown);
        assert_eq!(
            n.lookup(&rp("o/a")),
            Lookup::Unknown,
            "a change noted before the listing is kept although the listing missed it"
        );
        assert!(matches!(n.lookup(&rp("o/z")), Lookup::Free(_)));
    }

    #[test]
    fn a_listing_never_makes_a_changed_name_look_like_a_plain_file() {
        let mut n = FolderNames::new(TTL);
        n.made(&rp("d"), Instant::now() - TTL);
        n.note(&rp("d/a"), Named::Maybe);
        let Lookup::Refresh(t) = n.lookup(&rp("d/a")) else {
            panic!()
        };
        n.refreshed(
            &rp("d"),
            t,
            Instant::now(),
            [("a".to_string(), Named::File)],
            true,
            true,
        );
        assert_eq!(n.lookup(&rp("d/a")), Lookup::Unknown);
    }

    #[test]
    fn views_are_dropped_when_their_folder_goes_or_grows() {
        let mut n = FolderNames::new(TTL);
        let old = Instant::now() - TTL;
        n.made(&rp("d"), old);
        n.made(&rp("d/e"), Instant::now());
        n.made(&rp("big"), old);
        n.made(&rp("gone"), old);
        n.forget(&rp("d"));
        assert_eq!(n.lookup(&rp("d/x")), Lookup::Unknown);
        assert_eq!(n.lookup(&rp("d/e/x")), Lookup::Unknown);

        let Lookup::Refresh(t) = n.lookup(&rp("big/x")) else {
            panic!()
        };
        n.refreshed(&rp("big"), t, Instant::now(), [], true, false);
        assert_eq!(n.lookup(&rp("big/x")), Lookup::Unknown, "more than a page");
        n.note(&rp("big/y"), Named::File);
        assert_eq!(n.lookup(&rp("big/y")), Lookup::Unknown);

        let Lookup::Refresh(t) = n.lookup(&rp("gone/x")) else {
            panic!()
        };
        n.refreshed(&rp("gone"), t, Instant::now(), [], false, true);
        assert_eq!(
            n.lookup(&rp("gone/x")),
            Lookup::Unknown,
            "not even a marker"
        );

        // A listing for a view that was replaced meanwhile counts for nothing.
        n.made(&rp("r"), old);
        let Lookup::Refresh(t) = n.lookup(&rp("r/x")) else {
            panic!()
        };
        n.made(&rp("r"), Instant::now());
        n.refreshed(
            &rp("r"),
            t,
            Instant::now(),
            [("x".to_string(), Named::File)],
            true,
            true,
        );
        assert!(matches!(n.lookup(&rp("r/x")), Lookup::Free(_)));
    }

    #[test]
    fn too_many_names_end_the_view() {
        let mut n = FolderNames::new(TTL);
        n.made(&rp("d"), Instant::now());
        for i in 0..=FOLDER_NAMES_MAX {
            n.note(&rp(&format!("d/f{i}")), Named::File);
        }
        assert_eq!(n.lookup(&rp("d/new")), Lookup::Unknown);
    }
}
