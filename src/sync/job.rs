//! A job's settings, checked once and turned into what a run needs.

use std::sync::Arc;

use std::time::Duration;

use crate::config::{Deletions, JobSettings, Threshold};
use crate::incremental::Incremental;
use crate::record::RecordShape;
use crate::source::{HostThrottles, SourceSpec};
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
    pub(super) deletions: Deletions,
    pub(super) max_deleted: Threshold,
    pub(super) full_refresh: Option<Duration>,
    /// Read everything on the next run, whatever the watermark says
    /// (`apisync sync --full`); only incremental jobs read less otherwise.
    pub full: bool,
}

impl Job {
    /// # Errors
    /// What is wrong with the job; configuration validation catches all of
    /// these first, so this only fails for settings built by hand.
    ///
    /// A job built alone shares no throttle with another (see
    /// [`Job::all_from_settings`]).
    pub fn from_settings(settings: &JobSettings) -> Result<Self, String> {
        Self::with_hosts(settings, &HostThrottles::default())
    }

    /// The jobs of one configuration, built together so that those with
    /// `rate_limit_scope = "host"` on one origin share its throttle.
    ///
    /// # Errors
    /// The first job that does not build, by name, and why.
    pub fn all_from_settings<'a>(
        settings: impl IntoIterator<Item = &'a JobSettings>,
    ) -> Result<Vec<Self>, (String, String)> {
        let hosts = HostThrottles::default();
        settings
            .into_iter()
            .map(|job| Self::with_hosts(job, &hosts).map_err(|e| (job.name.clone(), e)))
            .collect()
    }

    fn with_hosts(settings: &JobSettings, hosts: &HostThrottles) -> Result<Self, String> {
        let mut shape = RecordShape::with_key_entries(&settings.key, &settings.hash_exclude)
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        if let Some(pointer) = &settings.tombstone {
            shape = shape.with_tombstone(pointer);
        }
        let mut table = TableSpec::new(Ident::table(&settings.table)?, shape.key_fields());
        if settings.deletions == Deletions::Mark {
            table = table.marking_deletions()?;
        }
        if settings.history {
            table = table.keeping_history()?;
        }
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
            source: SourceSpec::new(settings, hosts)?,
            incremental,
            max_rejected: settings.max_rejected,
            deletions: settings.deletions,
            max_deleted: settings.max_deleted,
            full_refresh: settings.full_refresh,
            full: false,
        })
    }
}
