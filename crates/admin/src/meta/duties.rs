//! What an admin watches in its group: whether it leads (published as a watch, which the
//! admin's leader-only tasks follow), and, while it leads a group whose base state is not
//! applied yet, proposing that base (its own starting state). Everything committed before is
//! applied first, so a base already in the log wins and a second one changes nothing.

use super::raft::{AdminTypes, MetaEntry, Published};
use openraft::{Raft, ServerState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Pause before a failed base proposal is tried again (while still leading).
const BASE_RETRY_MS: u64 = 200;

/// The watching task and what it publishes.
pub(super) struct Duties {
    leading: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Duties {
    /// Whether this admin leads the group and has its base applied.
    pub(super) fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Stops watching; from now on this admin does not lead.
    pub(super) fn stop(&self) {
        self.task.abort();
        self.leading.send_replace(false);
    }
}

/// Starts watching `raft` for admin `id`; `base` is its starting state, encoded.
pub(super) fn watch_leadership(
    raft: Raft<AdminTypes>,
    id: u64,
    published: Arc<Published>,
    base: Vec<u8>,
) -> Duties {
    let leading = Arc::new(watch::Sender::new(false));
    let tx = Arc::clone(&leading);
    let task = tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut based = published.based_watch();
        loop {
            let (leader, term) = {
                let m = metrics.borrow_and_update();
                (
                    m.state == ServerState::Leader && m.current_leader == Some(id),
                    m.current_term,
                )
            };
            let _ = based.borrow_and_update();
            if leader && !published.based() && !propose_base(&raft, &published, &base).await {
                tokio::time::sleep(Duration::from_millis(BASE_RETRY_MS)).await;
                continue;
            }
            let now_leading = leader && published.based();
            let changed = tx.send_if_modified(|was| {
                let changed = *was != now_leading;
                *was = now_leading;
                changed
            });
            if changed {
                if now_leading {
                    tracing::info!(admin = id, term, "this admin leads the admins' group");
                } else {
                    tracing::info!(
                        admin = id,
                        term,
                        "this admin no longer leads the admins' group"
                    );
                }
            }
            let ended = tokio::select! {
                changed = metrics.changed() => changed.is_err(),
                changed = based.changed() => changed.is_err(),
            };
            if ended {
                // Raft has stopped: this admin leads nothing any more.
                tx.send_replace(false);
                return;
            }
        }
    });
    Duties { leading, task }
}

/// Proposes the base state unless one is applied once everything committed is; whether the
/// group has its base now.
async fn propose_base(raft: &Raft<AdminTypes>, published: &Published, base: &[u8]) -> bool {
    if let Err(e) = raft.ensure_linearizable().await {
        tracing::debug!(error = %e, "cannot read the admins' group yet");
        return false;
    }
    if published.based() {
        return true;
    }
    match raft.client_write(MetaEntry::Base(base.to_vec())).await {
        Ok(_) => {
            tracing::info!("the admins' group has its base state");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "proposing the admins' base state failed");
            false
        }
    }
}
