//! `agentscale`: the operator command line for agentscale deployments.
//!
//! ```text
//! agentscale queue stats   --backend redis --queue agents
//! agentscale queue peek    --backend redis --queue agents --limit 5
//! agentscale dlq list      --backend kafka --queue agent-tasks --brokers k1:9092
//! agentscale dlq replay    --backend redis --queue agents 1718000000000-0
//! agentscale dlq purge     --backend redis --queue agents --yes
//! agentscale session inspect acme/session-42
//! agentscale autoscale simulate --trace day.csv --hpa deploy/hpa.yaml
//! ```
//!
//! Human-readable tables by default, `--json` for scripts. Exit codes: 0 done,
//! 1 a runtime or backend error (unreachable service, failed command), 2 bad
//! usage or input (unknown flag, unknown dead-letter id, invalid file, a purge
//! that was not confirmed); with 2, nothing was changed.
//!
//! Connection settings come from flags or the environment
//! (`AGENTSCALE_REDIS_URL`, `AGENTSCALE_KAFKA_BROKERS`, `AGENTSCALE_QUEUE`,
//! `AGENTSCALE_KEY_PREFIX`, `AGENTSCALE_KAFKA_GROUP`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// A command line prints its results.
#![allow(clippy::print_stdout)]

mod backend;
mod render;
mod session;
mod simulate;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use agentscale_core::{Error, ErrorKind};

/// The operator command line for agentscale queues, sessions and autoscaling.
#[derive(Debug, Parser)]
#[command(name = "agentscale", version, about, long_about = None)]
struct Cli {
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Log filter for diagnostics on stderr (`RUST_LOG` syntax).
    #[arg(long, global = true, env = "AGENTSCALE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queue depth and ready tasks.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Dead letters: list, replay, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Session state in the Redis session store.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The HPA / KEDA autoscaling simulator.
    #[command(subcommand)]
    Autoscale(AutoscaleCommand),
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Ready, in flight, delayed, dead, and the age of the oldest ready task.
    Stats(QueueArgs),
    /// The first ready tasks, without leasing them (Redis only).
    Peek {
        #[command(flatten)]
        queue: QueueArgs,
        /// How many tasks to show (at most 1000).
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        queue: QueueArgs,
        /// How many to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Moves one dead letter back to the ready queue, attempts reset.
    Replay {
        #[command(flatten)]
        queue: QueueArgs,
        /// The dead letter's id (from `dlq list`).
        id: String,
    },
    /// Deletes every dead letter of the queue. Asks to type the queue name
    /// unless `--yes` is given; without confirmation nothing changes (exit 2).
    Purge {
        #[command(flatten)]
        queue: QueueArgs,
        /// Purge without asking.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Version, data and the latest history entries of one session.
    Inspect(session::InspectArgs),
}

#[derive(Debug, Subcommand)]
enum AutoscaleCommand {
    /// Runs an arrival trace through an HPA or KEDA ScaledObject manifest.
    Simulate(simulate::SimulateArgs),
}

/// Which queue backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    /// Redis Streams.
    Redis,
    /// Kafka.
    Kafka,
}

impl BackendKind {
    fn as_str(self) -> &'static str {
        match self {
            BackendKind::Redis => "redis",
            BackendKind::Kafka => "kafka",
        }
    }
}

/// Which queue, and how to reach it.
#[derive(Debug, Clone, Args)]
struct QueueArgs {
    /// The queue backend.
    #[arg(long, value_enum, env = "AGENTSCALE_BACKEND")]
    backend: BackendKind,
    /// The queue name (the Kafka topic for Kafka).
    #[arg(long, env = "AGENTSCALE_QUEUE")]
    queue: String,
    /// Redis URL.
    #[arg(
        long,
        env = "AGENTSCALE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    url: String,
    /// Redis key prefix of the queue.
    #[arg(long, env = "AGENTSCALE_KEY_PREFIX", default_value = "agentscale")]
    key_prefix: String,
    /// Consumer group of the workers (Redis default `workers`, Kafka
    /// default `<topic>-workers`).
    #[arg(long, env = "AGENTSCALE_KAFKA_GROUP")]
    group: Option<String>,
    /// Kafka bootstrap brokers.
    #[arg(long, env = "AGENTSCALE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Extra librdkafka property `key=value` (SASL, TLS); repeatable.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    kafka_properties: Vec<String>,
    /// How long to wait for the backend to answer, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    agentscale_core::config::parse_duration(s).map_err(|e| e.to_string())
}

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
enum CliError {
    /// Bad usage or input; nothing was changed (exit 2).
    Usage(String),
    /// The backend failed or could not be reached (exit 1).
    Runtime(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
    fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => m,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound
            | ErrorKind::InvalidInput
            | ErrorKind::InvalidConfig
            | ErrorKind::Unsupported => CliError::Usage(e.to_string()),
            _ => CliError::Runtime(e.to_string()),
        }
    }
}

type CliResult<T> = Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            let text = if json { out.json.to_string() } else { out.human };
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, "{}", text.trim_end()).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                let kind = if e.exit_code() == 2 { "usage" } else { "runtime" };
                eprintln!("{}", serde_json::json!({ "error": e.message(), "kind": kind }));
            } else {
                eprintln!("error: {}", e.message());
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A command's result in both forms.
struct Output {
    human: String,
    json: serde_json::Value,
}

async fn run(cli: Cli) -> CliResult<Output> {
    match cli.command {
        Command::Queue(QueueCommand::Stats(q)) => {
            let b = backend::Queue::connect(&q).await?;
            let depth = b.depth().await?;
            Ok(render::stats(&q, &depth))
        }
        Command::Queue(QueueCommand::Peek { queue, limit }) => {
            let b = backend::Queue::connect(&queue).await?;
            let entries = b.peek(limit).await?;
            Ok(render::peek(&queue, &entries))
        }
        Command::Dlq(DlqCommand::List { queue, limit }) => {
            let b = backend::Queue::connect(&queue).await?;
            let dead = b.dead_letters(limit).await?;
            Ok(render::dead_letters(&queue, &dead))
        }
        Command::Dlq(DlqCommand::Replay { queue, id }) => {
            let b = backend::Queue::connect(&queue).await?;
            b.replay(&id).await.map_err(|e| match CliError::from(e) {
                CliError::Usage(m) => CliError::Usage(format!("{m}; nothing changed")),
                other => other,
            })?;
            Ok(Output {
                human: format!("replayed dead letter {id} to queue {}", queue.queue),
                json: serde_json::json!({ "replayed": id, "queue": queue.queue }),
            })
        }
        Command::Dlq(DlqCommand::Purge { queue, yes }) => {
            if !yes && !confirm_purge(&queue.queue)? {
                return Err(CliError::Usage(format!(
                    "purge of the dead letters of {} not confirmed (pass --yes or type the queue name); nothing changed",
                    queue.queue
                )));
            }
            let b = backend::Queue::connect(&queue).await?;
            let n = b.purge().await?;
            Ok(Output {
                human: format!("purged {n} dead letters of queue {}", queue.queue),
                json: serde_json::json!({ "purged": n, "queue": queue.queue }),
            })
        }
        Command::Session(SessionCommand::Inspect(args)) => session::inspect(&args).await,
        Command::Autoscale(AutoscaleCommand::Simulate(args)) => simulate::run(&args),
    }
}

/// Asks on stderr to type the queue name, reads one line from stdin.
fn confirm_purge(queue: &str) -> CliResult<bool> {
    eprint!("This deletes every dead letter of queue {queue}. Type the queue name to confirm: ");
    let mut line = String::new();
    // A bounded read: one line of at most 4 KiB.
    let mut limited = std::io::Read::take(std::io::stdin().lock(), 4096);
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match std::io::Read::read(&mut limited, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(CliError::Runtime(format!("reading the confirmation: {e}"))),
        }
    }
    line.push_str(&String::from_utf8_lossy(&buf));
    eprintln!();
    Ok(line.trim() == queue)
}
