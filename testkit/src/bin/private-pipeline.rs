//! `private-pipeline up|down --tag TAG`: the private resources of a
//! pipeline for the scripts (`bench-pipeline`, `check-dashboards`), the
//! same ones the tests get from `testkit::Pipeline`. `up` creates the
//! database (migrated), the vhost, the MooseFS root and the source
//! directory and prints the environment for the binaries as KEY=VALUE
//! lines (and PIPELINE_DB_NAME, PIPELINE_VHOST); if any step fails it
//! removes what it made; a tag whose database exists is refused (it is
//! someone's pipeline). `down` removes them all, as far as they exist.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use testkit::resources::{
    database_exists, PrivateResources, DEFAULT_MFS_PARENT, DEFAULT_SOURCES_PARENT,
};

#[derive(Parser)]
#[command(
    name = "private-pipeline",
    about = "Private pipeline resources for the scripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the resources and print their environment.
    Up(Place),
    /// Remove the resources.
    Down(Place),
}

#[derive(Args)]
struct Place {
    /// Names every resource (letters, digits, `-`).
    #[arg(long)]
    tag: String,
    /// The MooseFS directory the root `pipe-<tag>` goes in.
    #[arg(long, default_value = DEFAULT_MFS_PARENT)]
    mfs_parent: String,
    /// The local directory the source directory `pipe-<tag>` goes in.
    #[arg(long, default_value = DEFAULT_SOURCES_PARENT)]
    sources_parent: PathBuf,
}

impl Place {
    fn resources(&self) -> Result<PrivateResources, String> {
        let valid = !self.tag.is_empty()
            && self
                .tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!("--tag {:?}: use letters, digits and -", self.tag));
        }
        Ok(PrivateResources::placed(
            &self.tag,
            &self.mfs_parent,
            &self.sources_parent,
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (up, place) = match cli.command {
        Command::Up(place) => (true, place),
        Command::Down(place) => (false, place),
    };
    let resources = match place.resources() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !up {
        resources.remove();
        return ExitCode::SUCCESS;
    }
    // The testkit helpers panic on failure: a panic is a failed step.
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            // A tag in use is someone else's pipeline: refuse it, remove nothing.
            if database_exists(&resources.db_name).await {
                return false;
            }
            let (store, mfs) = resources.create("private-pipeline").await;
            store.pool.close().await;
            mfs.close().await;
            true
        })
    }));
    match created {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "error: the tag {} is in use (its database exists)",
                resources.tag
            );
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("error: creating the private pipeline failed; removing what was made");
            resources.remove();
            return ExitCode::FAILURE;
        }
    }
    for (key, value) in resources.env() {
        println!("{key}={value}");
    }
    println!("PIPELINE_DB_NAME={}", resources.db_name);
    println!("PIPELINE_VHOST={}", resources.vhost);
    ExitCode::SUCCESS
}
