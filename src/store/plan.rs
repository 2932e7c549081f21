//! Planning a batch's write, the same for every backend: which rows to look
//! up, how each row and reject is counted, and which rows and rejects to
//! write. The backends only answer "the stored hashes of these rows" and
//! "which of these rejects are stored".

use std::collections::HashSet;

use super::TableSpec;
use crate::batch::Batch;
use crate::record::ContentHash;
use crate::run::Counts;

/// What a plan asks a backend: the stored hashes of the rows `asked`
/// (indexes into `batch.rows`), and which of the batch's rejects the job
/// has stored already.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lookup<'a> {
    pub job: &'a str,
    pub table: &'a TableSpec,
    pub batch: &'a Batch,
    pub asked: &'a [usize],
}

/// A backend's answer to a [`Lookup`].
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Per row of the batch: its key's stored hash, `None` for a key not
    /// stored (or not asked about).
    pub hashes: Vec<Option<ContentHash>>,
    /// Per row of the batch: its stored row is marked deleted.
    pub marked: Vec<bool>,
    /// The content hashes of the batch's rejects that are stored.
    pub rejects: HashSet<ContentHash>,
}

/// Where a row's count goes once compared with what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Inserted,
    Updated,
    Unchanged,
    /// A key marked deleted that came back: written (its mark cleared),
    /// counted as updated.
    Restored,
    /// A tombstone for a live stored key: the key is deleted (marked or
    /// removed), counted as deleted.
    Deletes,
}

fn classify(
    existing: Option<&ContentHash>,
    marked: bool,
    tombstone: bool,
    new: &ContentHash,
) -> Outcome {
    if tombstone {
        // One for a key not stored, or stored as deleted already, changes
        // nothing.
        return match existing {
            Some(_) if !marked => Outcome::Deletes,
            _ => Outcome::Unchanged,
        };
    }
    match existing {
        None => Outcome::Inserted,
        Some(_) if marked => Outcome::Restored,
        Some(old) if old == new => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    }
}

/// What a batch needs, once compared with what is stored: its counts, which
/// rows (indexes into `Batch::rows`) are new, changed or restored (marked
/// deleted and back), and which rejects (indexes into `Batch::rejects`) are
/// not stored yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WritePlan {
    pub counts: Counts,
    pub inserts: Vec<usize>,
    pub updates: Vec<usize>,
    pub restores: Vec<usize>,
    /// Tombstones whose key is stored and live: deleted in the batch's
    /// transaction.
    pub tombstoned: Vec<usize>,
    pub new_rejects: Vec<usize>,
}

impl WritePlan {
    /// Whether the batch needs a transaction: rows or new rejects to write,
    /// or a watermark to move. A batch of unchanged rows and known rejects
    /// needs none (its counts are committed alone).
    pub fn needs_commit(&self, moves_watermark: bool) -> bool {
        !self.inserts.is_empty()
            || !self.updates.is_empty()
            || !self.restores.is_empty()
            || !self.tombstoned.is_empty()
            || !self.new_rejects.is_empty()
            || moves_watermark
    }
}

/// The rejects of `batch` whose hash is not in `stored`, each once.
fn new_rejects(batch: &Batch, stored: &HashSet<ContentHash>) -> Vec<usize> {
    let mut seen = HashSet::new();
    (0..batch.rejects.len())
        .filter(|&i| {
            let hash = batch.rejects[i].content_hash;
            !stored.contains(&hash) && seen.insert(hash)
        })
        .collect()
}

impl Stored {
    /// Nothing known stored yet, for a batch of `rows` rows.
    pub fn for_rows(rows: usize) -> Self {
        Self {
            hashes: vec![None; rows],
            marked: vec![false; rows],
            ..Self::default()
        }
    }

    /// What a lookup found for the key at `asked[position]` (its position
    /// in the statement, from 0): the stored hash, or `None` for a key not
    /// stored, and whether its row is marked deleted. A hash of another
    /// length (written by hand, say) never matches. Answers for positions
    /// outside `asked` are ignored.
    pub fn note(&mut self, asked: &[usize], position: i64, stored: Option<Vec<u8>>, marked: bool) {
        let row = usize::try_from(position)
            .ok()
            .and_then(|i| asked.get(i).copied())
            .filter(|&row| row < self.hashes.len());
        if let Some(row) = row {
            self.hashes[row] = stored.map(|hash| hash.try_into().unwrap_or([0; 16]));
            self.marked[row] = marked;
        }
    }
}

/// The rows of `batch` whose stored hash a plan needs. In a table that was
/// empty when the run began, only keys this run already wrote can be
/// stored: the repeats alone are asked about, and a first load looks up
/// nothing.
pub(super) fn rows_to_look_up(batch: &Batch, empty_at_start: bool) -> Vec<usize> {
    (0..batch.rows.len())
        .filter(|&i| !empty_at_start || batch.rows[i].repeat)
        .collect()
}

/// Counts a batch and picks the rows to write, given each row's stored
/// hash (`None` for a key not stored, or not asked about) and the rejects
/// the job has stored already.
pub(super) fn write_plan(
    batch: &Batch,
    existing: &[Option<ContentHash>],
    marked: &[bool],
    stored_rejects: &HashSet<ContentHash>,
) -> WritePlan {
    let mut plan = WritePlan {
        new_rejects: new_rejects(batch, stored_rejects),
        counts: Counts {
            fetched: batch.fetched,
            duplicate: batch.collapsed,
            rejected: batch.rejects.len() as u64,
            pages: batch.pages,
            ..Counts::default()
        },
        ..WritePlan::default()
    };
    for (index, (row, stored)) in batch.rows.iter().zip(existing).enumerate() {
        let is_marked = marked.get(index).copied().unwrap_or(false);
        let outcome = classify(
            stored.as_ref(),
            is_marked,
            row.record.tombstone,
            &row.record.content_hash,
        );
        match outcome {
            Outcome::Inserted => plan.inserts.push(index),
            Outcome::Updated => plan.updates.push(index),
            Outcome::Restored => plan.restores.push(index),
            Outcome::Deletes => plan.tombstoned.push(index),
            Outcome::Unchanged => {}
        }
        let counter = match (row.repeat, outcome) {
            // A deletion counts as one, repeat or not: `deleted` counts keys.
            (_, Outcome::Deletes) => &mut plan.counts.deleted,
            (true, _) => &mut plan.counts.duplicate,
            (false, Outcome::Inserted) => &mut plan.counts.inserted,
            (false, Outcome::Updated | Outcome::Restored) => &mut plan.counts.updated,
            (false, Outcome::Unchanged) => &mut plan.counts.unchanged,
        };
        *counter += 1;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchRow;
    use crate::record::RecordShape;
    use serde_json::json;

    #[test]
    fn appended_pages_count_as_if_written_apart() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let page = |rows: Vec<(serde_json::Value, bool)>| Batch {
            fetched: rows.len() as u64,
            rows: rows
                .into_iter()
                .map(|(value, repeat)| BatchRow {
                    record: shape.read(&value).unwrap(),
                    repeat,
                })
                .collect(),
            pages: 1,
            ..Batch::default()
        };
        let mut batch = page(vec![(json!({"id": 1}), false), (json!({"id": 2}), false)]);
        let mut second = page(vec![(json!({"id": 3}), false), (json!({"id": 9}), true)]);
        second.collapsed = 1;
        second.fetched += 1;
        batch.append(second);

        let plan = write_plan(
            &batch,
            &[None, None, None, Some([0; 16])],
            &[],
            &HashSet::new(),
        );
        assert_eq!(
            plan.counts,
            Counts {
                fetched: 5,
                inserted: 3,
                duplicate: 2,
                pages: 2,
                ..Counts::default()
            },
            "as page 1 (2 inserted) then page 2 (1 inserted, 2 duplicates)"
        );
    }

    #[test]
    fn a_table_empty_at_start_looks_up_only_the_runs_repeats() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let batch = Batch {
            rows: [(1, false), (2, true), (3, false)]
                .into_iter()
                .map(|(id, repeat)| BatchRow {
                    record: shape.read(&json!({ "id": id })).unwrap(),
                    repeat,
                })
                .collect(),
            ..Batch::default()
        };
        assert_eq!(rows_to_look_up(&batch, true), vec![1]);
        assert_eq!(rows_to_look_up(&batch, false), vec![0, 1, 2]);
    }

    #[test]
    fn plan_counts_every_record_once_and_writes_only_changes() {
        let shape = RecordShape::new(&["id".into()], &[]).unwrap();
        let row = |value: serde_json::Value, repeat| BatchRow {
            record: shape.read(&value).unwrap(),
            repeat,
        };
        let batch = Batch {
            rows: vec![
                row(json!({"id": 1, "v": 1}), false),
                row(json!({"id": 2, "v": 1}), false),
                row(json!({"id": 3, "v": 2}), false),
                row(json!({"id": 4, "v": 2}), true),
                row(json!({"id": 5, "v": 2}), true),
            ],
            rejects: vec![crate::record::Rejected::of_text(
                br#"{"v": 1}"#,
                shape.read(&json!({"v": 1})).unwrap_err(),
            )],
            fetched: 7,
            collapsed: 1,
            pages: 1,
        };
        let same = |i: usize| Some(batch.rows[i].record.content_hash);
        let stored = [None, same(1), Some([0; 16]), Some([0; 16]), same(4)];
        let plan = write_plan(&batch, &stored, &[], &HashSet::new());
        assert_eq!(
            plan.counts,
            Counts {
                fetched: 7,
                inserted: 1,
                updated: 1,
                unchanged: 1,
                duplicate: 3,
                rejected: 1,
                pages: 1,
                ..Counts::default()
            }
        );
        assert_eq!(plan.inserts, vec![0], "the new row");
        assert_eq!(
            plan.updates,
            vec![2, 3],
            "the changed row and a changed repeat"
        );
        assert!(plan.needs_commit(false));
        let quiet = Batch::default();
        let none = HashSet::new();
        assert!(!write_plan(&quiet, &[], &[], &none).needs_commit(false));
        assert!(
            write_plan(&quiet, &[], &[], &none).needs_commit(true),
            "a watermark to move"
        );
        assert_eq!(plan.new_rejects, vec![0]);
        let marked = [false, true, true, false, true];
        let back = write_plan(&batch, &stored, &marked, &HashSet::new());
        assert_eq!(
            back.restores,
            vec![1, 2, 4],
            "a marked key restored, changed or not, repeat or not"
        );
        assert_eq!(back.updates, vec![3]);
        assert_eq!(
            (back.counts.updated, back.counts.unchanged),
            (2, 0),
            "restores count as updated; a restored repeat as a duplicate"
        );
        let known: HashSet<ContentHash> = [batch.rejects[0].content_hash].into();
        assert!(
            write_plan(&batch, &stored, &[], &known)
                .new_rejects
                .is_empty(),
            "a reject stored by an earlier run is not stored again"
        );
    }
}
