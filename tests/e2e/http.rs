//! `sluice serve`: a real server process on a free loopback port, real runs of
//! `examples/etl_local`, the JSON API, its errors, server-sent events, and
//! the token, session and CSRF rules.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

use crate::support::{Spawned, TestHome, text, wait_for};

/// How long a request (an SSE stream included) may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(300);
/// How long a run of etl_local at 100,000 rows may take here (it takes seconds).
const RUN_WAIT: Duration = Duration::from_secs(300);

/// A `sluice serve` process and a client for it.
pub struct Served {
    _process: Spawned,
    pub base: String,
    pub client: Client,
    /// Where the server's stderr goes.
    pub log: std::path::PathBuf,
}

impl Served {
    /// Starts `sluice serve --bind 127.0.0.1:0 <extra>` on `home` and waits
    /// (at most a minute) for the address it prints.
    pub fn start(home: &TestHome, extra: &[&str]) -> Self {
        let log = home
            .dir
            .path()
            .join(format!("serve-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("server log file");
        let mut process = Spawned::new(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["serve", "--bind", "127.0.0.1:0"])
                .args(extra)
                .env("SLUICE_HOME", home.home_path())
                .current_dir(crate::support::repo_root())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr),
        );
        let stdout = process.take_stdout();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sluice serve printed its address within a minute");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let client = Client::builder()
            .timeout(REQUEST_DEADLINE)
            .build()
            .expect("client");
        Self {
            _process: process,
            base,
            client,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// GET `path`, expecting 200 and JSON.
    pub fn json(&self, path: &str) -> Value {
        let (status, body) = send(self.get(path));
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// Sends `request`; its status and JSON body (`Value::Null` if not JSON).
pub fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().expect("request");
    let status = response.status();
    let text = response.text().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The events of an SSE response, as (event name, JSON data), until `end`
/// or until `stop` says so; read on a thread, sent to the returned channel.
pub fn sse(response: Response) -> mpsc::Receiver<(String, Value)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        let mut data = String::new();
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            } else if line.is_empty() && !name.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let end = name == "end";
                if tx.send((std::mem::take(&mut name), value)).is_err() || end {
                    return;
                }
                data.clear();
            }
        }
    });
    rx
}

/// Receives events until one satisfies `done`; all received, in order.
fn events_until(
    rx: &mpsc::Receiver<(String, Value)>,
    what: &str,
    mut done: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    loop {
        let (name, data) = rx
            .recv_timeout(RUN_WAIT)
            .unwrap_or_else(|e| panic!("no {what} within {RUN_WAIT:?} ({e}); saw {seen:?}"));
        let stop = done(&name, &data);
        seen.push((name, data));
        if stop {
            return seen;
        }
    }
}

fn deploy_etl(home: &TestHome) {
    let out = home.cli(&["deploy", "examples/etl_local"]);
    assert!(out.status.success(), "{:?}", text(&out));
}

fn wait_for_state(server: &Served, run_id: &str, state: &str) -> Value {
    wait_for(&format!("run {run_id} to be {state}"), RUN_WAIT, || {
        let run = server.json(&format!("/api/runs/{run_id}"));
        let now = run["run"]["state"].as_str().map(str::to_owned);
        assert!(
            now.as_deref()
                != Some(if state == "success" {
                    "failed"
                } else {
                    "success"
                }),
            "run ended otherwise: {run}"
        );
        (now.as_deref() == Some(state)).then_some(run)
    })
}

#[test]
fn the_api_runs_etl_local_live_and_serves_its_runs_tasks_logs_and_versions() {
    let home = TestHome::new();
    deploy_etl(&home);
    let server = Served::start(&home, &[]);

    let dags = server.json("/api/dags");
    assert_eq!(dags[0]["dag_id"], "etl_local", "{dags}");
    assert_eq!(dags[0]["tasks"], json!(["extract", "transform", "load"]));
    let openapi = server.json("/api/openapi.json");
    for path in [
        "/api/runs",
        "/api/dags/{dag_id}/runs",
        "/api/runs/{run_id}/tasks/{task_id}/logs/live",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
    // The connections responses are typed schemas, not prose.
    for (path, method, status, schema) in [
        ("/api/connections", "get", "200", "ConnectionSummary"),
        ("/api/connections", "post", "201", "Added"),
        (
            "/api/connections/{connection_id}",
            "get",
            "200",
            "ConnectionDetails",
        ),
        (
            "/api/connections/{connection_id}/test",
            "post",
            "200",
            "CheckResult",
        ),
    ] {
        let body = &openapi["paths"][path][method]["responses"][status]["content"]["application/json"]
            ["schema"];
        assert!(
            body.to_string()
                .contains(&format!("\"#/components/schemas/{schema}\"")),
            "{method} {path} {status} names {schema}: {body}"
        );
        let defined = &openapi["components"]["schemas"][schema];
        assert!(
            defined["properties"].is_object() || defined["oneOf"].is_array(),
            "{schema} is a typed schema: {defined}"
        );
    }

    // Follow the DAG's events before triggering: every event must arrive live.
    let events = sse(server
        .get("/api/events?dag_id=etl_local")
        .send()
        .expect("events"));
    let (status, run) = send(server.post(
        "/api/dags/etl_local/runs",
        &json!({ "params": { "rows": 100_000 }, "keep_staging": true }),
    ));
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(run["params"], r#"{"rows":100000}"#);
    let tail = sse(server
        .get(&format!("/api/runs/{run_id}/tasks/extract/logs/live"))
        .send()
        .expect("log tail"));
    let seen = events_until(&events, "run_finished", |name, data| {
        name == "notice" && data["event"]["kind"] == "run_finished"
    });
    let finished = &seen.last().expect("an event").1;
    assert_eq!(finished["run_id"], run_id.as_str());
    assert_eq!(finished["event"]["state"], "success", "{seen:?}");
    for task in ["extract", "transform", "load"] {
        assert!(
            seen.iter().any(|(_, d)| d["event"]["kind"] == "task_state"
                && d["event"]["task_id"] == task
                && d["event"]["state"] == "success"),
            "{task} went green live: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|(_, d)| d["event"]["kind"] == "log"),
        "log lines were broadcast: {seen:?}"
    );
    let lines = events_until(&tail, "the end of the log tail", |name, _| name == "end");
    assert!(
        lines.iter().any(
            |(n, d)| n == "line" && d["message"].as_str().is_some_and(|m| m.contains("100000"))
        ),
        "the tail carried extract's lines: {lines:?}"
    );

    let detail = wait_for_state(&server, &run_id, "success");
    assert_eq!(detail["tasks"].as_array().map(Vec::len), Some(3));

    // Runs: filters and pages.
    let page = server.json("/api/runs?dag_id=etl_local&state=success&limit=1");
    assert_eq!(page["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(page["next_offset"], 1);
    let page = server.json("/api/runs?dag_id=etl_local&state=success&limit=1&offset=1");
    assert_eq!(page["runs"], json!([]));
    assert_eq!(page["next_offset"], Value::Null);
    assert_eq!(server.json("/api/runs?state=failed")["runs"], json!([]));

    // A task instance, its tries, its log a page at a time.
    let versions = server.json("/api/dags/etl_local/versions");
    let digest = versions[0]["digest"].as_str().expect("digest").to_owned();
    let version = server.json(&format!("/api/dags/etl_local/versions/{}", &digest[..12]));
    let load = server.json(&format!("/api/runs/{run_id}/tasks/load"));
    assert_eq!(load["task"]["state"], "success");
    assert_eq!(load["tries"][0]["version"], digest.as_str());
    assert_eq!(
        load["tries"][0]["component"],
        version["tasks"][2]["component"]
    );
    let all = server.json(&format!("/api/runs/{run_id}/tasks/extract/logs"));
    let all = all["lines"].as_array().expect("lines").clone();
    assert!(!all.is_empty(), "extract logged");
    let first = server.json(&format!("/api/runs/{run_id}/tasks/extract/logs?limit=1"));
    assert_eq!(first["lines"], json!(all[..1]));
    let after = first["next_after"].as_i64().expect("next_after");
    assert_eq!(after, all[0]["id"].as_i64().expect("id"));
    let rest = server.json(&format!(
        "/api/runs/{run_id}/tasks/extract/logs?after={after}"
    ));
    assert_eq!(rest["lines"], json!(all[1..]), "the next page is the rest");
    let diff = server.json(&format!(
        "/api/dags/etl_local/versions/{digest}/diff/{digest}"
    ));
    assert_eq!(diff["components"], json!([]));
    assert_eq!(diff["spec_differs"], false);

    // Clear: the dry run says what would re-run and changes nothing.
    let (status, cleared) = send(server.post(
        &format!("/api/runs/{run_id}/tasks/transform/clear"),
        &json!({ "downstream": true, "dry_run": true }),
    ));
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["tasks"], json!(["transform", "load"]));
    assert_eq!(
        server.json(&format!("/api/runs/{run_id}/tasks/load"))["task"]["state"],
        "success"
    );
    // The real clear re-runs them in the server, on the kept staging directory.
    let (status, cleared) =
        send(server.post(&format!("/api/runs/{run_id}/tasks/load/clear"), &json!({})));
    assert_eq!(status, StatusCode::OK, "{cleared}");
    let load = wait_for("load to succeed again", RUN_WAIT, || {
        let load = server.json(&format!("/api/runs/{run_id}/tasks/load"));
        (load["tries"].as_array().map(Vec::len) == Some(2) && load["task"]["state"] == "success")
            .then_some(load)
    });
    assert_eq!(load["tries"][1]["try_number"], 2);

    assert!(
        server
            .json("/api/staging")
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    assert!(server.json("/api/trust")["sandbox"].is_string());
    let grid = server.json("/api/dags/etl_local/grid");
    assert_eq!(grid["runs"][0]["states"]["load"], "success", "{grid}");
}

/// A log tail started while the run loop may still hold the task's first
/// lines (they have been broadcast, the try is still running) gets every
/// line of the log exactly once, in order, with increasing ids; so does one
/// started after the run ended. Before the run loop stored lines ahead of
/// broadcasting them, the first tail lost the lines held in its batch.
#[test]
fn a_log_tail_started_mid_try_gets_every_line_exactly_once() {
    const N: usize = 100;
    let home = TestHome::new();
    let dag = home.manifest(
        "chatty",
        &format!(
            "[tasks.talk]\nplugin = \"testkit\"\nparams = {{ mode = \"log-and-wait\", n = {N}, ms = 300000 }}\n"
        ),
    );
    home.deploy(&dag);
    let server = Served::start(&home, &[]);
    let events = sse(server
        .get("/api/events?dag_id=chatty")
        .send()
        .expect("events"));
    let (status, run) = send(server.post("/api/dags/chatty/runs", &json!({})));
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    // The first N lines have been broadcast; the try now waits for go.txt.
    let mut broadcast = 0;
    events_until(&events, "the first lines broadcast", |name, data| {
        if name == "notice" && data["event"]["kind"] == "log" {
            broadcast += 1;
        }
        broadcast == N
    });
    let path = format!("/api/runs/{run_id}/tasks/talk/logs/live");
    let tail = sse(server.get(&path).send().expect("log tail"));
    let staging = server.json(&format!("/api/runs/{run_id}"))["run"]["staging_dir"]
        .as_str()
        .expect("staging dir")
        .to_owned();
    std::fs::write(format!("{staging}/go.txt"), "").expect("tell the task to go on");

    let expected: Vec<String> = (0..2 * N).map(|i| format!("line {i}")).collect();
    let check = |what: &str, got: Vec<(String, Value)>| {
        let lines: Vec<&Value> = got
            .iter()
            .filter(|(n, _)| n == "line")
            .map(|(_, d)| d)
            .collect();
        let messages: Vec<&str> = lines
            .iter()
            .filter_map(|d| d["message"].as_str())
            .filter(|m| m.starts_with("line "))
            .collect();
        assert_eq!(messages, expected, "{what}: {got:?}");
        let ids: Vec<i64> = lines.iter().filter_map(|d| d["id"].as_i64()).collect();
        assert_eq!(ids.len(), lines.len(), "{what}: every line has its id");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{what}: ids increase: {ids:?}"
        );
    };
    check(
        "the tail started mid-try",
        events_until(&tail, "the end of the tail", |name, _| name == "end"),
    );
    wait_for_state(&server, &run_id, "success");
    let after = sse(server.get(&path).send().expect("log tail after the run"));
    check(
        "the tail started after the run",
        events_until(&after, "the end of the tail", |name, _| name == "end"),
    );
}

#[test]
fn bad_requests_are_4xx_json_naming_what_was_wrong() {
    let home = TestHome::new();
    deploy_etl(&home);
    let server = Served::start(&home, &[]);
    let cases: Vec<(RequestBuilder, StatusCode, &str)> = vec![
        (
            server.get("/api/runs/not-a-run"),
            StatusCode::BAD_REQUEST,
            "run_id",
        ),
        (
            server.get("/api/runs/manual__20260101T000000_abcdef"),
            StatusCode::NOT_FOUND,
            "manual__20260101T000000_abcdef",
        ),
        (
            server.get("/api/runs/manual__20260101T000000_abcdef/tasks/..%2F..%2Fetc/logs"),
            StatusCode::BAD_REQUEST,
            "task_id",
        ),
        (
            server.get("/api/dags/nope/grid"),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            server.get("/api/dags/etl_local/versions/xyz"),
            StatusCode::BAD_REQUEST,
            "version",
        ),
        (
            server.get("/api/dags/etl_local/versions/0123456789abcdef"),
            StatusCode::NOT_FOUND,
            "0123456789abcdef",
        ),
        (
            server.get("/api/runs?state=bogus"),
            StatusCode::BAD_REQUEST,
            "state",
        ),
        (
            server.get("/api/runs?limit=0"),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            server.get("/api/runs?limit=abc"),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (server.get("/api/nope"), StatusCode::NOT_FOUND, "/api/nope"),
        (
            server
                .client
                .post(server.url("/api/dags/etl_local/runs"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
            "request body",
        ),
        (
            server.post("/api/dags/etl_local/runs", &json!({ "params": 5 })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "params",
        ),
        (
            server.post("/api/dags/etl_local/runs", &json!({ "parms": {} })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "parms",
        ),
        (
            server.post("/api/dags/nope/runs", &json!({})),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            server.post(
                "/api/dags/etl_local/runs",
                &json!({ "params": { "pad": "x".repeat(100_000) } }),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            server.get("/api/dags").header("host", "evil.example"),
            StatusCode::FORBIDDEN,
            "Host",
        ),
        (
            server
                .post("/api/dags/etl_local/runs", &json!({}))
                .header("origin", "http://evil.example"),
            StatusCode::FORBIDDEN,
            "Origin",
        ),
    ];
    for (request, status, names) in cases {
        let request = request.build().expect("request");
        let what = format!("{} {}", request.method(), request.url());
        let response = server.client.execute(request).expect("response");
        let got = response.status();
        let body: Value =
            serde_json::from_str(&response.text().expect("body")).unwrap_or(Value::Null);
        assert_eq!(got, status, "{what}: {body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: JSON error: {body}"));
        assert!(
            message.contains(names),
            "{what}: `{message}` names `{names}`"
        );
    }
    assert_eq!(
        server.json("/api/runs")["runs"],
        json!([]),
        "nothing was triggered"
    );
}

#[test]
fn with_tokens_every_request_needs_one_roles_limit_and_sessions_need_csrf() {
    let home = TestHome::new();
    deploy_etl(&home);
    // No token yet: refused, saying how to make one.
    let out = home.cli(&["serve", "--bind", "127.0.0.1:0", "--require-tokens"]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("sluice tokens create"),
        "{:?}",
        text(&out)
    );
    let token = |role: &str| {
        let out = home.cli(&["tokens", "create", "--role", role, "--name", role]);
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0.trim().to_owned()
    };
    let (viewer, operator) = (token("viewer"), token("operator"));
    let listed = text(&home.cli(&["tokens", "list"])).0;
    assert!(
        listed.contains("viewer") && !listed.contains(&viewer[16..]),
        "{listed}"
    );
    let server = Served::start(&home, &["--require-tokens"]);
    let bearer = |r: RequestBuilder, t: &str| r.header("authorization", format!("Bearer {t}"));
    let trigger = || server.post("/api/dags/nope/runs", &json!({}));

    assert_eq!(send(server.get("/api/dags")).0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(bearer(server.get("/api/dags"), "sluice_0_forged")).0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(bearer(server.get("/api/dags"), &viewer)).0,
        StatusCode::OK
    );
    assert_eq!(send(trigger()).0, StatusCode::UNAUTHORIZED);
    let (status, body) = send(bearer(trigger(), &viewer));
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("operator")),
        "{body}"
    );
    // Past the checks: the DAG does not exist.
    assert_eq!(send(bearer(trigger(), &operator)).0, StatusCode::NOT_FOUND);
    // The UI page itself loads without a token (it shows the login form).
    assert_eq!(
        server.get("/").send().expect("page").status(),
        StatusCode::OK
    );

    // Sessions.
    let (status, _) = send(server.post("/api/session", &json!({ "token": "sluice_x_y" })));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let login = server
        .post("/api/session", &json!({ "token": operator }))
        .send()
        .expect("login");
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session: Value = serde_json::from_str(&login.text().expect("body")).expect("json");
    let csrf = session["csrf_token"]
        .as_str()
        .expect("csrf token")
        .to_owned();
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = |r: RequestBuilder, c: &str| r.header("cookie", c.to_owned());
    assert_eq!(
        send(with_cookie(server.get("/api/dags"), &pair)).0,
        StatusCode::OK
    );
    assert_eq!(
        send(with_cookie(
            server.get("/api/dags"),
            "sluice_session=forged"
        ))
        .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = send(with_cookie(trigger(), &pair));
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token: {body}");
    let (status, _) = send(with_cookie(trigger(), &pair).header("x-csrf-token", "wrong"));
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(with_cookie(trigger(), &pair).header("x-csrf-token", csrf.as_str()));
    assert_eq!(status, StatusCode::NOT_FOUND, "past the checks");
    // No CORS: a preflight gets no Access-Control headers.
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/api/dags"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .expect("preflight");
    assert!(
        preflight
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control")),
        "{:?}",
        preflight.headers()
    );
    // Logging out ends the session.
    let out = with_cookie(server.client.delete(server.url("/api/session")), &pair)
        .send()
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        send(with_cookie(server.get("/api/dags"), &pair)).0,
        StatusCode::UNAUTHORIZED
    );
}

/// Sessions live in the metadatabase (by a hash of the cookie): one
/// survives a restart of the server with its CSRF token; a forged cookie,
/// an expired session and one whose token was revoked are refused.
#[test]
fn a_session_survives_a_restart_and_forged_expired_or_revoked_ones_are_refused() {
    let home = TestHome::new();
    let out = home.cli(&["tokens", "create", "--role", "operator", "--name", "ui"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let operator = text(&out).0.trim().to_owned();
    let login = |server: &Served| {
        let response = server
            .post("/api/session", &json!({ "token": operator }))
            .send()
            .expect("login");
        assert_eq!(response.status(), StatusCode::OK);
        let pair = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let body: Value = serde_json::from_str(&response.text().expect("body")).expect("json");
        (pair, body["csrf_token"].as_str().expect("csrf").to_owned())
    };
    let with = |r: RequestBuilder, c: &str| r.header("cookie", c.to_owned());
    let trigger = |server: &Served| server.post("/api/dags/nope/runs", &json!({}));

    let first = Served::start(&home, &["--require-tokens"]);
    let (pair, csrf) = login(&first);
    assert_eq!(send(with(first.get("/api/dags"), &pair)).0, StatusCode::OK);
    drop(first);

    let second = Served::start(&home, &["--require-tokens"]);
    assert_eq!(
        send(with(second.get("/api/dags"), &pair)).0,
        StatusCode::OK,
        "the session outlived the server"
    );
    let (status, who) = send(with(second.get("/api/session"), &pair));
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["csrf_token"], csrf.as_str());
    assert_eq!(who["role"], "operator");
    let (status, body) = send(with(trigger(&second), &pair).header("x-csrf-token", csrf.as_str()));
    assert_eq!(status, StatusCode::NOT_FOUND, "past the checks: {body}");
    let (status, _) = send(with(trigger(&second), &pair).header("x-csrf-token", "0".repeat(64)));
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Only a hash of the cookie is stored.
    let cookie = pair.split_once('=').expect("name=value").1.to_owned();
    let db = rusqlite::Connection::open(home.sluice.home.database()).expect("metadatabase");
    let hashes: Vec<String> = db
        .prepare("SELECT hash FROM api_sessions")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
        .expect("sessions");
    assert_eq!(hashes.len(), 1);
    assert_ne!(hashes[0], cookie);

    // A forged cookie of the right shape.
    let forged = format!("sluice_session={}", "ab".repeat(32));
    assert_eq!(
        send(with(second.get("/api/dags"), &forged)).0,
        StatusCode::UNAUTHORIZED
    );
    // An expired session.
    db.execute(
        "UPDATE api_sessions SET expires_at = '2000-01-01T00:00:00.000000Z'",
        [],
    )
    .expect("expire the session");
    let (status, body) = send(with(second.get("/api/dags"), &pair));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        send(with(second.get("/api/session"), &pair)).0,
        StatusCode::UNAUTHORIZED
    );
    // A session whose token is revoked.
    let (pair, _) = login(&second);
    assert_eq!(send(with(second.get("/api/dags"), &pair)).0, StatusCode::OK);
    let token_id = operator
        .split('_')
        .nth(1)
        .expect("sluice_<id>_<secret>")
        .to_owned();
    let out = home.cli(&["tokens", "revoke", &token_id]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        send(with(second.get("/api/dags"), &pair)).0,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn connections_are_for_admins_and_a_secret_never_comes_back() {
    let home = TestHome::new();
    let secret = "pw-Zq81-never-shown";
    let token = |role: &str| {
        let out = home.cli(&["tokens", "create", "--role", role]);
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0.trim().to_owned()
    };
    let (admin, operator) = (token("admin"), token("operator"));
    let server = Served::start(&home, &["--require-tokens"]);
    let auth = |r: RequestBuilder, t: &str| r.header("authorization", format!("Bearer {t}"));
    let mut seen = String::new();
    let mut call = |r: RequestBuilder| {
        let response = r.send().expect("response");
        let status = response.status();
        seen.push_str(&format!("{:?}", response.headers()));
        let body = response.text().expect("body");
        seen.push_str(&body);
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };

    assert_eq!(
        call(auth(server.get("/api/connections"), &operator)).0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = call(auth(
        server.post(
            "/api/connections",
            &json!({ "id": "x", "uri": "postgresql://u@h/d" }),
        ),
        &operator,
    ));
    assert_eq!(status, StatusCode::FORBIDDEN);

    // By URI and by fields; port 1 refuses, so the first check reports it unreachable.
    let uri = format!("postgresql://etl:{secret}@127.0.0.1:1/warehouse");
    let (status, added) = call(auth(
        server.post("/api/connections", &json!({ "id": "db", "uri": uri })),
        &admin,
    ));
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["connection"]["kind"], "postgres");
    let fields = json!({ "id": "db2", "type": "postgres",
        "fields": { "host": "127.0.0.1", "port": "1", "user": "etl", "database": "w" }, "secret": secret });
    let (status, added) = call(auth(server.post("/api/connections", &fields), &admin));
    assert_eq!(status, StatusCode::CREATED, "{added}");
    // Refusals that hold the secret in what was sent.
    let (status, body) = call(auth(server.post("/api/connections", &fields), &admin));
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({ "id": "db3", "uri": 5, "secret": secret }),
        json!({ "id": "db3", "uri": format!("postgresql://etl:{secret}@[bad/w") }),
        json!({ "id": "db3", "uri": format!("mysql://etl:{secret}@h/w") }),
        json!({ "id": "../db3", "type": "postgres", "secret": secret }),
        json!({ "id": "db3", "type": "postgres", "fields": { "port": "x" }, "secret": secret }),
    ] {
        let (status, body) = call(auth(server.post("/api/connections", &bad), &admin));
        assert!(status.is_client_error(), "{status} {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let listed = call(auth(server.get("/api/connections"), &admin)).1;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let (status, shown) = call(auth(server.get("/api/connections/db"), &admin));
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["has_secret"], true);
    let (status, check) = call(auth(
        server.client.post(server.url("/api/connections/db/test")),
        &admin,
    ));
    assert_eq!(status, StatusCode::OK, "{check}");
    assert_eq!(check["status"], "unreachable", "{check}");
    let (status, _) = call(auth(
        server.client.delete(server.url("/api/connections/db2")),
        &admin,
    ));
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(auth(server.get("/api/connections/db2"), &admin)).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(auth(server.get("/api/connections/..%2Fx"), &admin)).0,
        StatusCode::BAD_REQUEST
    );

    assert!(seen.contains("db"), "responses were collected");
    assert!(
        !seen.contains(secret),
        "a response carried the secret: {seen}"
    );
    let log = std::fs::read_to_string(&server.log).expect("server log");
    assert!(!log.contains(secret), "the server logged the secret: {log}");
}
