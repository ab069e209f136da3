//! The chaos workload: concurrent client workers over the admin's `/v1/kv` API, each with one
//! operation in flight, on a small rotating key space so that keys see contention. Every
//! operation goes into a [`Recorder`] for the linearizability checker.
//!
//! Operations: put of a value no other put ever writes (`"w<worker>-<n>"`), linearizable get,
//! delete, and compare-and-set put (`?cas=V` with the version this worker last learned for the key;
//! 0 when it last saw the key absent). HTTP answers become outcomes as the store's contract defines
//! them (`docs/design.md#definite-and-unknown-outcomes`): 200 (and a get's 404, a CAS's 412)
//! acknowledged; other 4xx and 503 definite failures; a connection that could not be made is a
//! definite failure (nothing was sent); 504, other 5xx, timeouts and transport errors after sending
//! are unknown. This module drives load; it does not judge it and does not inject faults.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::linearizability::{Call, Outcome, Recorder, Reply};

/// Prefix of every key the workload touches.
pub const KEY_PREFIX: &str = "chaos-";

/// Pause of a worker after an operation that got no acknowledged answer.
pub const UNANSWERED_PAUSE: Duration = Duration::from_millis(100);

/// Shape of the load.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Concurrent workers, each with one request in flight.
    pub workers: usize,
    /// Keys in use at any one time (small, so that workers contend on them).
    pub keys: usize,
    /// How long one generation of keys is used before the next set takes over. Rotating keys
    /// bounds each key's history, which keeps the checker's search per key small on long soaks.
    pub generation: Duration,
    /// Pause of a worker after each operation (the machine has two cores to share).
    pub op_pause: Duration,
    /// Client-side deadline of one request: above the admin's own request timeout, so that a
    /// slow answer is still seen.
    pub request_timeout: Duration,
    pub seed: u64,
}

/// Running workers. [`Workload::stop`] ends them after their current request.
pub struct Workload {
    recorder: Arc<Recorder<String>>,
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts `config.workers` workers against the admins at `base_urls` (`http://host:port`):
    /// worker `i` starts at admin `i % base_urls.len()` and moves on to the next when its admin
    /// cannot be reached.
    pub fn start(
        base_urls: &[String],
        config: &WorkloadConfig,
        recorder: Arc<Recorder<String>>,
    ) -> anyhow::Result<Self> {
        let http = http_client(config.request_timeout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for worker in 0..config.workers {
            let w = Worker {
                id: worker,
                api: Api::new(http.clone(), base_urls, worker, Arc::clone(&recorder)),
                config: config.clone(),
                rng: StdRng::seed_from_u64(
                    config.seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                versions: HashMap::new(),
                written: 0,
            };
            tasks.spawn(w.run(Arc::clone(&stop)));
        }
        Ok(Self {
            recorder,
            stop,
            tasks,
        })
    }

    /// Stops every worker after its current request and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(joined) = self.tasks.join_next().await {
            joined.map_err(|e| anyhow::anyhow!("a chaos worker failed: {e}"))?;
        }
        Ok(())
    }

    /// The recorder every worker writes to.
    pub fn recorder(&self) -> &Arc<Recorder<String>> {
        &self.recorder
    }
}

pub use crate::http_client;

/// One recorded `/v1/kv` call at a time, to one admin of a list (the next one once a
/// connection to it cannot be made).
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    base_urls: Arc<[String]>,
    at: Arc<AtomicUsize>,
    pub recorder: Arc<Recorder<String>>,
}

/// What came back from one request: a status and JSON body, or how the transport failed.
enum Answer {
    Http(u16, Value),
    /// The connection was never made: nothing was sent, so nothing can have happened.
    NotSent,
    /// Sent (or maybe sent), then timed out or broke: the outcome is unknown.
    Lost,
}

impl Api {
    /// Calls to `base_urls` (at least one), starting with the one at `first` (modulo).
    #[must_use]
    pub fn new(
        http: reqwest::Client,
        base_urls: &[String],
        first: usize,
        recorder: Arc<Recorder<String>>,
    ) -> Self {
        assert!(!base_urls.is_empty(), "an Api needs at least one admin URL");
        Self {
            http,
            base_urls: base_urls.iter().cloned().collect(),
            at: Arc::new(AtomicUsize::new(first % base_urls.len())),
            recorder,
        }
    }

    fn url(&self, key: &str, query: &str) -> String {
        let base = &self.base_urls[self.at.load(Ordering::Relaxed) % self.base_urls.len()];
        // Keys are `chaos-g<n>-k<i>`: nothing in them needs percent-encoding.
        format!("{base}/v1/kv/{key}{query}")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(bytes) => Answer::Http(
                        status,
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&bytes).into_owned())
                        }),
                    ),
                    // The status arrived, the body did not: for a 200 the reply is unknown.
                    Err(_) if status == 200 => Answer::Lost,
                    Err(_) => Answer::Http(status, Value::Null),
                }
            }
            Err(e) if e.is_connect() => {
                self.at.fetch_add(1, Ordering::Relaxed);
                Answer::NotSent
            }
            Err(_) => Answer::Lost,
        }
    }

    /// `GET /v1/kv/{key}` (linearizable), recorded; returns the reply when acknowledged.
    pub async fn get(&self, key: &str) -> Option<Reply<String>> {
        let invoke_at = self.recorder.now();
        let answer = self.send(self.http.get(self.url(key, ""))).await;
        let outcome = match answer {
            Answer::Http(200, body) => Outcome::Ok(Reply::Found {
                value: value_of(&body["value"]),
                version: body["version"].as_u64(),
            }),
            Answer::Http(404, _) => Outcome::Ok(Reply::NotFound),
            Answer::Http(400..=499 | 503, _) | Answer::NotSent => Outcome::Fail,
            Answer::Http(..) | Answer::Lost => Outcome::Unknown,
        };
        self.finish(key, Call::Get, invoke_at, outcome)
    }

    /// `PUT /v1/kv/{key}[?cas=N]` with the JSON string `value`, recorded.
    pub async fn put(&self, key: &str, value: &str, cas: Option<u64>) -> Option<Reply<String>> {
        let query = cas.map_or_else(String::new, |c| format!("?cas={c}"));
        let invoke_at = self.recorder.now();
        let req = self
            .http
            .put(self.url(key, &query))
            .body(Value::String(value.to_owned()).to_string());
        let outcome = write_outcome(self.send(req).await, cas.is_some(), |body| Reply::Written {
            version: body["version"].as_u64(),
        });
        let call = Call::Put {
            value: value.to_owned(),
            cas,
        };
        self.finish(key, call, invoke_at, outcome)
    }

    /// `DELETE /v1/kv/{key}`, recorded.
    pub async fn delete(&self, key: &str) -> Option<Reply<String>> {
        let invoke_at = self.recorder.now();
        let answer = self.send(self.http.delete(self.url(key, ""))).await;
        let outcome = write_outcome(answer, false, |body| Reply::Deleted {
            deleted: body["deleted"].as_bool().unwrap_or(false),
        });
        self.finish(key, Call::Delete { cas: None }, invoke_at, outcome)
    }

    fn finish(
        &self,
        key: &str,
        call: Call<String>,
        invoke_at: Duration,
        outcome: Outcome<String>,
    ) -> Option<Reply<String>> {
        let reply = match &outcome {
            Outcome::Ok(r) => Some(r.clone()),
            _ => None,
        };
        self.recorder.record(key, call, invoke_at, outcome);
        reply
    }
}

/// The outcome of a write's answer (`docs/design.md#definite-and-unknown-outcomes`: a 503 is
/// definite, a 504 is not).
fn write_outcome(
    answer: Answer,
    cas: bool,
    ok: impl FnOnce(&Value) -> Reply<String>,
) -> Outcome<String> {
    match answer {
        Answer::Http(200, body) => Outcome::Ok(ok(&body)),
        Answer::Http(412, body) if cas => Outcome::Ok(Reply::CasMismatch {
            current: body["current_version"].as_u64(),
        }),
        Answer::Http(400..=499 | 503, _) | Answer::NotSent => Outcome::Fail,
        Answer::Http(..) | Answer::Lost => Outcome::Unknown,
    }
}

/// The checker's value of a stored JSON value: the string itself for a string (every value the
/// workload writes), else the JSON text marked so it cannot equal a written value.
pub fn value_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => format!("json:{other}"),
    }
}

/// The name of key `i` of generation `generation`.
pub fn key_name(generation: u64, i: usize) -> String {
    format!("{KEY_PREFIX}g{generation}-k{i}")
}

struct Worker {
    id: usize,
    api: Api,
    config: WorkloadConfig,
    rng: StdRng,
    /// The version this worker last learned for each key (0 = absent), for CAS.
    versions: HashMap<String, u64>,
    /// Puts issued so far: the `<n>` of the next unique value.
    written: u64,
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let generation_ms = self.config.generation.as_millis().max(1);
        while !stop.load(Ordering::SeqCst) {
            let generation =
                u64::try_from(self.api.recorder.now().as_millis() / generation_ms).unwrap_or(0);
            let key = key_name(
                generation,
                self.rng.random_range(0..self.config.keys.max(1)),
            );
            let roll = self.rng.random_range(0..100u32);
            let answered = match roll {
                0..35 => {
                    let value = self.next_value();
                    let reply = self.api.put(&key, &value, None).await;
                    self.learn(&key, reply.as_ref())
                }
                35..65 => {
                    let reply = self.api.get(&key).await;
                    self.learn(&key, reply.as_ref())
                }
                65..75 => {
                    let reply = self.api.delete(&key).await;
                    if reply.is_some() {
                        self.versions.insert(key, 0);
                    }
                    reply.is_some()
                }
                _ => match self.versions.get(&key).copied() {
                    Some(expected) => {
                        let value = self.next_value();
                        let reply = self.api.put(&key, &value, Some(expected)).await;
                        self.learn(&key, reply.as_ref())
                    }
                    // Nothing learned of this key yet: read it first.
                    None => {
                        let reply = self.api.get(&key).await;
                        self.learn(&key, reply.as_ref())
                    }
                },
            };
            // Without an answer (the admin down, no leader) a worker backs off instead of
            // spinning on instant refusals, which would only inflate the failure count.
            let pause = if answered {
                self.config.op_pause
            } else {
                self.config.op_pause.max(UNANSWERED_PAUSE)
            };
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    fn next_value(&mut self) -> String {
        self.written += 1;
        format!("w{}-{}", self.id, self.written)
    }

    /// Remembers the version a reply revealed, for a later CAS; returns whether it was
    /// acknowledged.
    fn learn(&mut self, key: &str, reply: Option<&Reply<String>>) -> bool {
        let version = match reply {
            Some(Reply::Found {
                version: Some(v), ..
            })
            | Some(Reply::Written { version: Some(v) })
            | Some(Reply::CasMismatch { current: Some(v) }) => *v,
            Some(Reply::NotFound) => 0,
            other => return other.is_some(),
        };
        self.versions.insert(key.to_owned(), version);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTP answers map to the outcomes the contract defines: 503 and other 4xx are definite, 504
    /// and lost connections unknown, a CAS 412 an acknowledged mismatch with the current version.
    #[test]
    fn answers_map_to_definite_and_unknown_outcomes() {
        let written = |b: &Value| Reply::Written {
            version: b["version"].as_u64(),
        };
        assert_eq!(
            write_outcome(
                Answer::Http(200, serde_json::json!({"version": 4})),
                false,
                written
            ),
            Outcome::Ok(Reply::Written { version: Some(4) })
        );
        assert_eq!(
            write_outcome(Answer::Http(503, Value::Null), false, written),
            Outcome::Fail
        );
        assert_eq!(
            write_outcome(Answer::Http(400, Value::Null), false, written),
            Outcome::Fail
        );
        assert_eq!(
            write_outcome(Answer::NotSent, false, written),
            Outcome::Fail
        );
        assert_eq!(
            write_outcome(Answer::Http(504, Value::Null), false, written),
            Outcome::Unknown
        );
        assert_eq!(
            write_outcome(Answer::Http(500, Value::Null), false, written),
            Outcome::Unknown
        );
        assert_eq!(
            write_outcome(Answer::Lost, false, written),
            Outcome::Unknown
        );
        assert_eq!(
            write_outcome(
                Answer::Http(412, serde_json::json!({"current_version": 7})),
                true,
                written
            ),
            Outcome::Ok(Reply::CasMismatch { current: Some(7) })
        );
        // A 412 to a write without CAS cannot be a mismatch: it is a definite refusal.
        assert_eq!(
            write_outcome(Answer::Http(412, Value::Null), false, written),
            Outcome::Fail
        );
    }

    /// Stored strings are compared as themselves, anything else cannot equal a written value.
    #[test]
    fn values_of_other_json_types_never_equal_written_strings() {
        assert_eq!(value_of(&serde_json::json!("w1-2")), "w1-2");
        assert_eq!(value_of(&serde_json::json!(12)), "json:12");
        assert_eq!(value_of(&Value::Null), "json:null");
    }
}
