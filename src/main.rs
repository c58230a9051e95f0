//! The `ringgate` command: `run -c FILE`, `check -c FILE`, `demo`, and
//! `config push|pull` (the reloadable sections to and from etcd).

use clap::{Parser, Subcommand};
use ringgate::config::Config;
use ringgate::runtime::Server;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The file `run` and `check` read when no `-c` is given.
const DEFAULT_CONFIG: &str = "ringgate.toml";

/// What `--help` adds below the commands: the environment, the signals and
/// where errors go.
const AFTER_HELP: &str = "\
Config file:
  run and check read FILE from -c, or ./ringgate.toml when -c is not given.
  config/ringgate.example.toml documents every key with its default.

Config errors:
  check and run print every error to stderr, one line each naming the key,
  its line in the file and the fix, and exit with status 2. A reload that
  fails (SIGHUP, POST /reload, [config] watch) logs every error to stderr,
  answers POST /reload with them, and the running config keeps serving.

Environment:
  RINGGATE_LOG  what is logged to stderr: a level (error, warn, info, debug,
                trace) or per-module directives (ringgate=debug,info);
                default info
  NO_COLOR      set: no colour in log lines (they are only coloured when
                stderr is a terminal anyway)

Signals (run and demo):
  SIGHUP           reload the config file; an invalid file changes nothing
  SIGUSR1          reopen the access-log file (after log rotation)
  SIGUSR2          nothing: logged and ignored
  SIGTERM, SIGINT  stop accepting, finish in-flight requests (within
                   server.drain_timeout_ms), exit 0

Zero-downtime restart:
  ringgate run --takeover -c FILE   start the new process on the ports the
  running one serves; once its /readyz answers 200, SIGTERM the old one.
  Without --takeover, run refuses to start on an address something already
  serves.";

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "A thread-per-core io_uring API gateway",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a config file (SIGHUP reloads it, SIGTERM drains and exits).
    #[command(after_help = AFTER_HELP)]
    Run {
        /// Config file (TOML) [default: ./ringgate.toml].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Start on addresses a running ringgate serves (SO_REUSEPORT), to
        /// replace it without downtime; then SIGTERM the old process.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file and print every error (exit 0 when valid, 2
    /// when not).
    #[command(after_help = AFTER_HELP)]
    Check {
        /// Config file (TOML) [default: ./ringgate.toml].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Move the reloadable sections to and from etcd (`[config] source = "etcd"`).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Start built-in demo services and a gateway in front of them.
    Demo {
        /// Gateway listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Gateway HTTPS address (a free port when taken), with a
        /// certificate generated at start.
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate FILE, then replace the objects under the prefix with its
    /// reloadable sections (routes, upstreams, consumers, rate limits,
    /// auth, redis, versioning, cache) in one etcd transaction.
    Push {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// etcd client URL(s), comma-separated (ETCDCTL_USER=name:password
        /// and ETCDCTL_CACERT=FILE are honoured).
        #[arg(long, value_name = "URL")]
        etcd: String,
        /// Key prefix.
        #[arg(long, default_value = "/ringgate")]
        prefix: String,
    },
    /// Print the reloadable sections under the prefix as TOML.
    Pull {
        /// etcd client URL(s), comma-separated.
        #[arg(long, value_name = "URL")]
        etcd: String,
        /// Key prefix.
        #[arg(long, default_value = "/ringgate")]
        prefix: String,
    },
}

/// Log lines go to stderr, coloured only when stderr is a terminal (and
/// `NO_COLOR` is not set): a file or a pipe gets plain text.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

/// The file given with `-c`, or `./ringgate.toml`; `None` (after saying
/// what was looked for and how to pass a file) when neither is there.
fn config_path(given: Option<PathBuf>, cmd: &str) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p);
    }
    let p = PathBuf::from(DEFAULT_CONFIG);
    if p.exists() {
        return Some(p);
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| String::from("."));
    eprintln!(
        "ringgate {cmd}: no config file: -c was not given and ./{DEFAULT_CONFIG} does not exist \
         (looked in {cwd})\n  fix: pass one with `ringgate {cmd} -c FILE`, or create \
         ./{DEFAULT_CONFIG}; config/ringgate.example.toml documents every key"
    );
    None
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    // The file, and with `[config] source = "etcd"` the sections in etcd.
    ringgate::config::source::load(path).map_err(|errs| {
        eprintln!("{}: {} error(s)", path.display(), errs.0.len());
        for e in &errs.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts (config compilation and the demo start
    // some): a thread that does not block SIGTERM would take it with the
    // default action and end the process without a drain.
    let signals = matches!(cli.cmd, Cmd::Run { .. } | Cmd::Demo { .. })
        .then(ringgate::runtime::server::block_signals);
    init_logging();
    match cli.cmd {
        Cmd::Check { config } => {
            let Some(config) = config_path(config, "check") else {
                return ExitCode::from(2);
            };
            match load(&config) {
                Ok(c) => {
                    // With the source etcd: the revision read, or its errors.
                    let etcd = match ringgate::config::source::check_note(&c) {
                        Ok(note) => note,
                        Err(errors) => {
                            eprintln!("{}: {errors}", config.display());
                            return ExitCode::from(2);
                        }
                    };
                    println!(
                        "{}: ok ({} routes, {} upstreams, {} workers{etcd})",
                        config.display(),
                        c.routes.len(),
                        c.upstreams.len(),
                        c.server.workers,
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Cmd::Run { config, takeover } => {
            let Some(config) = config_path(config, "run") else {
                return ExitCode::from(2);
            };
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if !takeover && let Err(e) = ringgate::runtime::server::refuse_if_served(&cfg, &config)
            {
                eprintln!("ringgate: {e}");
                return ExitCode::FAILURE;
            }
            serve(cfg, Some(config), signals.expect("blocked for run"))
        }
        Cmd::Config { cmd } => {
            let r = match cmd {
                ConfigCmd::Push {
                    config,
                    etcd,
                    prefix,
                } => ringgate::config::source::push(&config, &etcd, &prefix).map(|s| {
                    eprintln!("{s}");
                }),
                ConfigCmd::Pull { etcd, prefix } => {
                    ringgate::config::source::pull(&etcd, &prefix).map(|t| print!("{t}"))
                }
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(errs) => {
                    eprintln!("ringgate config: {} error(s)", errs.len());
                    for e in &errs {
                        eprintln!("  {e}");
                    }
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Demo { listen, tls_listen } => match ringgate::demo::start(&listen, &tls_listen) {
            Ok((cfg, services)) => {
                ringgate::demo::print_tour(&cfg, &services);
                serve(cfg, None, signals.expect("blocked for demo"))
            }
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(cfg: Config, path: Option<PathBuf>, signals: libc::sigset_t) -> ExitCode {
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
            "SIGUSR2" => tracing::warn!("SIGUSR2 means nothing to ringgate; ignored"),
            other => break other,
        }
    };
    tracing::info!(signal = sig, "draining");
    handle.shutdown();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
