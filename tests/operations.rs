//! End-to-end tests of what operators rely on, on the real binaries: a graceful stop (SIGTERM)
//! of a leader under writers, the Prometheus `/metrics` of the admin and of every replica, the
//! client commands of `ravel_admin`, and log files without terminal escapes.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ravel_testkit::{TestCluster, wait_until};
use serde_json::{Value, json};

/// Writers that put `w{i}:{n}` through the admin's `/put` until told to stop; each returns the
/// keys it got acknowledged and every failure it saw (status and body).
fn spawn_writers(
    tc: &TestCluster,
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, Vec<String>)>> {
    let url = tc.url("/put");
    (0..writers)
        .map(|w| {
            let url = url.clone();
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut acked, mut failures) = (Vec::new(), Vec::new());
                let mut n = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}:{n}");
                    n += 1;
                    let body = json!({"key": key, "val": n}).to_string();
                    match http.post(&url).body(body).send().await {
                        Ok(resp) if resp.status() == 200 => acked.push(key),
                        Ok(resp) => {
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            failures.push(format!("{key}: {status} {text}"));
                        }
                        Err(e) => failures.push(format!("{key}: {e}")),
                    }
                }
                (acked, failures)
            })
        })
        .collect()
}

/// SIGTERM to a cluster's leader while four clients write: the leader hands its leadership to
/// a caught-up voter before it stops (one election, the term goes up by exactly one), exits 0,
/// and no client request fails; every acknowledged write reads back.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_a_leader_hands_over_and_fails_no_request() -> Result<()> {
    let mut tc = common::new_cluster("sigterm_leader")?;
    let (names, leader) = common::start_one_cluster(&mut tc).await?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let term_before = tc.status(&leader).await?.term;
    common::sleep_past_first_lease().await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&tc, 4, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let exit = tc.stop_node(&leader);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    for w in writers {
        let (a, f) = w.await?;
        acked.extend(a);
        failures.extend(f);
    }

    let exit = exit.context("the leader did not exit within 10 s of SIGTERM")?;
    assert!(exit.success(), "the leader exited with {exit}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());

    let log = tc.node_log(&leader);
    assert!(
        log.contains("handed leadership over before stopping"),
        "the leader's log does not report a hand-over:\n{log}"
    );
    let survivors: Vec<&str> = refs.iter().copied().filter(|n| *n != leader).collect();
    let successor = tc.wait_leader(&survivors).await?;
    let status = tc.status(&successor).await?;
    assert_eq!(
        status.term,
        term_before + 1,
        "one election at most: the hand-over's"
    );

    for key in &acked {
        let (code, body) = tc.get(key).await?;
        assert_eq!(code, 200, "acknowledged {key} reads back: {body}");
    }
    tc.finish();
    Ok(())
}

/// `promtool check metrics` on `text`, when promtool is installed (`.ci/run` installs it).
fn promtool_check(what: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED promtool check of {what}: promtool is not installed");
        return Ok(());
    };
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool rejects the {what} metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Runs the built `ravel_admin` with `args`; returns (exit code, stdout, stderr).
fn admin_cli(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_ravel_admin"))
        .args(args)
        .env_remove("RAVEL_ENDPOINTS")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// On one running cluster: the admin's and every replica's `/metrics` pass promtool and their
/// named series move as traffic flows; the replicas' `/livez` and `/readyz` answer; the client
/// commands write, read, delete and show the cluster (failing over past a dead endpoint, JSON
/// for scripts, clear errors); and no log file holds a terminal escape.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_probes_and_client_commands_on_a_running_cluster() -> Result<()> {
    let mut tc = common::new_cluster("operations")?;
    let (names, leader) = common::start_one_cluster(&mut tc).await?;
    let leader_metrics = format!("http://{}/metrics", tc.node(&leader).http_addr);
    let admin_metrics = tc.url("/metrics");

    // Probes.
    for name in &names {
        let http = &tc.node(name).http_addr;
        let live = reqwest::get(format!("http://{http}/livez")).await?;
        assert_eq!(live.status(), 200, "{name} /livez");
        let ready = reqwest::get(format!("http://{http}/readyz")).await?;
        assert_eq!(ready.status(), 200, "{name} /readyz");
        let (code, out, err) = admin_cli(&["probe", &format!("http://{http}/readyz")])?;
        assert_eq!(code, 0, "probe of {name}: {out}{err}");
    }
    let (code, _, err) = admin_cli(&["probe", &tc.url("/no-such-route")])?;
    assert_eq!(code, 1, "a 404 fails the probe");
    assert!(err.contains("404"), "{err}");

    // Series move with traffic.
    let (_, admin_before) = common::scrape(&admin_metrics).await?;
    let (_, leader_before) = common::scrape(&leader_metrics).await?;
    for i in 0..40 {
        let (code, body) = tc.put(&format!("m{i}"), &json!(i)).await?;
        assert_eq!(code, 200, "{body}");
        let (code, body) = tc.get(&format!("m{i}")).await?;
        assert_eq!(code, 200, "{body}");
    }
    let (admin_text, admin_after) = common::scrape(&admin_metrics).await?;
    let (leader_text, leader_after) = common::scrape(&leader_metrics).await?;
    promtool_check("admin", &admin_text)?;
    promtool_check("leader", &leader_text)?;
    let put_route = r#"ravel_admin_requests_total{route="/put",code="ok"}"#;
    assert!(
        value(&admin_after, put_route) - value(&admin_before, put_route) >= 40.0,
        "admin put count did not move by 40"
    );
    for (series, at_least) in [
        (r#"ravel_node_requests_total{method="put",code="ok"}"#, 40.0),
        (r#"ravel_node_requests_total{method="get",code="ok"}"#, 40.0),
        ("ravel_node_raft_commit_index", 40.0),
        ("ravel_node_apply_duration_seconds_count", 1.0),
        ("ravel_node_log_fsync_duration_seconds_count", 1.0),
        ("ravel_node_write_batch_commands_count", 40.0),
    ] {
        let moved = value(&leader_after, series) - value(&leader_before, series);
        assert!(
            moved >= at_least,
            "{series} moved by {moved}, expected at least {at_least}"
        );
    }
    assert_eq!(value(&leader_after, "ravel_node_raft_is_leader"), 1.0);
    assert_eq!(value(&leader_after, "ravel_node_raft_voters"), 3.0);
    for name in &names {
        let url = format!("http://{}/metrics", tc.node(name).http_addr);
        wait_until(
            "every replica holds the 40 keys",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    common::scrape(&url)
                        .await
                        .is_ok_and(|(_, m)| value(&m, "ravel_node_keys") >= 40.0)
                }
            },
        )
        .await?;
        let (text, _) = common::scrape(&url).await?;
        promtool_check(name, &text)?;
    }

    // Client commands. The first endpoint is dead: the commands fail over to the admin.
    let dead = format!("127.0.0.1:{}", ravel_testkit::free_port());
    let endpoints = format!("http://{dead},{}", tc.url(""));
    let ep = ["--endpoints", endpoints.as_str()];
    let run = |args: &[&str]| admin_cli(&[args, &ep[..]].concat());

    let (code, out, err) = run(&["put", "cli/key one", r#"{"a":[1,2]}"#, "-o", "json"])?;
    assert_eq!(code, 0, "{out}{err}");
    let put: Value = serde_json::from_str(&out)?;
    assert_eq!(put["version"], 1);
    let (code, out, err) = run(&["get", "cli/key one", "-o", "json"])?;
    assert_eq!(code, 0, "{out}{err}");
    let got: Value = serde_json::from_str(&out)?;
    assert_eq!(got["value"], json!({"a": [1, 2]}));
    let (code, out, _) = run(&["get", "cli/key one"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("cli/key one") && out.contains(r#"{"a":[1,2]}"#),
        "{out}"
    );
    let (code, _, err) = run(&["put", "cli/key one", "x", "--cas", "0"])?;
    assert_eq!(code, 1, "CAS 0 on an existing key fails");
    assert!(err.contains("cas_mismatch"), "{err}");
    let (code, out, _) = run(&["put", "cli/plain", "hello", "--string"])?;
    assert_eq!(code, 0);
    assert!(out.contains("OK version 1"), "{out}");
    let (_, body) = tc.get("cli/plain").await?;
    assert_eq!(body["val"], json!("hello"));
    let (code, out, _) = run(&["delete", "cli/key one"])?;
    assert_eq!((code, out.as_str()), (0, "deleted\n"));
    let (code, out, _) = run(&["get", "cli/key one", "-o", "json"])?;
    assert_eq!(code, 1, "a missing key is an error");
    let missing: Value = serde_json::from_str(&out)?;
    assert_eq!(missing["code"], "not_found", "{missing}");

    let (code, out, err) = run(&["status", "-o", "json"])?;
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out)?;
    assert_eq!(
        view["clusters"][0]["replicas"].as_array().map(Vec::len),
        Some(3)
    );
    let (code, out, _) = run(&["status"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("CLUSTERS") && out.contains("REPLICAS"),
        "{out}"
    );
    assert_eq!(
        out.matches("leader").count(),
        2,
        "the admin and one replica listed as leader:\n{out}"
    );
    for name in &names {
        let grpc = &tc.node(name).grpc_addr;
        assert!(
            out.contains(grpc.as_str()),
            "status lists {name} ({grpc}):\n{out}"
        );
    }
    let (code, _, err) = admin_cli(&["status", "--endpoints", &dead])?;
    assert_eq!(code, 1);
    assert!(err.contains("no admin answered"), "{err}");

    // SIGTERM stops the admin gracefully: exit 0.
    let exit = tc
        .stop_admin()
        .context("the admin did not exit within 10 s of SIGTERM")?;
    assert!(exit.success(), "the admin exited with {exit}");

    // Log files are plain text: no ANSI colour escapes when standard error is not a terminal.
    for name in &names {
        let log = tc.node_log(name);
        assert!(!log.is_empty(), "{name} logged nothing");
        assert!(
            !log.contains('\u{1b}'),
            "{name}'s log holds terminal escapes"
        );
    }
    tc.finish();
    Ok(())
}
