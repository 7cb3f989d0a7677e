//! Line-based three-way text merge, like `diff3 -m` or `git merge-file`.
//!
//! Used when a text file was changed both locally (*ours*) and on the remote (*theirs*) while
//! the common *base* version is still cached: if the two sides changed different parts of the
//! file, both changes are kept and no conflict copy is needed.
//!
//! # Algorithm
//!
//! 1. **Trivial cases first.** If `ours == theirs` the result is that; if `ours == base` it is
//!    `theirs`; if `theirs == base` it is `ours`. These need no parsing, so they hold for any
//!    bytes (a binary file changed on one side only still "merges").
//! 2. **Checks.** Every version must be at most [`MAX_MERGE_BYTES`] long
//!    ([`NoMerge::TooLarge`]) and text: valid UTF-8 without a NUL byte ([`NoMerge::NotText`]).
//! 3. **Lines.** Each version is split into lines that keep their terminator: a line ends after
//!    `\n` (so `\r\n` is part of the line and `a\r\n` differs from `a\n`); a final line without a
//!    newline is a line of its own (so `b` differs from `b\n`). Lines are interned to integers so
//!    that comparing two lines is one integer comparison.
//! 4. **Diffs.** base→ours and base→theirs are diffed with Myers' O((N+M)·D) algorithm in its
//!    linear-space form (common prefix and suffix stripped, then divide and conquer on the
//!    "middle snake"). The result is a list of *hunks*: base lines `[b0, b1)` replaced by side
//!    lines `[s0, s1)`, sorted, with at least one unchanged line between two hunks of the same
//!    side. A pure insertion is a hunk with `b0 == b1`, placed *before* base line `b0`.
//! 5. **Walk.** Both hunk lists are walked together over the base. Hunks are grouped: a group
//!    starts with the next hunk (of either side) and takes in every hunk of the other side whose
//!    range *overlaps or touches* the group's base range `[lo, hi]` (closed at both ends), until
//!    none does. Unchanged base lines between groups are copied. A group with hunks of one side
//!    only takes that side's lines. A group with hunks of both sides is resolved only if both
//!    sides turn `[lo, hi)` into the very same lines (the same change made twice, taken once);
//!    otherwise the merge fails with [`NoMerge::Overlap`] at line `lo + 1`.
//!
//! # What counts as an overlap
//!
//! Following git, two changes conflict when their base ranges overlap **or touch**:
//!
//! - both sides changed the same base line (differently);
//! - *adjacent* changed lines: one side changed line 3 and the other line 4 — git treats this as a
//!   conflict, and so does this merge; one untouched line in between is enough to merge;
//! - an insertion by one side strictly inside the other side's changed range, or at its edge
//!   (directly before its first or directly after its last changed line);
//! - two insertions at the same base position with different text.
//!
//! An insertion and a change separated by at least one untouched base line do not conflict.
//! `at_line` is the 1-based base line where the conflicting region starts (the smallest base
//! line touched by any change in it); for an insertion at the end of the base this is one past
//! the last line (1 for an empty base).
//!
//! # Limits
//!
//! Diffing is bounded: if a diff would need more than a fixed amount of work (very different
//! versions, roughly more than ~10 000 changed lines), the rest of that diff is reported as one
//! coarse replacement instead of a minimal one. A coarse diff is still a correct diff, so a merge
//! that succeeds is still right; the only effect is that such a merge is more likely to report
//! [`NoMerge::Overlap`].

use std::collections::HashMap;
use std::fmt;

/// Why the three versions were not merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMerge {
    /// One of the versions is not text (not UTF-8, or holds a NUL byte).
    NotText,
    /// One of the versions is larger than the merge is willing to hold (`MAX_MERGE_BYTES`).
    TooLarge,
    /// Both sides changed the same lines (or adjacent lines) differently; `at_line` is the
    /// 1-based line of the base where the first overlap begins.
    Overlap { at_line: usize },
}

impl fmt::Display for NoMerge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoMerge::NotText => f.write_str("not a text file"),
            NoMerge::TooLarge => write!(f, "file larger than {MAX_MERGE_BYTES} bytes"),
            NoMerge::Overlap { at_line } => {
                write!(f, "both sides changed the text at line {at_line}")
            }
        }
    }
}

impl std::error::Error for NoMerge {}

/// The largest version (in bytes) that [`merge3`] will merge; larger ones give
/// [`NoMerge::TooLarge`].
pub const MAX_MERGE_BYTES: usize = 4 << 20;

// Line offsets and line ids are held as `u32`; every version is at most `MAX_MERGE_BYTES` long,
// so three of them hold far fewer than `u32::MAX` bytes or lines.
const _: () = assert!(MAX_MERGE_BYTES <= (u32::MAX as usize) / 4);

/// Merges `ours` and `theirs`, both derived from `base`. Ok(merged bytes) when the changes do not
/// overlap.
///
/// See the [module documentation](self) for the algorithm and what counts as an overlap. Never
/// panics; the trivial cases (`ours == theirs`, `ours == base`, `theirs == base`) return a copy
/// of the changed version for any bytes, before the size and text checks.
pub fn merge3(base: &[u8], ours: &[u8], theirs: &[u8]) -> Result<Vec<u8>, NoMerge> {
    if ours == theirs || theirs == base {
        return Ok(ours.to_vec());
    }
    if ours == base {
        return Ok(theirs.to_vec());
    }
    for v in [base, ours, theirs] {
        if v.len() > MAX_MERGE_BYTES {
            return Err(NoMerge::TooLarge);
        }
    }
    for v in [base, ours, theirs] {
        if v.contains(&0) || std::str::from_utf8(v).is_err() {
            return Err(NoMerge::NotText);
        }
    }

    let mut interner = Interner::default();
    let base = Text::new(base, &mut interner);
    let ours = Text::new(ours, &mut interner);
    let theirs = Text::new(theirs, &mut interner);
    drop(interner);

    let ours_hunks = diff(&base.ids, &ours.ids, DIFF_WORK_BUDGET);
    let theirs_hunks = diff(&base.ids, &theirs.ids, DIFF_WORK_BUDGET);
    walk(&base, &ours, &ours_hunks, &theirs, &theirs_hunks)
}

/// Combines the two hunk lists over the base (step 5 of the module doc).
fn walk(
    base: &Text<'_>,
    ours: &Text<'_>,
    ours_hunks: &[Hunk],
    theirs: &Text<'_>,
    theirs_hunks: &[Hunk],
) -> Result<Vec<u8>, NoMerge> {
    let mut out = Vec::with_capacity(ours.bytes.len().max(theirs.bytes.len()));
    let mut cur = 0; // next base line not yet emitted
    let (mut i, mut j) = (0, 0);
    loop {
        let (i0, j0) = (i, j);
        // The group starts with the first remaining hunk of either side (ours on a tie).
        let first = match (ours_hunks.get(i), theirs_hunks.get(j)) {
            (None, None) => break,
            (Some(o), Some(t)) if (o.base_start, o.base_end) > (t.base_start, t.base_end) => {
                j += 1;
                *t
            }
            (Some(o), _) => {
                i += 1;
                *o
            }
            (None, Some(t)) => {
                j += 1;
                *t
            }
        };
        let lo = first.base_start;
        let mut hi = first.base_end;
        // Take in every hunk that overlaps or touches [lo, hi]. Hunks of one side never touch
        // each other, so whatever joins touches a hunk of the other side.
        loop {
            if let Some(o) = ours_hunks.get(i).filter(|o| o.base_start <= hi) {
                hi = hi.max(o.base_end);
                i += 1;
            } else if let Some(t) = theirs_hunks.get(j).filter(|t| t.base_start <= hi) {
                hi = hi.max(t.base_end);
                j += 1;
            } else {
                break;
            }
        }
        base.push_lines(&mut out, cur, lo);
        let ours_group = &ours_hunks[i0..i];
        let theirs_group = &theirs_hunks[j0..j];
        if theirs_group.is_empty() {
            group_text(&mut out, base, ours, ours_group, lo, hi);
        } else if ours_group.is_empty() {
            group_text(&mut out, base, theirs, theirs_group, lo, hi);
        } else {
            let mut a = Vec::new();
            group_text(&mut a, base, ours, ours_group, lo, hi);
            let mut b = Vec::new();
            group_text(&mut b, base, theirs, theirs_group, lo, hi);
            if a != b {
                return Err(NoMerge::Overlap { at_line: lo + 1 });
            }
            out.extend_from_slice(&a);
        }
        cur = hi;
    }
    base.push_lines(&mut out, cur, base.line_count());
    Ok(out)
}

/// Appends what `side` made of base lines `[lo, hi)`: `hunks` (of `side`, all within
/// `[lo, hi]`) applied to those base lines.
fn group_text(
    out: &mut Vec<u8>,
    base: &Text<'_>,
    side: &Text<'_>,
    hunks: &[Hunk],
    lo: usize,
    hi: usize,
) {
    let mut cur = lo;
    for h in hunks {
        base.push_lines(out, cur, h.base_start);
        side.push_lines(out, h.side_start, h.side_end);
        cur = h.base_end;
    }
    base.push_lines(out, cur, hi);
}

/// Hands out one integer per distinct line content, shared by the three versions.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a [u8], u32>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, line: &'a [u8]) -> u32 {
        let next = to_u32(self.ids.len());
        *self.ids.entry(line).or_insert(next)
    }
}

/// One version split into lines.
struct Text<'a> {
    bytes: &'a [u8],
    /// Line `i` is `bytes[starts[i]..starts[i + 1]]`; the last entry is `bytes.len()`.
    starts: Vec<u32>,
    /// Interned content of each line.
    ids: Vec<u32>,
}

impl<'a> Text<'a> {
    fn new(bytes: &'a [u8], interner: &mut Interner<'a>) -> Self {
        let mut starts = vec![0];
        let mut ids = Vec::new();
        for line in bytes.split_inclusive(|&c| c == b'\n') {
            let start = starts.last().copied().unwrap_or(0) as usize;
            starts.push(to_u32(start + line.len()));
            ids.push(interner.id(line));
        }
        Text { bytes, starts, ids }
    }

    fn line_count(&self) -> usize {
        self.ids.len()
    }

    /// Appends lines `[from, to)`.
    fn push_lines(&self, out: &mut Vec<u8>, from: usize, to: usize) {
        if from < to {
            let (a, b) = (self.starts[from] as usize, self.starts[to] as usize);
            out.extend_from_slice(&self.bytes[a..b]);
        }
    }
}

/// `x` as `u32`; callers only pass values bounded by `MAX_MERGE_BYTES` (see the assertion above).
fn to_u32(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// One changed region of a diff: base lines `[base_start, base_end)` became side lines
/// `[side_start, side_end)`. A pure insertion has `base_start == base_end`, a pure deletion
/// `side_start == side_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hunk {
    base_start: usize,
    base_end: usize,
    side_start: usize,
    side_end: usize,
}

/// Work (V-array entries and snake steps) one diff may spend before it goes coarse.
const DIFF_WORK_BUDGET: usize = 50_000_000;
/// Largest `D` (half the edit distance of a sub-problem) the middle-snake search goes to; bounds
/// the V arrays. The work budget normally stops the search well before this.
const DIFF_MAX_D: usize = 16_384;

/// The hunks turning `a` into `b`, sorted by position, maximal (two hunks are separated by at
/// least one unchanged line). Minimal (Myers) as long as `budget` lasts; past it, each remaining
/// sub-problem becomes one replacement hunk.
fn diff(a: &[u32], b: &[u32], budget: usize) -> Vec<Hunk> {
    let mut d = Differ {
        a,
        b,
        budget,
        vf: Vec::new(),
        vb: Vec::new(),
        hunks: Vec::new(),
    };
    // Sub-problems (a_start, a_end, b_start, b_end); the left half is pushed last so it is
    // handled first, which keeps the hunks in order.
    let mut stack = vec![(0, a.len(), 0, b.len())];
    while let Some((mut a0, mut a1, mut b0, mut b1)) = stack.pop() {
        let prefix = common_prefix(&a[a0..a1], &b[b0..b1]);
        a0 += prefix;
        b0 += prefix;
        let suffix = common_suffix(&a[a0..a1], &b[b0..b1]);
        a1 -= suffix;
        b1 -= suffix;
        if a0 == a1 && b0 == b1 {
            continue;
        }
        if a0 == a1 || b0 == b1 {
            d.push(a0, a1, b0, b1);
            continue;
        }
        match d.middle_snake(a0, a1, b0, b1) {
            // A split that makes progress: both halves are strictly smaller.
            Some((x, y))
                if (a0..=a1).contains(&x)
                    && (b0..=b1).contains(&y)
                    && (x, y) != (a0, b0)
                    && (x, y) != (a1, b1) =>
            {
                stack.push((x, a1, y, b1));
                stack.push((a0, x, b0, y));
            }
            _ => d.push(a0, a1, b0, b1),
        }
    }
    d.hunks
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u32], b: &[u32]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

struct Differ<'a> {
    a: &'a [u32],
    b: &'a [u32],
    budget: usize,
    vf: Vec<isize>,
    vb: Vec<isize>,
    hunks: Vec<Hunk>,
}

impl Differ<'_> {
    /// Records that `a[a0..a1]` became `b[b0..b1]`, joining it to the previous hunk if they are
    /// contiguous.
    fn push(&mut self, a0: usize, a1: usize, b0: usize, b1: usize) {
        if let Some(last) = self.hunks.last_mut() {
            if last.base_end == a0 && last.side_end == b0 {
                last.base_end = a1;
                last.side_end = b1;
                return;
            }
        }
        self.hunks.push(Hunk {
            base_start: a0,
            base_end: a1,
            side_start: b0,
            side_end: b1,
        });
    }

    /// Takes `cost` from the budget; false (and the budget emptied) if it does not cover it.
    fn spend(&mut self, cost: usize) -> bool {
        if self.budget < cost {
            self.budget = 0;
            false
        } else {
            self.budget -= cost;
            true
        }
    }

    /// Myers' middle snake of `a[a0..a1]` vs `b[b0..b1]` (both non-empty, with no common prefix
    /// or suffix): searches forward from the start and backward from the end at once, and
    /// returns a point `(x, y)` (absolute indices) on an optimal path where the two searches
    /// meet. The optimal path through the whole is then an optimal path to `(x, y)` followed by
    /// one from it. `None` if the budget runs out or `D` would exceed `DIFF_MAX_D`.
    ///
    /// `vf[k]` is the furthest `x` reached on diagonal `k = x - y` going forward; `vb[k]` the
    /// furthest distance from the end reached going backward, on diagonal `k` counted from the
    /// end. Diagonals that run off the edit graph are dropped from the search (`k*start`,
    /// `k*end`), as in Neil Fraser's diff-match-patch.
    fn middle_snake(
        &mut self,
        a0: usize,
        a1: usize,
        b0: usize,
        b1: usize,
    ) -> Option<(usize, usize)> {
        let (a, b) = (&self.a[a0..a1], &self.b[b0..b1]);
        let (n, m) = (a.len() as isize, b.len() as isize);
        let max_d = ((n + m + 1) / 2).min(DIFF_MAX_D as isize);
        let off = max_d + 1;
        let len = (2 * off + 2) as usize;
        if !self.spend(2 * len) {
            return None;
        }
        let (vf, vb) = (&mut self.vf, &mut self.vb);
        vf.clear();
        vf.resize(len, -1);
        vb.clear();
        vb.resize(len, -1);
        vf[(off + 1) as usize] = 0;
        vb[(off + 1) as usize] = 0;
        let delta = n - m;
        // With an odd delta the searches meet while extending forward, else backward.
        let front = delta % 2 != 0;
        let (mut k1start, mut k1end, mut k2start, mut k2end) = (0isize, 0isize, 0isize, 0isize);
        let in_v = |i: isize| i >= 0 && (i as usize) < len;
        // Work done: V entries computed plus snake steps taken.
        let mut work = 0usize;
        let budget = self.budget;
        let mut found = None;
        'search: for d in 0..max_d {
            work += (4 * d + 2) as usize;
            if work > budget {
                break;
            }

            let mut k1 = -d + k1start;
            while k1 <= d - k1end {
                let i = (off + k1) as usize;
                let mut x1 = if k1 == -d || (k1 != d && vf[i - 1] < vf[i + 1]) {
                    vf[i + 1]
                } else {
                    vf[i - 1] + 1
                };
                let mut y1 = x1 - k1;
                while x1 >= 0 && y1 >= 0 && x1 < n && y1 < m && a[x1 as usize] == b[y1 as usize] {
                    x1 += 1;
                    y1 += 1;
                    work += 1;
                }
                vf[i] = x1;
                if x1 > n {
                    k1end += 2; // ran off the right of the graph
                } else if y1 > m {
                    k1start += 2; // ran off the bottom of the graph
                } else if front {
                    let k2 = off + delta - k1;
                    if in_v(k2) && vb[k2 as usize] != -1 && x1 >= n - vb[k2 as usize] {
                        found = Some((x1, y1));
                        break 'search;
                    }
                }
                k1 += 2;
            }

            let mut k2 = -d + k2start;
            while k2 <= d - k2end {
                let i = (off + k2) as usize;
                let mut x2 = if k2 == -d || (k2 != d && vb[i - 1] < vb[i + 1]) {
                    vb[i + 1]
                } else {
                    vb[i - 1] + 1
                };
                let mut y2 = x2 - k2;
                while x2 >= 0
                    && y2 >= 0
                    && x2 < n
                    && y2 < m
                    && a[(n - x2 - 1) as usize] == b[(m - y2 - 1) as usize]
                {
                    x2 += 1;
                    y2 += 1;
                    work += 1;
                }
                vb[i] = x2;
                if x2 > n {
                    k2end += 2; // ran off the left of the graph
                } else if y2 > m {
                    k2start += 2; // ran off the top of the graph
                } else if !front {
                    let k1 = off + delta - k2;
                    if in_v(k1) && vf[k1 as usize] != -1 {
                        let x1 = vf[k1 as usize];
                        let y1 = x1 - (k1 - off);
                        if x1 >= n - x2 {
                            found = Some((x1, y1));
                            break 'search;
                        }
                    }
                }
                k2 += 2;
            }
        }
        self.budget = budget.saturating_sub(work);
        let (x, y) = found?;
        Some((a0 + usize::try_from(x).ok()?, b0 + usize::try_from(y).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` numbered lines, each ending in `\n`.
    fn lines(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("line {i}\n")).collect()
    }

    fn join(v: &[String]) -> Vec<u8> {
        v.concat().into_bytes()
    }

    /// `lines(n)` with line `at` (1-based) replaced by `text`.
    fn with_line(n: usize, at: usize, text: &str) -> Vec<String> {
        let mut v = lines(n);
        v[at - 1] = text.to_string();
        v
    }

    fn m(base: &[String], ours: &[String], theirs: &[String]) -> Result<Vec<u8>, NoMerge> {
        merge3(&join(base), &join(ours), &join(theirs))
    }

    #[test]
    fn disjoint_edits_at_both_ends_merge() {
        let base = lines(10);
        let ours = with_line(10, 1, "first\n");
        let theirs = with_line(10, 10, "last\n");
        let mut want = lines(10);
        want[0] = "first\n".into();
        want[9] = "last\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
        assert_eq!(m(&base, &theirs, &ours), Ok(join(&want)));
    }

    #[test]
    fn insert_vs_edit_elsewhere_merges() {
        let base = lines(10);
        let mut ours = lines(10);
        ours.insert(2, "inserted\n".into()); // after line 2
        let theirs = with_line(10, 8, "eight\n");
        let mut want = ours.clone();
        want[8] = "eight\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
        assert_eq!(m(&base, &theirs, &ours), Ok(join(&want)));

        // Insertions at the very start and the very end, edit in the middle.
        let mut ours = lines(10);
        ours.insert(0, "top\n".into());
        ours.push("bottom\n".into());
        let theirs = with_line(10, 5, "five\n");
        let mut want = ours.clone();
        want[5] = "five\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
    }

    #[test]
    fn same_edit_on_both_sides_is_taken_once() {
        let base = lines(10);
        let mut ours = with_line(10, 5, "five\n");
        ours[0] = "one\n".into(); // so that ours != theirs
        let theirs = with_line(10, 5, "five\n");
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&ours)));
        assert_eq!(m(&base, &theirs, &ours), Ok(join(&ours)));

        // The same insertion at the same place.
        let mut ours = lines(10);
        ours.insert(4, "new\n".into());
        let mut theirs = ours.clone();
        theirs[9] = "nine\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&theirs)));

        // The same deletion.
        let mut ours = lines(10);
        ours.remove(3);
        let mut theirs = ours.clone();
        theirs[0] = "one\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&theirs)));
    }

    #[test]
    fn overlapping_edit_is_an_overlap_at_the_right_line() {
        let base = lines(10);
        let ours = with_line(10, 5, "ours\n");
        let theirs = with_line(10, 5, "theirs\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 5 })
        );

        // Ours changes lines 4..=6, theirs line 6: the conflicting region starts at line 4.
        let mut ours = lines(10);
        ours.splice(3..6, ["x\n".to_string(), "y\n".to_string()]);
        let theirs = with_line(10, 6, "six\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 4 })
        );
        assert_eq!(
            m(&base, &theirs, &ours),
            Err(NoMerge::Overlap { at_line: 4 })
        );

        // The first conflict is reported, after a clean change.
        let mut ours = with_line(10, 8, "ours\n");
        ours[1] = "two\n".into();
        let theirs = with_line(10, 8, "theirs\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 8 })
        );
    }

    /// Like git: changes to adjacent lines conflict; one untouched line between them is enough.
    #[test]
    fn adjacent_edits_are_an_overlap() {
        let base = lines(10);
        let ours = with_line(10, 3, "three\n");
        let theirs = with_line(10, 4, "four\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 3 })
        );
        assert_eq!(
            m(&base, &theirs, &ours),
            Err(NoMerge::Overlap { at_line: 3 })
        );

        let theirs = with_line(10, 5, "five\n");
        let mut want = ours.clone();
        want[4] = "five\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
    }

    #[test]
    fn insertion_inside_or_at_the_edge_of_a_change_is_an_overlap() {
        let base = lines(10);
        // Ours replaces lines 3..=5.
        let mut ours = lines(10);
        ours.splice(2..5, ["new\n".to_string()]);
        for (after, at_line) in [(2, 3), (3, 3), (4, 3), (5, 3)] {
            let mut theirs = lines(10);
            theirs.insert(after, "ins\n".into()); // after line `after`
            assert_eq!(
                m(&base, &ours, &theirs),
                Err(NoMerge::Overlap { at_line }),
                "insert after line {after}"
            );
            assert_eq!(m(&base, &theirs, &ours), Err(NoMerge::Overlap { at_line }));
        }
        // One untouched line away on either side: fine.
        for after in [1, 6] {
            let mut theirs = lines(10);
            theirs.insert(after, "ins\n".into());
            assert!(
                m(&base, &ours, &theirs).is_ok(),
                "insert after line {after}"
            );
        }
        // An insertion directly before a changed line: the region starts at that line.
        let ours = with_line(10, 4, "four\n");
        let mut theirs = lines(10);
        theirs.insert(3, "ins\n".into()); // between lines 3 and 4
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 4 })
        );
    }

    #[test]
    fn two_insertions_at_the_same_place() {
        let base = lines(4);
        let mut ours = lines(4);
        ours.insert(2, "a\n".into());
        let mut theirs = lines(4);
        theirs.insert(2, "b\n".into());
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 3 })
        );

        // At the end of the file: one past the last line.
        let mut ours = lines(4);
        ours.push("a\n".into());
        let mut theirs = lines(4);
        theirs.push("b\n".into());
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 5 })
        );
    }

    #[test]
    fn deletion_vs_edit_elsewhere_merges() {
        let base = lines(10);
        let mut ours = lines(10);
        ours.drain(1..3); // lines 2 and 3
        let theirs = with_line(10, 8, "eight\n");
        let mut want = ours.clone();
        want[5] = "eight\n".into();
        assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
        assert_eq!(m(&base, &theirs, &ours), Ok(join(&want)));

        // Deleting everything but the last line vs editing the last line: adjacent.
        let ours = vec!["line 10\n".to_string()];
        let theirs = with_line(10, 10, "ten\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 1 })
        );

        // Deleting a line the other side edited.
        let mut ours = lines(10);
        ours.remove(6);
        let theirs = with_line(10, 7, "seven\n");
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 7 })
        );
    }

    #[test]
    fn empty_base() {
        assert_eq!(
            merge3(b"", b"a\n", b"b\n"),
            Err(NoMerge::Overlap { at_line: 1 })
        );
        assert_eq!(merge3(b"", b"a\n", b"a\n"), Ok(b"a\n".to_vec()));
        assert_eq!(merge3(b"", b"a\n", b""), Ok(b"a\n".to_vec()));
        assert_eq!(merge3(b"", b"", b"b\n"), Ok(b"b\n".to_vec()));
        assert_eq!(merge3(b"", b"", b""), Ok(Vec::new()));
        // Everything deleted on one side, a change on the other.
        assert_eq!(
            merge3(b"a\nb\nc\n", b"", b"a\nb\nC\n"),
            Err(NoMerge::Overlap { at_line: 1 })
        );
    }

    #[test]
    fn missing_final_newline() {
        let base = b"a\nb\nc\nd";
        assert_eq!(
            merge3(base, b"A\nb\nc\nd", b"a\nb\nc\nD"),
            Ok(b"A\nb\nc\nD".to_vec())
        );
        // Appending to a last line without newline changes that line.
        assert_eq!(
            merge3(base, b"A\nb\nc\nd", b"a\nb\nc\nd\ne"),
            Ok(b"A\nb\nc\nd\ne".to_vec())
        );
        // Adding the missing newline is a change of the last line.
        assert_eq!(
            merge3(base, b"a\nb\nc\nd\n", b"a\nb\nc\nD"),
            Err(NoMerge::Overlap { at_line: 4 })
        );
        assert_eq!(
            merge3(base, b"a\nb\nc\nd\n", b"A\nb\nc\nd"),
            Ok(b"A\nb\nc\nd\n".to_vec())
        );
        // A single line without newline.
        assert_eq!(
            merge3(b"x", b"y", b"z"),
            Err(NoMerge::Overlap { at_line: 1 })
        );
    }

    #[test]
    fn crlf_lines() {
        let base = b"one\r\ntwo\r\nthree\r\nfour\r\nfive\r\n";
        assert_eq!(
            merge3(
                base,
                b"ONE\r\ntwo\r\nthree\r\nfour\r\nfive\r\n",
                b"one\r\ntwo\r\nthree\r\nfour\r\nFIVE\r\n"
            ),
            Ok(b"ONE\r\ntwo\r\nthree\r\nfour\r\nFIVE\r\n".to_vec())
        );
        // `\r\n` -> `\n` is a change of that line.
        assert_eq!(
            merge3(
                base,
                b"one\r\ntwo\r\nthree\nfour\r\nfive\r\n",
                b"one\r\ntwo\r\nTHREE\r\nfour\r\nfive\r\n"
            ),
            Err(NoMerge::Overlap { at_line: 3 })
        );
        // A lone `\r` does not end a line.
        assert_eq!(
            merge3(b"a\rb\nc\nd\n", b"a\rB\nc\nd\n", b"a\rb\nc\nD\n"),
            Ok(b"a\rB\nc\nD\n".to_vec())
        );
    }

    #[test]
    fn non_utf8_is_not_text() {
        let base = b"a\nb\nc\n";
        assert_eq!(
            merge3(base, b"\xff\nb\nc\n", b"a\nb\nC\n"),
            Err(NoMerge::NotText)
        );
        assert_eq!(
            merge3(base, b"A\nb\nc\n", b"a\nb\n\xc3\n"),
            Err(NoMerge::NotText)
        );
        assert_eq!(merge3(b"\xfe\n", b"a\n", b"b\n"), Err(NoMerge::NotText));
        // Valid UTF-8 that is not ASCII is text.
        assert_eq!(
            merge3(
                "é\nb\nc\n".as_bytes(),
                "É\nb\nc\n".as_bytes(),
                "é\nb\nç\n".as_bytes()
            ),
            Ok("É\nb\nç\n".as_bytes().to_vec())
        );
    }

    #[test]
    fn nul_is_not_text() {
        let base = b"a\nb\nc\n";
        assert_eq!(
            merge3(base, b"a\0\nb\nc\n", b"a\nb\nC\n"),
            Err(NoMerge::NotText)
        );
        assert_eq!(merge3(b"\0", b"a\n", b"b\n"), Err(NoMerge::NotText));
    }

    #[test]
    fn too_large() {
        let big = vec![b'a'; MAX_MERGE_BYTES + 1];
        assert_eq!(merge3(b"a\n", &big, b"b\n"), Err(NoMerge::TooLarge));
        assert_eq!(merge3(&big, b"a\n", b"b\n"), Err(NoMerge::TooLarge));
        // Size is checked before content.
        let mut big_binary = big.clone();
        big_binary[0] = 0;
        assert_eq!(merge3(b"a\n", b"b\n", &big_binary), Err(NoMerge::TooLarge));
        // Exactly the limit is fine.
        let mut at_limit = vec![b'x'; MAX_MERGE_BYTES];
        at_limit[MAX_MERGE_BYTES - 1] = b'\n';
        assert_eq!(merge3(b"x\n", &at_limit, b"x\n"), Ok(at_limit.clone()));
        let mut ours = b"top\n".to_vec();
        ours.extend_from_slice(b"x\n");
        let mut theirs = b"x\n".to_vec();
        theirs.extend_from_slice(&at_limit[..MAX_MERGE_BYTES - 2]);
        assert!(theirs.len() == MAX_MERGE_BYTES);
        let mut want = b"top\n".to_vec();
        want.extend_from_slice(&theirs);
        assert_eq!(merge3(b"x\n", &ours, &theirs), Ok(want));
    }

    /// The trivial cases need no parsing and so apply to any bytes and any size.
    #[test]
    fn trivial_cases_apply_to_any_bytes() {
        let bin = b"\0\xff\x01".to_vec();
        let big = vec![0u8; MAX_MERGE_BYTES + 1];
        assert_eq!(merge3(b"x", &bin, b"x"), Ok(bin.clone()));
        assert_eq!(merge3(b"x", b"x", &bin), Ok(bin.clone()));
        assert_eq!(merge3(b"x", &bin, &bin), Ok(bin.clone()));
        assert_eq!(merge3(b"x", &big, b"x"), Ok(big.clone()));
    }

    /// Very different versions exhaust the diff budget: the merge still ends, and fails safe.
    #[test]
    fn huge_difference_fails_safe() {
        let n = 20_000;
        let base: Vec<String> = (0..n).map(|i| format!("b{i}\n")).collect();
        let ours: Vec<String> = (0..n).map(|i| format!("o{i}\n")).collect();
        let mut theirs = base.clone();
        theirs[n / 2] = "t\n".into();
        assert_eq!(
            m(&base, &ours, &theirs),
            Err(NoMerge::Overlap { at_line: 1 })
        );
    }

    #[test]
    fn display() {
        assert_eq!(
            NoMerge::Overlap { at_line: 3 }.to_string(),
            "both sides changed the text at line 3"
        );
        assert_eq!(NoMerge::NotText.to_string(), "not a text file");
    }

    // ---- diff -------------------------------------------------------------------------------

    /// Applies `hunks` (a diff of `a` into `b`) to `a`, checking their shape on the way.
    fn apply(a: &[u32], b: &[u32], hunks: &[Hunk]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = 0;
        let mut side_cur = 0;
        for (n, h) in hunks.iter().enumerate() {
            assert!(
                h.base_start <= h.base_end && h.side_start <= h.side_end,
                "{h:?}"
            );
            assert!(
                h.base_start != h.base_end || h.side_start != h.side_end,
                "empty {h:?}"
            );
            if n > 0 {
                assert!(h.base_start > cur, "hunks not separated: {hunks:?}");
            }
            assert_eq!(h.base_start - cur, h.side_start - side_cur);
            out.extend_from_slice(&a[cur..h.base_start]);
            out.extend_from_slice(&b[h.side_start..h.side_end]);
            cur = h.base_end;
            side_cur = h.side_end;
        }
        out.extend_from_slice(&a[cur..]);
        out
    }

    /// Unchanged lines of a diff.
    fn kept(a: &[u32], hunks: &[Hunk]) -> usize {
        a.len()
            - hunks
                .iter()
                .map(|h| h.base_end - h.base_start)
                .sum::<usize>()
    }

    /// Length of the longest common subsequence, by the quadratic table.
    fn lcs_len(a: &[u32], b: &[u32]) -> usize {
        let mut row = vec![0usize; b.len() + 1];
        for x in a {
            let mut diag = 0;
            for (j, y) in b.iter().enumerate() {
                let up = row[j + 1];
                row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
                diag = up;
            }
        }
        row[b.len()]
    }

    #[test]
    fn diff_examples() {
        assert_eq!(diff(&[], &[], DIFF_WORK_BUDGET), vec![]);
        assert_eq!(
            diff(&[1, 2, 3], &[1, 3], DIFF_WORK_BUDGET),
            vec![Hunk {
                base_start: 1,
                base_end: 2,
                side_start: 1,
                side_end: 1
            }]
        );
        assert_eq!(
            diff(&[1, 2, 3], &[1, 9, 9, 3, 4], DIFF_WORK_BUDGET),
            vec![
                Hunk {
                    base_start: 1,
                    base_end: 2,
                    side_start: 1,
                    side_end: 3
                },
                Hunk {
                    base_start: 3,
                    base_end: 3,
                    side_start: 4,
                    side_end: 5
                },
            ]
        );
        // Myers' example: ABCABBA -> CBABAC has edit distance 5.
        let (a, b) = ([1, 2, 3, 1, 2, 2, 1], [3, 2, 1, 2, 1, 3]);
        let h = diff(&a, &b, DIFF_WORK_BUDGET);
        assert_eq!(apply(&a, &b, &h), b);
        assert_eq!(kept(&a, &h), 4);
    }

    #[test]
    fn diff_without_budget_is_coarse_but_correct() {
        let a = [1, 2, 3, 4, 5, 6, 7, 8];
        let b = [1, 9, 3, 4, 10, 6, 7, 8];
        let h = diff(&a, &b, 0);
        assert_eq!(apply(&a, &b, &h), b);
        assert_eq!(
            h,
            vec![Hunk {
                base_start: 1,
                base_end: 5,
                side_start: 1,
                side_end: 5
            }]
        );
    }

    proptest! {
        /// The diff reproduces the side, is made of separated hunks, and is minimal.
        #[test]
        fn diff_is_correct_and_minimal(
            a in prop::collection::vec(0u32..4, 0..40),
            b in prop::collection::vec(0u32..4, 0..40),
        ) {
            let h = diff(&a, &b, DIFF_WORK_BUDGET);
            prop_assert_eq!(apply(&a, &b, &h), b.clone());
            prop_assert_eq!(kept(&a, &h), lcs_len(&a, &b));
        }

        /// A diff out of budget at any point is still a correct diff.
        #[test]
        fn diff_with_any_budget_is_correct(
            a in prop::collection::vec(0u32..4, 0..40),
            b in prop::collection::vec(0u32..4, 0..40),
            budget in 0usize..400,
        ) {
            let h = diff(&a, &b, budget);
            prop_assert_eq!(apply(&a, &b, &h), b);
        }

        /// Property 1: a side left as the base gives the other side, for any bytes.
        #[test]
        fn unchanged_side_gives_the_other(
            b in prop::collection::vec(any::<u8>(), 0..64),
            o in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assert_eq!(merge3(&b, &o, &b), Ok(o.clone()));
            prop_assert_eq!(merge3(&b, &b, &o), Ok(o));
        }

        /// Property 1 on text with many repeated lines.
        #[test]
        fn unchanged_side_gives_the_other_lines(b in text(), o in text()) {
            prop_assert_eq!(merge3(&b, &o, &b), Ok(o.clone()));
            prop_assert_eq!(merge3(&b, &b, &o), Ok(o));
        }

        /// Property 2: ours edits only the first part of the base, theirs only the last, with at
        /// least one untouched line between: the merge is both edits applied.
        #[test]
        fn disjoint_halves_merge(
            (n, gap, ours_ops, theirs_ops) in (2usize..40, 1usize..4).prop_flat_map(|(n, gap)| {
                let gap = gap.min(n);
                (Just(n), Just(gap), ops(n), ops(n))
            })
        ) {
            let h = (n - gap) / 2; // ours: lines [0, h), insertions at 0..=h
            let g1 = h + gap; // theirs: lines [g1, n), insertions at g1..=n
            let ours_ops = owned(&ours_ops, |p| p <= h, |i| i < h, "o");
            let theirs_ops = owned(&theirs_ops, |p| p >= g1, |i| i >= g1, "t");
            let base = build(n, &[]);
            let ours = build(n, &ours_ops);
            let theirs = build(n, &theirs_ops);
            let want = build(n, &[ours_ops, theirs_ops].concat());
            prop_assert_eq!(merge3(&base, &ours, &theirs), Ok(want.clone()));
            prop_assert_eq!(merge3(&base, &theirs, &ours), Ok(want));
        }

        /// Property 3: no panic on arbitrary input, and the result does not depend on which side
        /// is "ours".
        #[test]
        fn never_panics_and_is_symmetric(b in text(), o in text(), t in text()) {
            let r = merge3(&b, &o, &t);
            prop_assert_eq!(&r, &merge3(&b, &t, &o));
            // Past the trivial cases (which hand back a side as it is), a merge is of text only
            // and gives text.
            let trivial = o == t || o == b || t == b;
            if let (Ok(merged), false) = (r, trivial) {
                prop_assert!(std::str::from_utf8(&merged).is_ok() && !merged.contains(&0));
            }
        }

        #[test]
        fn never_panics_on_bytes(
            b in prop::collection::vec(any::<u8>(), 0..48),
            o in prop::collection::vec(any::<u8>(), 0..48),
            t in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            let _ = merge3(&b, &o, &t);
        }
    }

    /// Property 4: a 100k-line file (about 2.8 MB) with three edits per side merges. Run by hand
    /// with a fixed 3 cases, so that a `PROPTEST_CASES` raised for the other tests (which the
    /// `proptest!` macro applies over any config) does not make it take minutes.
    #[test]
    fn large_file_with_few_edits_merges() {
        let n = 100_000;
        let base: Vec<String> = (0..n)
            .map(|i| format!("line {i:06} of the big file\n"))
            .collect();
        // Each side: replace line `r`, delete line `d`, insert before line `i` (r < d < i).
        fn edit(lines: &mut Vec<String>, (r, d, i): (usize, usize, usize), tag: &str) {
            lines.insert(i, format!("{tag} inserted\n"));
            lines.remove(d);
            lines[r] = format!("{tag} replaced\n");
        }
        let strategy = (
            (0usize..16_000, 16_000usize..33_000, 33_000usize..49_999),
            (
                50_000usize..66_000,
                66_000usize..83_000,
                83_000usize..100_000,
            ),
        );
        let config = ProptestConfig {
            cases: 3,
            ..ProptestConfig::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&strategy, |(o, t)| {
            let mut ours = base.clone();
            edit(&mut ours, o, "ours");
            let mut theirs = base.clone();
            edit(&mut theirs, t, "theirs");
            let mut want = base.clone();
            edit(&mut want, t, "theirs"); // the later edits first, so `o` still points right
            edit(&mut want, o, "ours");
            prop_assert!(join(&base).len() < MAX_MERGE_BYTES);
            prop_assert_eq!(m(&base, &ours, &theirs), Ok(join(&want)));
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// Text over a tiny alphabet of lines (many repeats, CRLF, a final line without newline,
    /// now and then a NUL or a non-UTF-8 byte).
    fn text() -> impl Strategy<Value = Vec<u8>> {
        let line = prop::sample::select(vec![
            &b"a\n"[..],
            b"b\n",
            b"c\n",
            b"\n",
            b"a\r\n",
            b"b",
            b"\xc3\xa9\n",
        ]);
        (
            prop::collection::vec(line, 0..24),
            prop::sample::select(vec![&b""[..], b"", b"", b"", b"end", b"\0", b"\xff"]),
        )
            .prop_map(|(lines, tail)| {
                let mut v = lines.concat();
                v.extend_from_slice(tail);
                v
            })
    }

    /// What a side does at a position: insert `ins` lines before line `p` (or at the end for
    /// `p == n`), and to line `p` itself: 0..=2 keep, 3 delete, 4.. replace by two lines.
    #[derive(Debug, Clone, Copy)]
    struct Op {
        ins: usize,
        line: u8,
    }

    fn ops(n: usize) -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (0usize..3, 0u8..6).prop_map(|(ins, line)| Op { ins, line }),
            n + 1,
        )
    }

    /// The ops of one side (named `tag`) that it owns: insertions at positions `pos_ok`, line
    /// edits of lines `line_ok`; each with its position.
    fn owned(
        ops: &[Op],
        pos_ok: impl Fn(usize) -> bool,
        line_ok: impl Fn(usize) -> bool,
        tag: &'static str,
    ) -> Vec<(usize, Op, &'static str)> {
        let n = ops.len() - 1;
        ops.iter()
            .enumerate()
            .map(|(p, op)| {
                let ins = if pos_ok(p) { op.ins } else { 0 };
                let line = if p < n && line_ok(p) { op.line } else { 0 };
                (p, Op { ins, line }, tag)
            })
            .collect()
    }

    /// The base (`n` lines `b{i}`) with `ops` applied; at most one op per position may do
    /// something.
    fn build(n: usize, ops: &[(usize, Op, &str)]) -> Vec<u8> {
        let mut out = String::new();
        for p in 0..=n {
            let mut keep = true;
            for &(q, op, tag) in ops.iter().filter(|(q, _, _)| *q == p) {
                for j in 0..op.ins {
                    out.push_str(&format!("{tag}-ins-{q}-{j}\n"));
                }
                match op.line {
                    3 => keep = false,
                    4.. => {
                        keep = false;
                        out.push_str(&format!("{tag}-rep-{q}-a\n{tag}-rep-{q}-b\n"));
                    }
                    _ => {}
                }
            }
            if p < n && keep {
                out.push_str(&format!("b{p}\n"));
            }
        }
        out.into_bytes()
    }
}
