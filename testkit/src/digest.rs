//! MD5 helpers: of bytes (from `moosefs::testing`) and of a local file.

use std::path::Path;

use md5::{Digest, Md5};
pub use moosefs::testing::{hex, md5_hex};

/// Lower-case hex MD5 of a local file (or a file read through the mount).
pub fn md5_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex(&h.finalize())
}
