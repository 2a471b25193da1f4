//! `worker mfs …`: a small MooseFS command line on top of the native client
//! (put, get, ls, stat, rm, mkdir, replicas). Every failure is one line on
//! stderr and a non-zero exit.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use moosefs::{
    ClientConfig, MfsClient, MfsError, MfsPath, Name, ReplicaChoice, WriteOptions, CHUNK_SIZE,
};
use tokio::io::AsyncWriteExt;

/// Options every `mfs` subcommand shares.
#[derive(Args, Debug)]
pub struct MfsArgs {
    /// MooseFS master client address.
    #[arg(long, env = "MFS_MASTER", global = true, value_name = "HOST:PORT")]
    master: Option<String>,
    /// Export password, if the export needs one.
    #[arg(long, env = "MFS_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    #[command(subcommand)]
    command: MfsCommand,
}

#[derive(Subcommand, Debug)]
enum MfsCommand {
    /// Upload local files (several sources go into DEST as a directory).
    Put(PutArgs),
    /// Download a file (to a local path, or `-` for stdout).
    Get {
        src: String,
        /// Local destination; default: the file's name in the current directory.
        dest: Option<PathBuf>,
        /// Read only from this chunkserver (IP:PORT), e.g. to check one copy.
        #[arg(long, value_name = "IP:PORT")]
        replica: Option<SocketAddrV4>,
        /// Replace an existing local file.
        #[arg(long)]
        force: bool,
    },
    /// List a directory.
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Long format: type, mode, size, inode.
        #[arg(short, long)]
        long: bool,
    },
    /// Show a file's or directory's attributes.
    Stat { path: String },
    /// Remove files (and directories with -r).
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a directory.
    Mkdir {
        path: String,
        /// Create missing parents, and succeed if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Goal for the new directory.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
        goal: Option<u8>,
        /// Trash time (seconds) for the new directory.
        #[arg(long)]
        trash_time: Option<u32>,
    },
    /// Print every chunk's replicas and checksums; exit 1 if copies differ
    /// or a chunk has fewer valid copies than the goal.
    Replicas { path: String },
    /// Benchmark the write path with generated data (no local file reads).
    #[command(hide = true)]
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// `big` (one file of --size bytes) or `small` (--count files of --size bytes).
    #[arg(value_parser = ["big", "small"])]
    mode: String,
    /// Destination file (big) or directory (small); must not exist.
    dest: String,
    #[arg(long, default_value_t = 1 << 30)]
    size: u64,
    #[arg(long, default_value_t = 2000)]
    count: usize,
    #[arg(short, long, default_value_t = 4)]
    jobs: usize,
    /// Also compute the MD5 of every file.
    #[arg(long)]
    md5: bool,
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args, Debug)]
struct PutArgs {
    /// Local files, then the MooseFS destination.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DEST")]
    paths: Vec<String>,
    /// Number of copies (1..9); also the minimum write chain accepted.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
    goal: Option<u8>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    /// Files uploaded at the same time.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Skip comparing every replica's CRCs with what was sent.
    #[arg(long)]
    no_verify: bool,
    /// Skip the MD5 of each file.
    #[arg(long)]
    no_md5: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

pub async fn run(args: MfsArgs) -> Result<()> {
    let master = args
        .master
        .ok_or_else(|| anyhow!("no master address: pass --master HOST:PORT or set MFS_MASTER"))?;
    let mut cfg = ClientConfig::new(master);
    cfg.master.password = args.password;
    cfg.master.client_info = "mfs-ingest worker mfs".into();
    let client = MfsClient::connect(cfg).await?;
    let result = match args.command {
        MfsCommand::Put(put) => cmd_put(&client, put).await,
        MfsCommand::Get {
            src,
            dest,
            replica,
            force,
        } => cmd_get(&client, &src, dest, replica, force).await,
        MfsCommand::Ls { path, long } => cmd_ls(&client, &path, long).await,
        MfsCommand::Stat { path } => cmd_stat(&client, &path).await,
        MfsCommand::Rm { paths, recursive } => cmd_rm(&client, &paths, recursive).await,
        MfsCommand::Mkdir {
            path,
            parents,
            goal,
            trash_time,
        } => cmd_mkdir(&client, &path, parents, goal, trash_time).await,
        MfsCommand::Replicas { path } => cmd_replicas(&client, &path).await,
        MfsCommand::Bench(args) => crate::bench::run(&client, args.into()).await,
    };
    client.close().await;
    result
}

impl From<BenchArgs> for crate::bench::BenchSpec {
    fn from(a: BenchArgs) -> Self {
        crate::bench::BenchSpec {
            small: a.mode == "small",
            dest: a.dest,
            size: a.size,
            count: a.count,
            jobs: a.jobs,
            md5: a.md5,
            verify: !a.no_verify,
        }
    }
}

/// Remote path, bytes written and md5 of one finished upload.
type PutResult = Result<(String, u64, Option<String>)>;

/// Where one local file goes.
struct Upload {
    src: PathBuf,
    parent: u32,
    name: Name,
    display: String,
}

/// What `put SRC… DEST` writes where: every source checked before
/// MooseFS is touched, then the destination resolved (a directory is
/// created if several sources or a trailing slash ask for one).
async fn plan_uploads(client: &MfsClient, paths: &[String]) -> Result<Vec<Upload>> {
    let (dest, srcs) = paths.split_last().expect("clap requires 2 paths");
    let dest_path = MfsPath::parse(dest)?;
    // Check every source before touching MooseFS.
    let mut sources: Vec<PathBuf> = Vec::with_capacity(srcs.len());
    for src in srcs {
        let src = PathBuf::from(src);
        let meta = tokio::fs::metadata(&src)
            .await
            .with_context(|| format!("cannot read {}", src.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", src.display());
        }
        sources.push(src);
    }
    let dest_is_dir = match client.resolve(&dest_path).await {
        Ok((_, attr)) => attr.is_dir(),
        Err(MfsError::NotFound(_)) => {
            if srcs.len() > 1 || dest.ends_with('/') {
                client.mkdir_all(&dest_path).await?;
                true
            } else {
                false
            }
        }
        Err(e) => return Err(e.into()),
    };
    if srcs.len() > 1 && !dest_is_dir {
        bail!("{dest_path} is not a directory (several sources need a directory destination)");
    }
    let mut uploads = Vec::with_capacity(srcs.len());
    let (dir_path, fixed_name) = if dest_is_dir {
        (dest_path.clone(), None)
    } else {
        let (parent, name) = dest_path
            .split_last()
            .ok_or_else(|| anyhow!("cannot write to the root directory"))?;
        (parent, Some(name.clone()))
    };
    let (dir_inode, dir_attr) = client.resolve(&dir_path).await?;
    if !dir_attr.is_dir() {
        bail!("not a directory: {dir_path}");
    }
    for src in sources {
        let name = match &fixed_name {
            Some(n) => n.clone(),
            None => Name::parse(
                src.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("{} has no usable file name", src.display()))?,
            )?,
        };
        uploads.push(Upload {
            display: dir_path.join(&name).to_string(),
            src,
            parent: dir_inode,
            name,
        });
    }
    Ok(uploads)
}

async fn cmd_put(client: &MfsClient, args: PutArgs) -> Result<()> {
    let uploads = plan_uploads(client, &args.paths).await?;
    let mut opts = client.config().write.clone();
    opts.verify = !args.no_verify;
    opts.compute_md5 = !args.no_md5;
    opts.required_copies = args.goal;
    let opts = Arc::new(opts);
    let jobs = Arc::new(tokio::sync::Semaphore::new(args.jobs as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let single = uploads.len() == 1;
    let mut total = 0;
    let mut files = 0;
    let mut first_error: Option<anyhow::Error> = None;
    let quiet = args.quiet;
    let mut tally = |done: std::result::Result<PutResult, tokio::task::JoinError>,
                     first_error: &mut Option<anyhow::Error>| {
        match done.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((path, len, md5)) => {
                if !quiet {
                    println!("{path}\t{len}\t{}", md5.unwrap_or_else(|| "-".into()));
                }
                total += len;
                files += 1;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    };
    for upload in uploads {
        let permit = jobs.clone().acquire_owned().await?;
        // After a failure start nothing new; uploads already running finish
        // (or clean up their temporary file) before we return.
        while let Some(done) = tasks.try_join_next() {
            tally(done, &mut first_error);
        }
        if first_error.is_some() {
            break;
        }
        let client = client.clone();
        let opts = opts.clone();
        let (goal, force, quiet) = (args.goal, args.force, args.quiet);
        tasks.spawn(async move {
            let res = put_one(&client, &upload, goal, force, &opts, single && !quiet).await;
            drop(permit);
            res.map(|(len, md5)| (upload.display, len, md5))
                .map_err(|e| e.context(format!("put {}", upload.src.display())))
        });
    }
    while let Some(done) = tasks.join_next().await {
        tally(done, &mut first_error);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if !args.quiet && !single {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{files} files, {total} bytes in {secs:.2} s ({:.1} MiB/s, {:.0} files/s)",
            total as f64 / (1 << 20) as f64 / secs,
            files as f64 / secs
        );
    }
    Ok(())
}

/// Uploads one file through a temporary name and renames it into place, so
/// readers never see a partial file.
async fn put_one(
    client: &MfsClient,
    upload: &Upload,
    goal: Option<u8>,
    force: bool,
    opts: &WriteOptions,
    progress: bool,
) -> Result<(u64, Option<String>)> {
    match client.lookup(upload.parent, &upload.name).await {
        Ok((_, attr)) if attr.is_dir() => bail!("{} is a directory", upload.display),
        Ok(_) if !force => bail!(
            "{} already exists (use --force to replace it)",
            upload.display
        ),
        Ok(_) | Err(MfsError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let temp = Name::parse(&format!(
        ".{}.part-{}-{:08x}",
        upload.name.as_str().chars().take(200).collect::<String>(),
        std::process::id(),
        rand::random::<u32>()
    ))?;
    let file = client.create(upload.parent, &temp, 0o644).await?;
    let written = async {
        if let Some(g) = goal {
            client.set_goal(file.inode, g, false).await?;
        }
        let source = tokio::fs::File::open(&upload.src)
            .await
            .with_context(|| format!("cannot open {}", upload.src.display()))?;
        let size = source.metadata().await?.len();
        let bar = if progress && size >= CHUNK_SIZE {
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let outcome = client
            .write_stream(file.inode, 0, bar.wrap_async_read(source), opts)
            .await?;
        bar.finish_and_clear();
        if outcome.length != size {
            bail!(
                "{} changed while being read: {} bytes expected, {} read",
                upload.src.display(),
                size,
                outcome.length
            );
        }
        client
            .rename(upload.parent, &temp, upload.parent, &upload.name)
            .await?;
        Ok::<_, anyhow::Error>((outcome.length, outcome.md5_hex()))
    }
    .await;
    if written.is_err() {
        let _ = client.unlink(upload.parent, &temp).await;
    }
    drop(file);
    written
}

async fn cmd_rm(client: &MfsClient, paths: &[String], recursive: bool) -> Result<()> {
    for p in paths {
        client.remove(&MfsPath::parse(p)?, recursive).await?;
    }
    Ok(())
}

async fn cmd_get(
    client: &MfsClient,
    src: &str,
    dest: Option<PathBuf>,
    replica: Option<SocketAddrV4>,
    force: bool,
) -> Result<()> {
    let path = MfsPath::parse(src)?;
    let (inode, attr) = client.resolve(&path).await?;
    if attr.is_dir() {
        bail!("{path} is a directory");
    }
    let choice = replica.map_or(ReplicaChoice::Any, ReplicaChoice::Only);
    let dest = dest.unwrap_or_else(|| {
        PathBuf::from(path.file_name().map(|n| n.as_str()).unwrap_or("download"))
    });
    if dest == Path::new("-") {
        let mut out = tokio::io::stdout();
        client.read_to(inode, 0, None, &mut out, choice).await?;
        out.flush().await?;
        return Ok(());
    }
    if !force && tokio::fs::try_exists(&dest).await? {
        bail!(
            "{} already exists (use --force to replace it)",
            dest.display()
        );
    }
    let file = tokio::fs::File::create(&dest)
        .await
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    client.read_to(inode, 0, None, &mut out, choice).await?;
    out.flush().await?;
    Ok(())
}

async fn cmd_ls(client: &MfsClient, path: &str, long: bool) -> Result<()> {
    let path = MfsPath::parse(path)?;
    let (inode, attr) = client.resolve(&path).await?;
    let mut entries = if attr.is_dir() {
        client.readdir(inode).await?
    } else {
        vec![moosefs::DirEntry {
            name: path.file_name().map(|n| n.to_string()).unwrap_or_default(),
            inode,
            attr,
        }]
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        if long {
            println!(
                "{}{:04o} {:>14} {:>10} {}",
                e.attr.node_type.letter(),
                e.attr.mode,
                e.attr.length,
                e.inode,
                e.name
            );
        } else {
            println!("{}", e.name);
        }
    }
    Ok(())
}

async fn cmd_stat(client: &MfsClient, path: &str) -> Result<()> {
    let path = MfsPath::parse(path)?;
    let (inode, attr) = client.resolve(&path).await?;
    let goal = client.get_goal(inode).await?;
    println!("path:   {path}");
    println!("inode:  {inode}");
    println!("type:   {:?}", attr.node_type);
    println!("mode:   {:04o}", attr.mode);
    println!("uid:    {}  gid: {}", attr.uid, attr.gid);
    println!("size:   {}", attr.length);
    println!("chunks: {}", attr.length.div_ceil(CHUNK_SIZE));
    println!("goal:   {goal}");
    println!("nlink:  {}", attr.nlink);
    println!(
        "mtime:  {}  ctime: {}  atime: {}",
        attr.mtime, attr.ctime, attr.atime
    );
    Ok(())
}

async fn cmd_mkdir(
    client: &MfsClient,
    path: &str,
    parents: bool,
    goal: Option<u8>,
    trash_time: Option<u32>,
) -> Result<()> {
    let path = MfsPath::parse(path)?;
    let inode = if parents {
        client.mkdir_all(&path).await?
    } else {
        let (parent_path, name) = path
            .split_last()
            .ok_or_else(|| anyhow!("the root directory already exists"))?;
        let (parent, _) = client.resolve(&parent_path).await?;
        client
            .mkdir(parent, name, 0o755)
            .await
            .map_err(|e| match e {
                MfsError::AlreadyExists(_) => MfsError::AlreadyExists(path.to_string()),
                other => other,
            })?
            .0
    };
    if let Some(g) = goal {
        client.set_goal(inode, g, false).await?;
    }
    if let Some(t) = trash_time {
        client.set_trash_time(inode, t, false).await?;
    }
    Ok(())
}

async fn cmd_replicas(client: &MfsClient, path: &str) -> Result<()> {
    let path = MfsPath::parse(path)?;
    let (inode, attr) = client.resolve(&path).await?;
    if !attr.is_file() {
        bail!("{path} is not a regular file");
    }
    let goal = client.get_goal(inode).await?;
    let reports = client.replica_report(inode).await?;
    println!(
        "{path}: {} bytes, goal {goal}, {} chunks",
        attr.length,
        reports.len()
    );
    let mut problems = Vec::new();
    for r in &reports {
        println!(
            "  chunk {}: {:016X}_{:08X} / (id:{} ver:{})",
            r.index, r.chunk_id, r.version, r.chunk_id, r.version
        );
        for (i, c) in r.copies.iter().enumerate() {
            match &c.table {
                Ok(t) => println!(
                    "    copy {}: {} (status:{} ; blocks: {} ; checksum digest: {})",
                    i + 1,
                    c.server,
                    c.state.label(),
                    t.blocks,
                    t.digest()
                ),
                Err(e) => println!(
                    "    copy {}: {} (status:{} ; unreadable: {e})",
                    i + 1,
                    c.server,
                    c.state.label()
                ),
            }
        }
        if r.chunk_id == 0 {
            continue;
        }
        if !r.copies_identical() {
            println!("    copies have different checksums !!!");
            problems.push(format!("chunk {}: copies differ", r.index));
        }
        let valid = r.valid_copies();
        if valid < goal as usize {
            problems.push(format!(
                "chunk {}: {valid} valid copies, goal {goal}",
                r.index
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{path}: {}", problems.join("; "));
    }
    Ok(())
}
