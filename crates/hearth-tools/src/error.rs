//! The crate's errors: loading the registry, and checking a call's
//! arguments. Failures of a call itself are [`hearth_engine::StepError`]s,
//! because the engine journals them and decides on retries.

use std::path::PathBuf;

/// Why the tool registry or gateway could not be set up. Each message
/// names the file, the tool and the field, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The config file could not be read.
    #[error(
        "cannot read the tool config {path}: {source}; check that the file exists and is readable"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a valid tool config.
    #[error("{origin}: {message}")]
    Config {
        /// Where the config came from (its path, or `<string>`).
        origin: String,
        /// What is wrong, where, and what to do.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for tools: {0}")]
    Client(#[source] reqwest::Error),
    /// Certificates to trust could not be used.
    #[error("cannot use the certificates to trust for tools: {0}")]
    Certificates(String),
}

/// Results of this crate.
pub type Result<T, E = ToolError> = std::result::Result<T, E>;

/// Why a tool call's arguments do not fit the tool: the field
/// (`args.amount`), what was expected and what came. The server answers
/// `404 not_found` for [`ArgsError::UnknownTool`] and `400
/// invalid_argument` for the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// No tool of that name.
    #[error("unknown tool {name:?}; the tools there are: {}", known.join(", "))]
    UnknownTool {
        /// The name asked for.
        name: String,
        /// Every tool's name.
        known: Vec<String>,
    },
    /// `args` is not an object of named arguments.
    #[error("args: expected an object of named arguments, got {got}")]
    NotAnObject {
        /// What came instead.
        got: String,
    },
    /// A required argument is absent (or null).
    #[error("args.{field}: missing; {tool} requires it ({expected})")]
    Missing {
        /// The tool.
        tool: String,
        /// The argument.
        field: String,
        /// Its declared type.
        expected: String,
    },
    /// An argument has the wrong type.
    #[error("args.{field}: expected {expected}, got {got}")]
    WrongType {
        /// The argument.
        field: String,
        /// Its declared type.
        expected: String,
        /// What came.
        got: String,
    },
    /// An argument the tool does not declare.
    #[error("args.{field}: unknown argument; {tool} takes {}", if declared.is_empty() { "no arguments".to_owned() } else { declared.join(", ") })]
    Unknown {
        /// The tool.
        tool: String,
        /// The argument.
        field: String,
        /// The arguments it takes.
        declared: Vec<String>,
    },
    /// An argument has the right type and a value the tool cannot use.
    #[error("args.{field}: {message}")]
    Invalid {
        /// The argument.
        field: String,
        /// What is wrong and what would do.
        message: String,
    },
}

impl ArgsError {
    /// The offending field as a path (`args.amount`), if one is at fault.
    pub fn field(&self) -> Option<String> {
        match self {
            Self::UnknownTool { .. } => None,
            Self::NotAnObject { .. } => Some("args".into()),
            Self::Missing { field, .. }
            | Self::WrongType { field, .. }
            | Self::Unknown { field, .. }
            | Self::Invalid { field, .. } => Some(format!("args.{field}")),
        }
    }
}
