//! The `ringgate` command: `run -c FILE`, `check -c FILE`, `demo`.

use clap::{Parser, Subcommand};
use ringgate::config::Config;
use ringgate::runtime::Server;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "A thread-per-core io_uring API gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a config file.
    Run {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print every error.
    Check {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start built-in demo services and a gateway in front of them.
    Demo {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.cmd {
        Cmd::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} routes, {} upstreams, {} workers)",
                    config.display(),
                    c.routes.len(),
                    c.upstreams.len(),
                    c.server.workers
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{}: {} error(s)", config.display(), errs.0.len());
                for e in &errs.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errs) => {
                    eprintln!("{}: {} error(s)", config.display(), errs.0.len());
                    for e in &errs.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::from(2);
                }
            };
            serve(cfg, Some(config))
        }
        Cmd::Demo { listen } => match ringgate::demo::start(&listen) {
            Ok((cfg, services)) => {
                ringgate::demo::print_tour(&cfg, &services);
                serve(cfg, None)
            }
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(cfg: Config, path: Option<PathBuf>) -> ExitCode {
    let signals = ringgate::runtime::server::block_signals();
    let started = match path {
        Some(p) => Server::start_file(cfg, p, Default::default()),
        None => Server::start(cfg),
    };
    let mut handle = match started {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ringgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        listen = ?handle.local_addrs(),
        workers = handle.drivers().len(),
        driver = %handle.drivers().first().map(String::as_str).unwrap_or("-"),
        "ringgate serving"
    );
    let sig = loop {
        match ringgate::runtime::server::wait_signal(&signals) {
            "SIGHUP" => {
                // Errors are logged and counted by the reloader.
                let _ = handle.reload();
            }
            "SIGUSR1" => handle.reopen_logs(),
            other => break other,
        }
    };
    tracing::info!(signal = sig, "draining");
    handle.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
