//! The dashboard at `/ui` as headless Chromium renders it: against a live store (the real
//! binaries, two clusters of three replicas, after a leader failover), and against fixed views
//! served next to the real page assets, for what a quiet store does not show (moves, admins,
//! unreachable replicas, hostile strings, failing refreshes, no cluster at all).
//!
//! Skipped, with a line saying so, when no Chromium is installed (`.ci/run` installs it and sets
//! `RAVEL_REQUIRE_CHROMIUM=1`, which turns the skip into a failure). The live test saves a
//! screenshot under Cargo's target directory; `RAVEL_UPDATE_SCREENSHOT=1` writes it to
//! `docs/img/dashboard.png` instead, the picture the README shows.

mod common;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Size of the screenshot, a common laptop viewport.
const SCREENSHOT_SIZE: (u32, u32) = (1280, 900);

/// Renders of the live page tried before giving up on a view that keeps changing under it.
const RENDER_ATTEMPTS: usize = 3;

/// Writes a line to the real standard error, past the test harness's output capture, so that a
/// skip or the screenshot's path is seen in a passing run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The Chromium to use, or `None` (after saying so) when the test must be skipped.
fn chromium_or_skip(test: &str) -> Result<Option<PathBuf>> {
    match ravel_testkit::browser::find_chromium() {
        Some(path) => Ok(Some(path)),
        None if std::env::var_os("RAVEL_REQUIRE_CHROMIUM").is_some_and(|v| v == "1") => {
            bail!("RAVEL_REQUIRE_CHROMIUM=1 but no chromium on PATH (or RAVEL_CHROMIUM)")
        }
        None => {
            say(&format!(
                "SKIPPED {test}: chromium is not installed (apt-get install -y chromium)"
            ));
            Ok(None)
        }
    }
}

/// The whole start tag of the element carrying `attr` (e.g. `data-partition="5"`).
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// Where the live test's screenshot goes: the committed picture when asked to refresh it, else
/// Cargo's scratch directory (so that a test run never dirties the work tree).
fn screenshot_path() -> PathBuf {
    if std::env::var_os("RAVEL_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/dashboard.png")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    }
}

/// A cluster's id and leader, and each of its replicas' id and role.
type ClusterShape = (Value, Value, Vec<(Value, Value)>);

/// What must not change between the view a render is compared with and the one it drew.
fn shape(view: &Value) -> Vec<ClusterShape> {
    view["clusters"]
        .as_array()
        .map(|clusters| {
            clusters
                .iter()
                .map(|c| {
                    let replicas = c["replicas"].as_array().map_or_else(Vec::new, |rs| {
                        rs.iter()
                            .map(|r| (r["id"].clone(), r["role"].clone()))
                            .collect()
                    });
                    (c["id"].clone(), c["leader"].clone(), replicas)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that the rendered `dom` names every cluster with its leader and every replica with
/// its addresses and role, as `view` has them, and draws one cell per partition.
fn check_dom_against_view(dom: &str, view: &Value) -> Result<()> {
    ensure!(
        dom.contains(r#"data-state="ok""#),
        "the page did not load /v1/cluster: {dom}"
    );
    let clusters = view["clusters"].as_array().context("clusters")?;
    for cluster in clusters {
        let id = &cluster["id"];
        let leader = cluster["leader"]
            .as_u64()
            .context("every cluster has a leader")?;
        let tag = tag_with(dom, &format!(r#"data-cluster="{id}""#))
            .with_context(|| format!("cluster {id} is not drawn"))?;
        ensure!(
            tag.contains(&format!(r#"data-leader="{leader}""#)),
            "cluster {id} drawn with the wrong leader (want {leader}): {tag}"
        );
        ensure!(
            dom.contains(&format!("Cluster {id}"))
                && dom.contains(&format!("leader: node {leader}")),
            "cluster {id} or its leader {leader} is not named"
        );
        for replica in cluster["replicas"].as_array().context("replicas")? {
            let rid = &replica["id"];
            let tag = tag_with(dom, &format!(r#"data-replica="{rid}""#))
                .with_context(|| format!("replica {rid} is not drawn"))?;
            let role = replica["role"].as_str().context("role")?;
            ensure!(
                tag.contains(&format!(r#"data-role="{role}""#)),
                "replica {rid} drawn with the wrong role (want {role}): {tag}"
            );
            for field in ["grpc_addr", "raft_addr"] {
                let addr = replica[field].as_str().context("address")?;
                ensure!(
                    dom.contains(addr),
                    "replica {rid}'s {field} {addr} is not shown"
                );
            }
        }
    }
    let partitions = usize::try_from(view["partitions"].as_u64().context("partitions")?)?;
    let cells = dom.matches("data-partition=").count();
    ensure!(
        cells == partitions,
        "{cells} partition cells for {partitions} partitions"
    );
    Ok(())
}

/// The live store, as the page draws it: every replica, the leader of each cluster, the
/// partition table and a leader change seen after the first cluster's leader was killed.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_names_every_replica_and_leader_of_a_live_store() -> Result<()> {
    let Some(chromium) = chromium_or_skip("dashboard_names_every_replica_and_leader")? else {
        return Ok(());
    };
    let mut tc = common::new_cluster("dashboard")?;
    common::start_clusters(&mut tc, 2, 3).await?;
    for i in 0..60 {
        let (status, body) = tc.put(&format!("user:{i}"), &json!({"n": i})).await?;
        ensure!(status == 200, "put {i}: {status} {body}");
    }

    // A failover, for the page's list of leader changes.
    let view = tc.cluster_view().await?;
    let cluster = view["clusters"][0]["id"].as_u64().context("a cluster")?;
    let old = view["clusters"][0]["leader"].as_u64().context("a leader")?;
    let mut old_name = None;
    for name in tc.node_names() {
        if tc.status(&name).await?.node_id == old {
            old_name = Some(name);
        }
    }
    let old_name = old_name.context("the leader's test name")?;
    tc.kill9_node(&old_name);
    let changed = |v: &Value| {
        v["leader_changes"].as_array().is_some_and(|changes| {
            changes.iter().any(|c| {
                c["cluster"] == cluster && c["old_leader"] == old && c["new_leader"] != old
            })
        })
    };
    ravel_testkit::wait_until(
        "the failover in leader_changes",
        ravel_testkit::READY_TIMEOUT,
        || async { tc.cluster_view().await.is_ok_and(|v| changed(&v)) },
    )
    .await?;
    tc.start_node(&old_name, false)?;
    ravel_testkit::wait_until(
        "every replica healthy again",
        ravel_testkit::READY_TIMEOUT,
        || async {
            tc.cluster_view().await.is_ok_and(|v| {
                let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
                clusters.iter().all(|c| c["leader"].is_u64())
                    && clusters
                        .iter()
                        .flat_map(|c| c["replicas"].as_array().cloned().unwrap_or_default())
                        .filter(|r| r["healthy"] == true)
                        .count()
                        == 6
            })
        },
    )
    .await?;

    let url = tc.url("/ui");
    let mut last_error = None;
    for attempt in 1..=RENDER_ATTEMPTS {
        let before = tc.cluster_view().await?;
        let dom = ravel_testkit::browser::dump_dom(&chromium, &url).await?;
        let after = tc.cluster_view().await?;
        if shape(&before) != shape(&after) {
            last_error = Some(format!(
                "attempt {attempt}: the view changed while rendering"
            ));
            continue;
        }
        check_dom_against_view(&dom, &after)?;
        let new = after["clusters"][0]["leader"]
            .as_u64()
            .context("a leader")?;
        ensure!(
            dom.contains(&format!(r#"data-leader-change="{cluster}""#))
                && dom.contains(&format!("node {old} → node {new}")),
            "the failover {old} → {new} of cluster {cluster} is not listed"
        );
        last_error = None;
        break;
    }
    if let Some(e) = last_error {
        bail!("{e}");
    }

    let shot = screenshot_path();
    ravel_testkit::browser::screenshot(&chromium, &url, &shot, SCREENSHOT_SIZE).await?;
    say(&format!("dashboard screenshot: {}", shot.display()));
    tc.finish();
    Ok(())
}

/// What a fixed-view server answers on `/v1/cluster`: the view for the first `good` requests
/// (all of them when `None`), then 503.
struct FixedView {
    view: Value,
    good: Option<usize>,
    served: AtomicUsize,
}

/// Serves the real dashboard assets and a fixed `/v1/cluster` on a loopback port; returns the
/// page's URL.
async fn serve_fixed_view(fixed: FixedView) -> Result<String> {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    async fn view(State(fixed): State<Arc<FixedView>>) -> axum::response::Response {
        let n = fixed.served.fetch_add(1, Ordering::SeqCst);
        if fixed.good.is_some_and(|good| n >= good) {
            return (StatusCode::SERVICE_UNAVAILABLE, "{}").into_response();
        }
        axum::Json(fixed.view.clone()).into_response()
    }
    let app = ravel_admin::ui::routes()
        .route("/v1/cluster", axum::routing::get(view))
        .with_state(Arc::new(fixed));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ui/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// A string that would run script if the page ever parsed data as HTML.
const HOSTILE: &str = r#"<img src=x onerror="document.title='pwned'">"#;

/// A view with two admins, a cluster without a leader whose replica is unreachable, a move in
/// progress, partitions without an owner and leader changes; hostile text in two fields.
fn rich_view(now_ms: u64) -> Value {
    let owners: Vec<Value> = (0..64)
        .map(|p| {
            if p % 16 == 15 {
                Value::Null
            } else {
                json!(1 + p % 2)
            }
        })
        .collect();
    json!({
        "partitions": 64, "epoch": 9, "assignment_epoch": 3, "has_data": true,
        "admins": [
            {"grpc_addr": "10.0.0.1:9090", "http_addr": "10.0.0.1:8080", "role": "leader", "healthy": true},
            {"grpc_addr": "10.0.0.2:9090", "http_addr": HOSTILE, "role": "follower", "healthy": false},
        ],
        "clusters": [
            {"id": 1, "leader": 11, "partitions": 30, "target_partitions": 30, "keys": 1500,
             "draining": false, "assignment_confirmed": true, "replicas": [
                {"id": 11, "raft_addr": "10.0.1.1:7001", "grpc_addr": "10.0.1.1:7000", "role": "leader",
                 "healthy": true, "term": 4, "last_applied": 812, "keys": 1500},
                {"id": 12, "raft_addr": "10.0.1.2:7001", "grpc_addr": "10.0.1.2:7000", "role": "follower",
                 "healthy": true, "term": 4, "last_applied": 812, "keys": 1500}]},
            {"id": 2, "leader": null, "partitions": 30, "target_partitions": 31, "keys": null,
             "draining": true, "assignment_confirmed": false, "replicas": [
                {"id": 21, "raft_addr": "10.0.2.1:7001", "grpc_addr": "10.0.2.1:7000", "role": "unreachable",
                 "healthy": false, "error": HOSTILE}]},
        ],
        "partition_owners": owners,
        "migrations": [{"partition": 5, "source": 2, "target": 1, "step": "copying", "keys_copied": 1234}],
        "moves_pending": 2,
        "max_write_pause_ms": 640,
        "leader_changes": [
            {"cluster": 1, "old_leader": null, "new_leader": 12, "term": 1, "at_unix_ms": now_ms - 90_000},
            {"cluster": 1, "old_leader": 12, "new_leader": 11, "term": 4, "at_unix_ms": now_ms - 5_000},
        ],
    })
}

fn now_unix_ms() -> Result<u64> {
    Ok(u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?)
}

/// The page draws admins, moves (the moving partition marked in the table), partitions without
/// an owner, a cluster without a leader and leader changes, newest first; and every string from
/// the view reaches the DOM as text, never as markup.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_draws_moves_admins_and_errors_as_text() -> Result<()> {
    let Some(chromium) = chromium_or_skip("dashboard_draws_moves_admins_and_errors")? else {
        return Ok(());
    };
    let url = serve_fixed_view(FixedView {
        view: rich_view(now_unix_ms()?),
        good: None,
        served: AtomicUsize::new(0),
    })
    .await?;
    let dom = ravel_testkit::browser::dump_dom(&chromium, &url).await?;

    ensure!(dom.contains(r#"data-state="ok""#), "not loaded: {dom}");
    ensure!(!dom.contains("<img"), "data was parsed as HTML: {dom}");
    let escaped = r#"&lt;img src=x onerror="document.title='pwned'"&gt;"#;
    ensure!(
        dom.matches(escaped).count() == 2,
        "the hostile strings are not shown as text: {dom}"
    );
    ensure!(dom.contains("<title>Ravel-rs dashboard</title>"), "{dom}");

    let admins = tag_with(&dom, r#"id="admins-section""#).context("admins section")?;
    ensure!(!admins.contains("hidden"), "admins are hidden: {admins}");
    ensure!(dom.contains(r#"data-admin="10.0.0.1:9090""#) && dom.contains("10.0.0.2:9090"));

    let moving = tag_with(&dom, r#"data-partition="5""#).context("cell 5")?;
    ensure!(
        moving.contains("moving") && moving.contains("copying"),
        "{moving}"
    );
    let still = tag_with(&dom, r#"data-partition="4""#).context("cell 4")?;
    ensure!(!still.contains("moving"), "{still}");
    let unowned = tag_with(&dom, r#"data-partition="15""#).context("cell 15")?;
    ensure!(
        unowned.contains("none") && unowned.contains("no owner"),
        "{unowned}"
    );
    ensure!(dom.matches("data-partition=").count() == 64);
    ensure!(dom.contains(r#"data-move="5""#) && dom.contains("cluster 2 → cluster 1"));
    ensure!(dom.contains("1,234"), "keys copied");

    let leaderless = tag_with(&dom, r#"data-cluster="2""#).context("cluster 2")?;
    ensure!(leaderless.contains(r#"data-leader="""#), "{leaderless}");
    ensure!(dom.contains("no leader") && dom.contains("draining"));
    ensure!(dom.contains("unreachable") && dom.contains("unhealthy"));

    let newest = dom.find("node 12 → node 11").context("the newest change")?;
    let oldest = dom.find("none → node 12").context("the first change")?;
    ensure!(newest < oldest, "leader changes are not newest first");
    Ok(())
}

/// After a refresh fails the page says so, with the time of the data it still shows; with no
/// cluster it says how to create one.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_reports_failed_refreshes_and_an_empty_store() -> Result<()> {
    let Some(chromium) = chromium_or_skip("dashboard_reports_failed_refreshes")? else {
        return Ok(());
    };
    let flaky = serve_fixed_view(FixedView {
        view: rich_view(now_unix_ms()?),
        good: Some(1),
        served: AtomicUsize::new(0),
    })
    .await?;
    let dom = ravel_testkit::browser::dump_dom(&chromium, &flaky).await?;
    let status = tag_with(&dom, r#"id="refresh""#).context("refresh status")?;
    ensure!(status.contains(r#"data-state="failed""#), "{status}");
    ensure!(
        dom.contains("last refresh failed at") && dom.contains("HTTP 503"),
        "the failure is not reported: {dom}"
    );
    ensure!(dom.contains("showing data from"), "{dom}");
    ensure!(
        dom.contains(r#"data-cluster="1""#),
        "the last data is gone: {dom}"
    );
    ensure!(
        dom.contains(r#"<main class="stale">"#),
        "stale data is not marked"
    );

    let empty = serve_fixed_view(FixedView {
        view: json!({
            "partitions": 8, "epoch": 0, "assignment_epoch": 0, "has_data": false,
            "clusters": [], "partition_owners": [null, null, null, null, null, null, null, null],
            "migrations": [], "moves_pending": 0, "max_write_pause_ms": 0, "leader_changes": [],
        }),
        good: None,
        served: AtomicUsize::new(0),
    })
    .await?;
    let dom = ravel_testkit::browser::dump_dom(&chromium, &empty).await?;
    ensure!(dom.contains(r#"data-state="ok""#), "{dom}");
    ensure!(dom.contains("No cluster yet"), "{dom}");
    ensure!(
        dom.contains("None observed since this admin started."),
        "{dom}"
    );
    let admins = tag_with(&dom, r#"id="admins-section""#).context("admins section")?;
    ensure!(
        admins.contains("hidden"),
        "an empty admins section is shown: {admins}"
    );
    ensure!(dom.matches(r#"class="cell none""#).count() == 8, "{dom}");
    Ok(())
}
