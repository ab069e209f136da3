//! A concurrent client workload over the admin's HTTP API that records every operation in a
//! [`History`] for the per-key checker.
//!
//! Keys `{prefix}{i}` are split among writer tasks (key `i` belongs to writer `i % writers`), so
//! each key has exactly one writer; a writer writes `{"w": n}` with `n` strictly increasing per
//! key, one request at a time. It first writes each of its keys once, retrying until the write is
//! acknowledged (the load phase), then cycles over its keys until stopped. Reader tasks read keys
//! picked by a seeded random generator. HTTP answers are turned into outcomes the way the store's
//! contract defines them (`docs/design.md#definite-and-unknown-outcomes`): 200 acknowledged; 4xx
//! and 503 definite failures; a connection that could not be made is a definite failure; 504, other
//! 5xx and any other transport error leave the outcome unknown. This module drives load; it does
//! not judge it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::history::{History, Observed, Outcome};

/// Pause of a writer after a failed load-phase write before it tries again, so that a store that
/// refuses everything (no leader yet) is not hammered.
const LOAD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How a workload runs.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Number of keys, each written by exactly one writer.
    pub keys: usize,
    /// Keys are `{key_prefix}{i}`.
    pub key_prefix: String,
    /// Writer tasks.
    pub writers: usize,
    /// Reader tasks.
    pub readers: usize,
    /// Pause of each task between two operations once the load phase is over (zero: flat out).
    pub op_pause: Duration,
    /// Seed of the readers' key choice (print it: a failing run can be replayed with it).
    pub seed: u64,
    /// Client-side deadline of one HTTP request (longer than the admin's own deadlines, so that
    /// normally the admin answers 503/504 first).
    pub request_timeout: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            keys: 1000,
            key_prefix: "k".into(),
            writers: 8,
            readers: 4,
            op_pause: Duration::from_millis(5),
            seed: 1,
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// Counts of HTTP answers, by operation and answer (`"write 200"`, `"read transport"`, ...).
pub type AnswerCounts = BTreeMap<String, u64>;

/// A running workload; stop it with [`Workload::stop`].
pub struct Workload {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    loaded_writers: Arc<AtomicUsize>,
    writers: usize,
    keys: Vec<String>,
    answers: Arc<Mutex<AnswerCounts>>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts the writer and reader tasks against the admin at `base_url`
    /// (`http://host:port`) on `config.keys` keys `{key_prefix}{i}`. Must be called inside a
    /// tokio runtime.
    pub fn start(base_url: &str, config: &WorkloadConfig) -> Result<Self> {
        let keys: Vec<String> = (0..config.keys)
            .map(|i| format!("{}{i}", config.key_prefix))
            .collect();
        Self::start_on_keys(base_url, config, keys)
    }

    /// Like [`Workload::start`], on exactly `keys` (`config.keys` and `key_prefix` are not
    /// used), e.g. keys picked to live on one cluster.
    pub fn start_on_keys(
        base_url: &str,
        config: &WorkloadConfig,
        keys: Vec<String>,
    ) -> Result<Self> {
        Self::start_spread(&[base_url.to_owned()], config, keys)
    }

    /// Like [`Workload::start_on_keys`], spread over several admins: task `i` starts at admin
    /// `i % base_urls.len()` and moves on to the next when its admin cannot be reached (a
    /// connection refused or a transport error), as a client of an admin group would.
    pub fn start_spread(
        base_urls: &[String],
        config: &WorkloadConfig,
        keys: Vec<String>,
    ) -> Result<Self> {
        if base_urls.is_empty() {
            bail!("a workload needs at least one admin URL");
        }
        if keys.is_empty() || config.writers == 0 {
            bail!("a workload needs at least one key and one writer: {config:?}");
        }
        let http = crate::http_client(config.request_timeout)
            .context("building the workload's HTTP client")?;
        let mut workload = Self {
            history: Arc::new(History::new()),
            stop: Arc::new(AtomicBool::new(false)),
            loaded_writers: Arc::new(AtomicUsize::new(0)),
            writers: config.writers,
            keys: keys.clone(),
            answers: Arc::new(Mutex::new(AnswerCounts::new())),
            tasks: JoinSet::new(),
        };
        let urls: Arc<[String]> = base_urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        let client = |task: usize| Client {
            http: http.clone(),
            urls: Arc::clone(&urls),
            at: AtomicUsize::new(task % urls.len()),
            history: Arc::clone(&workload.history),
            answers: Arc::clone(&workload.answers),
        };
        for w in 0..config.writers {
            let own: Vec<String> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| i % config.writers == w)
                .map(|(_, k)| k.clone())
                .collect();
            let client = client(w);
            let stop = Arc::clone(&workload.stop);
            let loaded = Arc::clone(&workload.loaded_writers);
            let pause = config.op_pause;
            workload
                .tasks
                .spawn(async move { writer(client, own, stop, loaded, pause).await });
        }
        for r in 0..config.readers {
            let client = client(config.writers + r);
            let stop = Arc::clone(&workload.stop);
            let keys = keys.clone();
            let seed = config.seed.wrapping_add(r as u64);
            let pause = config.op_pause;
            workload
                .tasks
                .spawn(async move { reader(client, keys, stop, seed, pause).await });
        }
        Ok(workload)
    }

    /// The history being recorded.
    #[must_use]
    pub fn history(&self) -> Arc<History> {
        Arc::clone(&self.history)
    }

    /// Every key of the workload.
    #[must_use]
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// True once every writer has had each of its keys acknowledged once.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.loaded_writers.load(Ordering::SeqCst) == self.writers
    }

    /// Waits (bounded) until the load phase is over.
    pub async fn wait_loaded(&self, timeout: Duration) -> Result<()> {
        crate::wait_until("the workload's load phase", timeout, || async {
            self.is_loaded()
        })
        .await
    }

    /// Counts of answers so far.
    pub async fn answers(&self) -> AnswerCounts {
        self.answers.lock().await.clone()
    }

    /// Stops every task after its current request and waits for them; returns the answer counts.
    /// Fails if a task panicked.
    pub async fn stop(mut self) -> Result<AnswerCounts> {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(joined) = self.tasks.join_next().await {
            joined.context("a workload task failed")?;
        }
        Ok(self.answers.lock().await.clone())
    }
}

/// What every task needs to send requests and record them: the admins' URLs and the one it
/// uses now.
struct Client {
    http: reqwest::Client,
    urls: Arc<[String]>,
    at: AtomicUsize,
    history: Arc<History>,
    answers: Arc<Mutex<AnswerCounts>>,
}

impl Client {
    fn base_url(&self) -> &str {
        &self.urls[self.at.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// The admin in use did not answer: use the next one.
    fn move_on(&self) {
        self.at.fetch_add(1, Ordering::Relaxed);
    }

    async fn count(&self, what: String) {
        *self.answers.lock().await.entry(what).or_default() += 1;
    }

    /// `POST /put {"key": key, "val": {"w": value}}`, recorded; returns the outcome.
    async fn write(&self, key: &str, value: u64) -> Outcome {
        let body = json!({"key": key, "val": {"w": value}});
        let invoke_at = self.history.now();
        let sent = self
            .http
            .post(format!("{}/put", self.base_url()))
            .json(&body)
            .send()
            .await;
        let (outcome, answer) = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // The body is drained so the connection can be reused; its content is not needed.
                let _ = resp.bytes().await;
                (write_outcome(status), status.to_string())
            }
            Err(e) if e.is_connect() => (Outcome::Fail, "connect-error".to_owned()),
            Err(e) if e.is_timeout() => (Outcome::Unknown, "timeout".to_owned()),
            Err(_) => (Outcome::Unknown, "transport-error".to_owned()),
        };
        if answer == "connect-error" || answer == "transport-error" {
            self.move_on();
        }
        self.history.record_write(key, value, invoke_at, outcome);
        self.count(format!("write {answer}")).await;
        outcome
    }

    /// `POST /get {"key": key}`, recorded.
    async fn read(&self, key: &str) {
        let invoke_at = self.history.now();
        let (observed, outcome, answer) = match get(&self.http, self.base_url(), key).await {
            Ok((status, observed)) => {
                let outcome = if observed.is_some() {
                    Outcome::Ok
                } else {
                    Outcome::Fail
                };
                (
                    observed.unwrap_or(Observed::Missing),
                    outcome,
                    status.to_string(),
                )
            }
            Err(e) => {
                if e != "timeout" {
                    self.move_on();
                }
                (Observed::Missing, Outcome::Unknown, e)
            }
        };
        self.history.record_read(key, observed, invoke_at, outcome);
        self.count(format!("read {answer}")).await;
    }
}

/// The outcome of a write answered with HTTP `status` (a 503 is definite: see
/// `docs/design.md#definite-and-unknown-outcomes`).
#[must_use]
pub fn write_outcome(status: u16) -> Outcome {
    match status {
        200 => Outcome::Ok,
        400..=499 | 503 => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// What a `/get` answer means for the checker: `Some(observed)` for 200 and 404, `None` for an
/// answer that says nothing about the key (503, 504, ...).
#[must_use]
pub fn observed_of(status: u16, body: &Value) -> Option<Observed> {
    match status {
        200 => Some(match body["val"]["w"].as_u64() {
            Some(n) if body["val"].as_object().is_some_and(|o| o.len() == 1) => Observed::Value(n),
            _ => Observed::Garbage(body.to_string()),
        }),
        404 => Some(Observed::Missing),
        _ => None,
    }
}

/// One `POST /get`: (status, what it says about the key) or a transport error's kind.
async fn get(
    http: &reqwest::Client,
    base_url: &str,
    key: &str,
) -> Result<(u16, Option<Observed>), String> {
    let resp = http
        .post(format!("{base_url}/get"))
        .json(&json!({"key": key}))
        .send()
        .await
        .map_err(|e| transport_kind(&e))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| transport_kind(&e))?;
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, observed_of(status, &body)))
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connect-error".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else {
        "transport-error".into()
    }
}

/// A writer: loads each of its keys once (retrying until acknowledged), then cycles over them.
async fn writer(
    client: Client,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    loaded: Arc<AtomicUsize>,
    pause: Duration,
) {
    let mut next: Vec<u64> = vec![1; keys.len()];
    for (i, key) in keys.iter().enumerate() {
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let value = next[i];
            next[i] += 1;
            if client.write(key, value).await == Outcome::Ok {
                break;
            }
            tokio::time::sleep(LOAD_RETRY_PAUSE).await;
        }
    }
    loaded.fetch_add(1, Ordering::SeqCst);
    'cycle: loop {
        for (i, key) in keys.iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                break 'cycle;
            }
            let value = next[i];
            next[i] += 1;
            client.write(key, value).await;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// A reader: reads random keys until stopped.
async fn reader(
    client: Client,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    seed: u64,
    pause: Duration,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::SeqCst) {
        let key = &keys[rng.random_range(0..keys.len())];
        client.read(key).await;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Reads every key once more after the load stopped (linearizable reads through the admin,
/// `concurrency` at a time), retrying answers that say nothing about the key (503, 504,
/// transport errors) up to `attempts` times. A key that never got a meaningful answer is left
/// out, which the checker reports as having no final value.
pub async fn read_finals(
    base_url: &str,
    keys: &[String],
    concurrency: usize,
    attempts: u32,
) -> Result<BTreeMap<String, Observed>> {
    let http = crate::http_client(Duration::from_secs(20)).context("building the HTTP client")?;
    let base_url = base_url.trim_end_matches('/').to_owned();
    let chunks: Vec<Vec<String>> = keys
        .chunks(keys.len().div_ceil(concurrency.max(1)).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut tasks = JoinSet::new();
    for chunk in chunks {
        let http = http.clone();
        let base_url = base_url.clone();
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for key in chunk {
                for attempt in 0..attempts {
                    if let Ok((_, Some(observed))) = get(&http, &base_url, &key).await {
                        out.push((key.clone(), observed));
                        break;
                    }
                    if attempt + 1 < attempts {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            out
        });
    }
    let mut finals = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        finals.extend(joined.context("a final-read task failed")?);
    }
    Ok(finals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTP answers map to outcomes as the store's contract defines them: only 200 acknowledges,
    /// 4xx and 503 are definite failures, 504 and other 5xx are unknown.
    #[test]
    fn write_answers_map_to_contract_outcomes() {
        assert_eq!(write_outcome(200), Outcome::Ok);
        assert_eq!(write_outcome(400), Outcome::Fail);
        assert_eq!(write_outcome(413), Outcome::Fail);
        assert_eq!(write_outcome(503), Outcome::Fail);
        assert_eq!(write_outcome(504), Outcome::Unknown);
        assert_eq!(write_outcome(500), Outcome::Unknown);
    }

    /// A read's body is a workload value, "not found", garbage, or says nothing.
    #[test]
    fn read_answers_map_to_observations() {
        assert_eq!(
            observed_of(200, &json!({"key": "k", "val": {"w": 7}, "version": 3})),
            Some(Observed::Value(7))
        );
        assert!(matches!(
            observed_of(200, &json!({"key": "k", "val": ""})),
            Some(Observed::Garbage(_))
        ));
        assert!(matches!(
            observed_of(200, &json!({"key": "k", "val": {"w": 7, "x": 1}})),
            Some(Observed::Garbage(_))
        ));
        assert_eq!(
            observed_of(404, &json!({"code": "not_found"})),
            Some(Observed::Missing)
        );
        assert_eq!(observed_of(503, &json!({"code": "partition_moving"})), None);
        assert_eq!(observed_of(504, &Value::Null), None);
    }
}
