//! `file://` sources opened beneath their root, never by path.
//!
//! A source is a configured root plus a relative path. Every open — for the
//! size at validation and for each part read — starts at a descriptor of the
//! root and resolves the relative path with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so neither `..` nor a symbolic link anywhere below
//! the root (one swapped in after validation included) can lead outside it.
//! Where `openat2` is unavailable (kernels before 5.6, seccomp filters) the
//! same rule is kept by a walk of `openat(O_NOFOLLOW)` calls, one component
//! at a time. The size is taken from the opened descriptor and the bytes are
//! read from that same descriptor, all on the blocking pool.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A `file://` source: a path relative to one of the allowed roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSource {
    /// The allowed root (canonical, as configured).
    pub root: PathBuf,
    /// The path below it: normal components only.
    pub relative: PathBuf,
}

/// Why a file beneath a root could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenBeneathError {
    #[error("does not exist")]
    Missing,
    #[error("a symbolic link or `..` in its path below the source root was refused")]
    Escape,
    #[error("is not a regular file")]
    NotAFile,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl FileSource {
    /// The full path, for messages.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    /// Opens the source read-only beneath its root and checks, on the
    /// opened descriptor, that it is a regular file. Blocking: call on the
    /// blocking pool.
    pub fn open(&self) -> Result<(File, u64), OpenBeneathError> {
        let root = rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| classify(e.into()))?;
        let fd = open_beneath(&root, &self.relative)?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(OpenBeneathError::NotAFile);
        }
        Ok((file, meta.len()))
    }
}

/// Flags of the final open: read-only, and never blocking on a FIFO or
/// device someone put at the path (refused right after by the type check).
fn final_flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK
}

/// `openat2` beneath `root`; the fd-relative walk where the kernel (or a
/// seccomp filter) does not offer `openat2`.
fn open_beneath(root: &OwnedFd, relative: &Path) -> Result<OwnedFd, OpenBeneathError> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename or mount raced with the resolution; bounded retries.
    for _ in 0..8 {
        match rustix::fs::openat2(root, relative, final_flags(), Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::AGAIN) => continue,
            Err(Errno::NOSYS | Errno::PERM) => return open_by_walk(root, relative),
            Err(e) => return Err(classify(e.into())),
        }
    }
    Err(OpenBeneathError::Io(io::Error::from(Errno::AGAIN)))
}

/// One `openat(O_NOFOLLOW)` per component, each relative to the directory
/// opened before it: a symbolic link anywhere is refused (`ELOOP`), and only
/// normal components are accepted, so the walk cannot leave the root.
fn open_by_walk(root: &OwnedFd, relative: &Path) -> Result<OwnedFd, OpenBeneathError> {
    let names: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(OpenBeneathError::Escape),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(OpenBeneathError::NotAFile);
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let parent = dir.as_ref().unwrap_or(root);
        let next = match rustix::fs::openat(parent, *name, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            // O_DIRECTORY | O_NOFOLLOW on a symbolic link fails with
            // ENOTDIR, as on a file: tell the two apart.
            Err(Errno::NOTDIR) => {
                let link = rustix::fs::statat(parent, *name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Symlink
                    });
                return Err(if link {
                    OpenBeneathError::Escape
                } else {
                    OpenBeneathError::NotAFile
                });
            }
            Err(e) => return Err(classify(e.into())),
        };
        dir = Some(next);
    }
    let parent = dir.as_ref().unwrap_or(root);
    rustix::fs::openat(
        parent,
        *last,
        final_flags() | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| classify(e.into()))
}

fn classify(e: io::Error) -> OpenBeneathError {
    match Errno::from_io_error(&e) {
        // A name too long for the filesystem names nothing that exists.
        Some(Errno::NOENT | Errno::NAMETOOLONG) => OpenBeneathError::Missing,
        // ELOOP: a symbolic link (RESOLVE_NO_SYMLINKS, O_NOFOLLOW);
        // EXDEV: `..` or an absolute link out of the root (RESOLVE_BENEATH).
        Some(Errno::LOOP | Errno::XDEV) => OpenBeneathError::Escape,
        // A file where a directory was expected.
        Some(Errno::NOTDIR) => OpenBeneathError::NotAFile,
        _ => OpenBeneathError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(root: &Path, rel: &str) -> FileSource {
        FileSource {
            root: root.to_path_buf(),
            relative: PathBuf::from(rel),
        }
    }

    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/a.bin"), b"inside").unwrap();
        std::fs::write(outside.path().join("a.bin"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink("d/a.bin", root.path().join("file-link")).unwrap();
        let root_fd = rustix::fs::open(
            root.path(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        for (which, open) in [
            ("openat2", open_beneath as fn(&OwnedFd, &Path) -> _),
            ("walk", open_by_walk),
        ] {
            let fd = open(&root_fd, Path::new("d/a.bin")).unwrap();
            assert_eq!(std::io::read_to_string(File::from(fd)).unwrap(), "inside");
            for refused in ["link/a.bin", "file-link", "../a.bin"] {
                assert!(
                    matches!(
                        open(&root_fd, Path::new(refused)),
                        Err(OpenBeneathError::Escape)
                    ),
                    "{which}: {refused}"
                );
            }
            assert!(matches!(
                open(&root_fd, Path::new("d/missing")),
                Err(OpenBeneathError::Missing)
            ));
        }
        assert!(matches!(
            source(root.path(), "d").open(),
            Err(OpenBeneathError::NotAFile)
        ));
        assert_eq!(source(root.path(), "d/a.bin").open().unwrap().1, 6);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            source(root.path(), "pipe").open(),
            Err(OpenBeneathError::NotAFile)
        ));
    }
}
