//! `hearth serve` and `hearth token`.

use std::io::Write;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use hearth_sandbox::HearthHome;
use hearth_server::token::{ensure_token_at, rotate_token_at, token_path};
use hearth_server::{Capacity, HttpLimits, Server, ServerOptions, ServerParts};
use hearth_store::DatabaseUrl;
use hearth_tools::{EgressPolicy, ToolGateway, ToolRegistry};

use crate::cli::{ServeArgs, TokenCommand};

/// Raise the soft open-file limit to the hard one (connections, VMs and the
/// store all take descriptors), and return `wanted` connections, or half
/// the limit if that is less, so that a full house of connections leaves
/// descriptors for everything else.
fn fit_to_open_file_limit(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "cannot raise the open-file limit to its hard value");
        }
    }
    let Some(files) = getrlimit(Resource::Nofile).current else {
        return wanted;
    };
    let allowed = usize::try_from(files / 2).unwrap_or(usize::MAX).max(1);
    if wanted > allowed {
        tracing::warn!(
            wanted,
            allowed,
            open_file_limit = files,
            "--max-connections is above half the open-file limit; using {allowed} (raise `ulimit -n` for more)"
        );
        return allowed;
    }
    wanted
}

/// Serve until SIGTERM or SIGINT, then destroy every sandbox and exit 0.
pub async fn run(home: HearthHome, args: ServeArgs) -> Result<i32> {
    let host = Capacity::from_host();
    let mut options = ServerOptions::new(home);
    options.listen = args.listen;
    options.accel = args.accel;
    options.detach_grace = args.detach_grace;
    options.max_wait_output = args.max_wait_output;
    options.max_upload = args.max_upload;
    options.buffer_budget = args.buffer_budget;
    options.http = HttpLimits {
        max_connections: fit_to_open_file_limit(args.max_connections),
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
    };
    if let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) {
        options.tls = Some(hearth_server::tls::TlsFiles { cert, key });
    } else if let Some(warning) = hearth_server::tls::plain_http_warning(args.listen) {
        eprintln!("hearth: WARNING: {warning}");
    }
    options.capacity = Capacity {
        max_sandboxes: args.max_sandboxes.unwrap_or(host.max_sandboxes),
        memory_bytes: args
            .memory_budget
            .map(|b| b.bytes())
            .unwrap_or(host.memory_bytes),
        vcpus: args.vcpu_budget.unwrap_or(host.vcpus),
        disk_reserve_bytes: args.disk_reserve.bytes(),
    };
    if let Some(url) = &args.database {
        options.database = DatabaseUrl::parse(url)?;
    }
    options.node_id = args.node_id;
    options.advertise_url = args.advertise_url;
    options.lease_ttl = args.lease_ttl;
    options.token_file = args.token_file;
    options.runs.hold = args.run_hold;
    options.reset_store = args.reset;
    let egress = crate::net::egress_policy(&args.egress_allow_cidr)?;
    let allow = egress.allow_cidrs.clone();
    options.network = hearth_server::network::NetworkOptions {
        egress: std::sync::Arc::new(egress),
        resolver: crate::net::resolver(args.egress_hosts.as_deref())?,
        limits: args
            .net_limits
            .limits(hearth_net::NetworkLimits::default())
            .map_err(|e| anyhow::anyhow!(e))?,
        transparent: true,
    };
    let registry = match &args.tools {
        Some(path) => ToolRegistry::load(path)?,
        None => ToolRegistry::default(),
    };
    let mut gateway = ToolGateway::new(registry, EgressPolicy::new(allow))?;
    if let Some(path) = &args.tools_ca {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--tools-ca {}: {e}", path.display()))?;
        gateway = gateway
            .trusting(&pem)
            .map_err(|e| anyhow::anyhow!("--tools-ca {}: {e}", path.display()))?;
    }
    options.runs.tools = std::sync::Arc::new(gateway);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = Server::start(options, ServerParts::standard()?).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "hearth: listening on {}", server.url())?;
    stdout.flush()?;
    server
        .run_until(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    eprintln!("hearth: server stopped; every sandbox was destroyed");
    Ok(0)
}

/// `hearth token show|rotate`.
pub fn token(home: &HearthHome, command: TokenCommand) -> Result<i32> {
    let path = token_file(home);
    let token = match command {
        TokenCommand::Show => ensure_token_at(&path)?,
        TokenCommand::Rotate => rotate_token_at(&path)?,
    };
    println!("{token}");
    Ok(0)
}

/// The token file: `$HEARTH_TOKEN_FILE`, else `$HEARTH_HOME/token`.
pub fn token_file(home: &HearthHome) -> std::path::PathBuf {
    std::env::var_os("HEARTH_TOKEN_FILE")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| token_path(home))
}
