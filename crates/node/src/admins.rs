//! The admins a replica knows (`-a`: one gRPC address or a comma-separated list, an admin
//! group) and which of them it talks to now. Every admin serves a replica's calls (a follower
//! admin forwards metadata changes to the admins' leader), so failing over is only trying the
//! next one: a call that found its admin unreachable moves the replica on to the next.

use crate::error::NodeError;
use crate::raft_net::lazy_channel;
use ravel_proto::v1::admin_client::AdminClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::Channel;

/// The admin list with a lazily connected client to each and the one in use. Cheap to clone
/// (clones share which one is in use).
#[derive(Clone)]
pub(crate) struct Admins {
    links: Arc<[(String, AdminClient<Channel>)]>,
    current: Arc<AtomicUsize>,
}

/// The addresses of an `-a` value, in order.
pub(crate) fn parse_list(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

impl Admins {
    /// Clients of every admin in `list` (see [`parse_list`]); none connects yet.
    pub(crate) fn new(list: &str) -> Result<Self, NodeError> {
        let links = parse_list(list)
            .into_iter()
            .map(|addr| {
                let channel = lazy_channel(addr).map_err(|e| NodeError::AdminUnreachable {
                    addr: addr.to_owned(),
                    message: e.to_string(),
                })?;
                Ok((addr.to_owned(), AdminClient::new(channel)))
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        if links.is_empty() {
            return Err(NodeError::Config(format!(
                "--adminrpcaddr lists no admin address (got {list:?})"
            )));
        }
        Ok(Self {
            links: links.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many admins there are.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// The admin in use: its address and a client.
    pub(crate) fn client(&self) -> (String, AdminClient<Channel>) {
        let (addr, client) = &self.links[self.current.load(Ordering::Relaxed) % self.links.len()];
        (addr.clone(), client.clone())
    }

    /// A call to `addr` found it unreachable: the next admin is used from now on (unless
    /// another call moved on already).
    pub(crate) fn failed(&self, addr: &str) {
        let at = self.current.load(Ordering::Relaxed);
        if self.links[at % self.links.len()].0 == addr {
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % self.links.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if self.links.len() > 1 {
                tracing::info!(from = addr, to = %self.client().0, "trying the next admin");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list parses in order with blanks dropped; a failure moves on to the next admin and
    /// wraps around; a stale failure report does not skip the admin in use.
    #[tokio::test]
    async fn fails_over_in_order() {
        assert_eq!(parse_list(" a:1, b:2 ,,c:3"), ["a:1", "b:2", "c:3"]);
        assert!(Admins::new(" , ").is_err());
        let admins = Admins::new("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").unwrap();
        assert_eq!(admins.len(), 3);
        assert_eq!(admins.client().0, "127.0.0.1:1");
        admins.failed("127.0.0.1:1");
        assert_eq!(admins.client().0, "127.0.0.1:2");
        admins.failed("127.0.0.1:1");
        assert_eq!(
            admins.client().0,
            "127.0.0.1:2",
            "a stale report changes nothing"
        );
        admins.failed("127.0.0.1:2");
        admins.failed("127.0.0.1:3");
        assert_eq!(admins.client().0, "127.0.0.1:1");
    }
}
