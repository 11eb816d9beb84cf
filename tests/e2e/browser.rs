//! The web UI in a real browser: Debian's Chromium driven by its
//! chromedriver over WebDriver (fantoccini), both binaries given by path so
//! nothing tries to download a browser. Opens the DAGs page, triggers
//! `etl_local` with `rows=100000`, watches the grid turn green without a
//! reload, opens the run and the `load` task's log, adds a Postgres
//! connection through the form and checks that its password is not in the
//! page. Saves a screenshot of each page in `$SLUICE_UI_SCREENSHOTS` if set
//! (`SLUICE_UI_SCREENSHOTS=docs/ui` refreshes the README's), else under the
//! target directory, so a test run never changes tracked files.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::http::Served;
use crate::support::{Spawned, TestHome, repo_root, text, wait_for};

/// How long the page may take to show what a step waits for.
const UI_WAIT: Duration = Duration::from_secs(300);

/// The browser and its driver: `$SLUICE_CHROMIUM`/`$SLUICE_CHROMEDRIVER`,
/// else Debian's paths.
fn browser() -> (PathBuf, PathBuf) {
    let path = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let chromium = path("SLUICE_CHROMIUM", "/usr/bin/chromium");
    let driver = path("SLUICE_CHROMEDRIVER", "/usr/bin/chromedriver");
    for p in [&chromium, &driver] {
        assert!(
            p.is_file(),
            "{} is missing: install Debian's chromium and chromium-driver (.ci/run does)",
            p.display()
        );
    }
    (chromium, driver)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let dir = std::env::var_os("SLUICE_UI_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui"),
        |dir| repo_root().join(dir),
    );
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn wait_css(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(UI_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("the page never showed `{css}`: {e}"))
}

/// Clicks what `locator` finds, finding it again if the page replaced it
/// between the find and the click: the live pages (grid, run) redraw their
/// markup on every server-sent event, so an element found a moment ago can be
/// gone, and the click then fails with a stale element reference.
async fn click(client: &Client, locator: Locator<'_>, what: &str) {
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let element = client
            .wait()
            .at_most(UI_WAIT)
            .for_element(locator)
            .await
            .unwrap_or_else(|e| panic!("the page never showed {what}: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
            Err(e) => panic!("clicking {what}: {e}"),
        }
    }
}

#[test]
fn the_ui_triggers_etl_local_shows_it_go_green_live_and_opens_a_task_log() {
    let (chromium, driver) = browser();
    let home = TestHome::new();
    let out = home.cli(&["deploy", "examples/etl_local"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let server = Served::start(&home, &[]);
    let port = free_port();
    let _driver = Spawned::new(
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    wait_for("chromedriver to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let profile = tempfile::tempdir().expect("profile dir");
    let base = server.base.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .expect("a WebDriver session");

        // The DAGs page: trigger etl_local with rows=100000.
        client.goto(&format!("{base}/#/")).await.expect("open the UI");
        wait_css(&client, r#"button[data-dag="etl_local"]"#).await;
        screenshot(&client, "dags").await;
        client
            .find(Locator::Css("details summary"))
            .await
            .expect("the trigger form")
            .click()
            .await
            .expect("open the form");
        let params = client
            .find(Locator::Css("textarea.params"))
            .await
            .expect("params");
        params.clear().await.expect("clear params");
        params
            .send_keys(r#"{"rows": 100000}"#)
            .await
            .expect("type params");
        client
            .find(Locator::Css(r#"button[data-dag="etl_local"]"#))
            .await
            .expect("trigger button")
            .click()
            .await
            .expect("trigger");

        // The grid turns green without a reload (server-sent events).
        wait_css(&client, r#"a.cell[data-task="load"][data-state="success"]"#).await;
        screenshot(&client, "grid").await;
        let url = client.current_url().await.expect("url");
        assert!(url.as_str().ends_with("#/dag/etl_local"), "{url}");

        // The run: graph, Gantt chart, staging.
        click(
            &client,
            Locator::Css(r#"a.cell[data-state="success"][data-run]"#),
            "the run's square",
        )
        .await;
        wait_css(&client, r#"#run-state[data-state="success"]"#).await;
        wait_css(&client, r#"svg g.node[data-task="load"][data-state="success"]"#).await;
        screenshot(&client, "run").await;

        // The load task and its log.
        click(&client, Locator::LinkText("load"), "the load task's link").await;
        let log = wait_css(&client, "#log span").await;
        let text = log.text().await.expect("log text");
        assert!(text.contains("loaded"), "{text}");
        screenshot(&client, "task").await;

        // A Postgres connection through the form: the password is write-only.
        let password = "pw-browser-9d1c";
        client
            .goto(&format!("{base}/#/connections"))
            .await
            .expect("open connections");
        wait_css(&client, "#conn-form").await;
        let fill = |css: &'static str, value: String| {
            let client = client.clone();
            async move {
                client
                    .find(Locator::Css(css))
                    .await
                    .unwrap_or_else(|e| panic!("{css}: {e}"))
                    .send_keys(&value)
                    .await
                    .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
            }
        };
        fill(r#"input[name="id"]"#, "warehouse".into()).await;
        fill(
            r#"textarea[name="fields"]"#,
            "host=127.0.0.1\nport=1\nuser=etl\ndatabase=w".into(),
        )
        .await;
        fill(r#"input[name="secret"]"#, password.into()).await;
        client
            .find(Locator::Css(r#"#conn-form button[type="submit"]"#))
            .await
            .expect("add button")
            .click()
            .await
            .expect("add");
        wait_css(&client, r#"tr[data-connection="warehouse"]"#).await;
        let page = client.source().await.expect("page source");
        assert!(!page.contains(password), "the password is in the page");
        let typed = client
            .find(Locator::Css(r#"input[name="secret"]"#))
            .await
            .expect("secret field")
            .prop("value")
            .await
            .expect("its value");
        assert_eq!(typed.as_deref(), Some(""), "the password field was emptied");
        screenshot(&client, "connections").await;
        client.close().await.expect("close the browser");
    });
}
