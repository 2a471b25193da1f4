//! Integration tests of the `worker mfs` command line against the real MooseFS
//! cluster (`MFS_MASTER`, default 10.213.47.10:9421) and its `mfsmount` at
//! `MFS_MOUNT` (default /var/tmp/mfs-ingest/mnt), used for independent checks.
//!
//! Every test works in a directory of its own, `/tests/cli-<name>-<pid>-<random>`
//! (goal 3, trash time 0), created with `worker mfs mkdir -p` and removed with
//! `worker mfs rm -r` by a guard, also when the test panics.

mod helpers {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    use rand::RngCore;
    pub use testkit::mfs::{master_addr, md5_hex, md5_through_mount, mount_dir};

    /// Where a MooseFS path is seen through the mount.
    pub fn mount_path(mfs_path: &str) -> PathBuf {
        mount_dir().join(mfs_path.trim_start_matches('/'))
    }

    /// `worker mfs ARGS…` with the master from the environment (or the default).
    pub fn worker_cmd<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.arg("mfs")
            .args(args)
            .env("MFS_MASTER", master_addr())
            .env_remove("RUST_LOG")
            .env_remove("MFS_PASSWORD");
        cmd
    }

    pub struct Run {
        pub code: Option<i32>,
        pub stdout: Vec<u8>,
        pub stderr: String,
        pub what: String,
    }

    impl Run {
        pub fn stdout_str(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }
    }

    impl std::fmt::Debug for Run {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.what,
                self.code,
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        }
    }

    pub fn run_cmd(mut cmd: Command) -> Run {
        let what = format!("{cmd:?}");
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("run the worker binary");
        Run {
            code: status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            what,
        }
    }

    pub fn run<I, S>(args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_cmd(worker_cmd(args))
    }

    /// Runs and asserts exit 0; returns the run.
    pub fn ok<I, S>(args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let r = run(args);
        assert_eq!(r.code, Some(0), "expected success: {r:?}");
        r
    }

    /// Asserts a failure of the CLI itself: exit 1, exactly one line on
    /// stderr starting with `error:` that contains every one of `needles`.
    pub fn assert_error(r: &Run, needles: &[&str]) {
        assert_eq!(r.code, Some(1), "expected exit 1: {r:?}");
        let lines: Vec<&str> = r.stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {r:?}");
        assert!(lines[0].starts_with("error: "), "no `error:` prefix: {r:?}");
        for n in needles {
            assert!(lines[0].contains(n), "stderr does not mention {n:?}: {r:?}");
        }
    }

    /// Asserts an argument error from clap: exit 2, first stderr line
    /// starting with `error:` and mentioning every one of `needles`.
    pub fn assert_usage_error(r: &Run, needles: &[&str]) {
        assert_eq!(r.code, Some(2), "expected exit 2: {r:?}");
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "no `error:` prefix: {r:?}");
        for n in needles {
            assert!(first.contains(n), "stderr does not mention {n:?}: {r:?}");
        }
    }

    /// A MooseFS directory of the test's own, removed on drop.
    pub struct TestDir {
        pub path: String,
    }

    impl TestDir {
        pub fn new(name: &str) -> TestDir {
            let path = format!(
                "/tests/cli-{name}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            ok(["mkdir", "-p", "--goal", "3", "--trash-time", "0", &path]);
            TestDir { path }
        }

        /// The MooseFS path of `name` inside this directory.
        pub fn file(&self, name: &str) -> String {
            format!("{}/{name}", self.path)
        }

        pub fn mount(&self, name: &str) -> PathBuf {
            mount_path(&self.file(name))
        }

        /// `ls -l` of a directory below this one ("" = this one): (name, size).
        pub fn ls_l(&self, sub: &str) -> Vec<(String, u64)> {
            let path = if sub.is_empty() {
                self.path.clone()
            } else {
                self.file(sub)
            };
            ls_l(&path)
        }

        pub fn names(&self, sub: &str) -> Vec<String> {
            self.ls_l(sub).into_iter().map(|(n, _)| n).collect()
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let r = run(["rm", "-r", &self.path]);
            if std::thread::panicking() {
                if r.code != Some(0) {
                    eprintln!("cleanup of {} failed: {r:?}", self.path);
                }
            } else {
                assert_eq!(r.code, Some(0), "cleanup failed: {r:?}");
                assert!(
                    run(["stat", &self.path]).code != Some(0),
                    "{} still exists after rm -r",
                    self.path
                );
            }
        }
    }

    /// `worker mfs ls -l PATH` parsed into (name, size).
    pub fn ls_l(path: &str) -> Vec<(String, u64)> {
        let r = ok(["ls", "-l", path]);
        r.stdout_str()
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 4, "unexpected ls -l line {line:?}");
                (f[3].to_string(), f[1].parse().expect("size column"))
            })
            .collect()
    }

    pub fn random_bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rng().fill_bytes(&mut v);
        v
    }

    /// A local scratch directory with helpers to make source files.
    pub struct Local {
        pub dir: tempfile::TempDir,
    }

    impl Local {
        pub fn new() -> Local {
            Local {
                dir: tempfile::tempdir().expect("local temp dir"),
            }
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes `data` to a local file `name`; returns its path as a string.
        pub fn write(&self, name: &str, data: &[u8]) -> String {
            let p = self.path(name);
            std::fs::write(&p, data).unwrap();
            p.to_str().unwrap().to_string()
        }

        pub fn random(&self, name: &str, len: usize) -> (String, Vec<u8>) {
            let data = random_bytes(len);
            (self.write(name, &data), data)
        }
    }

    /// The file's content, read back with `worker mfs get PATH -`.
    pub fn get_bytes(path: &str) -> Vec<u8> {
        ok(["get", path, "-"]).stdout
    }

    /// Asserts no temporary upload file (`.NAME.part-*`) is in `path`.
    pub fn assert_no_part_files(path: &str) {
        let leftovers: Vec<String> = ls_l(path)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with('.') && n.contains(".part-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files left in {path}: {leftovers:?}"
        );
    }
}

use helpers::*;

// ---------------------------------------------------------------------------
// 1. Round trip of one file with goal 3.
// ---------------------------------------------------------------------------

#[test]
fn put_get_round_trip_goal_3() {
    let dir = TestDir::new("roundtrip");
    let local = Local::new();
    let size = 3 * 1024 * 1024 + 12_345;
    let (src, data) = local.random("source.bin", size);
    let md5 = md5_hex(&data);
    let dest = dir.file("data.bin");

    let r = ok(["put", "--goal", "3", &src, &dest]);
    assert_eq!(
        r.stdout_str(),
        format!("{dest}\t{size}\t{md5}\n"),
        "put output: {r:?}"
    );

    // get to a local file.
    let out = local.path("copy.bin");
    ok(["get", &dest, out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "get: bytes differ");

    // get onto an existing local file needs --force.
    std::fs::write(&out, b"keep me").unwrap();
    let r = run(["get", &dest, out.to_str().unwrap()]);
    assert_error(&r, &["already exists", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    ok(["get", "--force", &dest, out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "get --force: bytes differ"
    );

    // get without a destination: the file's name in the current directory.
    let mut cmd = worker_cmd(["get", &dest]);
    cmd.current_dir(local.dir.path());
    let r = run_cmd(cmd);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(std::fs::read(local.path("data.bin")).unwrap() == data);

    // get to stdout.
    let r = ok(["get", &dest, "-"]);
    assert_eq!(r.stdout.len(), size);
    assert!(r.stdout == data, "get -: bytes differ");

    // Independent check through the FUSE mount.
    assert_eq!(md5_through_mount(&dir.mount("data.bin")), md5);

    // stat
    let stat = ok(["stat", &dest]).stdout_str();
    assert!(stat.contains(&format!("path:   {dest}\n")), "{stat}");
    assert!(stat.contains(&format!("size:   {size}\n")), "{stat}");
    assert!(stat.contains("goal:   3\n"), "{stat}");
    assert!(stat.contains("chunks: 1\n"), "{stat}");

    // ls and ls -l
    let ls = ok(["ls", &dir.path]).stdout_str();
    assert_eq!(ls, "data.bin\n");
    assert_eq!(dir.ls_l(""), vec![("data.bin".to_string(), size as u64)]);
    let ls_file = ok(["ls", "-l", &dest]).stdout_str();
    assert!(ls_file.starts_with("-0644 "), "{ls_file}");
    assert!(ls_file.contains(&format!(" {size} ")), "{ls_file}");

    // replicas: 3 valid copies with the same digest.
    let r = ok(["replicas", &dest]);
    let text = r.stdout_str();
    assert!(
        text.starts_with(&format!("{dest}: {size} bytes, goal 3, 1 chunks\n")),
        "{text}"
    );
    let copies: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("copy "))
        .collect();
    assert_eq!(copies.len(), 3, "{text}");
    let digests: Vec<&str> = copies
        .iter()
        .map(|l| {
            assert!(l.contains("status:VALID"), "{l}");
            l.split("checksum digest: ")
                .nth(1)
                .unwrap_or_else(|| panic!("no digest in {l:?}"))
                .trim_end_matches(')')
        })
        .collect();
    assert!(
        digests.iter().all(|d| *d == digests[0] && d.len() == 32),
        "{text}"
    );
    let servers: std::collections::BTreeSet<&str> = copies
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(servers.len(), 3, "copies not on 3 servers: {text}");
}

// ---------------------------------------------------------------------------
// 2. Several files at once.
// ---------------------------------------------------------------------------

#[test]
fn put_many_files_with_jobs_4() {
    let dir = TestDir::new("many");
    let local = Local::new();
    let sizes: [usize; 20] = [
        0,
        1,
        17,
        511,
        4096,
        65_535,
        65_536,
        65_537,
        100_000,
        250_000,
        524_288,
        1_000_000,
        1 << 20,
        (1 << 20) + 1,
        1_500_000,
        2_000_000,
        0,
        3,
        777_777,
        2_500_000,
    ];
    let mut srcs = Vec::new();
    let mut expected = std::collections::BTreeMap::new();
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{i:02}-{len}.dat");
        let (p, data) = local.random(&name, len);
        srcs.push(p);
        expected.insert(name, (len as u64, md5_hex(&data)));
    }
    // DEST does not exist yet: several sources create it as a directory.
    let dest = dir.file("batch");
    let mut args = vec!["put".to_string(), "--jobs".into(), "4".into()];
    args.extend(srcs.iter().cloned());
    args.push(dest.clone());
    let r = ok(&args);

    // One stdout line per file, in any order, with size and md5.
    let mut printed = std::collections::BTreeMap::new();
    for line in r.stdout_str().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 3, "bad line {line:?}");
        let name = f[0]
            .strip_prefix(&format!("{dest}/"))
            .unwrap_or_else(|| panic!("{line:?} not in {dest}"));
        printed.insert(
            name.to_string(),
            (f[1].parse::<u64>().unwrap(), f[2].to_string()),
        );
    }
    assert_eq!(printed, expected, "{r:?}");
    // The summary on stderr counts every file and byte.
    let total: u64 = expected.values().map(|(len, _)| len).sum();
    assert!(
        r.stderr.contains(&format!("20 files, {total} bytes in ")),
        "wrong summary (expected 20 files, {total} bytes): {r:?}"
    );

    // Everything present, nothing else, right content through the mount.
    let listed: std::collections::BTreeMap<String, u64> = dir.ls_l("batch").into_iter().collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, (len, md5)) in &expected {
        assert_eq!(listed[name], *len, "{name}");
        let mp = mount_path(&format!("{dest}/{name}"));
        assert_eq!(std::fs::metadata(&mp).unwrap().len(), *len, "{name}");
        assert_eq!(&md5_through_mount(&mp), md5, "{name}");
    }
}

// ---------------------------------------------------------------------------
// 3. Errors: one `error:` line, non-zero exit, nothing changed.
// ---------------------------------------------------------------------------

#[test]
fn get_missing_path_is_an_error() {
    let dir = TestDir::new("get-missing");
    let local = Local::new();
    let missing = dir.file("no-such-file");
    let out = local.path("out.bin");
    let r = run(["get", &missing, out.to_str().unwrap()]);
    assert_error(&r, &["no such file", &missing]);
    assert!(
        !out.exists(),
        "get of a missing file created {}",
        out.display()
    );
    let r = run(["get", &missing, "-"]);
    assert_error(&r, &[&missing]);
    assert!(r.stdout.is_empty());
}

#[test]
fn stat_missing_path_is_an_error() {
    let dir = TestDir::new("stat-missing");
    let missing = dir.file("no-such-file");
    let r = run(["stat", &missing]);
    assert_error(&r, &["no such file", &missing]);
    assert!(r.stdout.is_empty(), "{r:?}");
    // A missing parent too.
    let deeper = dir.file("no-dir/file");
    assert_error(&run(["stat", &deeper]), &["no such file", &deeper]);
}

#[test]
fn ls_missing_path_is_an_error() {
    let dir = TestDir::new("ls-missing");
    let missing = dir.file("no-such-dir");
    let r = run(["ls", &missing]);
    assert_error(&r, &["no such file", &missing]);
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_error(&run(["ls", "-l", &missing]), &[&missing]);
    assert_error(&run(["replicas", &missing]), &[&missing]);
}

#[test]
fn rm_missing_path_is_an_error() {
    let dir = TestDir::new("rm-missing");
    let local = Local::new();
    let (src, _) = local.random("keep", 1000);
    ok(["put", &src, &dir.file("keep")]);
    let missing = dir.file("no-such-file");
    let r = run(["rm", &missing]);
    // The message must name the path the user gave, not only its last component.
    assert_error(&r, &["no such file", &missing]);
    assert_error(&run(["rm", "-r", &missing]), &["no such file"]);
    assert_eq!(dir.names(""), vec!["keep".to_string()]);
}

#[test]
fn put_onto_existing_file_needs_force() {
    let dir = TestDir::new("force");
    let local = Local::new();
    let (first, first_data) = local.random("first", 200_000);
    let (second, second_data) = local.random("second", 300_001);
    let dest = dir.file("target");
    ok(["put", &first, &dest]);

    let r = run(["put", &second, &dest]);
    assert_error(&r, &[&dest, "already exists", "--force"]);
    assert!(r.stdout.is_empty(), "{r:?}");
    // Unchanged, and no temporary file left behind.
    assert!(
        get_bytes(&dest) == first_data,
        "content changed without --force"
    );
    assert_eq!(dir.ls_l(""), vec![("target".to_string(), 200_000)]);
    assert_no_part_files(&dir.path);

    // With --goal too: still refused.
    assert_error(&run(["put", "--goal", "2", &second, &dest]), &["--force"]);
    assert!(ok(["stat", &dest]).stdout_str().contains("goal:   3\n"));

    // --force replaces it.
    let r = ok(["put", "--force", &second, &dest]);
    assert_eq!(
        r.stdout_str(),
        format!("{dest}\t300001\t{}\n", md5_hex(&second_data))
    );
    assert!(get_bytes(&dest) == second_data, "--force did not replace");
    assert_eq!(dir.ls_l(""), vec![("target".to_string(), 300_001)]);
    assert_eq!(
        md5_through_mount(&dir.mount("target")),
        md5_hex(&second_data)
    );

    // A directory is never replaced, even with --force.
    ok(["mkdir", &dir.file("first")]);
    let r = run(["put", "--force", &first, &dir.path]);
    assert_error(&r, &[&dir.file("first"), "is a directory"]);
    let stat = ok(["stat", &dir.file("first")]).stdout_str();
    assert!(stat.contains("type:   Directory"), "{stat}");
    assert_no_part_files(&dir.path);
}

#[test]
fn put_of_missing_local_file_is_an_error() {
    let dir = TestDir::new("put-nolocal");
    let local = Local::new();
    let missing = local.path("does-not-exist");
    let missing = missing.to_str().unwrap();
    let r = run(["put", missing, &dir.file("x")]);
    assert_error(&r, &[missing]);
    assert!(
        dir.names("").is_empty(),
        "put of a missing file changed {}",
        dir.path
    );

    // A local directory is not a regular file either.
    let r = run(["put", local.dir.path().to_str().unwrap(), &dir.file("x")]);
    assert_error(&r, &["not a regular file"]);
    assert!(dir.names("").is_empty());
}

#[test]
fn put_with_missing_source_among_several_into_existing_dir() {
    let dir = TestDir::new("put-someMissing");
    let local = Local::new();
    let (a, _) = local.random("a", 100_000);
    let (b, _) = local.random("b", 100_000);
    let missing = local.path("missing");
    let missing = missing.to_str().unwrap();
    let r = run(["put", "--jobs", "4", &a, missing, &b, &dir.path]);
    assert_error(&r, &[missing]);
    // No file, and no temporary file.
    assert!(dir.names("").is_empty(), "{:?}", dir.ls_l(""));
}

#[test]
fn put_with_missing_source_among_several_does_not_create_dest_dir() {
    let dir = TestDir::new("put-newdir");
    let local = Local::new();
    let (a, _) = local.random("a", 1000);
    let missing = local.path("missing");
    let missing = missing.to_str().unwrap();
    let dest = dir.file("new-dir");
    let r = run(["put", &a, missing, &dest]);
    assert_error(&r, &[missing]);
    // A put that fails validation must not leave the destination directory.
    assert!(
        dir.names("").is_empty(),
        "failed put created {dest}: {:?}",
        dir.ls_l("")
    );
}

#[test]
fn put_below_a_file_is_an_error() {
    let dir = TestDir::new("put-parentfile");
    let local = Local::new();
    let (src, data) = local.random("src", 10_000);
    let file = dir.file("plain");
    ok(["put", &src, &file]);
    let r = run(["put", &src, &format!("{file}/child")]);
    assert_error(&r, &["not a directory", &file]);
    let r = run(["put", &src, &format!("{file}/sub/child")]);
    assert_error(&r, &["not a directory", &file]);
    // Several sources below a file.
    let r = run(["put", &src, &src, &format!("{file}/child")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    // Unchanged.
    assert_eq!(dir.ls_l(""), vec![("plain".to_string(), 10_000)]);
    assert!(get_bytes(&file) == data);
}

#[test]
fn goal_out_of_range_is_rejected() {
    let dir = TestDir::new("goal-range");
    let local = Local::new();
    let (src, _) = local.random("src", 1000);
    for goal in ["10", "0", "x"] {
        let r = run(["put", "--goal", goal, &src, &dir.file("g")]);
        assert_usage_error(&r, &["--goal", goal]);
        let r = run(["mkdir", "--goal", goal, &dir.file("d")]);
        assert_usage_error(&r, &["--goal", goal]);
    }
    assert!(dir.names("").is_empty(), "{:?}", dir.ls_l(""));
}

#[test]
fn unreachable_master_is_an_error() {
    let local = Local::new();
    let (src, _) = local.random("src", 1000);
    let started = std::time::Instant::now();
    for args in [
        vec!["--master", "127.0.0.1:1", "ls", "/"],
        vec!["--master", "127.0.0.1:1", "stat", "/tests"],
        vec![
            "--master",
            "127.0.0.1:1",
            "put",
            &src,
            "/tests/never-written",
        ],
    ] {
        let r = run(&args);
        assert_error(&r, &["127.0.0.1:1", "unreachable"]);
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    // MFS_MASTER from the environment is overridden by the flag, and a bad
    // one in the environment is used when there is no flag.
    let mut cmd = worker_cmd(["ls", "/"]);
    cmd.env("MFS_MASTER", "127.0.0.1:1");
    assert_error(&run_cmd(cmd), &["127.0.0.1:1", "unreachable"]);
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn unreachable_master_message_is_not_repeated() {
    let r = run(["--master", "127.0.0.1:1", "ls", "/"]);
    assert_error(&r, &["unreachable"]);
    // The cause should be stated once, not "X: X".
    let line = r.stderr.trim_end();
    let cause = line.rsplit(": ").next().unwrap();
    assert_eq!(
        line.matches(cause).count(),
        1,
        "cause {cause:?} repeated in {line:?}"
    );
}

#[test]
fn no_master_configured_is_an_error() {
    let mut cmd = worker_cmd(["ls", "/"]);
    cmd.env_remove("MFS_MASTER");
    let r = run_cmd(cmd);
    assert_error(&r, &["no master", "--master", "MFS_MASTER"]);
    assert!(r.stdout.is_empty());
}

#[test]
fn dotdot_path_is_invalid() {
    let dir = TestDir::new("dotdot");
    let local = Local::new();
    let (src, _) = local.random("src", 1000);
    let escape_name = format!("{}-escaped", dir.path.rsplit('/').next().unwrap());
    let escape = format!("{}/../{escape_name}", dir.path);
    for args in [
        vec!["put", &src, &escape],
        vec!["mkdir", "-p", &escape],
        vec!["ls", &escape],
        vec!["stat", &escape],
        vec!["get", &escape, "-"],
        vec!["rm", "-r", &escape],
        vec!["replicas", &escape],
    ] {
        let r = run(&args);
        assert_error(&r, &["invalid path", ".."]);
    }
    let single_dot = format!("{}/./x", dir.path);
    assert_error(&run(["mkdir", "-p", &single_dot]), &["invalid path"]);
    // Nothing was created, neither here nor next to it.
    assert!(dir.names("").is_empty());
    assert!(run(["stat", &format!("/tests/{escape_name}")]).code == Some(1));
    assert!(!mount_path(&format!("/tests/{escape_name}")).exists());
}

#[test]
fn mkdir_existing_needs_parents_flag() {
    let dir = TestDir::new("mkdir");
    let sub = dir.file("sub");
    ok(["mkdir", &sub]);
    let r = run(["mkdir", &sub]);
    assert_error(&r, &["already exists", &sub]);
    ok(["mkdir", "-p", &sub]);
    let deep = dir.file("a/b/c");
    // Without -p a missing parent is an error ...
    assert_error(&run(["mkdir", &deep]), &["no such file"]);
    assert_eq!(dir.names(""), vec!["sub".to_string()]);
    // ... with -p it is created, with goal and trash time.
    ok(["mkdir", "-p", "--goal", "2", "--trash-time", "0", &deep]);
    let stat = ok(["stat", &deep]).stdout_str();
    assert!(stat.contains("type:   Directory"), "{stat}");
    assert!(stat.contains("goal:   2\n"), "{stat}");
    assert!(mount_path(&deep).is_dir());
    // mkdir onto an existing file fails, with and without -p.
    let local = Local::new();
    let (src, _) = local.random("f", 10);
    ok(["put", &src, &dir.file("file")]);
    assert_error(&run(["mkdir", &dir.file("file")]), &["already exists"]);
    assert_error(
        &run(["mkdir", "-p", &dir.file("file")]),
        &["not a directory"],
    );
    // The root.
    assert_error(&run(["mkdir", "/"]), &["root"]);
}

#[test]
fn rm_non_empty_dir_needs_recursive() {
    let dir = TestDir::new("rm-nonempty");
    let local = Local::new();
    let (src, data) = local.random("f", 5000);
    let sub = dir.file("sub");
    ok(["mkdir", "-p", &format!("{sub}/inner")]);
    ok(["put", &src, &format!("{sub}/inner/f")]);
    let r = run(["rm", &sub]);
    assert_error(&r, &["not empty", &sub]);
    assert!(get_bytes(&format!("{sub}/inner/f")) == data);
    assert_eq!(dir.names(""), vec!["sub".to_string()]);
    ok(["rm", "-r", &sub]);
    assert!(dir.names("").is_empty());
    assert!(!dir.mount("sub").exists());
    // A file needs no -r; an empty directory neither.
    ok(["put", &src, &dir.file("f")]);
    ok(["mkdir", &dir.file("empty")]);
    ok(["rm", &dir.file("f"), &dir.file("empty")]);
    assert!(dir.names("").is_empty());
}

// ---------------------------------------------------------------------------
// 4. `replicas` fails when a chunk has fewer valid copies than its goal.
// ---------------------------------------------------------------------------

#[test]
fn replicas_fails_below_goal() {
    let dir = TestDir::new("replicas-goal");
    let local = Local::new();
    let (src, _) = local.random("src", 300_000);
    let dest = dir.file("under");
    ok(["put", "--goal", "3", &src, &dest]);
    ok(["replicas", &dest]);

    // Only 3 chunkservers exist: goal 4 cannot be met.
    testkit::mfs::run_checked(
        std::process::Command::new("mfssetgoal")
            .arg("4")
            .arg(dir.mount("under")),
    );
    assert!(ok(["stat", &dest]).stdout_str().contains("goal:   4\n"));
    let r = run(["replicas", &dest]);
    assert_error(&r, &[&dest, "chunk 0", "3 valid copies", "goal 4"]);
    // The report itself is still printed, with the 3 copies.
    let text = r.stdout_str();
    assert!(text.contains("goal 4"), "{r:?}");
    assert_eq!(
        text.lines().filter(|l| l.contains("status:VALID")).count(),
        3,
        "{r:?}"
    );

    // An empty file has no chunks: nothing to miss.
    ok(["put", &local.write("empty", b""), &dir.file("empty")]);
    ok(["replicas", &dir.file("empty")]);
    // A directory is not a file.
    assert_error(&run(["replicas", &dir.path]), &["not a regular file"]);
}

// ---------------------------------------------------------------------------
// 5. No temporary files after a failed put.
// ---------------------------------------------------------------------------

#[test]
fn failed_put_among_several_leaves_no_part_files() {
    let dir = TestDir::new("leftovers");
    let local = Local::new();
    // One of several names exists already; the others are large enough to
    // be in flight when that one fails.
    let (existing_src, existing_data) = local.random("dup", 1000);
    ok(["put", &existing_src, &dir.file("dup")]);
    let mut srcs = Vec::new();
    for i in 0..6 {
        let name = format!("big{i}");
        srcs.push(local.random(&name, 3 << 20).0);
        if i == 1 {
            let (p, _) = local.random("dup", 2000);
            srcs.push(p);
        }
    }
    let mut args = vec!["put".to_string(), "--jobs".into(), "4".into()];
    args.extend(srcs);
    args.push(dir.path.clone());
    let r = run(&args);
    assert_error(&r, &[&dir.file("dup"), "--force"]);
    assert!(get_bytes(&dir.file("dup")) == existing_data);
    assert_no_part_files(&dir.path);
    // Whatever was reported as written is complete.
    for line in r.stdout_str().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let got = get_bytes(f[0]);
        assert_eq!(got.len().to_string(), f[1], "{line}");
        assert_eq!(md5_hex(&got), f[2], "{line}");
    }
}

#[test]
fn failed_put_sequential_leaves_no_part_files() {
    let dir = TestDir::new("leftovers-seq");
    let local = Local::new();
    let (existing_src, _) = local.random("dup", 10);
    ok(["put", &existing_src, &dir.file("dup")]);
    let a = local.random("a", 2 << 20).0;
    let dup = local.random("dup", 20).0;
    let c = local.random("c", 3 << 20).0;
    let d = local.random("d", 3 << 20).0;
    let r = run(["put", &a, &dup, &c, &d, &dir.path]);
    assert_error(&r, &["--force"]);
    assert_no_part_files(&dir.path);
}

/// Makes one replica of chunk 0 differ from the others while the master still
/// calls every copy valid: a write session to the head chunkserver alone (a
/// chain of one, no forwarding), exactly what a client ending writes early can
/// leave behind.
async fn corrupt_one_replica(path: &str) {
    use moosefs::chunkserver::{
        ChunkserverTimeouts, RawBlock, WriteSession, WriteTarget, WRITE_DATA_HEADER,
    };
    use moosefs::{ClientConfig, MfsClient, MfsPath};

    let client = MfsClient::connect(ClientConfig::new(helpers::master_addr()))
        .await
        .unwrap();
    let (inode, attr) = client
        .resolve(&MfsPath::parse(path).unwrap())
        .await
        .unwrap();
    let loc = client.write_chunk(inode, 0, 0).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut buf = bytes::BytesMut::zeroed(WRITE_DATA_HEADER);
    let data = vec![0xA5u8; 4096];
    buf.extend_from_slice(&data);
    tx.send(RawBlock {
        buf,
        block: 0,
        offset: 0,
        crc: crc32fast::hash(&data),
    })
    .await
    .unwrap();
    drop(tx);
    let chain = [loc.servers[0].addr];
    let target = WriteTarget {
        chunk_id: loc.chunk_id,
        version: loc.version,
        chain: &chain,
    };
    WriteSession::new(rx)
        .run(
            &target,
            &ChunkserverTimeouts::default(),
            &moosefs::NoObserver,
            &Default::default(),
        )
        .await
        .unwrap();
    client
        .write_chunk_end(loc.chunk_id, inode, 0, attr.length)
        .await
        .unwrap();
    client.close().await;
}

#[test]
fn replicas_fails_when_copies_differ() {
    let dir = TestDir::new("replicas-differ");
    let local = Local::new();
    let (src, _) = local.random("f.bin", 300_000);
    let remote = dir.file("f.bin");
    ok(["put", "--goal", "3", &src, &remote]);
    ok(["replicas", &remote]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(corrupt_one_replica(&remote));
    let r = run(["replicas", &remote]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stdout_str().contains("copies have different checksums"),
        "{r:?}"
    );
    helpers::assert_error(&r, &["copies differ"]);
}
