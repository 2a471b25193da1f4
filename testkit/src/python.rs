//! A python3 with the S3 clients the endpoint's tests drive (boto3 and
//! aws-cli): the system's if it has them, else a venv under /var/tmp made
//! once from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the venv is made when the system's python3 lacks the clients.
pub const VENV: &str = "/var/tmp/mfs-ingest-s3-venv";

/// The python3 to run and, for a venv, its `bin` directory (to put first
/// on `PATH`, for `aws`).
pub fn python_with_s3_clients() -> (PathBuf, Option<PathBuf>) {
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", "import boto3, awscli"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let system = PathBuf::from("python3");
    if has(&system) && Command::new("aws").arg("--version").output().is_ok() {
        return (system, None);
    }
    let venv = PathBuf::from(VENV);
    let python = venv.join("bin/python3");
    if !has(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "creating {}", venv.display());
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "boto3", "awscli"])
            .status()
            .expect("pip install boto3 awscli");
        assert!(installed.success(), "pip install boto3 awscli");
    }
    (python, Some(venv.join("bin")))
}
