//! Who leads a view: rotation over the validators the chain shows to be working.
//!
//! The leader of view v is a function of v and of the chain ending at the block a proposal for v
//! extends (its justify QC's block, the *anchor*). Every validator holding that chain computes the
//! same leader, whatever its committed height, clock or own observations. Only what block hashes
//! cover is used: each block's view, proposer and `failed_leaders`. QC signer bitmaps are not:
//! each bank keeps its own copy of a QC (`block::block_hash`), so bitmaps differ between banks.
//!
//! * The first two views after the anchor (its view + 1, and + 2 after one failed view) are led by
//!   `candidates[v % candidates.len()]`: every validator but the *suspects*, at most f of them.
//!   Later views (two failures in a row, or validators disagreeing on the anchor) fall back to
//!   plain round robin, `v % n`, which needs no anchor, so any disagreement ends there.
//! * A block records, in `failed_leaders`, the leaders this rule chose for the views between its
//!   parent's view and its own that produced nothing certified (at most the two chosen from the
//!   parent; round-robin views are not blamed, they follow failures of others). Validators refuse
//!   a block whose record differs from their own computation, so the record is the chain's
//!   agreed memory of who failed; without it, finding who led a skipped view would mean
//!   recomputing every earlier leader back to genesis.
//! * Over the last `window_blocks(n)` blocks ending at the anchor, a validator is a suspect when
//!   its latest recorded failure is later than its latest block, until `retry_views` have passed
//!   since that failure; each failure in the window doubles the wait. A suspect shows it is back
//!   only by leading a retry view well: nothing else it does is on the chain.
//! * At most f suspects are excluded (those that failed most recently), so at least n - f
//!   validators, 2f+1 of them when n = 3f+1, always take turns, and with no suspect the rule is
//!   round robin.

use std::cmp::Reverse;

/// What the leader choice needs of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub view: u64,
    pub proposer: usize,
    /// Validators the block records as failed leaders.
    pub failed: Vec<usize>,
}

/// How many blocks back from the anchor the choice looks. Several times the longest retry wait:
/// the wait doubles per failure *in the window*, so a short window forgets a bank's older failures
/// and retries it again and again (with 128n blocks and a cap of 64n views, a crashed bank under
/// load still cost a view timeout every second or two: a third of the throughput).
pub fn window_blocks(n: usize) -> usize {
    1024 * n
}

/// Views a suspect with `failures` recorded failures in the window waits before it is tried again:
/// 2n, doubling per failure, at most 512n, so a crashed bank costs one view timeout every few
/// hundred rotations instead of one per rotation.
pub fn retry_views(n: usize, failures: u32) -> u64 {
    (2 * n as u64) << failures.saturating_sub(1).min(8)
}

/// The validators that may lead a view chosen from the anchor: all but at most f suspects.
pub fn candidates(n: usize, chain: &[Entry], view: u64) -> Vec<usize> {
    let f = (n - 1) / 3;
    let mut live = vec![0u64; n];
    let mut failed_at = vec![0u64; n];
    let mut failures = vec![0u32; n];
    for e in chain {
        if e.proposer < n {
            live[e.proposer] = live[e.proposer].max(e.view);
        }
        for &i in e.failed.iter().filter(|i| **i < n) {
            failed_at[i] = failed_at[i].max(e.view);
            failures[i] = failures[i].saturating_add(1);
        }
    }
    let mut suspects: Vec<usize> =
        (0..n).filter(|&i| failed_at[i] > live[i] && view < failed_at[i].saturating_add(retry_views(n, failures[i]))).collect();
    suspects.sort_by_key(|&i| (Reverse(failed_at[i]), Reverse(failures[i]), i));
    suspects.truncate(f);
    (0..n).filter(|i| !suspects.contains(i)).collect()
}

/// The leaders of the two views after the anchor (of view `anchor_view`, with `chain` the blocks
/// ending at it, oldest first); `round_robin` gives the plain rotation (a test baseline).
pub fn leaders_after(n: usize, chain: &[Entry], anchor_view: u64, round_robin: bool) -> [usize; 2] {
    let chain = &chain[chain.len().saturating_sub(window_blocks(n))..];
    [1, 2].map(|k| {
        let view = anchor_view.saturating_add(k);
        if round_robin {
            return (view % n as u64) as usize;
        }
        let c = candidates(n, chain, view);
        c[(view % c.len() as u64) as usize]
    })
}

/// The leader of `view`, given `after` = `leaders_after` of its anchor.
pub fn leader(n: usize, after: [usize; 2], anchor_view: u64, view: u64) -> usize {
    match view.saturating_sub(anchor_view) {
        k @ 1..=2 => after[k as usize - 1],
        _ => (view % n as u64) as usize,
    }
}

/// The failed leaders a block of `view` extending the anchor records, sorted, no repeats.
pub fn failed_leaders(after: [usize; 2], anchor_view: u64, view: u64) -> Vec<usize> {
    let skipped = view.saturating_sub(anchor_view.saturating_add(1)).min(2) as usize;
    let mut failed = after[..skipped].to_vec();
    failed.sort_unstable();
    failed.dedup();
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(view: u64, proposer: usize, failed: &[usize]) -> Entry {
        Entry { view, proposer, failed: failed.to_vec() }
    }

    /// A chain where every view produced its block, led round robin.
    fn healthy(n: usize, views: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        views.map(|v| block(v, (v % n as u64) as usize, &[])).collect()
    }

    /// Extends `chain` by one block in `view`, as the rule says it must look.
    fn extend(n: usize, chain: &mut Vec<Entry>, view: u64) {
        let anchor = chain.last().map_or(0, |e| e.view);
        let after = leaders_after(n, chain, anchor, false);
        let proposer = leader(n, after, anchor, view);
        chain.push(block(view, proposer, &failed_leaders(after, anchor, view)));
    }

    #[test]
    fn with_nobody_failing_it_is_round_robin() {
        for n in [1, 4, 7] {
            let chain = healthy(n, 1..=50);
            assert_eq!(leaders_after(n, &chain, 50, false), [(51 % n as u64) as usize, (52 % n as u64) as usize]);
            assert_eq!(leaders_after(n, &[], 0, false), [1 % n, 2 % n]);
        }
    }

    #[test]
    fn the_two_views_after_the_anchor_use_it_and_later_views_are_round_robin() {
        let after = [3, 1];
        assert_eq!(leader(4, after, 10, 11), 3);
        assert_eq!(leader(4, after, 10, 12), 1);
        assert_eq!(leader(4, after, 10, 13), 1); // 13 % 4
        assert_eq!(leader(4, after, 10, 14), 2);
        assert_eq!(failed_leaders(after, 10, 11), Vec::<usize>::new());
        assert_eq!(failed_leaders(after, 10, 12), vec![3]);
        assert_eq!(failed_leaders(after, 10, 13), vec![1, 3]);
        assert_eq!(failed_leaders(after, 10, 40), vec![1, 3]);
        assert_eq!(failed_leaders([2, 2], 10, 13), vec![2]);
    }

    #[test]
    fn a_validator_that_failed_is_skipped_and_its_turns_shared_by_the_others() {
        let n = 4;
        let mut chain = healthy(n, 1..=40);
        // View 41 was 1's and failed; 42's leader (chosen from 40) recorded it.
        let after = leaders_after(n, &chain, 40, false);
        assert_eq!(after, [1, 2]);
        chain.push(block(42, 2, &failed_leaders(after, 40, 42)));
        assert_eq!(chain.last().unwrap().failed, vec![1]);
        let mut led = [0; 4];
        for v in 43..43 + 3 * 2 {
            extend(n, &mut chain, v);
            led[chain.last().unwrap().proposer] += 1;
        }
        assert_eq!(led, [2, 0, 2, 2], "{chain:?}");
    }

    #[test]
    fn a_suspect_is_tried_again_later_and_later_and_is_back_when_it_leads_well() {
        let n = 4;
        let mut chain = healthy(n, 1..=8);
        // Validator 1 is down: drive the chain as the rule says, its views failing.
        let mut retries = Vec::new();
        let mut view = 9;
        while view < 2000 {
            let anchor = chain.last().unwrap().view;
            let after = leaders_after(n, &chain, anchor, false);
            if leader(n, after, anchor, view) == 1 {
                retries.push(view);
                view += 1; // failed; the next view's leader records it
                continue;
            }
            let failed = failed_leaders(after, anchor, view);
            chain.push(block(view, leader(n, after, anchor, view), &failed));
            view += 1;
        }
        let gaps: Vec<u64> = retries.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).take(4).all(|g| g[1] > g[0]), "waits grow: {retries:?}");
        assert!(retries.len() <= 2000 / 40, "{} failed views in 2000, round robin would fail 500", retries.len());
        assert!(gaps.iter().all(|g| *g <= retry_views(n, u32::MAX) + 2 * n as u64), "{gaps:?}");
        // Back: it leads its retry view well, and takes its turns again.
        while leaders_after(n, &chain, chain.last().unwrap().view, false)[0] != 1 {
            let v = chain.last().unwrap().view + 1;
            extend(n, &mut chain, v);
        }
        let v = chain.last().unwrap().view;
        chain.push(block(v + 1, 1, &[]));
        assert_eq!(candidates(n, &chain, v + 2), vec![0, 1, 2, 3]);
    }

    #[test]
    fn never_more_than_f_excluded() {
        // Everybody failed (a long outage): only f sit out, the latest to fail.
        let chain = vec![block(10, 0, &[]), block(20, 0, &[1, 2]), block(21, 0, &[3]), block(22, 2, &[0])];
        assert_eq!(candidates(4, &chain, 23), vec![1, 2, 3]);
        assert_eq!(candidates(7, &chain, 23).len(), 5);
        assert_eq!(candidates(7, &chain, 23), vec![1, 2, 4, 5, 6]);
        // n < 4: f = 0, nobody is excluded.
        assert_eq!(candidates(3, &[block(5, 0, &[1, 2])], 6), vec![0, 1, 2]);
    }

    #[test]
    fn a_bank_that_behaves_only_at_its_retries_still_waits_longer_each_time() {
        // It leads its retry view well, then withholds at its next turn: the window keeps every
        // failure, so the waits keep growing although it was live in between.
        let n = 4;
        let mut chain = healthy(n, 1..=8);
        let mut failures = Vec::new();
        let mut view = 9;
        let mut behave = false;
        while view < 3000 {
            let anchor = chain.last().unwrap().view;
            let after = leaders_after(n, &chain, anchor, false);
            let l = leader(n, after, anchor, view);
            if l == 3 && !behave {
                failures.push(view);
                behave = true;
                view += 1;
                continue;
            }
            if l == 3 {
                behave = false;
            }
            chain.push(block(view, l, &failed_leaders(after, anchor, view)));
            view += 1;
        }
        assert!(failures.len() <= 3000 / 40, "{} withheld views: {failures:?}", failures.len());
        let led = chain.iter().filter(|e| e.proposer == 3).count();
        assert!(led <= failures.len() + 1, "it led {led} blocks");
    }

    #[test]
    fn what_the_chain_does_not_hold_counts_as_nothing() {
        // Bad indexes from a (certified, so impossible) malformed block are ignored.
        let chain = vec![block(3, 9, &[7, 8])];
        assert_eq!(candidates(4, &chain, 4), vec![0, 1, 2, 3]);
    }
}
