//! A job's settings, checked once and turned into what a run needs.

use std::sync::Arc;

use crate::config::{JobSettings, Threshold};
use crate::incremental::Incremental;
use crate::record::RecordShape;
use crate::source::SourceSpec;
use crate::store::{Ident, TableSpec};

/// A job, checked and ready to run any number of times.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub table: TableSpec,
    pub(super) shape: Arc<RecordShape>,
    pub(super) source: SourceSpec,
    pub(super) incremental: Option<Incremental>,
    pub(super) max_rejected: Threshold,
}

impl Job {
    /// # Errors
    /// What is wrong with the job; configuration validation catches all of
    /// these first, so this only fails for settings built by hand.
    pub fn from_settings(settings: &JobSettings) -> Result<Self, String> {
        let shape = RecordShape::with_key_entries(&settings.key, &settings.hash_exclude)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        let table = TableSpec::new(Ident::table(&settings.table)?, shape.key_fields());
        let incremental = settings
            .incremental
            .as_ref()
            .map(Incremental::new)
            .transpose()
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        Ok(Self {
            name: settings.name.clone(),
            table,
            shape: Arc::new(shape),
            source: SourceSpec::new(settings)?,
            incremental,
            max_rejected: settings.max_rejected,
        })
    }
}
