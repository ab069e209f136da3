//! A replica's configuration: what the YAML file and the command line say, merged.
//!
//! The file is read first; every flag that was given overrides it. Unknown YAML keys are an
//! error naming the key (a typo must not silently fall back to a default). This module only
//! parses and validates; it must not touch the storage directory or the network.

use std::path::{Path, PathBuf};

use crate::error::NodeError;

/// Raft entries between two snapshots when neither the file nor the flags say otherwise.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 5_000;

/// Every field optional: what a YAML file or the command line gave. Keys are the long flag
/// names.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNodeConfig {
    pub storagedir: Option<PathBuf>,
    pub grpcaddr: Option<String>,
    pub raftaddr: Option<String>,
    /// YAML key `raft-advertise`, the long flag's name (`raft_advertise` also accepted).
    #[serde(rename = "raft-advertise", alias = "raft_advertise")]
    pub raft_advertise: Option<String>,
    /// YAML key `grpc-advertise`, the long flag's name (`grpc_advertise` also accepted).
    #[serde(rename = "grpc-advertise", alias = "grpc_advertise")]
    pub grpc_advertise: Option<String>,
    pub adminrpcaddr: Option<String>,
    pub leader: Option<bool>,
    /// YAML key `snapshot-threshold`, the long flag's name (`snapshot_threshold` also accepted).
    #[serde(rename = "snapshot-threshold", alias = "snapshot_threshold")]
    pub snapshot_threshold: Option<u64>,
    /// YAML key `http`: where the replica serves `/livez`, `/readyz` and `/metrics`.
    pub http: Option<String>,
}

impl PartialNodeConfig {
    /// `self` with every field that `over` sets replaced by `over`'s value.
    fn overridden_by(self, over: PartialNodeConfig) -> PartialNodeConfig {
        PartialNodeConfig {
            storagedir: over.storagedir.or(self.storagedir),
            grpcaddr: over.grpcaddr.or(self.grpcaddr),
            raftaddr: over.raftaddr.or(self.raftaddr),
            raft_advertise: over.raft_advertise.or(self.raft_advertise),
            grpc_advertise: over.grpc_advertise.or(self.grpc_advertise),
            adminrpcaddr: over.adminrpcaddr.or(self.adminrpcaddr),
            leader: over.leader.or(self.leader),
            snapshot_threshold: over.snapshot_threshold.or(self.snapshot_threshold),
            http: over.http.or(self.http),
        }
    }
}

/// A complete, validated replica configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub storagedir: PathBuf,
    pub grpcaddr: String,
    /// Where the Raft transport listens.
    pub raftaddr: String,
    /// The Raft address this replica registers and joins with: what its peers dial. It differs
    /// from `raftaddr` when peers reach the replica through something in between (a NAT, a load
    /// balancer, a test's fault-injecting proxy); by default it is `raftaddr`.
    pub raft_advertise: String,
    /// The gRPC address this replica registers: what the admin dials for data and control
    /// calls. Like `raft_advertise`, by default the listen address `grpcaddr`.
    pub grpc_advertise: String,
    pub adminrpcaddr: String,
    pub leader: bool,
    pub snapshot_threshold: u64,
    /// Address of the replica's own HTTP endpoint (probes and `/metrics`); none by default.
    pub http: Option<String>,
}

impl NodeConfig {
    /// Reads the YAML file if given (unknown keys → error naming the key), then lets every Some
    /// field of `flags` override it; missing required fields → clear error naming the flag.
    pub fn resolve(yaml: Option<&Path>, flags: PartialNodeConfig) -> Result<NodeConfig, NodeError> {
        let file = match yaml {
            Some(path) => read_yaml(path)?,
            None => PartialNodeConfig::default(),
        };
        let merged = file.overridden_by(flags);
        let raftaddr = merged.raftaddr.ok_or_else(|| missing("raftaddr", 'r'))?;
        let grpcaddr = merged.grpcaddr.ok_or_else(|| missing("grpcaddr", 'g'))?;
        let config = NodeConfig {
            storagedir: merged
                .storagedir
                .ok_or_else(|| missing("storagedir", 's'))?,
            grpc_advertise: merged.grpc_advertise.unwrap_or_else(|| grpcaddr.clone()),
            grpcaddr,
            raft_advertise: merged.raft_advertise.unwrap_or_else(|| raftaddr.clone()),
            raftaddr,
            adminrpcaddr: merged
                .adminrpcaddr
                .ok_or_else(|| missing("adminrpcaddr", 'a'))?,
            leader: merged.leader.unwrap_or(false),
            snapshot_threshold: merged
                .snapshot_threshold
                .unwrap_or(DEFAULT_SNAPSHOT_THRESHOLD),
            http: merged.http,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), NodeError> {
        check_addr("grpcaddr", &self.grpcaddr)?;
        check_addr("raftaddr", &self.raftaddr)?;
        check_addr("raft-advertise", &self.raft_advertise)?;
        check_addr("grpc-advertise", &self.grpc_advertise)?;
        let admins = crate::admins::parse_list(&self.adminrpcaddr);
        if admins.is_empty() {
            return Err(NodeError::Config(
                "--adminrpcaddr must name at least one admin (host:port[,host:port...])".into(),
            ));
        }
        for admin in admins {
            check_addr("adminrpcaddr", admin)?;
        }
        if let Some(http) = &self.http {
            check_addr("http", http)?;
            if http == &self.grpcaddr || http == &self.raftaddr {
                return Err(NodeError::Config(format!(
                    "--http must differ from --grpcaddr and --raftaddr (got {http})"
                )));
            }
        }
        if self.grpcaddr == self.raftaddr {
            return Err(NodeError::Config(format!(
                "--grpcaddr and --raftaddr must differ (both are {})",
                self.grpcaddr
            )));
        }
        if self.snapshot_threshold == 0 {
            return Err(NodeError::Config(
                "snapshot_threshold must be at least 1".into(),
            ));
        }
        if self.storagedir.as_os_str().is_empty() {
            return Err(NodeError::Config("--storagedir must not be empty".into()));
        }
        Ok(())
    }
}

fn missing(flag: &str, short: char) -> NodeError {
    NodeError::Config(format!(
        "missing required setting `{flag}`: pass -{short}/--{flag} or set `{flag}` in the YAML file"
    ))
}

/// Accepts `host:port` with a non-empty host and a numeric port.
fn check_addr(flag: &str, addr: &str) -> Result<(), NodeError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(NodeError::Config(format!(
            "--{flag} must be host:port, got {addr:?}"
        )))
    }
}

fn read_yaml(path: &Path) -> Result<PartialNodeConfig, NodeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NodeError::io(format!("reading YAML config {}", path.display()), e))?;
    parse_yaml(&text).map_err(|e| NodeError::Config(format!("YAML config {}: {e}", path.display())))
}

/// Parses the YAML text; an empty document means "nothing set".
fn parse_yaml(text: &str) -> Result<PartialNodeConfig, serde_norway::Error> {
    if text.trim().is_empty() {
        return Ok(PartialNodeConfig::default());
    }
    serde_norway::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    const FULL: &str = "storagedir: /tmp/n1\ngrpcaddr: 127.0.0.1:7001\nraftaddr: 127.0.0.1:8001\n\
                        adminrpcaddr: 127.0.0.1:6000\nleader: true\nsnapshot-threshold: 77\n";

    /// A YAML file with every key gives exactly those values.
    #[test]
    fn yaml_with_all_keys() {
        let f = yaml_file(FULL);
        let c = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap();
        assert_eq!(
            c,
            NodeConfig {
                storagedir: "/tmp/n1".into(),
                grpcaddr: "127.0.0.1:7001".into(),
                raftaddr: "127.0.0.1:8001".into(),
                raft_advertise: "127.0.0.1:8001".into(),
                grpc_advertise: "127.0.0.1:7001".into(),
                adminrpcaddr: "127.0.0.1:6000".into(),
                leader: true,
                snapshot_threshold: 77,
                http: None,
            }
        );
    }

    /// An unknown YAML key is refused and the error names it.
    #[test]
    fn unknown_key_is_named() {
        let f = yaml_file("storagedir: /tmp/x\ngrpcadr: 127.0.0.1:1\n");
        let err = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap_err();
        assert_eq!(err.code(), "config");
        assert!(err.to_string().contains("grpcadr"), "{err}");
    }

    /// Flags that are given override the file; flags not given leave the file's values.
    #[test]
    fn flags_override_file() {
        let f = yaml_file(FULL);
        let flags = PartialNodeConfig {
            grpcaddr: Some("10.0.0.1:9000".into()),
            snapshot_threshold: Some(10),
            ..PartialNodeConfig::default()
        };
        let c = NodeConfig::resolve(Some(f.path()), flags).unwrap();
        assert_eq!(c.grpcaddr, "10.0.0.1:9000");
        assert_eq!(c.snapshot_threshold, 10);
        assert_eq!(c.raftaddr, "127.0.0.1:8001");
        assert!(c.leader);
    }

    /// A missing required setting is reported with its flag; defaults fill the optional ones.
    #[test]
    fn missing_required_is_named() {
        let flags = PartialNodeConfig {
            storagedir: Some("/tmp/d".into()),
            grpcaddr: Some("127.0.0.1:1".into()),
            adminrpcaddr: Some("127.0.0.1:3".into()),
            ..PartialNodeConfig::default()
        };
        let err = NodeConfig::resolve(None, flags.clone()).unwrap_err();
        assert!(err.to_string().contains("--raftaddr"), "{err}");
        let full = PartialNodeConfig {
            raftaddr: Some("127.0.0.1:2".into()),
            ..flags
        };
        let c = NodeConfig::resolve(None, full).unwrap();
        assert!(!c.leader);
        assert_eq!(c.snapshot_threshold, DEFAULT_SNAPSHOT_THRESHOLD);
    }

    /// Addresses that are not host:port are refused before anything starts.
    #[test]
    fn bad_address_is_refused() {
        let flags = PartialNodeConfig {
            storagedir: Some("/tmp/d".into()),
            grpcaddr: Some("nohostport".into()),
            raftaddr: Some("127.0.0.1:2".into()),
            adminrpcaddr: Some("127.0.0.1:3".into()),
            ..PartialNodeConfig::default()
        };
        let err = NodeConfig::resolve(None, flags).unwrap_err();
        assert!(err.to_string().contains("--grpcaddr"), "{err}");
    }

    /// `raft-advertise` defaults to `raftaddr`; when set (file or flag, the flag winning) it is
    /// kept apart from the listen address, and a malformed one is refused.
    #[test]
    fn raft_advertise_defaults_to_raftaddr_and_can_differ() {
        let f = yaml_file(FULL);
        let c = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap();
        assert_eq!(c.raft_advertise, "127.0.0.1:8001");

        let with_key = format!("{FULL}raft-advertise: 127.0.0.1:9001\n");
        let f = yaml_file(&with_key);
        let c = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap();
        assert_eq!(c.raftaddr, "127.0.0.1:8001");
        assert_eq!(c.raft_advertise, "127.0.0.1:9001");

        let flags = PartialNodeConfig {
            raft_advertise: Some("proxy.local:9100".into()),
            ..PartialNodeConfig::default()
        };
        let c = NodeConfig::resolve(Some(f.path()), flags).unwrap();
        assert_eq!(c.raftaddr, "127.0.0.1:8001");
        assert_eq!(c.raft_advertise, "proxy.local:9100");

        let flags = PartialNodeConfig {
            raft_advertise: Some("9100".into()),
            ..PartialNodeConfig::default()
        };
        let err = NodeConfig::resolve(Some(f.path()), flags).unwrap_err();
        assert!(err.to_string().contains("--raft-advertise"), "{err}");
    }

    /// `grpc-advertise` defaults to `grpcaddr`, can differ (file or flag), and is validated.
    #[test]
    fn grpc_advertise_defaults_to_grpcaddr_and_can_differ() {
        let f = yaml_file(FULL);
        let c = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap();
        assert_eq!(c.grpc_advertise, "127.0.0.1:7001");

        let f = yaml_file(&format!("{FULL}grpc-advertise: 127.0.0.1:9701\n"));
        let c = NodeConfig::resolve(Some(f.path()), PartialNodeConfig::default()).unwrap();
        assert_eq!(c.grpcaddr, "127.0.0.1:7001");
        assert_eq!(c.grpc_advertise, "127.0.0.1:9701");

        let flags = PartialNodeConfig {
            grpc_advertise: Some("no-port".into()),
            ..PartialNodeConfig::default()
        };
        let err = NodeConfig::resolve(Some(f.path()), flags).unwrap_err();
        assert!(err.to_string().contains("--grpc-advertise"), "{err}");
    }
}
