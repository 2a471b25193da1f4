//! Garbage collection of staging inodes, with every failure kept to the item
//! it concerns: the collector deletes inodes recorded as abandoned one row at
//! a time (a row that fails waits for the next round, a row that can never
//! be collected leaves the queue with the reason), and the staging sweep
//! looks at each staging directory on its own. Staging files that no session
//! row names (another deployment sharing the root, a file someone put there)
//! are recorded only once older than the orphan grace period.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::ingest::{CompletionError, Ingest};
use crate::store::{Abandoned, Collected, Leftover};
use moosefs::{DirEntry, MfsError, MfsPath, Name};

/// What one collector batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Inodes deleted (or found gone already).
    pub deleted: u64,
    /// Rows that could not be collected, with why: left for the next round
    /// (MooseFS trouble) or ended with the reason (not a MooseFS path).
    pub failures: Vec<String>,
}

/// What one staging sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Staging files recorded as abandoned.
    pub recorded: u64,
    /// Entries or directories that could not be looked at, with why.
    pub failures: Vec<String>,
}

/// How long staging files are left alone by the sweep.
#[derive(Debug, Clone, Copy)]
pub struct SweepGrace {
    /// After their session ended.
    pub ended: Duration,
    /// Since their last change, for files of no known session.
    pub orphan: Duration,
}

/// How one abandoned row ended this round.
enum RowEnd {
    /// Deleted, or the recorded inode is not there any more.
    Gone,
    /// Never collectable: ended with this reason.
    Uncollectable(String),
}

impl Ingest {
    /// Deletes up to `limit` abandoned staging inodes; returns how many.
    /// Rows that fail are left out (logged; see [`Ingest::collect_garbage_batch`]).
    pub async fn collect_garbage(&self, limit: i64) -> Result<u64, CompletionError> {
        Ok(self.collect_garbage_batch(limit).await?.deleted)
    }

    /// Deletes up to `limit` abandoned staging inodes, each row on its own:
    /// one that fails does not stop the others. Fails only if the batch
    /// cannot be claimed or recorded (PostgreSQL).
    pub async fn collect_garbage_batch(&self, limit: i64) -> Result<GcReport, CompletionError> {
        let failures = std::sync::Mutex::new(Vec::new());
        let failed = |line: String| {
            failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line)
        };
        let deleted = self
            .store
            .collect_abandoned(limit, |row: Abandoned| {
                let failed = &failed;
                async move {
                    match self.collect_row(&row).await {
                        Ok(RowEnd::Gone) => Collected::Deleted,
                        Ok(RowEnd::Uncollectable(why)) => {
                            tracing::error!(id = row.id, path = %row.path, %why, "abandoned row cannot be collected");
                            failed(format!("row {}: {why}", row.id));
                            Collected::Uncollectable(why)
                        }
                        Err(e) => {
                            tracing::warn!(id = row.id, path = %row.path, error = %e, "cannot collect; next round");
                            failed(format!("row {}: {e}", row.id));
                            Collected::Kept
                        }
                    }
                }
            })
            .await?;
        let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(GcReport { deleted, failures })
    }

    /// Deletes one recorded inode if it is still at its recorded path.
    async fn collect_row(&self, row: &Abandoned) -> Result<RowEnd, MfsError> {
        let path = match MfsPath::parse(&row.path) {
            Ok(p) => p,
            Err(e) => return Ok(RowEnd::Uncollectable(e.to_string())),
        };
        let Some((parent_path, name)) = path.split_last() else {
            return Ok(RowEnd::Uncollectable("the path is the root".into()));
        };
        let parent = match self.mfs.resolve(&parent_path).await {
            Ok((p, _)) => p,
            Err(MfsError::NotFound(_) | MfsError::NotDirectory(_)) => return Ok(RowEnd::Gone),
            Err(e) => return Err(e),
        };
        match self.mfs.lookup(parent, name).await {
            // Only the very inode that was recorded.
            Ok((inode, _)) if inode as i64 == row.inode => {
                match self.mfs.unlink(parent, name).await {
                    Ok(()) | Err(MfsError::NotFound(_)) => Ok(RowEnd::Gone),
                    Err(e) => Err(e),
                }
            }
            Ok(_) | Err(MfsError::NotFound(_)) => Ok(RowEnd::Gone),
            Err(e) => Err(e),
        }
    }

    /// Staging files that no transaction recorded are recorded as abandoned
    /// for the collector: those of sessions that ended more than
    /// `grace.ended` ago (attempts that crashed between creating the file
    /// and recording it), and those of no known session older than
    /// `grace.orphan`. Each staging directory is looked at on its own; an
    /// entry that is not a staging directory is skipped and reported.
    pub async fn sweep_staging(&self, grace: SweepGrace) -> Result<SweepReport, CompletionError> {
        let root = self.cfg.staging_root();
        let (root_inode, _) = match self.mfs.resolve(&root).await {
            Ok(x) => x,
            Err(MfsError::NotFound(_)) => return Ok(SweepReport::default()),
            Err(e) => return Err(e.into()),
        };
        let mut report = SweepReport::default();
        for dir in self.mfs.readdir(root_inode).await? {
            match self.sweep_dir(&root, &dir, grace).await {
                Ok(recorded) => report.recorded += recorded,
                Err(e) => {
                    tracing::warn!(dir = %dir.name, error = %e, "staging sweep skipped an entry");
                    report
                        .failures
                        .push(format!("staging entry {:?}: {e}", dir.name));
                }
            }
        }
        Ok(report)
    }

    /// One staging directory: records its leftovers; returns how many.
    async fn sweep_dir(
        &self,
        root: &MfsPath,
        dir: &DirEntry,
        grace: SweepGrace,
    ) -> Result<u64, CompletionError> {
        if !dir.attr.is_dir() {
            return Err(MfsError::NotDirectory(dir.name.clone()).into());
        }
        let dir_path = root.join(&Name::parse(&dir.name)?);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let leftovers: Vec<Leftover> = self
            .mfs
            .readdir(dir.inode)
            .await?
            .into_iter()
            .filter_map(|e| {
                let session_id = staging_file_session(&e.name)?;
                let path = dir_path.join(&Name::parse(&e.name).ok()?).to_string();
                let changed = e.attr.mtime.max(e.attr.ctime) as u64;
                Some(Leftover {
                    session_id,
                    inode: e.inode as i64,
                    path,
                    age: Duration::from_secs(now.saturating_sub(changed)),
                })
            })
            .collect();
        if leftovers.is_empty() {
            return Ok(0);
        }
        Ok(self
            .store
            .record_leftovers(&leftovers, grace.ended, grace.orphan)
            .await?)
    }
}

/// The session a staging file name (`<session uuid>-…`) belongs to.
fn staging_file_session(name: &str) -> Option<Uuid> {
    let (id, rest) = name.split_at_checked(36)?;
    rest.starts_with('-').then(|| id.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_name_their_session() {
        let id = Uuid::new_v4();
        assert_eq!(staging_file_session(&format!("{id}-p1-t2")), Some(id));
        assert_eq!(staging_file_session(&format!("{id}p1")), None);
        assert_eq!(staging_file_session("junk"), None);
        assert_eq!(staging_file_session("ü".repeat(20).as_str()), None);
    }
}
