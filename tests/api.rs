//! End-to-end contract tests of the admin's HTTP API (`docs/design.md#http-api`) against the real
//! binaries: an admin and one cluster of three replicas on loopback.

mod common;

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};

/// Sends raw bytes and returns (status, raw body text).
async fn raw(
    tc: &ravel_testkit::TestCluster,
    method: Method,
    path: &str,
    body: &str,
    content_type: Option<&str>,
) -> Result<(u16, String)> {
    let client = ravel_testkit::http_client(std::time::Duration::from_secs(30))?;
    let mut req = client.request(method, tc.url(path)).body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// Asserts an error answer: the status and a JSON `{"error": <text>, "code": <code>}` body.
fn assert_error(what: &str, got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{what}: status (body {})", got.1);
    assert_eq!(got.1["code"], code, "{what}: code (body {})", got.1);
    assert!(
        got.1["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: error message (body {})",
        got.1
    );
}

/// With no cluster the admin is live but not ready, and a put is a definite 503 `no_cluster`.
#[tokio::test(flavor = "multi_thread")]
async fn put_without_any_cluster_is_503() -> Result<()> {
    let mut tc = common::new_cluster("no_cluster")?;
    tc.start_admin().await?;
    let put = tc.put("k", &json!("v")).await?;
    assert_error("put with no cluster", &put, 503, "no_cluster");
    let (live, _) = tc.request(Method::GET, "/livez", None).await?;
    assert_eq!(live, 200);
    let ready = tc.request(Method::GET, "/readyz", None).await?;
    assert_eq!(ready.0, 503, "readyz without clusters: {}", ready.1);
    let get = tc.get("k").await?;
    assert_eq!(
        get.0, 503,
        "a get with no cluster is 503, never 404: {}",
        get.1
    );
    tc.finish();
    Ok(())
}

/// Slow and idle clients cannot lock others out: hundreds of idle connections and a client that
/// never finishes its headers leave the admin answering a new client at once, and the slow
/// client is cut off by the header-read timeout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_do_not_lock_out_others() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tc = common::new_cluster("slow_clients")?;
    tc.start_admin().await?;
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(tokio::net::TcpStream::connect(&tc.http_addr).await?);
    }
    let mut slow = tokio::net::TcpStream::connect(&tc.http_addr).await?;
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: ravel\r\n")
        .await?;

    let fresh = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tc.request(Method::GET, "/livez", None),
    )
    .await??;
    assert_eq!(fresh.0, 200, "a new client is served next to 400 idle ones");

    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server closes a connection that never finishes its headers"
    );
    drop(idle);
    tc.finish();
    Ok(())
}

/// Every route of the contract, its status codes and JSON bodies, on one cluster of three.
#[tokio::test(flavor = "multi_thread")]
async fn http_contract_on_one_cluster_of_three() -> Result<()> {
    let mut tc = common::new_cluster("http_contract")?;
    common::start_clusters(&mut tc, 1, 3).await?;

    ravel_routes_and_versions(&tc).await?;
    every_json_type_round_trips_exactly(&tc).await?;
    v1_routes_and_cas(&tc).await?;
    bad_inputs_get_clear_errors(&tc).await?;
    cluster_health_and_metrics_routes(&tc).await?;

    // The admin still serves after all the bad input.
    let put = tc.put("after", &json!({"still": "serving"})).await?;
    assert_eq!(put.0, 200, "{}", put.1);
    let get = tc.get("after").await?;
    assert_eq!(get.1["val"], json!({"still": "serving"}));
    tc.finish();
    Ok(())
}

/// Ravel's `/put` `/get` `/delete`, with per-key versions that strictly increase.
async fn ravel_routes_and_versions(tc: &ravel_testkit::TestCluster) -> Result<()> {
    let first = tc.put("user:1", &json!("alice")).await?;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["msg"], "ok");
    let v1 = first.1["version"].as_u64().expect("version is a number");

    let got = tc.get("user:1").await?;
    assert_eq!(got.0, 200);
    assert_eq!(
        got.1,
        json!({"key": "user:1", "val": "alice", "version": v1})
    );

    // "value" is accepted as an alias of "val".
    let body = json!({"key": "user:1", "value": "bob"})
        .to_string()
        .into_bytes();
    let second = tc.request(Method::POST, "/put", Some(body)).await?;
    assert_eq!(second.0, 200, "{}", second.1);
    let v2 = second.1["version"].as_u64().expect("version");
    assert!(v2 > v1, "versions increase: {v1} then {v2}");
    assert_eq!(tc.get("user:1").await?.1["val"], "bob");

    let del_body = json!({"key": "user:1"}).to_string().into_bytes();
    let deleted = tc
        .request(Method::POST, "/delete", Some(del_body.clone()))
        .await?;
    assert_eq!(deleted, (200, json!({"msg": "ok", "deleted": true})));
    let again = tc.request(Method::POST, "/delete", Some(del_body)).await?;
    assert_eq!(again, (200, json!({"msg": "ok", "deleted": false})));
    assert_error(
        "get after delete",
        &tc.get("user:1").await?,
        404,
        "not_found",
    );

    // A key recreated after a delete still gets a larger version.
    let third = tc.put("user:1", &json!("carol")).await?;
    let v3 = third.1["version"].as_u64().expect("version");
    assert!(v3 > v2, "versions increase across delete: {v2} then {v3}");

    // Bodies are JSON whatever the Content-Type says.
    let (status, text) = raw(
        tc,
        Method::POST,
        "/put",
        r#"{"key":"typed","val":1}"#,
        Some("text/plain"),
    )
    .await?;
    assert_eq!(status, 200, "{text}");
    Ok(())
}

/// Values of every JSON type come back as the exact text that was stored.
async fn every_json_type_round_trips_exactly(tc: &ravel_testkit::TestCluster) -> Result<()> {
    let values = [
        r#""a string with \"quotes\" and ünïcödé""#,
        "42",
        "-7",
        "1.50",
        "1e400",
        "true",
        "false",
        "null",
        r#"{"b":1,"a":[1,2,{"c":null}]}"#,
        "[]",
        r#"[1,"two",3.0,false,null,{}]"#,
    ];
    for (i, text) in values.iter().enumerate() {
        let key = format!("json:{i}");
        let body = format!(r#"{{"key":"{key}","val":{text}}}"#);
        let (status, put) = raw(tc, Method::POST, "/put", &body, None).await?;
        assert_eq!(status, 200, "put {text}: {put}");
        let (status, got) = raw(
            tc,
            Method::POST,
            "/get",
            &format!(r#"{{"key":"{key}"}}"#),
            None,
        )
        .await?;
        assert_eq!(status, 200, "get {text}: {got}");
        assert!(
            got.contains(&format!(r#""val":{text}"#)),
            "/get returns the exact text {text}: {got}"
        );
        let (status, got) = raw(tc, Method::GET, &format!("/v1/kv/{key}"), "", None).await?;
        assert_eq!(status, 200);
        assert!(
            got.contains(&format!(r#""value":{text}"#)),
            "/v1/kv returns the exact text {text}: {got}"
        );
    }
    Ok(())
}

/// The `/v1/kv/{key}` routes: PUT/GET/DELETE, CAS success and 412, 404, stale reads.
async fn v1_routes_and_cas(tc: &ravel_testkit::TestCluster) -> Result<()> {
    let put = tc
        .request(
            Method::PUT,
            "/v1/kv/dir/a%20b",
            Some(br#"{"n":1}"#.to_vec()),
        )
        .await?;
    assert_eq!(put.0, 200, "{}", put.1);
    let v1 = put.1["version"].as_u64().expect("version");

    let got = tc.request(Method::GET, "/v1/kv/dir/a%20b", None).await?;
    assert_eq!(
        got,
        (
            200,
            json!({"key": "dir/a b", "value": {"n": 1}, "version": v1})
        )
    );
    let stale = tc
        .request(Method::GET, "/v1/kv/dir/a%20b?consistency=stale", None)
        .await?;
    assert_eq!(stale.0, 200, "{}", stale.1);
    assert_eq!(stale.1["value"], json!({"n": 1}));
    let bad = tc
        .request(Method::GET, "/v1/kv/dir/a%20b?consistency=eventual", None)
        .await?;
    assert_error("bad consistency", &bad, 400, "invalid_consistency");

    // CAS: the right version wins, a wrong one is 412 and changes nothing.
    let ok = tc
        .request(
            Method::PUT,
            &format!("/v1/kv/dir/a%20b?cas={v1}"),
            Some(b"2".to_vec()),
        )
        .await?;
    assert_eq!(ok.0, 200, "{}", ok.1);
    let v2 = ok.1["version"].as_u64().expect("version");
    assert!(v2 > v1);
    let stale_cas = tc
        .request(
            Method::PUT,
            &format!("/v1/kv/dir/a%20b?cas={v1}"),
            Some(b"3".to_vec()),
        )
        .await?;
    assert_error("stale cas put", &stale_cas, 412, "cas_mismatch");
    assert_eq!(stale_cas.1["current_version"], v2);
    let got = tc.request(Method::GET, "/v1/kv/dir/a%20b", None).await?;
    assert_eq!(got.1["value"], 2, "a refused CAS changes nothing");

    // cas=0 means "only if absent".
    let exists = tc
        .request(Method::PUT, "/v1/kv/dir/a%20b?cas=0", Some(b"4".to_vec()))
        .await?;
    assert_error("cas=0 on existing key", &exists, 412, "cas_mismatch");
    let created = tc
        .request(
            Method::PUT,
            "/v1/kv/fresh?cas=0",
            Some(br#""new""#.to_vec()),
        )
        .await?;
    assert_eq!(created.0, 200, "{}", created.1);
    let bad_cas = tc
        .request(Method::PUT, "/v1/kv/fresh?cas=abc", Some(b"1".to_vec()))
        .await?;
    assert_error("non-numeric cas", &bad_cas, 400, "invalid_cas");

    // Delete with a wrong CAS is 412, with the right one succeeds.
    let wrong = tc
        .request(Method::DELETE, &format!("/v1/kv/dir/a%20b?cas={v1}"), None)
        .await?;
    assert_error("stale cas delete", &wrong, 412, "cas_mismatch");
    let right = tc
        .request(Method::DELETE, &format!("/v1/kv/dir/a%20b?cas={v2}"), None)
        .await?;
    assert_eq!(right, (200, json!({"deleted": true})));
    let gone = tc.request(Method::GET, "/v1/kv/dir/a%20b", None).await?;
    assert_error("get of a deleted key", &gone, 404, "not_found");
    let missing = tc.request(Method::DELETE, "/v1/kv/never-was", None).await?;
    assert_eq!(missing, (200, json!({"deleted": false})));
    Ok(())
}

/// Malformed, missing, mistyped and oversized input each get their documented status and a JSON
/// error body.
async fn bad_inputs_get_clear_errors(tc: &ravel_testkit::TestCluster) -> Result<()> {
    let post = |path: &'static str, body: Vec<u8>| tc.request(Method::POST, path, Some(body));

    assert_error(
        "malformed",
        &post("/put", b"{not json".to_vec()).await?,
        400,
        "malformed_json",
    );
    assert_error(
        "empty body",
        &post("/put", Vec::new()).await?,
        400,
        "malformed_json",
    );
    assert_error(
        "missing key",
        &post("/put", br#"{"val":1}"#.to_vec()).await?,
        400,
        "missing_key",
    );
    assert_error(
        "missing key on get",
        &post("/get", b"{}".to_vec()).await?,
        400,
        "missing_key",
    );
    assert_error(
        "empty key",
        &post("/put", br#"{"key":"","val":1}"#.to_vec()).await?,
        400,
        "empty_key",
    );
    assert_error(
        "numeric key",
        &post("/put", br#"{"key":5,"val":1}"#.to_vec()).await?,
        400,
        "invalid_key",
    );
    assert_error(
        "object key",
        &post("/get", br#"{"key":{"a":1}}"#.to_vec()).await?,
        400,
        "invalid_key",
    );
    assert_error(
        "missing val",
        &post("/put", br#"{"key":"k"}"#.to_vec()).await?,
        400,
        "missing_value",
    );
    let null_val = post("/put", br#"{"key":"nullable","val":null}"#.to_vec()).await?;
    assert_eq!(null_val.0, 200, "a null value is a value: {}", null_val.1);

    let long_key = "k".repeat(ravel_core::limits::MAX_KEY_BYTES + 1);
    let too_long = tc.put(&long_key, &json!(1)).await?;
    assert_error("oversized key", &too_long, 413, "key_too_large");
    let max_key = "k".repeat(ravel_core::limits::MAX_KEY_BYTES);
    assert_eq!(
        tc.put(&max_key, &json!(1)).await?.0,
        200,
        "a key at the limit is fine"
    );

    let big = "x".repeat(ravel_core::limits::MAX_VALUE_BYTES);
    let too_big = tc.put("big", &json!(big)).await?;
    assert_error("oversized value", &too_big, 413, "value_too_large");
    let v1_big = tc
        .request(
            Method::PUT,
            "/v1/kv/big",
            Some(format!("\"{big}\"").into_bytes()),
        )
        .await?;
    assert_error("oversized v1 value", &v1_big, 413, "value_too_large");
    let huge = vec![b' '; ravel_core::limits::MAX_BODY_BYTES + 1];
    assert_error(
        "oversized body",
        &post("/put", huge).await?,
        413,
        "body_too_large",
    );

    // Nesting: at the limit a value is stored and read back verbatim; a 100,000-deep array
    // (a stack-overflow attempt on a recursive parser) is refused, and the admin goes on serving.
    let limit = ravel_core::limits::MAX_JSON_DEPTH;
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let deep = nested(100_000);
    let put_deep = format!(r#"{{"key":"deep","val":{deep}}}"#).into_bytes();
    assert_error(
        "100,000-deep value",
        &post("/put", put_deep).await?,
        400,
        "too_deeply_nested",
    );
    let v1_deep = tc
        .request(Method::PUT, "/v1/kv/deep", Some(deep.into_bytes()))
        .await?;
    assert_error("100,000-deep v1 value", &v1_deep, 400, "too_deeply_nested");
    let v1_over = tc
        .request(
            Method::PUT,
            "/v1/kv/deep",
            Some(nested(limit + 1).into_bytes()),
        )
        .await?;
    assert_error("one level too deep", &v1_over, 400, "too_deeply_nested");
    let at_limit = nested(limit);
    let stored = tc
        .request(
            Method::PUT,
            "/v1/kv/deep",
            Some(at_limit.clone().into_bytes()),
        )
        .await?;
    assert_eq!(stored.0, 200, "a value at the depth limit: {}", stored.1);
    let (status, text) = raw(tc, Method::GET, "/v1/kv/deep", "", None).await?;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!(r#""value":{at_limit},"#)),
        "read back verbatim: {text}"
    );

    let wrong_method = tc.request(Method::GET, "/put", None).await?;
    assert_error("GET /put", &wrong_method, 405, "method_not_allowed");
    let wrong_method = tc
        .request(Method::POST, "/v1/kv/k", Some(b"1".to_vec()))
        .await?;
    assert_error("POST /v1/kv", &wrong_method, 405, "method_not_allowed");
    let v1_malformed = tc
        .request(Method::PUT, "/v1/kv/k", Some(b"{oops".to_vec()))
        .await?;
    assert_error("PUT malformed value", &v1_malformed, 400, "malformed_json");
    let absent = tc.get("no-such-key").await?;
    assert_error("absent key", &absent, 404, "not_found");
    Ok(())
}

/// `/v1/cluster`, `/livez`, `/readyz` and `/metrics` describe a healthy cluster of three.
async fn cluster_health_and_metrics_routes(tc: &ravel_testkit::TestCluster) -> Result<()> {
    let view = tc.cluster_view().await?;
    assert_eq!(view["partitions"], 1024, "{view}");
    assert!(view["epoch"].as_u64().is_some_and(|e| e >= 1), "{view}");
    let clusters = view["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 1, "{view}");
    assert_eq!(clusters[0]["partitions"], 1024, "{view}");
    let replicas = clusters[0]["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 3, "{view}");
    assert!(replicas.iter().all(|r| r["healthy"] == true), "{view}");
    assert_eq!(
        replicas.iter().filter(|r| r["role"] == "leader").count(),
        1,
        "{view}"
    );
    assert!(view["migrations"].is_array(), "{view}");

    assert_eq!(tc.request(Method::GET, "/livez", None).await?.0, 200);
    assert_eq!(tc.request(Method::GET, "/readyz", None).await?.0, 200);
    let (status, metrics) = raw(tc, Method::GET, "/metrics", "", None).await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ravel_admin_requests_total"),
        "metrics name the request counter: {metrics}"
    );
    Ok(())
}
