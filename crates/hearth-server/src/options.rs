//! How a server is configured.

use std::net::SocketAddr;
use std::time::Duration;

use hearth_proto::ByteSize;
use hearth_sandbox::HearthHome;
use hearth_store::DatabaseUrl;
use hearth_vm::AccelPreference;

use crate::admission::Capacity;
use crate::listener::HttpLimits;
use crate::runs::RunOptions;

/// The SQLite file in the home, the default store.
pub const DB_FILE: &str = "hearth.db";

/// Everything `hearth serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen. Port 0 picks a free port (see [`crate::Server::addr`]).
    pub listen: SocketAddr,
    /// Home: store, token, sandbox state and logs.
    pub home: HearthHome,
    /// What the host may give to sandboxes at once.
    pub capacity: Capacity,
    /// Accelerator for every sandbox.
    pub accel: AccelPreference,
    /// How long a foreground exec keeps running with no client attached to
    /// its output before it is killed. A client that reconnects within this
    /// time resumes the stream.
    pub detach_grace: Duration,
    /// Most output (stdout plus stderr) a `?wait=true` exec may collect.
    pub max_wait_output: ByteSize,
    /// Output kept per exec for clients that reconnect, bytes. A client
    /// that is attached holds the command back instead of losing output.
    pub exec_replay_buffer: ByteSize,
    /// Largest file upload.
    pub max_upload: ByteSize,
    /// Memory all requests together may hold in buffers: output collected
    /// for `?wait=true` and upload buffers (0: no budget). Past it a
    /// request is refused with 503 rather than the server growing.
    pub buffer_budget: ByteSize,
    /// How long SIGTERM waits for sandboxes to go before killing them.
    pub shutdown_grace: Duration,
    /// The store: SQLite in the home by default, or a PostgreSQL database
    /// shared with other nodes.
    pub database: DatabaseUrl,
    /// This node's id; by default the one kept in the home (`node-id`),
    /// made on first start.
    pub node_id: Option<String>,
    /// Where other nodes reach this one; by default `http://` and the
    /// listen address.
    pub advertise_url: Option<String>,
    /// How long this node's lease lasts without a heartbeat; other nodes
    /// record its sandboxes lost after watching it silent that long.
    pub lease_ttl: Duration,
    /// How often live event streams look for events written by other
    /// nodes.
    pub event_poll: Duration,
    /// The API token file; by default `$HEARTH_HOME/token`. The nodes of a
    /// cluster are given the same one, so that they accept the same token.
    pub token_file: Option<std::path::PathBuf>,
    /// How durable runs behave on this node.
    pub runs: RunOptions,
    /// Start even though the store this home had is gone: a damaged or
    /// empty SQLite file is moved aside (kept) and a new store begins; an
    /// empty or other database becomes the home's store.
    pub reset_store: bool,
    /// Bounds on HTTP connections: how many, and how long one may take to
    /// send a request's head or sit idle.
    pub http: HttpLimits,
    /// Serve HTTPS with this certificate and key; plain HTTP without.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Sandboxes' networks: the ranges opened, the resolver, default
    /// limits.
    pub network: crate::network::NetworkOptions,
}

impl ServerOptions {
    /// Defaults for `home`: localhost:7070 and a capacity from the host.
    pub fn new(home: HearthHome) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            capacity: Capacity::from_host(),
            accel: AccelPreference::Auto,
            detach_grace: Duration::from_secs(30),
            max_wait_output: ByteSize::mib(16),
            exec_replay_buffer: ByteSize::mib(4),
            max_upload: ByteSize::gib(4),
            buffer_budget: ByteSize::mib(256),
            shutdown_grace: Duration::from_secs(5),
            database: DatabaseUrl::Sqlite(home.root().join(DB_FILE)),
            node_id: None,
            advertise_url: None,
            lease_ttl: Duration::from_secs(15),
            event_poll: Duration::from_millis(500),
            token_file: None,
            runs: RunOptions::default(),
            reset_store: false,
            http: HttpLimits::default(),
            tls: None,
            network: crate::network::NetworkOptions::default(),
            home,
        }
    }
}
