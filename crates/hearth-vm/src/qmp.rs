//! A client of QEMU's machine protocol (QMP): one JSON object per line,
//! a greeting, `qmp_capabilities`, then commands answered in order, with
//! asynchronous events interleaved (skipped here).
//!
//! QEMU is trusted less than the host: every line read is bounded, and an
//! answer that does not come within the deadline is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Result, VmError};

/// Longest line QMP may send; answers to the commands used here are small.
const MAX_LINE: usize = 1 << 20;
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An open QMP connection, past the capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

fn failed(path: &Path, message: impl Into<String>) -> VmError {
    VmError::Qmp {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Qmp {
    /// Connect to the QMP socket at `path` and negotiate capabilities.
    pub async fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| failed(path, format!("connecting: {e}")))?;
        Self::handshake(path, stream).await
    }

    /// Negotiate over an open stream (the greeting, then
    /// `qmp_capabilities`).
    pub async fn handshake(path: &Path, stream: UnixStream) -> Result<Self> {
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(failed(path, format!("expected a greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, async {
            (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
        })
        .await;
        match read {
            Err(_) => Err(failed(&self.path, "QEMU did not answer within 30 s")),
            Ok(Err(e)) => Err(failed(&self.path, format!("reading: {e}"))),
            Ok(Ok(0)) => Err(failed(&self.path, "QEMU closed the connection")),
            Ok(Ok(_)) if line.len() > MAX_LINE => {
                Err(failed(&self.path, "QEMU sent a line over 1 MiB"))
            }
            Ok(Ok(_)) => serde_json::from_slice(&line)
                .map_err(|e| failed(&self.path, format!("QEMU sent invalid JSON: {e}"))),
        }
    }

    /// Run `command` with `arguments`; its `return` value, or its error.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| failed(&self.path, format!("sending {command}: {e}")))?;
        loop {
            let message = self.read_message().await?;
            if message.get("event").is_some() {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let class = error["class"].as_str().unwrap_or("GenericError");
                let desc = error["desc"].as_str().unwrap_or("no description");
                return Err(failed(
                    &self.path,
                    format!("{command} failed: {class}: {desc}"),
                ));
            }
            return Err(failed(
                &self.path,
                format!("unexpected answer to {command}: {message}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted QMP server: answers each command with the next answer.
    async fn serve(stream: UnixStream, answers: Vec<&'static str>) -> Vec<Value> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for answer in answers {
            let Ok(Some(line)) = lines.next_line().await else {
                break;
            };
            seen.push(serde_json::from_str(&line).unwrap());
            write.write_all(answer.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn commands_are_answered_in_order_past_events() {
        let (client, server) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(
            server,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"STOP\", \"timestamp\": {}}\n{\"return\": [{\"device\": \"scratch\"}]}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such device\"}}\n",
            ],
        ));
        let mut qmp = Qmp::handshake(Path::new("test"), client).await.unwrap();
        let stats = qmp.execute("query-blockstats", None).await.unwrap();
        assert_eq!(stats[0]["device"], "scratch");
        let error = qmp
            .execute("blockdev-snapshot-sync", Some(json!({"device": "x"})))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("blockdev-snapshot-sync failed: GenericError: no such device"),
            "{error}"
        );
        let seen = server.await.unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[2]["arguments"]["device"], "x");
    }

    #[tokio::test]
    async fn a_server_that_is_not_qmp_is_refused() {
        let (client, server) = UnixStream::pair().unwrap();
        let (_, mut write) = server.into_split();
        write.write_all(b"{\"hello\": 1}\n").await.unwrap();
        let error = Qmp::handshake(Path::new("test"), client).await.unwrap_err();
        assert!(error.to_string().contains("expected a greeting"), "{error}");
    }
}
