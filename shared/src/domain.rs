//! The pipeline's domain values, parsed once at the edge so that the steps
//! behind it take them as given: where a file goes ([`Dest`]), how many
//! copies MooseFS keeps ([`Goal`]), how a file is cut ([`PartSize`]), and
//! which attempt of a part may commit ([`FencingToken`]).

use moosefs::{MfsError, MfsPath};

/// The number of copies MooseFS keeps of each chunk: 1 to 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Goal(u8);

impl Goal {
    /// The most copies a MooseFS goal can ask for.
    pub const MAX: u8 = 9;

    /// A goal of `copies`, if MooseFS has such a goal (1..=9).
    pub fn new(copies: u8) -> Option<Goal> {
        (1..=Self::MAX).contains(&copies).then_some(Goal(copies))
    }

    pub fn copies(self) -> u8 {
        self.0
    }
}

impl From<Goal> for i16 {
    fn from(goal: Goal) -> i16 {
        i16::from(goal.0)
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The size of every part of a file but its last, in bytes, as chosen
/// within the request limits ([`crate::limits::choose_part_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartSize(u64);

impl PartSize {
    /// A part size the limits allowed (see [`crate::limits`]).
    pub(crate) fn allowed(bytes: u64) -> PartSize {
        PartSize(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// How many parts a file of `size` bytes has (at least one).
    pub fn parts_of(self, size: u64) -> u64 {
        size.div_ceil(self.0.max(1)).max(1)
    }
}

/// Where a file goes: a path relative to the system's MooseFS root, never
/// the root itself, as the request named it (checked against the limits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dest(MfsPath);

impl Dest {
    /// `raw` as a path (length, characters and depth are checked before,
    /// by [`crate::limits::check_dest`]).
    pub fn parse(raw: &str) -> Result<Dest, MfsError> {
        MfsPath::parse(raw).map(Dest)
    }

    /// The path under the root.
    pub fn path(&self) -> &MfsPath {
        &self.0
    }

    /// The destination as sessions record it: relative, no leading slash.
    pub fn to_stored(&self) -> String {
        self.0.to_string().trim_start_matches('/').to_string()
    }

    /// The destination's full MooseFS path under `root`.
    pub fn under(&self, root: &MfsPath) -> MfsPath {
        self.0
            .components()
            .iter()
            .fold(root.clone(), |full, name| full.join(name))
    }
}

/// The attempt counter of a part (`upload_parts.attempts`): each attempt
/// gets the next one, and a commit only succeeds while no later attempt
/// has committed, so a stale attempt can never replace a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct FencingToken(pub i32);

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_one_to_nine() {
        assert!(Goal::new(0).is_none());
        assert_eq!(Goal::new(1).map(Goal::copies), Some(1));
        assert_eq!(Goal::new(9).map(Goal::copies), Some(9));
        assert!(Goal::new(10).is_none());
    }

    #[test]
    fn a_dest_is_stored_relative_and_placed_under_the_root() {
        let dest = Dest::parse("/a/b.bin").unwrap();
        assert_eq!(dest.to_stored(), "a/b.bin");
        let root = MfsPath::parse("/ingest").unwrap();
        assert_eq!(dest.under(&root).to_string(), "/ingest/a/b.bin");
    }

    #[test]
    fn part_counts_round_up_and_an_empty_file_has_one_part() {
        let size = PartSize::allowed(64);
        assert_eq!(size.parts_of(0), 1);
        assert_eq!(size.parts_of(64), 1);
        assert_eq!(size.parts_of(65), 2);
    }
}
