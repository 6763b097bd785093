//! Command-line grammar and dispatch.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hearth_proto::ByteSize;
use hearth_sandbox::options::parse_duration;
use hearth_sandbox::HearthHome;
use hearth_vm::AccelPreference;

/// Run untrusted code in microVMs that boot, run and die.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Hearth's data directory [default: $HEARTH_HOME or ~/.local/share/hearth].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); HEARTH_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this host: accelerator, QEMU, tools and the guest image.
    Doctor(DoctorArgs),
    /// Build and inspect guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run commands in sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Durable runs: programs whose every step is journaled, resumed in a
    /// fresh VM after any crash.
    #[command(subcommand)]
    Run(RunCommand),
    /// Kill VMs and remove files left behind by Hearth processes that died.
    Gc,
    /// Run the sandbox API server.
    Serve(Box<ServeArgs>),
    /// Show or rotate the API token.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `hearth serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the URL is printed and
    /// written to $HEARTH_HOME/server.json).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Start even though the store this home had is gone or damaged: a
    /// damaged or empty SQLite file is moved aside (kept, renamed
    /// `hearth.db.<why>-<ms>`) and an empty history begins; an empty or
    /// other database becomes this home's store.
    #[arg(long)]
    pub reset: bool,
    /// Most sandboxes alive at once.
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<u32>,
    /// Memory all sandboxes may hold together (guest memory plus 64 MiB per
    /// VM) [default: 80% of host memory].
    #[arg(long, value_parser = parse_size)]
    pub memory_budget: Option<ByteSize>,
    /// vCPUs all sandboxes may hold together [default: 4 per host CPU].
    #[arg(long, value_name = "N")]
    pub vcpu_budget: Option<u32>,
    /// Disk space the server keeps free on its home's filesystem (for its
    /// store and logs): creates that would leave less are refused with 429.
    /// Each sandbox's disk is allocated in full when it starts.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub disk_reserve: ByteSize,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    pub accel: AccelPreference,
    /// How long a streamed exec keeps running with no client attached.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub detach_grace: std::time::Duration,
    /// Most output a `?wait=true` exec may collect.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub max_wait_output: ByteSize,
    /// Largest file upload.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub max_upload: ByteSize,
    /// Memory all requests together may hold in buffers (output collected
    /// for ?wait=true, upload buffers); past it a request gets 503
    /// server_busy. 0: no budget.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub buffer_budget: ByteSize,
    /// Most HTTP connections open at once; at the limit a new connection
    /// closes the oldest idle one. Kept under half the open-file limit,
    /// which `hearth serve` raises to its hard value.
    #[arg(long, default_value = "2048", value_name = "N")]
    pub max_connections: usize,
    /// How long a client has to send a request's head; on a kept-alive
    /// connection counted from the previous answer.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub header_timeout: std::time::Duration,
    /// How long a connection may have no request in flight (an open event
    /// stream counts as one) before it is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Serve HTTPS with this certificate chain (PEM, the server's first);
    /// needs --tls-key. Without them the server speaks plain HTTP, which is
    /// only safe on a loopback address.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The store: `postgres://user:password@host:port/database` to share
    /// one with other nodes [default: SQLite in $HEARTH_HOME].
    #[arg(
        long,
        env = "HEARTH_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// This node's id [default: the one kept in $HEARTH_HOME/node-id].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// URL where other nodes reach this one [default: http:// and the
    /// listen address].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// How long this node's lease lasts without a heartbeat; other nodes
    /// record its sandboxes lost after seeing it silent that long.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// The API token file [default: $HEARTH_HOME/token]. Give the nodes of
    /// a cluster the same file so that they accept the same token.
    #[arg(long, env = "HEARTH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Tools durable runs may call (a TOML file; see docs/run-endpoint.md);
    /// the built-in `http` tool is always there.
    #[arg(long, env = "HEARTH_TOOLS", value_name = "FILE")]
    pub tools: Option<PathBuf>,
    /// Let sandboxes' networks and tools reach this address range, which
    /// is refused by default (loopback, private, link-local, metadata)
    /// (repeatable).
    #[arg(long = "egress-allow-cidr", value_name = "CIDR")]
    pub egress_allow_cidr: Vec<String>,
    /// For tests and local development: resolve sandboxes' destination
    /// names from this file (/etc/hosts format) before the host's resolver.
    #[arg(long, value_name = "FILE")]
    pub egress_hosts: Option<PathBuf>,
    /// Defaults for sandboxes whose create sets no limits.
    #[command(flatten)]
    pub net_limits: NetLimitArgs,
    /// Certificate authorities (PEM) that https:// tools are trusted
    /// under, beside the system's: for tools behind a private CA.
    #[arg(long, value_name = "FILE")]
    pub tools_ca: Option<PathBuf>,
    /// A sleep or retry wait up to this long keeps a run's VM; a longer one
    /// releases it and the run waits as a row.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub run_hold: std::time::Duration,
}

/// `hearth run ...`.
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a program (a file, or a directory with --entry).
    Start(Box<RunStartArgs>),
    /// List runs.
    Ls(RunLsArgs),
    /// Show a run's timeline: steps, attempts, tool calls and their
    /// idempotency keys, launches and their ends.
    Show(RunIdArgs),
    /// Print the program's output of every launch, with the run's events.
    Logs(RunLogsArgs),
    /// Send a signal to a run.
    Signal(RunSignalArgs),
    /// Cancel a run (its VM is killed at once) and its children.
    Cancel(RunIdArgs),
    /// Decide about a step whose outcome is unknown.
    Resolve(RunResolveArgs),
    /// Print a run's output; the exit code says whether it failed.
    Result(RunResultArgs),
    /// Move a waiting run to a new program, refused unless the new program
    /// replays the run's journal.
    Upgrade(RunUpgradeArgs),
    /// Start a new run whose journal is a run's first N steps: it replays
    /// them and runs step N and what follows afresh. Prints the new id.
    Fork(RunForkArgs),
}

/// `hearth run fork` options.
#[derive(Debug, Args)]
pub struct RunForkArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// Keep steps 0 to N-1; step N is the fork's first new step.
    #[arg(long, value_name = "N")]
    pub at_step: u64,
    /// A name for the fork [default: the run's].
    #[arg(long)]
    pub name: Option<String>,
    /// Wait for the fork to end and print its result, as `run result --wait`.
    #[arg(long)]
    pub wait: bool,
}

/// `hearth run upgrade` options.
#[derive(Debug, Args)]
pub struct RunUpgradeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// The new program: a file, or a directory (with --entry).
    #[arg(long)]
    pub program: PathBuf,
    /// The file to run inside a directory program [default: main.py].
    #[arg(long)]
    pub entry: Option<String>,
}

/// `hearth run start` options.
#[derive(Debug, Args)]
pub struct RunStartArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The program: a file, or a directory (with --entry).
    pub program: PathBuf,
    /// The file to run inside a directory program [default: main.py].
    #[arg(long)]
    pub entry: Option<String>,
    /// Input, as JSON.
    #[arg(long, default_value = "null")]
    pub input: String,
    /// A name for the run.
    #[arg(long)]
    pub name: Option<String>,
    /// Guest image.
    #[arg(long)]
    pub image: Option<String>,
    /// Guest memory (e.g. 512M).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Longest one launch may run (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// The run fails if it has not ended this long from now (e.g. 2h).
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<std::time::Duration>,
    /// Relaunches allowed after a crash.
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// `durable`: the VM's files are checkpointed at every step's end, so
    /// a relaunch (or a fork) boots on them; `ephemeral` (default): only
    /// persisted files survive the VM.
    #[arg(long, value_parser = ["ephemeral", "durable"])]
    pub workspace: Option<String>,
    /// The command to run instead of the entry's default (e.g. --cmd "node main.js").
    #[arg(long)]
    pub cmd: Option<String>,
    /// Environment variable of the program (KEY=VALUE, repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Network of each launch: none (the default), open, or
    /// allow:ENTRY,... (names, *.wildcards, CIDRs, each with an optional
    /// :PORT); the server's operator decides which private ranges, if
    /// any, are reachable.
    #[arg(long, default_value = "none", value_name = "MODE", value_parser = parse_net)]
    pub net: hearth_net::NetworkPolicy,
    #[command(flatten)]
    pub net_limits: NetLimitArgs,
    /// Wait for the run to end and print its result.
    #[arg(long)]
    pub wait: bool,
}

/// `hearth run ls` options.
#[derive(Debug, Args)]
pub struct RunLsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only these states (comma-separated).
    #[arg(long)]
    pub state: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A run id.
#[derive(Debug, Args)]
pub struct RunIdArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hearth run logs` options.
#[derive(Debug, Args)]
pub struct RunLogsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// Keep printing until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// `hearth run signal` options.
#[derive(Debug, Args)]
pub struct RunSignalArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// Signal name.
    pub name: String,
    /// Payload, as JSON.
    #[arg(long, default_value = "null")]
    pub data: String,
}

/// `hearth run resolve` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("decision").required(true).args(["retry", "skip_with", "fail"])))]
pub struct RunResolveArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// The step whose outcome is unknown.
    #[arg(long)]
    pub step: u64,
    /// Run the step again (with the same idempotency key).
    #[arg(long)]
    pub retry: bool,
    /// Take this JSON as the step's result without running it.
    #[arg(long, value_name = "JSON")]
    pub skip_with: Option<String>,
    /// Fail the step (optionally saying why).
    #[arg(long, value_name = "MESSAGE", num_args = 0..=1, default_missing_value = "failed by a person's decision")]
    pub fail: Option<String>,
}

/// `hearth run result` options.
#[derive(Debug, Args)]
pub struct RunResultArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Run id.
    pub id: String,
    /// Wait for the run to end.
    #[arg(long)]
    pub wait: bool,
}

/// `hearth token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the API token (creating it if there is none).
    Show,
    /// Replace the API token; clients holding the old one are refused.
    Rotate,
}

/// `hearth doctor` options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also verify the image's digests (reads every byte).
    #[arg(long)]
    pub verify: bool,
    /// Accelerator preference to evaluate.
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    pub accel: AccelPreference,
}

/// `hearth image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) a guest image: kernel, initramfs and root filesystem.
    Build(ImageBuildArgs),
}

/// `hearth image build` options.
#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// Image name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Rebuild every part even if the cache is valid.
    #[arg(long)]
    pub force: bool,
    /// Debian mirror for debootstrap [default: from the host's apt sources].
    #[arg(long)]
    pub mirror: Option<String>,
    /// Debian suite of the root filesystem.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// Extra Debian packages for the root filesystem (repeatable).
    #[arg(long = "package", value_name = "PKG")]
    pub packages: Vec<String>,
    /// The static guest agent binary [default: found next to hearth or in target/guest].
    #[arg(long, value_name = "PATH", env = "HEARTH_GUEST_AGENT")]
    pub guest_agent: Option<PathBuf>,
}

/// `hearth sandbox ...`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run one command in a fresh sandbox, stream its output, pass its exit
    /// code through, and destroy the sandbox (no server needed).
    Run(RunArgs),
    /// Create a sandbox on the server and print its id.
    Create(CreateArgs),
    /// List the server's sandboxes.
    Ls(LsArgs),
    /// Run a command in a server sandbox; its exit code is passed through.
    Exec(ExecArgs),
    /// Copy a file to or from a server sandbox (`ID:/path` names the sandbox side).
    Cp(CpArgs),
    /// Destroy server sandboxes.
    Rm(RmArgs),
    /// Print a sandbox's event log; --follow streams it until the sandbox ends.
    Logs(LogsArgs),
}

/// Where the server is: `--url`, `HEARTH_URL`, `$HEARTH_HOME/server.json`, or
/// http://127.0.0.1:7070; the token from `HEARTH_TOKEN` or `$HEARTH_HOME/token`.
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Server URL.
    #[arg(long, env = "HEARTH_URL")]
    pub url: Option<String>,
}

/// A sandbox's network limits (all connections together).
#[derive(Debug, Args, Clone, Default)]
pub struct NetLimitArgs {
    /// Most network bytes per second, both ways together (e.g. 1M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub egress_rate: Option<ByteSize>,
    /// Most network bytes over the sandbox's life; past it the connection
    /// that crossed it ends and new ones are refused.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub egress_max_bytes: Option<ByteSize>,
    /// Most network connections open at once [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub egress_max_connections: Option<u32>,
}

impl NetLimitArgs {
    /// The limits, `defaults` where not given.
    pub fn limits(
        &self,
        defaults: hearth_net::NetworkLimits,
    ) -> Result<hearth_net::NetworkLimits, String> {
        let mut limits = defaults;
        if let Some(rate) = self.egress_rate {
            if rate.bytes() == 0 {
                return Err(
                    "--egress-rate 0 would carry nothing; leave it out for no limit".into(),
                );
            }
            limits.rate = Some(rate.bytes());
        }
        if let Some(max) = self.egress_max_bytes {
            limits.max_bytes = Some(max.bytes());
        }
        if let Some(max) = self.egress_max_connections {
            limits.max_connections = max as usize;
        }
        Ok(limits)
    }
}

/// `hearth sandbox create` options.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Guest image name.
    #[arg(long, default_value = "default")]
    pub image: String,
    /// Guest memory (e.g. 256M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: ByteSize,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Writable disk space (e.g. 256M, 1G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub disk: ByteSize,
    /// Lifetime (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// Environment for every exec (KEY=VALUE, repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Label (KEY=VALUE, repeatable).
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub labels: Vec<(String, String)>,
    /// Give commands full root in the guest (no namespace of their own, no
    /// capabilities dropped, /sys and cgroups writable); recorded in the
    /// sandbox's events. Without it commands run as root but cannot reach
    /// the guest agent or its cgroups.
    #[arg(long)]
    pub privileged: bool,
    /// Network: none (the default), open (any public destination), or
    /// allow:ENTRY,... (names, *.wildcards, CIDRs, each with an optional
    /// :PORT). The server's operator decides which private ranges, if any,
    /// are reachable (`hearth serve --egress-allow-cidr`).
    #[arg(long, default_value = "none", value_name = "MODE", value_parser = parse_net)]
    pub net: hearth_net::NetworkPolicy,
    #[command(flatten)]
    pub net_limits: NetLimitArgs,
}

/// `hearth sandbox ls` options.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only these states (comma-separated, e.g. running,creating) [default: live ones].
    #[arg(long)]
    pub state: Option<String>,
    /// Ended sandboxes too.
    #[arg(short, long)]
    pub all: bool,
    /// Only sandboxes with this label (KEY=VALUE, repeatable).
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

/// `hearth sandbox exec` options.
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Sandbox id.
    pub id: String,
    /// Environment variable (KEY=VALUE, repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this long (e.g. 30s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Don't forward stdin (by default it is sent when it is not a terminal).
    #[arg(long)]
    pub no_stdin: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `hearth sandbox cp` options.
#[derive(Debug, Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Source: a local path, `-` for stdin, or ID:/path.
    pub source: String,
    /// Destination: a local path, `-` for stdout, or ID:/path.
    pub destination: String,
}

/// `hearth sandbox rm` options.
#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Sandbox ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `hearth sandbox logs` options.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Sandbox id.
    pub id: String,
    /// Keep streaming new events until the sandbox ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// `hearth sandbox run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest image name.
    #[arg(long, default_value = "default")]
    pub image: String,
    /// Guest memory (e.g. 256M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: ByteSize,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Writable disk space for the sandbox (e.g. 256M, 1G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub disk: ByteSize,
    /// Kill the sandbox after this long (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
    /// Environment variable for the command (KEY=VALUE, repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    pub accel: AccelPreference,
    /// Don't forward stdin (by default it is forwarded unless it is a terminal).
    #[arg(long)]
    pub no_stdin: bool,
    /// Give commands full root in the guest (no namespace of their own, no
    /// capabilities dropped, /sys and cgroups writable); recorded in the
    /// sandbox's events. Without it commands run as root but cannot reach
    /// the guest agent or its cgroups.
    #[arg(long)]
    pub privileged: bool,
    /// Network: none (the default), open (any public destination), or
    /// allow:ENTRY,... (names, *.wildcards, CIDRs, each with an optional
    /// :PORT), e.g. allow:pypi.org,*.pythonhosted.org:443. Programs reach
    /// it through the proxy their HTTP_PROXY/HTTPS_PROXY name; loopback,
    /// private, link-local and metadata addresses stay refused unless
    /// --egress-allow-cidr opens them.
    #[arg(long, default_value = "none", value_name = "MODE", value_parser = parse_net)]
    pub net: hearth_net::NetworkPolicy,
    /// Let the sandbox reach this address range, which is refused by
    /// default (loopback, private, link-local, metadata) (repeatable).
    #[arg(long = "egress-allow-cidr", value_name = "CIDR")]
    pub egress_allow_cidr: Vec<String>,
    /// For tests and local development: resolve names from this file
    /// (/etc/hosts format) before asking the host's resolver.
    #[arg(long, value_name = "FILE")]
    pub egress_hosts: Option<PathBuf>,
    #[command(flatten)]
    pub net_limits: NetLimitArgs,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse::<ByteSize>().map_err(|e| e.to_string())
}

fn parse_net(s: &str) -> Result<hearth_net::NetworkPolicy, String> {
    s.parse()
        .map_err(|e: hearth_net::PolicyError| e.to_string())
}

fn parse_accel(s: &str) -> Result<AccelPreference, String> {
    s.parse()
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!(
            "invalid environment variable {s:?}: expected KEY=VALUE"
        )),
    }
}

/// The home directory from `--home` or the environment.
pub fn home(cli_home: &Option<PathBuf>) -> HearthHome {
    let env = HearthHome::from_env();
    match cli_home {
        Some(root) => match std::env::var_os("HEARTH_IMAGES") {
            Some(images) if !images.is_empty() => HearthHome::new(root, images),
            _ => HearthHome::at(root),
        },
        None => env,
    }
}

/// Run the parsed command; the result is the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let home = home(&cli.home);
    if let Command::Serve(args) = cli.command {
        // The server reaps (and records) what its predecessor left itself.
        return crate::serve::run(home, *args).await;
    }
    if let Command::Token(command) = cli.command {
        return crate::serve::token(&home, command);
    }
    // Clean up after any Hearth process that died without doing so.
    let reaped = hearth_sandbox::reap_orphans(&home);
    for sandbox in &reaped {
        tracing::info!(sandbox = %sandbox.id, killed_vmm = sandbox.killed_vmm, "reaped an orphaned sandbox");
    }
    match cli.command {
        Command::Doctor(args) => crate::doctor::run(&home, args).await,
        Command::Image(ImageCommand::Build(args)) => crate::image_cmd::build(&home, args).await,
        Command::Sandbox(SandboxCommand::Run(args)) => crate::run::run(&home, args).await,
        Command::Sandbox(command) => crate::remote::run(&home, command).await,
        Command::Run(command) => crate::runs_cmd::run(&home, command).await,
        Command::Gc => {
            // Orphans were reaped above; report what was done.
            for sandbox in &reaped {
                let vm = if sandbox.killed_vmm {
                    "killed its VM, "
                } else {
                    ""
                };
                println!("reaped {}: {vm}removed its files", sandbox.id);
            }
            let dir = home.sandboxes_dir();
            let live = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            println!(
                "gc: reaped {} orphaned sandbox(es); {live} live sandbox(es) remain",
                reaped.len()
            );
            Ok(0)
        }
        Command::Serve(_) | Command::Token(_) => unreachable!("handled above"),
    }
}
