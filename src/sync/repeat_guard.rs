//! The repeated-page guard: an API that serves the same page again either
//! ignores the pagination parameters (the run would loop, or stop early and
//! call it complete) or clamps positions past its end to its last page (the
//! walk is over). Which one, the page's place in the walk says
//! ([`IfRepeated`]), and for a full page from page 3 on, the page after it.
//!
//! Pages are compared by a fingerprint of their keys and rejects in order.
//! Pure: no I/O.

use super::error::SyncError;
use crate::source::IfRepeated;

/// What to do with a page, judged against the one before.
#[derive(Debug)]
pub(super) enum Judgement {
    /// A page of its own: write it.
    Write,
    /// A full page served again: written as nothing (its records are the
    /// previous page's) until the next page tells clamping from staleness.
    Hold,
    /// An API clamping past its end: the walk ends here and nothing of the
    /// page is written (its records are not part of the source, and counting
    /// them as duplicates would skew the duplicate ratio).
    EndsHere,
    /// The run fails.
    Fails(SyncError),
}

#[derive(Debug, Default)]
pub(super) struct RepeatGuard {
    /// The previous page's number and fingerprint.
    previous: Option<(u64, u128)>,
    /// A full page served again, from page 3 on: `(page, previous)`.
    suspect: Option<(u64, u64)>,
}

impl RepeatGuard {
    /// Judges page `number` by its `fingerprint` (`None` for a page with no
    /// record at all); `is_last` when the walk would end with it anyway.
    pub(super) fn judge(
        &mut self,
        number: u64,
        fingerprint: Option<u128>,
        if_repeated: IfRepeated,
        is_last: bool,
    ) -> Judgement {
        let repeats = matches!(
            (self.previous, fingerprint),
            (Some((_, last)), Some(current)) if last == current
        );
        let previous = self.previous.map_or(0, |(previous, _)| previous);
        let suspect = self.suspect.take();
        if let Some((page, previous)) = suspect
            && !repeats
            && fingerprint.is_some()
        {
            // Page N served again as N+1, then other records: N+1's own
            // records were never seen.
            return Judgement::Fails(SyncError::RepeatedPage { page, previous });
        }
        let judgement = if !repeats {
            Judgement::Write
        } else {
            match if_repeated {
                IfRepeated::Fails => {
                    return Judgement::Fails(SyncError::RepeatedPage {
                        page: number,
                        previous,
                    });
                }
                IfRepeated::EndsIfRepeatedAgain if suspect.is_none() && !is_last => {
                    self.suspect = Some((number, previous));
                    Judgement::Hold
                }
                _ => {
                    tracing::info!(
                        page = number,
                        previous,
                        "The API served the previous page again for a position past its end; \
                         pagination ends here."
                    );
                    Judgement::EndsHere
                }
            }
        };
        self.previous = fingerprint.map(|f| (number, f)).or(self.previous);
        judgement
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_all(if_repeated: IfRepeated, pages: &[Option<u128>]) -> Vec<&'static str> {
        let mut guard = RepeatGuard::default();
        let mut out = Vec::new();
        for (i, &fingerprint) in pages.iter().enumerate() {
            let number = i as u64 + 1;
            out.push(match guard.judge(number, fingerprint, if_repeated, false) {
                Judgement::Write => "write",
                Judgement::Hold => "hold",
                Judgement::EndsHere => "ends",
                Judgement::Fails(_) => "fails",
            });
            if out.last() != Some(&"write") && out.last() != Some(&"hold") {
                break;
            }
        }
        out
    }

    #[test]
    fn a_page_served_again_fails_where_it_means_a_loop() {
        assert_eq!(
            judge_all(IfRepeated::Fails, &[Some(1), Some(2), Some(2)]),
            ["write", "write", "fails"]
        );
    }

    #[test]
    fn a_page_served_again_past_the_end_ends_the_walk() {
        assert_eq!(
            judge_all(IfRepeated::Ends, &[Some(1), Some(1)]),
            ["write", "ends"]
        );
    }

    #[test]
    fn a_full_page_served_again_is_clamping_only_if_served_a_third_time() {
        let again = IfRepeated::EndsIfRepeatedAgain;
        assert_eq!(
            judge_all(again, &[Some(1), Some(2), Some(2), Some(2)]),
            ["write", "write", "hold", "ends"]
        );
        assert_eq!(
            judge_all(again, &[Some(1), Some(2), Some(2), Some(3)]),
            ["write", "write", "hold", "fails"],
            "page 3's own records were never seen"
        );
    }

    #[test]
    fn pages_without_records_never_count_as_repeats() {
        assert_eq!(
            judge_all(IfRepeated::Fails, &[Some(1), None, None, Some(1)]),
            ["write", "write", "write", "fails"],
            "an empty page is compared with nothing; the last one with records is kept"
        );
    }
}
