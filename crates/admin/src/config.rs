//! `ravel_admin start`'s configuration: what the YAML file (`-y FILE`) and the command line (or
//! its environment variables) say, merged into an [`AdminConfig`](crate::AdminConfig).
//!
//! The file is read first; every flag given overrides it. Keys are the long flag names
//! (`http`, `grpc`, `backupPath` or `data-dir`, `partitions`, `peers`, `join`,
//! `max-concurrent-moves`, `move-retry-backoff-ms`); an unknown key is an error naming it.
//! `peers` is a list or one comma-separated string. This module only parses and validates.

use crate::AdminConfig;
use crate::mover::{DEFAULT_MAX_CONCURRENT_MOVES, DEFAULT_MOVE_RETRY_BACKOFF_MS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Moves at once: the range `--max-concurrent-moves` accepts.
pub const MAX_CONCURRENT_MOVES_RANGE: std::ops::RangeInclusive<usize> = 1..=256;

/// Retry backoff: the range `--move-retry-backoff-ms` accepts.
pub const MOVE_RETRY_BACKOFF_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// Every setting optional: what a YAML file or the command line gave.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialAdminConfig {
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    #[serde(rename = "backupPath", alias = "data-dir")]
    pub backup_path: Option<PathBuf>,
    pub partitions: Option<u32>,
    pub peers: Option<Peers>,
    pub join: Option<bool>,
    #[serde(rename = "max-concurrent-moves")]
    pub max_concurrent_moves: Option<usize>,
    #[serde(rename = "move-retry-backoff-ms")]
    pub move_retry_backoff_ms: Option<u64>,
}

/// `peers` as YAML may write it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum Peers {
    List(Vec<SocketAddr>),
    Joined(String),
}

impl Peers {
    fn addrs(&self) -> Result<Vec<SocketAddr>, String> {
        match self {
            Self::List(list) => Ok(list.clone()),
            Self::Joined(text) => text
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse()
                        .map_err(|e| format!("peers: {a:?} is not host:port ({e})"))
                })
                .collect(),
        }
    }
}

impl PartialAdminConfig {
    /// `self` with every setting that `over` gives replaced by `over`'s.
    #[must_use]
    pub fn overridden_by(self, over: PartialAdminConfig) -> PartialAdminConfig {
        PartialAdminConfig {
            http: over.http.or(self.http),
            grpc: over.grpc.or(self.grpc),
            backup_path: over.backup_path.or(self.backup_path),
            partitions: over.partitions.or(self.partitions),
            peers: over.peers.or(self.peers),
            join: over.join.or(self.join),
            max_concurrent_moves: over.max_concurrent_moves.or(self.max_concurrent_moves),
            move_retry_backoff_ms: over.move_retry_backoff_ms.or(self.move_retry_backoff_ms),
        }
    }

    /// The complete configuration, or what is missing or out of range.
    pub fn into_config(self) -> Result<AdminConfig, String> {
        let missing = |flag: &str| {
            format!("--{flag} is required (a flag, its environment variable or the YAML file)")
        };
        let peers = match &self.peers {
            Some(p) => p.addrs()?,
            None => Vec::new(),
        };
        let join = self.join.unwrap_or(false);
        if join && !peers.is_empty() {
            return Err("--join and --peers exclude each other: --peers forms a new group, --join enters an existing one".into());
        }
        let max_concurrent_moves = self
            .max_concurrent_moves
            .unwrap_or(DEFAULT_MAX_CONCURRENT_MOVES);
        if !MAX_CONCURRENT_MOVES_RANGE.contains(&max_concurrent_moves) {
            return Err(format!(
                "--max-concurrent-moves must be in {MAX_CONCURRENT_MOVES_RANGE:?}, got {max_concurrent_moves}"
            ));
        }
        let move_retry_backoff_ms = self
            .move_retry_backoff_ms
            .unwrap_or(DEFAULT_MOVE_RETRY_BACKOFF_MS);
        if !MOVE_RETRY_BACKOFF_MS_RANGE.contains(&move_retry_backoff_ms) {
            return Err(format!(
                "--move-retry-backoff-ms must be in {MOVE_RETRY_BACKOFF_MS_RANGE:?}, got {move_retry_backoff_ms}"
            ));
        }
        Ok(AdminConfig {
            http: self.http.ok_or_else(|| missing("http"))?,
            grpc: self.grpc.ok_or_else(|| missing("grpc"))?,
            backup_path: self.backup_path.ok_or_else(|| missing("backupPath"))?,
            partitions: self.partitions,
            peers: peers.iter().map(SocketAddr::to_string).collect(),
            join,
            max_concurrent_moves,
            move_retry_backoff_ms,
        })
    }
}

/// Reads the YAML file at `path`; an empty file sets nothing.
pub fn read_yaml(path: &Path) -> Result<PartialAdminConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading YAML config {}: {e}", path.display()))?;
    parse_yaml(&text).map_err(|e| format!("YAML config {}: {e}", path.display()))
}

fn parse_yaml(text: &str) -> Result<PartialAdminConfig, serde_norway::Error> {
    if text.trim().is_empty() {
        return Ok(PartialAdminConfig::default());
    }
    serde_norway::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long flag names are the keys; flags override the file; peers parse as a list or a
    /// joined string; unknown keys, missing addresses and out-of-range values are refused.
    #[test]
    fn yaml_and_flags_merge() {
        let file = parse_yaml(
            "http: 127.0.0.1:8080\ngrpc: 127.0.0.1:9090\nbackupPath: /var/lib/a\n\
             peers: 127.0.0.1:9090, 127.0.0.1:9091,127.0.0.1:9092\nmax-concurrent-moves: 8\n",
        )
        .unwrap();
        let flags = PartialAdminConfig {
            http: Some("127.0.0.1:8081".parse().unwrap()),
            ..PartialAdminConfig::default()
        };
        let config = file.overridden_by(flags).into_config().unwrap();
        assert_eq!(config.http.to_string(), "127.0.0.1:8081");
        assert_eq!(config.grpc.to_string(), "127.0.0.1:9090");
        assert_eq!(config.backup_path, PathBuf::from("/var/lib/a"));
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.max_concurrent_moves, 8);
        assert_eq!(config.move_retry_backoff_ms, DEFAULT_MOVE_RETRY_BACKOFF_MS);

        let listed =
            parse_yaml("peers: [127.0.0.1:1, 127.0.0.1:2]\ndata-dir: /d\njoin: false\n").unwrap();
        assert_eq!(
            listed.peers.unwrap().addrs().unwrap().len(),
            2,
            "a YAML list works too"
        );
        let err = parse_yaml("htp: 127.0.0.1:1\n").unwrap_err().to_string();
        assert!(err.contains("htp"), "{err}");
        let err = parse_yaml("grpc: 127.0.0.1:1\n")
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.contains("--http"), "{err}");
        let err = parse_yaml(
            "http: 127.0.0.1:1\ngrpc: 127.0.0.1:2\nbackupPath: /d\njoin: true\npeers: 127.0.0.1:2\n",
        )
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(err.contains("exclude"), "{err}");
        let err = parse_yaml(
            "http: 127.0.0.1:1\ngrpc: 127.0.0.1:2\nbackupPath: /d\nmove-retry-backoff-ms: 5\n",
        )
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(err.contains("move-retry-backoff-ms"), "{err}");
        assert_eq!(parse_yaml("  \n").unwrap(), PartialAdminConfig::default());
    }
}
