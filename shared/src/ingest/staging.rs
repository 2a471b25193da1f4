//! Where the pipeline's files live before they are in place: the staging
//! directories (one per goal) and file names, the cache of directory inodes,
//! and the budget of bytes written at once.

use std::sync::Arc;

use uuid::Uuid;

use super::complete::CompletionError;
use super::{Ingest, IngestConfig, SYSTEM_DIR};
use crate::domain::FencingToken;
use moosefs::{MfsClient, MfsError, MfsPath, Name};

impl IngestConfig {
    pub fn staging_root(&self) -> MfsPath {
        self.root
            .join(&Name::parse(SYSTEM_DIR).expect("valid"))
            .join(&Name::parse("staging").expect("valid"))
    }

    /// Where the staging files of sessions with this goal live: a few fixed
    /// directories, so a part costs no MKDIR, and no SETGOAL either (a new
    /// inode inherits its directory's goal, set when the directory is made).
    pub fn staging_dir(&self, goal: u8) -> MfsPath {
        self.staging_root()
            .join(&Name::parse(&format!("goal-{goal}")).expect("valid name"))
    }

    /// A part attempt's staging file: `<session>-p<part>-t<token>`, unique per
    /// attempt (the token is the attempt counter).
    pub fn staging_file(&self, goal: u8, session: Uuid, part: i32, token: FencingToken) -> MfsPath {
        self.staging_dir(goal)
            .join(&Name::parse(&format!("{session}-p{part:05}-t{token}")).expect("valid name"))
    }

    /// The file a multi-part session is assembled in before its rename.
    pub fn assembly_file(&self, goal: u8, session: Uuid) -> MfsPath {
        self.staging_dir(goal)
            .join(&Name::parse(&format!("{session}-assembly")).expect("valid name"))
    }

    /// The full path of a destination as sessions record it.
    pub fn dest_path(&self, dest: &str) -> Result<MfsPath, MfsError> {
        Ok(crate::domain::Dest::parse(dest)?.under(&self.root))
    }
}

/// A bound on the bytes of parts a process writes at the same time, so that
/// many small parts run side by side while big parts take turns (parallel
/// 64 MiB chunk writes only make the chunkservers' one disk and CPUs thrash).
/// Counted in MiB; a part bigger than the whole budget takes all of it.
/// The default is unbounded.
#[derive(Clone, Default)]
pub struct WriteBudget(Option<(Arc<tokio::sync::Semaphore>, u32)>);

impl WriteBudget {
    pub fn mib(limit: u32) -> WriteBudget {
        let limit = limit.max(1);
        WriteBudget(Some((
            Arc::new(tokio::sync::Semaphore::new(limit as usize)),
            limit,
        )))
    }

    /// Waits until `bytes` fit; the permit gives them back when dropped.
    pub async fn reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let (sem, limit) = self.0.as_ref()?;
        let mib = u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, *limit);
        sem.clone().acquire_many_owned(mib).await.ok()
    }
}

/// Directory path → inode, forgotten whenever an operation under a cached
/// directory fails (it may have been removed meanwhile).
#[derive(Clone, Default)]
pub struct DirCache(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl DirCache {
    /// The directory's inode, creating missing directories (`mkdir -p`).
    pub async fn ensure(&self, mfs: &MfsClient, path: &MfsPath) -> Result<u32, MfsError> {
        self.ensure_with_goal(mfs, path, None).await
    }

    /// Like [`DirCache::ensure`], and sets the directory's goal (not
    /// recursively) when it is not cached yet.
    pub async fn ensure_with_goal(
        &self,
        mfs: &MfsClient,
        path: &MfsPath,
        goal: Option<u8>,
    ) -> Result<u32, MfsError> {
        let key = path.to_string();
        if let Some(inode) = self.0.lock().expect("dir cache").get(&key) {
            return Ok(*inode);
        }
        let inode = mfs.mkdir_all(path).await?;
        if let Some(goal) = goal {
            mfs.set_goal(inode, goal, false).await?;
        }
        self.0.lock().expect("dir cache").insert(key, inode);
        Ok(inode)
    }

    /// The inode of an existing directory (nothing is created). Walks from
    /// the deepest cached ancestor and caches every directory it finds, so a
    /// directory that does not exist yet costs one LOOKUP (of its first
    /// missing component), not one per component. `NotDirectory` if a
    /// component is a file.
    pub async fn existing(&self, mfs: &MfsClient, path: &MfsPath) -> Result<u32, MfsError> {
        let components = path.components();
        let mut prefix = MfsPath::root();
        let mut inode = moosefs::proto::ROOT_INODE;
        let mut depth = 0;
        {
            let cache = self.0.lock().expect("dir cache");
            for name in components {
                let next = prefix.join(name);
                let Some(cached) = cache.get(&next.to_string()) else {
                    break;
                };
                (prefix, inode, depth) = (next, *cached, depth + 1);
            }
        }
        for name in &components[depth..] {
            prefix = prefix.join(name);
            let (child, attr) = mfs.lookup(inode, name).await.map_err(|e| match e {
                MfsError::NotFound(_) => MfsError::NotFound(path.to_string()),
                other => other,
            })?;
            if !attr.is_dir() {
                return Err(MfsError::NotDirectory(prefix.to_string()));
            }
            self.0
                .lock()
                .expect("dir cache")
                .insert(prefix.to_string(), child);
            inode = child;
        }
        Ok(inode)
    }

    pub fn forget(&self) {
        self.0.lock().expect("dir cache").clear();
    }
}

impl Ingest {
    /// The (cached) inode of the staging directory for `goal`, made with that
    /// goal if missing.
    pub(super) async fn staging_dir_inode(&self, goal: u8) -> Result<u32, MfsError> {
        self.dirs
            .ensure_with_goal(&self.mfs, &self.cfg.staging_dir(goal), Some(goal))
            .await
    }

    /// The directory inode and name of a recorded staging path.
    pub(super) async fn staging_location(
        &self,
        path: &Option<String>,
    ) -> Result<(u32, Name), CompletionError> {
        let path = path.as_deref().ok_or(CompletionError::MissingStagingPath)?;
        let path = MfsPath::parse(path)?;
        let (dir, name) = path.split_last().ok_or(CompletionError::EmptyStagingPath)?;
        Ok((self.dirs.ensure(&self.mfs, &dir).await?, name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn write_budget_lets_small_parts_share_and_big_parts_take_turns() {
        let budget = WriteBudget::mib(128);
        let big_a = budget.reserve(64 << 20).await.expect("bounded");
        let big_b = budget.reserve(64 << 20).await.expect("bounded");
        // A third big part waits for one of the first two.
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(64 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third 64 MiB part must wait");
        drop(big_a);
        let big_c = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("released budget is handed on")
            .unwrap();
        drop((big_b, big_c));
        // Small parts count one MiB each; a part over the limit takes all of it.
        let smalls: Vec<_> =
            futures::future::join_all((0..128).map(|_| budget.reserve(65536))).await;
        assert!(smalls.iter().all(Option::is_some));
        drop(smalls);
        let huge = tokio::time::timeout(Duration::from_secs(5), budget.reserve(1 << 40))
            .await
            .expect("a part over the limit still runs");
        assert!(huge.is_some());
        assert!(
            WriteBudget::default().reserve(1 << 40).await.is_none(),
            "unbounded"
        );
    }
}
