//! `sting store …`: operator commands on the store itself. `copy` moves an embedded (SQLite)
//! deployment to ScyllaDB when it outgrows one machine (docs/scylladb.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sting_store::copy::{self, Progress};
use sting_store::{SqliteStore, Store};

use crate::config::{Config, StoreBackend};
use crate::ServerFlags;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every record of a SQLite store (users, sessions, passkeys, jars, documents and
    /// their chunks, marketplace, conversations) into another store, then verify both by
    /// counts and checksums. Resumable: run it again after an interruption and it goes on
    /// from its checkpoint (<from>.copy.json). Stop the nodes using <from> first.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    config: crate::ConfigArgs,
    /// The SQLite database to copy (a node's <store.dir>/sting.db).
    #[arg(long, value_name = "PATH")]
    from: PathBuf,
    /// Where to: `scylla` (the cluster and keyspace of [store.scylla] in the configuration),
    /// or `sqlite:<path>` (another SQLite file).
    #[arg(long, value_name = "TARGET")]
    to: String,
    /// Only compare the two stores; copy nothing.
    #[arg(long)]
    verify_only: bool,
}

pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Copy(args) => copy_store(args).await,
    }
}

async fn copy_store(args: CopyArgs) -> anyhow::Result<()> {
    let config = crate::load_config(&args.config, ServerFlags::default())?;
    crate::init_logging(&config);
    if !args.from.is_file() {
        bail!("{}: no such SQLite database", args.from.display());
    }
    let source = SqliteStore::open(&args.from)
        .await
        .with_context(|| format!("opening {}", args.from.display()))?;
    let (target, target_name) = open_target(&config, &args.to, &args.from).await?;

    if !args.verify_only {
        let checkpoint = checkpoint_path(&args.from);
        eprintln!(
            "copying {} to {target_name} (checkpoint {})",
            args.from.display(),
            checkpoint.display()
        );
        let mut report = |progress: Progress| {
            eprintln!(
                "  {:<13} {:>8} done, {:>10} records written",
                progress.stage.name(),
                progress.done,
                progress.records
            );
        };
        copy::copy(
            &source,
            target.as_ref(),
            &target_name,
            &checkpoint,
            &mut report,
        )
        .await
        .context("copy interrupted; run the same command again to resume")?;
    }

    eprintln!("verifying (counts and SHA-256 of every table, read back from both stores)");
    let checks = copy::verify(&source, target.as_ref()).await?;
    println!(
        "{:<14} {:>10} {:>10}  {:<16} {:<16} result",
        "table", "source", "target", "source sha256", "target sha256"
    );
    for check in &checks {
        println!(
            "{:<14} {:>10} {:>10}  {:<16} {:<16} {}",
            check.table,
            check.source_count,
            check.target_count,
            &check.source_digest[..16],
            &check.target_digest[..16],
            match (&check.first_difference, check.matches()) {
                (_, true) => "ok".to_owned(),
                (Some(difference), false) => format!("DIFFERS: {difference}"),
                (None, false) => "DIFFERS".to_owned(),
            }
        );
    }
    target.flush().await?;
    if checks.iter().any(|check| !check.matches()) {
        bail!("the stores differ");
    }
    println!("all {} tables match", checks.len());
    Ok(())
}

/// The store `to` names, and the name its checkpoint is kept under.
async fn open_target(
    config: &Config,
    to: &str,
    from: &Path,
) -> anyhow::Result<(Arc<dyn Store>, String)> {
    if to == "scylla" {
        let mut config = config.clone();
        config.store.backend = StoreBackend::Scylla;
        let scylla = &config.store.scylla;
        let name = format!("scylla:{}/{}", scylla.nodes.join(","), scylla.keyspace);
        return Ok((crate::app::open_store(&config).await?, name));
    }
    let Some(path) = to.strip_prefix("sqlite:") else {
        bail!("--to {to:?}: expected `scylla` or `sqlite:<path>`");
    };
    let path = PathBuf::from(path);
    if path.canonicalize().ok() == from.canonicalize().ok() && path.exists() {
        bail!("--to names the source itself");
    }
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((Arc::new(store), format!("sqlite:{}", path.display())))
}

fn checkpoint_path(from: &Path) -> PathBuf {
    let mut name = from.file_name().unwrap_or_default().to_os_string();
    name.push(".copy.json");
    from.with_file_name(name)
}
